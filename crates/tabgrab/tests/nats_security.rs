//! NATS with TLS and credentials, against nats-servers of the test's own: mutual TLS
//! (`tls://` with `tls_ca`, `tls_cert`, `tls_key`) carries events, and each missing piece is
//! refused with a clear error; an nkey seed file (`nkey=`) authenticates, and the seed never
//! appears in an error. Certificates are made with the `openssl` command.
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
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

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, in `dir`.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=tabgrab test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let mut req = vec!["req", "-subj"];
        let subject = format!("/CN={name}");
        req.push(&subject);
        req.extend(ec);
        let (key, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ],
        );
    }
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
    certificates(dir.path());
    let path = |f: &str| dir.path().join(f);
    let server = NatsServer::start(NatsOptions {
        tls: Some(ServerTls {
            cert: path("server.pem"),
            key: path("server.key"),
            verify_clients_with: Some(path("ca.pem")),
        }),
        ..NatsOptions::default()
    })
    .unwrap();
    let address = server.url().trim_start_matches("nats://").to_owned();
    let (ca, cert, key) = (
        path("ca.pem").display().to_string(),
        path("client.pem").display().to_string(),
        path("client.key").display().to_string(),
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
