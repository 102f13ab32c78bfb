//! What survives a crash, piece by piece (the chaos test checks the whole): the kitchen's
//! rail, the front desk's view of an order, the summary of a run on a directory a killed run
//! left behind, `pizzeria orders` on such a directory, and `pizzeria dead-letters --bus` on a
//! broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use common::processes::pizzeria;
use pizzeria::messages::{IngredientsReserved, PaymentCollected, TOPIC};
use pizzeria::services::kitchen::Kitchen;
use pizzeria::services::{Pizzeria, Settings, Store};
use serde_json::{Value, json};
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Publisher, StartFrom};
use tower::ServiceExt as _;
use uuid::Uuid;

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The kitchen of the killed run saw the payment, its group committed past it, and it died;
/// the next kitchen sees only the reservation. It must bake: the payment is on the rail in
/// the store, not in the dead process's memory (kill -9 of the embedded run lost orders so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kitchen_bakes_an_order_half_noted_by_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let store_url = format!("sqlite:{}/kitchen.sqlite", dir.path().display());
    let order_id = Uuid::now_v7();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();

    {
        let store = Store::open(&store_url).await.unwrap();
        let kitchen = Kitchen::new(store, 2, Duration::from_millis(1));
        let subscription = kitchen.subscribe(&Bus::from(&bus)).unwrap();
        subscription.ready().await.unwrap();
        let paid = PaymentCollected {
            order_id,
            amount_cents: 900,
        };
        publisher
            .publish(&paid, order_id.to_string())
            .await
            .unwrap();
        until("the first kitchen settled the payment", async || {
            subscription.lag() == 0 && subscription.stats().acked >= 1
        })
        .await;
        subscription.shutdown().await.unwrap();
        assert_eq!(kitchen.baked(), 0, "baked without the reservation");
    }
    assert_eq!(
        Bus::from(&bus).lag(TOPIC, "kitchen").await.unwrap(),
        Some(0),
        "the group's offset is past the payment"
    );

    let store = Store::open(&store_url).await.unwrap();
    let relay = store.relay(&Bus::from(&bus));
    let kitchen = Kitchen::new(store, 2, Duration::from_millis(1));
    let subscription = kitchen.subscribe(&Bus::from(&bus)).unwrap();
    subscription.ready().await.unwrap();
    let reserved = IngredientsReserved { order_id };
    publisher
        .publish(&reserved, order_id.to_string())
        .await
        .unwrap();
    let recorder = common::Recorder::start(&Bus::from(&bus), "audit", StartFrom::Beginning).await;
    until("the bell for the order", async || {
        recorder
            .facts()
            .iter()
            .any(|(o, _, f)| *o == order_id.to_string() && *f == "ready")
    })
    .await;
    assert_eq!(kitchen.baked(), 1);
    recorder.stop().await;
    subscription.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
    bus.close().await.unwrap();
}

/// `GET /orders/{id}` answers from the store: a front desk started after the one that took
/// the order (and after every service stopped) still tells what became of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_visible_after_the_restaurant_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite:{}/effects.sqlite", dir.path().display());
    let get = async |app: axum::Router, id: &str| -> (StatusCode, Value) {
        let request = Request::get(format!("/orders/{id}"))
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    };

    let id = {
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        let store = Store::open(&store_url).await.unwrap();
        let pizzeria = Pizzeria::start_with(&bus, Settings::default(), store).unwrap();
        let app = pizzeria::http::app(pizzeria.front_desk.clone());
        let order = json!({
            "customer": "Ada",
            "pizzas": ["margherita"],
            "card": "4242424242424242",
        });
        let request = Request::post("/orders")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(order.to_string()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let accepted: Value = serde_json::from_slice(&bytes).unwrap();
        let id = accepted["order_id"].as_str().unwrap().to_owned();
        until("the order is delivered", async || {
            get(app.clone(), &id).await.1["status"] == "delivered"
        })
        .await;
        pizzeria.settle(Duration::from_secs(30)).await.unwrap();
        pizzeria.shutdown().await.unwrap();
        bus.close().await.unwrap();
        id
    };

    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let store = Store::open(&store_url).await.unwrap();
    let pizzeria = Pizzeria::start_with(&bus, Settings::default(), store).unwrap();
    let (status, body) = get(pizzeria::http::app(pizzeria.front_desk.clone()), &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "delivered", "{body}");
    assert_eq!(body["payment"], "collected", "{body}");
    let unknown = Uuid::now_v7().to_string();
    let (status, _) = get(pizzeria::http::app(pizzeria.front_desk.clone()), &unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    pizzeria.shutdown().await.unwrap();
    bus.close().await.unwrap();
}

/// A run killed mid-flow leaves orders that have not ended: `pizzeria orders --check` says so
/// (non-zero exit, the open orders listed). The next run on the directory ends them, counts
/// only its own orders in its summary, and `orders --check` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_killed_run_orders_tells_what_ended_and_the_next_summary_is_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let mut killed = pizzeria()
        .args([
            "run",
            "--orders",
            "100000",
            "--json",
            "--data-dir",
            data_dir,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once orders flow: the front desk's view has some.
    let store_url = format!("sqlite:{data_dir}/effects.sqlite");
    until(
        "orders in the killed run's view",
        async || match Store::open(&store_url).await {
            Ok(store) => pizzeria::orders::views(&store)
                .await
                .is_ok_and(|v| v.len() >= 200),
            Err(_) => false,
        },
    )
    .await;
    killed.kill().unwrap();
    killed.wait().unwrap();

    let orders = |check: bool| {
        let mut command = pizzeria();
        command.args(["orders", "--data-dir", data_dir, "--json"]);
        if check {
            command.arg("--check");
        }
        command.output().unwrap()
    };
    let listed = orders(false);
    assert!(listed.status.success());
    let report: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let before = report["orders"].as_u64().unwrap();
    assert!(before >= 200, "{before} orders listed");
    let open = report["open"].as_array().unwrap().len();
    let ended: u64 = ["delivered", "cancelled"]
        .iter()
        .map(|f| report["by_fate"][f].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        ended + open as u64,
        before,
        "every order is ended or listed as open: {report}"
    );
    let behind = report["view_behind_events"].as_u64().unwrap();
    let checked = orders(true);
    assert_eq!(
        checked.status.success(),
        open == 0 && behind == 0,
        "--check must fail exactly when an order is open ({open}) or the view is behind the \
         log ({behind} events): {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let output = pizzeria()
        .args(["run", "--orders", "100", "--json", "--data-dir", data_dir])
        .args(["--decline-rate", "0.1"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["accepted"], 100, "{summary}");
    let failed = summary["failed"].as_u64().unwrap();
    assert_eq!(summary["delivered"].as_u64().unwrap() + failed, 100);
    // Only this run's compensations: at most one refund and one release per failed order.
    assert!(summary["refunds"].as_u64().unwrap() <= failed, "{summary}");
    assert!(summary["releases"].as_u64().unwrap() <= failed, "{summary}");
    let published = summary["events_published"].as_u64().unwrap();
    assert!((300..=800).contains(&published), "{summary}");

    let checked = orders(true);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let report: Value = serde_json::from_slice(&orders(false).stdout).unwrap();
    assert!(
        report["orders"].as_u64().unwrap() >= before + 100,
        "{report}"
    );
    assert_eq!(report["view_behind_events"], 0, "{report}");
    assert_eq!(report["open"].as_array().unwrap().len(), 0, "{report}");
}

/// `pizzeria dead-letters --bus` reads a broker's dead letters (in a namespace of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_from_a_broker() {
    if !tabgrab_testkit::services::require("NATS", "127.0.0.1:4222") {
        return;
    }
    let namespace = format!("dl-{}", Uuid::now_v7().simple());
    let url = format!("nats://127.0.0.1:4222?namespace={namespace}");
    let connection = pizzeria::namespace::connect(&url).await.unwrap();
    let bus = connection.bus().clone();
    let recorder = common::Recorder::start(&bus, "reader", StartFrom::Committed).await;
    bus.publish_raw(TOPIC, Some("x"), Bytes::from_static(b"not a cloud event"))
        .await
        .unwrap();
    until("the dead letter", async || {
        bus.dead_letters(TOPIC)
            .await
            .is_ok_and(|letters| letters.len() == 1)
    })
    .await;
    recorder.stop().await;
    let output = pizzeria()
        .args(["dead-letters", "--bus", &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("reader"), "the group is named: {stdout}");
    assert!(
        stdout.contains("missing_attribute") || stdout.contains("malformed"),
        "the reason is given: {stdout}"
    );
    connection.clean_up().await.unwrap();
}
