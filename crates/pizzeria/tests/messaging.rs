//! The messaging style end to end: the front desk answers 202 at once, `GET /orders/{id}`
//! follows the order from pending to delivered or failed with the reason, requests to a
//! service that is down time out and fail the order, and the `pizzeria` binary's messaging run
//! adds up, in one process and with a process per service on NATS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use pizzeria::backoffice::Backoffice;
use pizzeria::http::app;
use pizzeria::messaging::front_desk::FrontDesk;
use pizzeria::messaging::services::Services;
use pizzeria::services::{Stock, Store};
use serde_json::{Value, json};
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::messaging::{CorrelationStore, SqliteStore};
use tower::ServiceExt as _;

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn post(order: &Value) -> Request<Body> {
    Request::post("/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(order.to_string()))
        .unwrap()
}

fn get(id: &str) -> Request<Body> {
    Request::get(format!("/orders/{id}"))
        .body(Body::empty())
        .unwrap()
}

/// Polls the order until it is no longer pending.
async fn settled(app: &Router, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, view) = send(app, get(id)).await;
        assert_eq!(status, StatusCode::OK);
        if view["status"] != "pending" {
            return view;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "order {id} stayed pending"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_end_confirmed_or_failed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let store: Arc<dyn CorrelationStore> =
        Arc::new(SqliteStore::open(dir.path().join("corr.db")).await.unwrap());
    let office = Backoffice::new(
        Store::memory(),
        Stock::generous().with("truffle", 0),
        4,
        Duration::from_millis(1),
    );
    let services = Services::start(&bus, office).unwrap();
    let desk = FrontDesk::start(&bus, Arc::clone(&store), Duration::from_secs(30)).unwrap();
    let app = app(desk.clone());

    let (status, good) = send(
        &app,
        post(&json!({"customer": "ada", "pizzas": ["margherita"], "card": "4242424242424242"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{good}");
    let (_, declined) = send(
        &app,
        post(&json!({"customer": "bob", "pizzas": ["margherita"], "card": "4000000000000000"})),
    )
    .await;
    let (_, truffle) = send(
        &app,
        post(&json!({"customer": "cy", "pizzas": ["tartufo"], "card": "4242424242424242"})),
    )
    .await;

    let view = settled(&app, good["order_id"].as_str().unwrap()).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert_eq!(
        (
            view["paid"].clone(),
            view["reserved"].clone(),
            view["baked"].clone(),
            view["delivered"].clone()
        ),
        (json!(true), json!(true), json!(true), json!(true))
    );
    let view = settled(&app, declined["order_id"].as_str().unwrap()).await;
    assert_eq!(view["status"], "failed");
    assert_eq!(
        view["reason"],
        "payment declined: card ending in 0000 refused by the bank"
    );
    let view = settled(&app, truffle["order_id"].as_str().unwrap()).await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["reason"], "ingredients missing: truffle");

    // Compensations: the truffle order was charged, so it is refunded; the declined one had
    // its ingredients reserved, so they are released.
    let start = Instant::now();
    while services.stats().refunds + services.stats().releases < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            services.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        (services.stats().refunds, services.stats().releases),
        (1, 1)
    );
    let (status, _) = send(&app, get("00000000-0000-0000-0000-000000000000")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    desk.shutdown().await.unwrap();
    services.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_services_down_an_order_fails_by_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let store: Arc<dyn CorrelationStore> =
        Arc::new(SqliteStore::open(dir.path().join("corr.db")).await.unwrap());
    let desk = FrontDesk::start(&bus, Arc::clone(&store), Duration::from_millis(200)).unwrap();
    let app = app(desk.clone());
    let started = Instant::now();
    let (status, accepted) = send(
        &app,
        post(&json!({"customer": "ada", "pizzas": ["margherita"], "card": "4242424242424242"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "answered at once although nobody is up"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let id = accepted["order_id"].as_str().unwrap();
    let (_, view) = send(&app, get(id)).await;
    assert_eq!(view["status"], "pending");
    let view = settled(&app, id).await;
    assert_eq!(view["status"], "failed");
    assert!(
        view["reason"].as_str().unwrap().ends_with("timed out"),
        "{view}"
    );
    // The charge and the reservation timed out, and so do their compensations (a refund and
    // a release: the commands may still be handled once the services are back).
    let start = Instant::now();
    while desk.stats().timed_out < 4 {
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(desk.stats().records_written, 4);
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.pending, counts.timed_out), (0, 4));
    desk.shutdown().await.unwrap();
}

#[test]
fn pizzeria_run_in_the_messaging_style_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pizzeria"))
        .args([
            "run",
            "--style",
            "messaging",
            "--orders",
            "300",
            "--json",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    assert!(stderr.contains("correlation recs"), "{stderr}");
    let s: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(s["style"], "messaging");
    assert_eq!(s["accepted"], 300);
    let delivered = s["delivered"].as_u64().unwrap();
    let failed = s["failed"].as_u64().unwrap();
    assert_eq!(delivered + failed, 300);
    // One charge and one reservation per order, a ticket and a delivery per delivered order,
    // and one compensation per step that succeeded for a failed order.
    let records = s["correlation_records"].as_u64().unwrap();
    let refunds = s["refunds"].as_u64().unwrap();
    let releases = s["releases"].as_u64().unwrap();
    assert_eq!(records, 600 + 2 * delivered + refunds + releases, "{s}");
    assert!(refunds > 0 && releases > 0, "{s}");
    assert_eq!(s["timeouts"], 0);
    assert_eq!(s["dead_letters"], 0);
}

/// `--services spawn` on a broker: payment, inventory, the kitchen and delivery as
/// `pizzeria service <name> --style messaging` processes, each with its SQLite file.
#[test]
fn a_messaging_run_with_a_process_per_service_adds_up_on_nats() {
    if !tabgrab_testkit::services::require("NATS", "127.0.0.1:4222") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("spawned{}", uuid::Uuid::now_v7().simple());
    let output = Command::new(env!("CARGO_BIN_EXE_pizzeria"))
        .args([
            "run",
            "--style",
            "messaging",
            "--services",
            "spawn",
            "--orders",
            "200",
            "--json",
            "--data-dir",
        ])
        .arg(dir.path())
        .env(
            "PIZZERIA_BUS",
            format!("nats://127.0.0.1:4222?namespace={namespace}"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let s: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(s["accepted"], 200, "{s}");
    let delivered = s["delivered"].as_u64().unwrap();
    assert_eq!(delivered + s["failed"].as_u64().unwrap(), 200, "{s}");
    assert!(delivered > 100 && s["refunds"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["timeouts"], 0, "{s}");
    // Each service kept its state in a file of its own.
    for service in ["payment", "inventory", "delivery"] {
        assert!(
            dir.path().join(format!("{service}.sqlite")).exists(),
            "{service}: {stderr}"
        );
    }
}
