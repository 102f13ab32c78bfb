//! The brokers over TLS and with credentials.
//!
//! NATS, against nats-servers of the test's own: mutual TLS (`tls://` with `tls_ca`,
//! `tls_cert`, `tls_key`) carries events, and each missing piece is refused with a clear
//! error; an nkey seed file (`nkey=`) authenticates, and the seed never appears in an error;
//! in operator mode (JWTs the test signs with the `nkeys` crate) a `.creds` file carries
//! events, and a user of an unknown account or a JWT with the wrong seed is refused.
//! RabbitMQ, through a TLS terminator of the test's own (stunnel, in front of the machine's
//! RabbitMQ): `amqps://` with `tls_ca` carries events; without the CA it is refused; with
//! stunnel requiring client certificates, `tls_cert` and `tls_key` carry events and a missing
//! or foreign certificate is refused.
//! On both: an untrusted or expired server certificate, a wrong password, user or token is
//! refused within seconds with a typed error that says why and shows no secret.
//! Certificates come from `tabgrab_testkit::tls` (the `openssl` command).
#![cfg(all(feature = "nats", feature = "amqp"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::event::{Context, Publisher, Subscription};
use tabgrab::{ErrorKind, Message};
use tabgrab_testkit::nats_server::{self, NatsOptions, NatsServer, OperatorMode, ServerTls};

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(type = "test.note.written.v1", event)]
struct Note {
    text: String,
}

/// One event through a group over `bus`.
async fn round_trip(bus: &Bus) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let topic = format!("secure-{}", uuid::Uuid::now_v7().simple());
    let sub = Subscription::builder(bus, &topic, "readers")
        .handle(move |n: Note, _ctx: Context| {
            sink.lock().unwrap().push(n.text);
            async { Ok::<(), tabgrab::event::HandlerError>(()) }
        })
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    Publisher::new(bus, &topic, "/test")
        .unwrap()
        .publish(
            &Note {
                text: "sealed".into(),
            },
            "n-1",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the event did not arrive over TLS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.lock().unwrap().as_slice(), ["sealed"]);
    sub.shutdown().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_carries_events_and_each_missing_piece_is_refused() {
    if nats_server::require().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let server = NatsServer::start(NatsOptions {
        tls: Some(ServerTls::mutual(&certs)),
        ..NatsOptions::default()
    })
    .unwrap();
    let address = server.url().trim_start_matches("nats://").to_owned();
    let (ca, cert, key) = (
        certs.ca.display().to_string(),
        certs.client_cert.display().to_string(),
        certs.client_key.display().to_string(),
    );

    let bus = Bus::connect(&format!(
        "tls://{address}?tls_ca={ca}&tls_cert={cert}&tls_key={key}"
    ))
    .await
    .unwrap();
    round_trip(&bus).await;
    drop(bus);
    // `nats://` with `tls=true` is the same.
    let bus = Bus::connect(&format!(
        "nats://{address}?tls=true&tls_ca={ca}&tls_cert={cert}&tls_key={key}"
    ))
    .await
    .unwrap();
    round_trip(&bus).await;
    drop(bus);

    for (what, url) in [
        ("plain text", format!("nats://{address}")),
        (
            "no client certificate",
            format!("tls://{address}?tls_ca={ca}"),
        ),
        (
            "a server certificate nobody vouched for",
            format!("tls://{address}?tls_cert={cert}&tls_key={key}"),
        ),
    ] {
        let started = Instant::now();
        let e = Bus::connect(&url).await.expect_err(what);
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{what}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what}: refused only after {:?}",
            started.elapsed()
        );
        println!("{what}: {e}");
    }
    let missing = Bus::connect(&format!("tls://{address}?tls_ca=/no/such/ca.pem"))
        .await
        .expect_err("a CA file that is not there");
    assert_eq!(missing.kind(), ErrorKind::Malformed);
    assert!(missing.to_string().contains("/no/such/ca.pem"), "{missing}");
    let other_dir = tempfile::tempdir().unwrap();
    let other = tabgrab_testkit::tls::certificates(other_dir.path()).unwrap();
    refused(
        "a client key that is not the certificate's",
        &format!(
            "tls://{address}?tls_ca={ca}&tls_cert={cert}&tls_key={}",
            other.client_key.display()
        ),
        ErrorKind::Malformed,
        &["not the key of the client certificate"],
        &[],
    )
    .await;
    let half = Bus::connect(&format!("tls://{address}?tls_cert={cert}"))
        .await
        .expect_err("a certificate without its key");
    assert!(half.to_string().contains("tls_key"), "{half}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_file_authenticates_and_the_seed_is_never_shown() {
    if nats_server::require().is_none() {
        return;
    }
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = NatsServer::start(NatsOptions {
        nkey_user: Some(user.public_key()),
        ..NatsOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    let bus = Bus::connect(&format!("{}?nkey={}", server.url(), seed_file.display()))
        .await
        .unwrap();
    round_trip(&bus).await;
    drop(bus);

    let refused = Bus::connect(&server.url()).await.expect_err("no nkey");
    let said = format!("{refused} {refused:?}");
    println!("without the nkey: {refused}");
    let other = nkeys::KeyPair::new_user();
    let wrong_file = dir.path().join("other.nk");
    std::fs::write(&wrong_file, other.seed().unwrap()).unwrap();
    let wrong = Bus::connect(&format!("{}?nkey={}", server.url(), wrong_file.display()))
        .await
        .expect_err("an nkey the server does not know");
    let said = format!("{said} {wrong} {wrong:?}");
    assert!(
        !said.contains(&seed) && !said.contains(&other.seed().unwrap()),
        "{said}"
    );
    let not_a_seed = dir.path().join("empty.nk");
    std::fs::write(&not_a_seed, "hello\n").unwrap();
    let e = Bus::connect(&format!("{}?nkey={}", server.url(), not_a_seed.display()))
        .await
        .expect_err("a file without a seed");
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
}

/// stunnel accepting TLS on a free port and forwarding to the machine's RabbitMQ; killed by
/// PID when dropped.
struct Stunnel {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Stunnel {
    fn start(certs: &tabgrab_testkit::tls::Certificates) -> Stunnel {
        Stunnel::with(&certs.server_cert, &certs.server_key, None)
    }

    /// stunnel presenting `cert` (and `key`); with `clients_ca`, it requires every client to
    /// present a certificate that CA signed (mutual TLS).
    fn with(cert: &Path, key: &Path, clients_ca: Option<&Path>) -> Stunnel {
        let dir = tempfile::tempdir().unwrap();
        let port = nats_server::free_port().unwrap();
        let conf = dir.path().join("stunnel.conf");
        let verify = clients_ca.map_or(String::new(), |ca| {
            format!(
                "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                ca.display()
            )
        });
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\n[amqps]\naccept = 127.0.0.1:{port}\n\
                 connect = 127.0.0.1:5672\ncert = {}\nkey = {}\n{verify}",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("stunnel")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("stunnel");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "stunnel did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Stunnel {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the stunnel command is there; under TABGRAB_REQUIRE_SERVICES its absence fails.
fn stunnel_present() -> bool {
    let present = std::process::Command::new("stunnel")
        .arg("-version")
        .output()
        .is_ok();
    if !present {
        assert!(
            std::env::var_os("TABGRAB_REQUIRE_SERVICES").is_none(),
            "stunnel is required (TABGRAB_REQUIRE_SERVICES is set): apt-get install -y stunnel4"
        );
        println!("SKIPPED: no stunnel command (apt-get install stunnel4)");
    }
    present
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_the_servers_ca_carries_events_and_without_it_is_refused() {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") || !stunnel_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let tunnel = Stunnel::start(&certs);
    let base = format!("amqps://guest:guest@127.0.0.1:{}/%2f", tunnel.port);
    let bus = Bus::connect(&format!("{base}?tls_ca={}", certs.ca.display()))
        .await
        .unwrap();
    round_trip(&bus).await;
    drop(bus);

    let e = Bus::connect(&base)
        .await
        .expect_err("a server certificate nobody vouched for");
    println!("amqps without tls_ca: {e}");
    assert!(
        !e.to_string().contains("guest:guest"),
        "the password is not shown: {e}"
    );
    let plain = Bus::connect(&format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?tls_ca={}",
        certs.ca.display()
    ))
    .await
    .expect_err("tls_ca on a plain-text URL");
    assert_eq!(plain.kind(), ErrorKind::Malformed, "{plain}");
}

/// Connects to `url`, which must fail within 15 s with an error of `kind` whose text says
/// each of `says` and shows none of `secrets` (in `Display` or `Debug`); returns its text.
async fn refused(
    what: &str,
    url: &str,
    kind: ErrorKind,
    says: &[&str],
    secrets: &[&str],
) -> String {
    let started = Instant::now();
    let e = Bus::connect(url).await.expect_err(what);
    let elapsed = started.elapsed();
    let text = e.to_string();
    println!("{what} ({elapsed:.1?}): {text}");
    assert_eq!(e.kind(), kind, "{what}: {text}");
    assert!(
        elapsed < Duration::from_secs(15),
        "{what}: refused only after {elapsed:?}"
    );
    for said in says {
        assert!(
            text.contains(said),
            "{what}: {text:?} does not say {said:?}"
        );
    }
    let everything = format!("{e} {e:?}");
    for secret in secrets {
        assert!(
            !everything.contains(secret),
            "{what}: the error shows a secret: {everything}"
        );
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_client_certificate_carries_events_and_without_one_is_refused() {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") || !stunnel_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = tabgrab_testkit::tls::certificates(stranger_dir.path()).unwrap();
    let tunnel = Stunnel::with(&certs.server_cert, &certs.server_key, Some(&certs.ca));
    let base = format!(
        "amqps://guest:guest@127.0.0.1:{}/%2f?tls_ca={}",
        tunnel.port,
        certs.ca.display()
    );
    let identity = |c: &tabgrab_testkit::tls::Certificates| {
        format!(
            "&tls_cert={}&tls_key={}",
            c.client_cert.display(),
            c.client_key.display()
        )
    };
    let bus = Bus::connect(&format!("{base}{}", identity(&certs)))
        .await
        .unwrap();
    round_trip(&bus).await;
    drop(bus);

    let key_text = std::fs::read_to_string(&certs.client_key).unwrap();
    let key_body = key_text.lines().nth(1).unwrap().to_owned();
    refused(
        "amqps without a client certificate",
        &base,
        ErrorKind::Unavailable,
        &["TLS handshake", "client certificate"],
        &["guest:guest"],
    )
    .await;
    refused(
        "amqps with a client certificate of another CA",
        &format!("{base}{}", identity(&stranger)),
        ErrorKind::Unavailable,
        &["TLS handshake", "does not trust this client's certificate"],
        &["guest:guest", &key_body],
    )
    .await;
    // Both or neither, files that are there, and a key that is a key: refused before any
    // connection, by path, never quoting the key.
    refused(
        "a certificate without its key",
        &format!("{base}&tls_cert={}", certs.client_cert.display()),
        ErrorKind::Malformed,
        &["tls_cert and tls_key"],
        &[],
    )
    .await;
    refused(
        "a key without its certificate",
        &format!("{base}&tls_key={}", certs.client_key.display()),
        ErrorKind::Malformed,
        &["tls_cert and tls_key"],
        &[],
    )
    .await;
    refused(
        "a key file that is not there",
        &format!(
            "{base}&tls_cert={}&tls_key=/no/such/client.key",
            certs.client_cert.display()
        ),
        ErrorKind::Malformed,
        &["/no/such/client.key", "tls_key"],
        &[],
    )
    .await;
    refused(
        "a key as the certificate, the certificate as the key",
        &format!(
            "{base}&tls_cert={}&tls_key={}",
            certs.client_key.display(),
            certs.client_cert.display()
        ),
        ErrorKind::Malformed,
        &[&certs.client_key.display().to_string(), "is not PEM text"],
        &[&key_body],
    )
    .await;
    refused(
        "a client key that is not the certificate's",
        &format!(
            "{base}&tls_cert={}&tls_key={}",
            certs.client_cert.display(),
            stranger.client_key.display()
        ),
        ErrorKind::Malformed,
        &["not the key of the client certificate"],
        &["guest:guest", &key_body],
    )
    .await;
    refused(
        "a client certificate on a plain-text URL",
        &format!(
            "amqp://guest:guest@127.0.0.1:5672/%2f?{}",
            identity(&certs).trim_start_matches('&')
        ),
        ErrorKind::Malformed,
        &["amqps://"],
        &["guest:guest"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_refuses_an_untrusted_or_expired_server_certificate_and_says_which() {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") || !stunnel_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = tabgrab_testkit::tls::certificates(stranger_dir.path()).unwrap();
    let (expired_cert, expired_key) =
        tabgrab_testkit::tls::expired_server_certificate(dir.path()).unwrap();

    let untrusted = Stunnel::with(&stranger.server_cert, &stranger.server_key, None);
    refused(
        "amqps to a server whose certificate another CA signed",
        &format!(
            "amqps://guest:guest@127.0.0.1:{}/%2f?tls_ca={}",
            untrusted.port,
            certs.ca.display()
        ),
        ErrorKind::Unavailable,
        &["TLS handshake", "CA this client", "trust"],
        &["guest:guest"],
    )
    .await;
    let expired = Stunnel::with(&expired_cert, &expired_key, None);
    refused(
        "amqps to a server whose certificate expired",
        &format!(
            "amqps://guest:guest@127.0.0.1:{}/%2f?tls_ca={}",
            expired.port,
            certs.ca.display()
        ),
        ErrorKind::Unavailable,
        &["TLS handshake", "expired"],
        &["guest:guest"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_refuses_an_untrusted_or_expired_server_certificate_and_says_which() {
    if nats_server::require().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = tabgrab_testkit::tls::certificates(stranger_dir.path()).unwrap();
    let (expired_cert, expired_key) =
        tabgrab_testkit::tls::expired_server_certificate(dir.path()).unwrap();
    let tls = |cert: &Path, key: &Path| NatsOptions {
        tls: Some(ServerTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            verify_clients_with: None,
        }),
        ..NatsOptions::default()
    };
    let ca = certs.ca.display().to_string();

    let untrusted = NatsServer::start(tls(&stranger.server_cert, &stranger.server_key)).unwrap();
    let address = untrusted.url().replacen("nats://", "tls://", 1);
    refused(
        "nats to a server whose certificate another CA signed",
        &format!("{address}?tls_ca={ca}"),
        ErrorKind::Unavailable,
        &["TLS handshake", "CA this client", "trust"],
        &[],
    )
    .await;
    let expired = NatsServer::start(tls(&expired_cert, &expired_key)).unwrap();
    let address = expired.url().replacen("nats://", "tls://", 1);
    refused(
        "nats to a server whose certificate expired",
        &format!("{address}?tls_ca={ca}"),
        ErrorKind::Unavailable,
        &["TLS handshake", "expired"],
        &[],
    )
    .await;
    // The same server with a valid certificate is reached: the refusals were the certificates.
    let valid = NatsServer::start(tls(&certs.server_cert, &certs.server_key)).unwrap();
    let address = valid.url().replacen("nats://", "tls://", 1);
    let bus = Bus::connect(&format!("{address}?tls_ca={ca}"))
        .await
        .unwrap();
    round_trip(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_token_is_unauthenticated_and_never_shown() {
    if nats_server::require().is_none() {
        return;
    }
    let password = "Right-Pw_41c9e2";
    let wrong = "Wrong-Pw_7d03aa";
    let with_user = NatsServer::start(NatsOptions {
        user_password: Some(("tabgrab".into(), password.into())),
        ..NatsOptions::default()
    })
    .unwrap();
    let address = with_user.url().trim_start_matches("nats://").to_owned();
    let bus = Bus::connect(&format!("nats://tabgrab:{password}@{address}"))
        .await
        .unwrap();
    round_trip(&bus).await;
    drop(bus);
    refused(
        "nats with a wrong password",
        &format!("nats://tabgrab:{wrong}@{address}"),
        ErrorKind::Unauthenticated,
        &["authentication failed"],
        &[wrong, password],
    )
    .await;
    refused(
        "nats with an unknown user",
        &format!("nats://nobody:{password}@{address}"),
        ErrorKind::Unauthenticated,
        &["authentication failed"],
        &[password],
    )
    .await;
    refused(
        "nats without credentials",
        &with_user.url(),
        ErrorKind::Unauthenticated,
        &["authentication failed"],
        &[],
    )
    .await;

    let token = "Tok-Right_a5b1";
    let wrong_token = "Tok-Wrong_19fe";
    let with_token = NatsServer::start(NatsOptions {
        token: Some(token.into()),
        ..NatsOptions::default()
    })
    .unwrap();
    let address = with_token.url().trim_start_matches("nats://").to_owned();
    let bus = Bus::connect(&format!("nats://{token}@{address}"))
        .await
        .unwrap();
    round_trip(&bus).await;
    drop(bus);
    refused(
        "nats with a wrong token",
        &format!("nats://{wrong_token}@{address}"),
        ErrorKind::Unauthenticated,
        &["authentication failed"],
        &[wrong_token, token],
    )
    .await;

    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    let amqp_wrong = "Amqp-Wrong_3e8f";
    refused(
        "amqp with a wrong password",
        &format!("amqp://guest:{amqp_wrong}@127.0.0.1:5672/%2f"),
        ErrorKind::Unauthenticated,
        &["authentication failed"],
        &[amqp_wrong],
    )
    .await;
    refused(
        "amqp with an unknown user",
        &format!(
            "amqp://nobody-{}:{amqp_wrong}@127.0.0.1:5672/%2f",
            std::process::id()
        ),
        ErrorKind::Unauthenticated,
        &["authentication failed"],
        &[amqp_wrong],
    )
    .await;
}

use tabgrab_testkit::nats_jwt as jwt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_authenticates_in_operator_mode_and_wrong_ones_are_refused() {
    if nats_server::require().is_none() {
        return;
    }
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start(NatsOptions {
        operator: Some(OperatorMode {
            operator_jwt: jwt::operator(&operator, &system.public_key()),
            system_account: Some(system.public_key()),
            accounts: vec![
                (
                    system.public_key(),
                    jwt::account(&operator, &system, "SYS", false),
                ),
                (
                    account.public_key(),
                    jwt::account(&operator, &account, "APP", true),
                ),
            ],
        }),
        ..NatsOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let user_jwt = jwt::user(&account, &user);
    let seed = user.seed().unwrap();
    let good = dir.path().join("user.creds");
    std::fs::write(&good, jwt::creds(&user_jwt, &seed)).unwrap();
    let bus = Bus::connect(&format!("{}?creds={}", server.url(), good.display()))
        .await
        .unwrap();
    round_trip(&bus).await;
    let report = bus.report().await.unwrap();
    let shown = format!("{report} {bus:?}");
    assert!(
        !shown.contains(&seed) && !shown.contains(&user_jwt),
        "the report shows the credentials: {shown}"
    );
    drop(bus);

    // A user signed by an account the server does not know.
    let stranger_account = nkeys::KeyPair::new_account();
    let stranger = nkeys::KeyPair::new_user();
    let stranger_jwt = jwt::user(&stranger_account, &stranger);
    let stranger_seed = stranger.seed().unwrap();
    let unknown = dir.path().join("stranger.creds");
    std::fs::write(&unknown, jwt::creds(&stranger_jwt, &stranger_seed)).unwrap();
    // The right JWT with another user's seed: it cannot sign the server's nonce.
    let other_seed = nkeys::KeyPair::new_user().seed().unwrap();
    let mismatched = dir.path().join("mismatched.creds");
    std::fs::write(&mismatched, jwt::creds(&user_jwt, &other_seed)).unwrap();
    let secrets = [
        seed.as_str(),
        user_jwt.as_str(),
        stranger_seed.as_str(),
        stranger_jwt.as_str(),
        other_seed.as_str(),
    ];
    for (what, file) in [
        ("a user of an account the server does not know", &unknown),
        ("a valid JWT with the wrong seed", &mismatched),
    ] {
        refused(
            what,
            &format!("{}?creds={}", server.url(), file.display()),
            ErrorKind::Unauthenticated,
            &["authentication failed"],
            &secrets,
        )
        .await;
    }
    refused(
        "no creds at all",
        &server.url(),
        ErrorKind::Unauthenticated,
        &["authentication failed"],
        &secrets,
    )
    .await;
    let missing = refused(
        "a creds file that is not there",
        &format!("{}?creds=/no/such/user.creds", server.url()),
        ErrorKind::Malformed,
        &["/no/such/user.creds"],
        &secrets,
    )
    .await;
    assert!(missing.contains("creds"), "{missing}");
    let garbled = dir.path().join("garbled.creds");
    std::fs::write(&garbled, format!("{user_jwt}\n{seed}\n")).unwrap();
    refused(
        "a creds file without its markers",
        &format!("{}?creds={}", server.url(), garbled.display()),
        ErrorKind::Malformed,
        &[&garbled.display().to_string()],
        &secrets,
    )
    .await;
}

/// The machine's PostgreSQL trusts every password, but not a role that does not exist: the
/// correlation store's connection is refused at once, saying so, without the password. (Its
/// kind is the stores' `Storage` today, which a retry policy counts as retryable;
/// `Unauthenticated` would be the better kind, and is accepted here too.)
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_role_that_does_not_exist_at_once() {
    if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let password = "Pg-Wrong_c0ffee";
    let role = format!("no_such_role_{}", std::process::id());
    let started = Instant::now();
    let e = tabgrab::messaging::PostgresStore::connect(&format!(
        "postgres://{role}:{password}@127.0.0.1:5432/test"
    ))
    .await
    .expect_err("a role that does not exist");
    let elapsed = started.elapsed();
    let text = format!("{e} {e:?}");
    println!("postgres with an unknown role ({elapsed:.1?}): {e}");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(!e.kind().is_retryable(), "{e}");
    assert!(
        elapsed < Duration::from_secs(15),
        "refused after {elapsed:?}"
    );
    assert!(
        text.contains(&format!("role \"{role}\" does not exist")),
        "{e}"
    );
    assert!(!text.contains(password), "the password is shown: {text}");
}
