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
use tabgrab_testkit::nats_server::{self, NatsOptions, NatsServer};

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

/// Starts a long-running service, waits for `ready`, stops it with SIGTERM and returns all
/// it printed.
fn run_service(mut command: Command) -> (String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let out_thread = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready ") {
                let _ = tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let ready = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = out_thread.join().unwrap();
    let err = err_thread.join().unwrap();
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
