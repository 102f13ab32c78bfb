//! No output of the pizzeria contains a password or token that was given to it.
//!
//! Every command that takes a bus or store URL runs here with credentials in it (a NATS
//! server of the test's own with a user and password, one with a token, RabbitMQ, and
//! PostgreSQL, which trusts any password here), successfully and with wrong credentials, with
//! `RUST_LOG=debug` so that the libraries' logs are included; then every byte of their
//! standard output and error is searched for each secret, also percent-encoded. A secret
//! printed anywhere fails the test with the command and the line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::processes::Database;
use tabgrab_testkit::nats_server::{self, NatsOptions, NatsServer, ServerTls};

const POSTGRES: &str = "127.0.0.1:5432";

fn pizzeria() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pizzeria"));
    command.env("RUST_LOG", "debug");
    command
}

/// Runs `command` to its end (bounded) and returns its output.
fn run(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let output = child.wait_with_output().unwrap();
    drop(watchdog);
    output
}

/// A long-running process whose standard output and error are read as they come.
struct Watched {
    child: std::process::Child,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
    /// The first stdout line that contains the awaited text.
    awaited: std::sync::mpsc::Receiver<String>,
}

/// Starts `command`, watching its stdout for a line that contains `awaited`.
fn watch(mut command: Command, awaited: &'static str) -> Watched {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let (tx, awaited_rx) = std::sync::mpsc::channel();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(awaited) {
                let _ = tx.send(line.clone());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    Watched {
        child,
        out,
        err,
        awaited: awaited_rx,
    }
}

impl Watched {
    /// The awaited line, if it came within 60 s.
    fn awaited(&self) -> Option<String> {
        self.awaited.recv_timeout(Duration::from_secs(60)).ok()
    }

    /// Stops the process with SIGTERM (SIGKILL after 30 s) and returns all it printed.
    fn stop(mut self) -> (String, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (self.out.join().unwrap(), self.err.join().unwrap())
    }
}

/// Starts a long-running service, waits for `ready`, stops it with SIGTERM and returns all
/// it printed.
fn run_service(command: Command) -> (String, String) {
    let service = watch(command, "ready ");
    let ready = service.awaited().is_some();
    let (out, err) = service.stop();
    assert!(ready, "the service never said ready:\n{out}\n{err}");
    (out, err)
}

/// Fails if any secret (or its percent-encoding) is in `text`.
fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        let encoded = secret.replace('@', "%40").replace('#', "%23");
        for needle in [secret.to_string(), encoded] {
            if let Some(line) = text.lines().find(|l| l.contains(needle.as_str())) {
                panic!("{what} printed the secret {needle:?}:\n{line}");
            }
        }
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_prints_a_password_or_token_it_was_given() {
    if !tabgrab_testkit::services::require("PostgreSQL", POSTGRES)
        || !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672")
    {
        return;
    }
    let Some(_) = nats_server::require() else {
        return;
    };
    let nats_password = "Nats-Pw_7f3a9c";
    let nats_token = "NatsToken_e41b22";
    let pg_password = "Pg-Pw_0c5d81";
    let wrong = "Wrong-Pw_93aa10";
    let amqp_wrong = "Amqp-Wrong_5b7e";
    let secrets = [nats_password, nats_token, pg_password, wrong, amqp_wrong];

    let with_user = NatsServer::start(NatsOptions {
        user_password: Some(("tabgrab".into(), nats_password.into())),
        ..NatsOptions::default()
    })
    .unwrap();
    let with_token = NatsServer::start(NatsOptions {
        token: Some(nats_token.into()),
        ..NatsOptions::default()
    })
    .unwrap();
    let port = |server: &NatsServer| server.url().rsplit(':').next().unwrap().to_owned();
    let nats_user_url = format!(
        "nats://tabgrab:{nats_password}@127.0.0.1:{}",
        port(&with_user)
    );
    let nats_token_url = format!("nats://{nats_token}@127.0.0.1:{}", port(&with_token));
    let db = Database::create("secrets").await;
    let pg_url = format!("postgres://postgres:{pg_password}@{POSTGRES}/{}", db.name());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();

    let mut checked = 0;
    let mut check = |what: &str, command: Command, must_succeed: bool| {
        let output = run(command);
        let all = text(&output);
        assert_eq!(
            output.status.success(),
            must_succeed,
            "{what}: unexpected exit {}:\n{all}",
            output.status
        );
        assert_clean(what, &all, &secrets);
        checked += 1;
    };

    // Runs that connect, with a password, a token and a PostgreSQL store.
    let mut c = pizzeria();
    c.args([
        "run",
        "--style",
        "events",
        "--orders",
        "20",
        "--data-dir",
        &data,
    ])
    .args(["--bus", &format!("{nats_user_url}?namespace=secrets1")])
    .args(["--store", &pg_url, "--kitchen-db", &pg_url]);
    check("run --style events on NATS with a password", c, true);
    let mut c = pizzeria();
    c.args([
        "run",
        "--style",
        "events",
        "--orders",
        "5",
        "--data-dir",
        &data,
    ])
    .args(["--bus", &nats_token_url, "--store", "memory"]);
    check("run --style events on NATS with a token", c, true);
    let mut c = pizzeria();
    c.args([
        "run",
        "--style",
        "messaging",
        "--orders",
        "5",
        "--data-dir",
        &data,
    ])
    .args(["--bus", &format!("{nats_user_url}?namespace=secrets2")]);
    check("run --style messaging on NATS with a password", c, true);
    let mut c = pizzeria();
    c.args([
        "run",
        "--style",
        "events",
        "--orders",
        "5",
        "--data-dir",
        &data,
    ])
    .args(["--store", &pg_url]);
    check("run --style events with a PostgreSQL store", c, true);

    // Wrong credentials and unreachable stores: the errors name the server, not the secret.
    let mut c = pizzeria();
    c.args(["run", "--orders", "1", "--data-dir", &data]).args([
        "--bus",
        &format!("nats://tabgrab:{wrong}@127.0.0.1:{}", port(&with_user)),
    ]);
    check("run with a wrong NATS password", c, false);
    let mut c = pizzeria();
    c.args(["run", "--orders", "1", "--data-dir", &data]).args([
        "--bus",
        &format!("amqp://guest:{amqp_wrong}@127.0.0.1:5672/%2f"),
    ]);
    check("run with a wrong RabbitMQ password", c, false);
    let mut c = pizzeria();
    c.args(["run", "--orders", "1", "--data-dir", &data]).args([
        "--store",
        &format!("postgres://postgres:{pg_password}@{POSTGRES}/no_such_database_here"),
    ]);
    check("run with a PostgreSQL store that does not exist", c, false);
    // A role the server does not know: refused as bad credentials, which no retry cures.
    let mut c = pizzeria();
    c.args(["run", "--orders", "1", "--data-dir", &data]).args([
        "--store",
        &format!("postgres://no_such_role_x:{pg_password}@{POSTGRES}/test"),
    ]);
    let output = run(c);
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("refused the credentials"), "{all}");
    assert_clean(
        "run with a PostgreSQL role that does not exist",
        &all,
        &secrets,
    );
    let mut c = pizzeria();
    c.args(["service", "kitchen", "--bus", &nats_token_url])
        .args([
            "--kitchen-db",
            &format!("postgres://postgres:{wrong}@127.0.0.1:1/x"),
        ]);
    check("service kitchen with an unreachable rail", c, false);

    // The commands that read what a run left: the orders from its PostgreSQL store beside
    // the bus, and the dead letters of a broker; then with wrong credentials.
    let mut c = pizzeria();
    c.args(["orders", "--store", &pg_url, "--all"])
        .args(["--bus", &format!("{nats_user_url}?namespace=secrets1")]);
    check("orders with a store and a bus", c, true);
    let mut c = pizzeria();
    c.args([
        "dead-letters",
        "--bus",
        &format!("{nats_user_url}?namespace=secrets1"),
    ]);
    check("dead-letters on NATS with a password", c, true);
    let mut c = pizzeria();
    c.args([
        "dead-letters",
        "--bus",
        &nats_token_url.replace(nats_token, wrong),
    ]);
    check("dead-letters on NATS with a wrong token", c, false);
    let mut c = pizzeria();
    c.args([
        "orders",
        "--store",
        &pg_url,
        "--bus",
        &format!("amqp://guest:{amqp_wrong}@127.0.0.1:5672/%2f"),
    ]);
    check("orders with a wrong RabbitMQ password", c, true);

    // A service process, from start to SIGTERM.
    let mut c = pizzeria();
    c.args(["service", "payment", "--bus", &nats_user_url])
        .args(["--store", &pg_url]);
    let (out, err) = run_service(c);
    assert_clean("service payment", &format!("{out}\n{err}"), &secrets);
    checked += 1;

    assert_eq!(checked, 13);
    db.drop_it().await;
}

/// A line of a PEM private key's body: a piece of the key itself.
fn key_line(path: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .max_by_key(|l| l.len())
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_output_shows_a_private_key_an_nkey_seed_or_a_call_token() {
    let Some(_) = nats_server::require() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let token = "CallToken_8e21f0aa";
    let wrong_token = "WrongCall_3c9d7e51";
    let seed = nkeys::KeyPair::new_user();
    let other_seed = nkeys::KeyPair::new_user();
    let nats_password = "Lab-Pw_a61c0e";
    let (server_key, client_key) = (key_line(&certs.server_key), key_line(&certs.client_key));
    let secrets_owned = [
        server_key,
        client_key,
        token.to_owned(),
        wrong_token.to_owned(),
        seed.seed().unwrap(),
        other_seed.seed().unwrap(),
        nats_password.to_owned(),
    ];
    let secrets: Vec<&str> = secrets_owned.iter().map(String::as_str).collect();
    let mut checked = 0;

    // The call style over mutual TLS with the token; a second front desk with a wrong one.
    let service = |args: &[&str], token: &str| {
        let mut c = pizzeria();
        c.arg("service")
            .args(args)
            .env(pizzeria::calls::TOKEN_VAR, token)
            .env("PIZZERIA_STORE", "memory");
        watch(c, " listening on ")
    };
    let url = |w: &Watched| {
        let line = w.awaited().expect("the service printed its address");
        line.rsplit_once(" listening on ").unwrap().1.to_owned()
    };
    let (ca, cert, key) = (
        path(&certs.ca),
        path(&certs.server_cert),
        path(&certs.server_key),
    );
    let tls = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-client-ca",
        ca.as_str(),
    ];
    let back = |name: &str, extra: &[&str]| {
        let mut args = vec![name];
        args.extend(extra);
        args.extend(tls);
        service(&args, token)
    };
    let payment = back("payment", &[]);
    let inventory = back("inventory", &[]);
    let kitchen = back("kitchen", &["--bake-ms", "1"]);
    let delivery = back("delivery", &[]);
    let (payment_url, inventory_url, kitchen_url) = (url(&payment), url(&inventory), url(&kitchen));
    let delivery_url = url(&delivery);
    let (client_cert, client_key) = (path(&certs.client_cert), path(&certs.client_key));
    let front = |token: &str| {
        service(
            &[
                "front-desk",
                "--payment",
                &payment_url,
                "--inventory",
                &inventory_url,
                "--kitchen",
                &kitchen_url,
                "--delivery",
                &delivery_url,
                "--peer-ca",
                &ca,
                "--peer-cert",
                &client_cert,
                "--peer-key",
                &client_key,
            ],
            token,
        )
    };
    let (good, bad) = (front(token), front(wrong_token));
    let (good_url, bad_url) = (url(&good), url(&bad));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let order =
        serde_json::json!({"customer": "Ada", "pizzas": ["diavola"], "card": "4242424242424242"});
    let made = http
        .post(format!("{good_url}/orders"))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(
        made.status().as_u16(),
        201,
        "{}",
        made.text().await.unwrap()
    );
    let refused = http
        .post(format!("{bad_url}/orders"))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 502);
    let body = refused.text().await.unwrap();
    assert!(body.contains("unauthenticated"), "{body}");
    assert_clean("the refusal a customer sees", &body, &secrets);
    for (what, process) in [
        ("service payment over mutual TLS", payment),
        ("service inventory over mutual TLS", inventory),
        ("service kitchen over mutual TLS", kitchen),
        ("service delivery over mutual TLS", delivery),
        ("service front-desk with the token", good),
        ("service front-desk with a wrong token", bad),
    ] {
        let (out, err) = process.stop();
        assert_clean(what, &format!("{out}\n{err}"), &secrets);
        checked += 1;
    }

    // --help, with the token in the environment.
    for args in [
        vec!["--help"],
        vec!["service", "--help"],
        vec!["run", "--help"],
        vec!["lab", "--help"],
    ] {
        let mut c = pizzeria();
        c.args(&args).env(pizzeria::calls::TOKEN_VAR, token);
        let output = run(c);
        assert!(output.status.success(), "{args:?}");
        assert_clean(&format!("{args:?}"), &text(&output), &secrets);
        checked += 1;
    }

    // TLS material and a creds file from environment variables (`env:NAME` in the URL), on
    // a server that wants mutual TLS and a user of its operator: the run works, nothing of
    // the material is printed, and an unset variable is named.
    let decentralized = tabgrab_testkit::nats_jwt::Decentralized::new();
    let secured = NatsServer::start(NatsOptions {
        operator: Some(decentralized.operator_mode()),
        tls: Some(ServerTls::mutual(&certs)),
        ..NatsOptions::default()
    })
    .unwrap();
    let (creds_text, user_jwt, user_seed) = decentralized.user_creds();
    let env_url = format!(
        "tls://{}?tls_ca=env:PZ_CA&tls_cert=env:PZ_CERT&tls_key=env:PZ_KEY&creds=env:PZ_CREDS",
        secured.url().trim_start_matches("nats://")
    );
    let material = [
        ("PZ_CA", std::fs::read_to_string(&certs.ca).unwrap()),
        (
            "PZ_CERT",
            std::fs::read_to_string(&certs.client_cert).unwrap(),
        ),
        (
            "PZ_KEY",
            std::fs::read_to_string(&certs.client_key).unwrap(),
        ),
        ("PZ_CREDS", creds_text),
    ];
    let mut env_secrets = secrets.clone();
    env_secrets.extend([user_jwt.as_str(), user_seed.as_str()]);
    for (what, drop_var, must_succeed) in [
        (
            "run with TLS material and creds from the environment",
            None,
            true,
        ),
        (
            "run with the client key's variable unset",
            Some("PZ_KEY"),
            false,
        ),
    ] {
        let mut c = pizzeria();
        c.args([
            "run", "--style", "events", "--orders", "5", "--store", "memory",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("env-material"))
        .args(["--bus", &env_url]);
        for (name, value) in &material {
            if Some(*name) != drop_var {
                c.env(name, value);
            }
        }
        let output = run(c);
        let all = text(&output);
        assert_eq!(output.status.success(), must_succeed, "{what}:\n{all}");
        if !must_succeed {
            assert!(
                all.contains("environment variable PZ_KEY"),
                "{what}:\n{all}"
            );
        }
        assert_clean(what, &all, &env_secrets);
        checked += 1;
    }

    // An nkey seed that the server knows, and one it does not.
    let nkey_server = NatsServer::start(NatsOptions {
        nkey_user: Some(seed.public_key()),
        ..NatsOptions::default()
    })
    .unwrap();
    let seed_file = |name: &str, pair: &nkeys::KeyPair| {
        let file = dir.path().join(name);
        std::fs::write(&file, pair.seed().unwrap()).unwrap();
        file
    };
    let data = dir.path().join("data");
    for (what, file, must_succeed) in [
        (
            "run on NATS with an nkey seed",
            seed_file("user.nk", &seed),
            true,
        ),
        (
            "run on NATS with an unknown nkey seed",
            seed_file("other.nk", &other_seed),
            false,
        ),
    ] {
        let mut c = pizzeria();
        c.args([
            "run", "--style", "events", "--orders", "5", "--store", "memory",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--bus")
        .arg(format!("{}?nkey={}", nkey_server.url(), file.display()));
        let output = run(c);
        let all = text(&output);
        assert_eq!(output.status.success(), must_succeed, "{what}:\n{all}");
        assert_clean(what, &all, &secrets);
        checked += 1;
    }

    // The lab on a NATS server that wants a password: its output and its reports.
    let with_user = NatsServer::start(NatsOptions {
        user_password: Some(("lab".into(), nats_password.into())),
        ..NatsOptions::default()
    })
    .unwrap();
    let port = with_user.url().rsplit(':').next().unwrap().to_owned();

    // The bus URL from the environment, with the services as child processes: no command
    // line on the machine shows the password (the children get it through theirs), and
    // --help shows no value of it.
    let env_url = format!("nats://lab:{nats_password}@127.0.0.1:{port}?namespace=envrun");
    let mut c = pizzeria();
    c.args([
        "run",
        "--style",
        "events",
        "--orders",
        "20",
        "--services",
        "spawn",
    ])
    .arg("--data-dir")
    .arg(dir.path().join("spawned"))
    .env("PIZZERIA_BUS", &env_url);
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let watching = std::sync::Arc::clone(&watching);
        std::thread::spawn(move || {
            let mut lines = std::collections::BTreeSet::new();
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
                for line in String::from_utf8_lossy(&ps.stdout).lines() {
                    if line.contains("pizzeria") {
                        lines.insert(line.to_owned());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            lines
        })
    };
    let output = run(c);
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let command_lines = watcher.join().unwrap();
    let all = text(&output);
    assert!(output.status.success(), "run with PIZZERIA_BUS:\n{all}");
    assert_clean("run with the bus in PIZZERIA_BUS", &all, &secrets);
    assert!(
        command_lines.iter().any(|l| l.contains("service payment")),
        "the watcher saw the payment child: {command_lines:?}"
    );
    let seen = command_lines.iter().cloned().collect::<Vec<_>>().join("\n");
    assert_clean(
        "the command lines of the run and its children",
        &seen,
        &secrets,
    );
    let mut c = pizzeria();
    c.args(["run", "--help"]).env("PIZZERIA_BUS", &env_url);
    let output = run(c);
    assert!(
        text(&output).contains("PIZZERIA_BUS"),
        "--help names the variable"
    );
    assert_clean("run --help with PIZZERIA_BUS set", &text(&output), &secrets);
    checked += 2;
    let out = dir.path().join("lab-out");
    let mut c = pizzeria();
    c.args(["lab", "--quick", "--n", "200", "--bus"])
        .arg(format!("nats://lab:{nats_password}@127.0.0.1:{port}"))
        .arg("--out")
        .arg(&out);
    let output = run(c);
    let all = text(&output);
    assert!(output.status.success(), "the lab:\n{all}");
    assert_clean("lab on NATS with a password", &all, &secrets);
    for report in ["lab.json", "lab.html"] {
        let written = std::fs::read_to_string(out.join(report)).unwrap();
        assert!(written.contains("nats"), "{report} names the bus");
        assert_clean(report, &written, &secrets);
    }
    checked += 1;

    assert_eq!(checked, 17);
}
