//! Clients tabgrab did not write (Python's nats-py and the CloudEvents SDK `cloudevents`,
//! installed by `.ci/run`) publish an `OrderAccepted` CloudEvent to the pizzeria's JetStream
//! subject; the pizzeria, running on NATS, takes it through payment, inventory, kitchen and
//! delivery; and the Python client reads the `OrderDelivered` the pizzeria published. Both
//! CloudEvents content modes, each way: the peer publishes in one, the pizzeria's bus sends
//! in the other (`?wire=`). And on a secured server (TLS, operator mode): the pizzeria and
//! the Python peer each connect over TLS with a `.creds` file of their own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use pizzeria::services::{Pizzeria, Settings};
use serde_json::Value;
use tabgrab::backend::Bus;
use tabgrab_testkit::nats_server::{self, NatsOptions, NatsServer, ServerTls};

/// The Python with nats-py and cloudevents (`None`: skipped, or a failure under
/// `TABGRAB_REQUIRE_SERVICES=1`).
fn python() -> Option<PathBuf> {
    tabgrab_testkit::python::with(
        "nats, nkeys, cloudevents",
        "nats-py==2.16.0, nkeys==0.2.1 and cloudevents==1.11.0",
    )
}

/// The pizzeria on a bus that sends in `bus_mode`; the Python peer publishes its order in
/// `peer_mode` and reads the delivery in whichever mode it comes. `secured`: the server
/// wants TLS and a user of its operator's account, and each side has a creds file.
async fn an_order_from_python(bus_mode: &str, peer_mode: &str, secured: bool) {
    let Some(python) = python() else { return };
    if nats_server::require().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let decentralized = tabgrab_testkit::nats_jwt::Decentralized::new();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let server = NatsServer::start(if secured {
        NatsOptions {
            operator: Some(decentralized.operator_mode()),
            tls: Some(ServerTls::of(&certs)),
            ..NatsOptions::default()
        }
    } else {
        NatsOptions::default()
    })
    .unwrap();
    let creds = |name: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, decentralized.user_creds().0).unwrap();
        file.display().to_string()
    };
    let (bus_url, peer_args) = if secured {
        let address = server.url().trim_start_matches("nats://").to_owned();
        let ca = certs.ca.display().to_string();
        (
            format!(
                "tls://{address}?wire={bus_mode}&tls_ca={ca}&creds={}",
                creds("pizzeria.creds")
            ),
            vec![format!("tls://{address}"), creds("peer.creds"), ca],
        )
    } else {
        (
            format!("{}?wire={bus_mode}", server.url()),
            vec![server.url()],
        )
    };
    let bus = Bus::connect(&bus_url).await.unwrap();
    let pizzeria = Pizzeria::start(&bus, Settings::default()).unwrap();
    pizzeria.ready().await.unwrap();
    let order_id = uuid::Uuid::now_v7().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/nats_peer.py");
    // The script bounds its own wait (60 s); this bounds the test.
    let mut command = std::process::Command::new(&python);
    command
        .args([script, &peer_args[0], &order_id, peer_mode])
        .args(&peer_args[1..]);
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("the Python peer did not finish in 90 s")
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let published = lines[0]["published"].as_str().unwrap();
    let delivered = &lines[1];
    let attributes = &delivered["attributes"];
    assert_eq!(attributes["type"], "pizzeria.order.delivered.v1");
    assert_eq!(attributes["specversion"], "1.0");
    assert_eq!(attributes["subject"], order_id.as_str());
    assert_eq!(attributes["source"], "/pizzeria/delivery");
    // The Python event started the conversation: every effect carries its id.
    assert_eq!(attributes["correlationid"], published);
    assert_eq!(delivered["data"]["order_id"], order_id.as_str());
    // The pizzeria's event came in the bus's mode.
    let structured = delivered["content_type"] == "application/cloudevents+json";
    assert_eq!(structured, bus_mode == "structured", "{delivered}");
    assert_eq!(pizzeria.kitchen.baked(), 1);
    pizzeria.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_order_from_python_is_delivered_in_structured_mode() {
    an_order_from_python("structured", "binary", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_order_from_python_is_delivered_in_binary_mode() {
    an_order_from_python("binary", "structured", false).await;
}

/// nats-py with a creds file, over TLS, talks to the pizzeria on a NATS server in operator
/// mode (each side a user of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_with_a_creds_file_orders_from_the_pizzeria_over_tls() {
    an_order_from_python("structured", "structured", true).await;
}
