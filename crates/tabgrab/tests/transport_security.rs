//! The brokers over TLS and with credentials.
//!
//! NATS, against nats-servers of the test's own: mutual TLS (`tls://` with `tls_ca`,
//! `tls_cert`, `tls_key`) carries events, and each missing piece is refused with a clear
//! error; an nkey seed file (`nkey=`) authenticates, and the seed never appears in an error.
//! RabbitMQ, through a TLS terminator of the test's own (stunnel, in front of the machine's
//! RabbitMQ): `amqps://` with `tls_ca` carries events; without the CA it is refused.
//! Certificates come from `tabgrab_testkit::tls` (the `openssl` command).
#![cfg(all(feature = "nats", feature = "amqp"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::event::{Context, Publisher, Subscription};
use tabgrab::{ErrorKind, Event, Message};
use tabgrab_testkit::nats_server::{self, NatsOptions, NatsServer, ServerTls};

#[derive(Debug, Serialize, Deserialize)]
struct Note {
    text: String,
}
impl Message for Note {
    const TYPE: &'static str = "test.note.written.v1";
}
impl Event for Note {}

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
        tls: Some(ServerTls {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            verify_clients_with: Some(certs.ca.clone()),
        }),
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
        let dir = tempfile::tempdir().unwrap();
        let port = nats_server::free_port().unwrap();
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\n[amqps]\naccept = 127.0.0.1:{port}\n\
                 connect = 127.0.0.1:5672\ncert = {}\nkey = {}\n",
                certs.server_cert.display(),
                certs.server_key.display()
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
