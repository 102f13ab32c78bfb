//! Effectively-once effects in one process, on the embedded bus with the SQLite store:
//! every `OrderAccepted` and `OrderCancelled` is published a second time with the same id (as a
//! redelivery, a relay that published twice or a retried publish would), and payment and
//! inventory absorb every copy in their inboxes: one charge per charged order, at most one
//! refund and one release, every order through allowed transitions to a terminal state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use pizzeria::http::app;
use pizzeria::menu::RARE_INGREDIENT;
use pizzeria::messages::{OrderAccepted, OrderCancelled, TOPIC};
use pizzeria::services::{Pizzeria, Settings, Stock, Store};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::Publisher;
use tabgrab::{Codec, Envelope, Message};
use tower::ServiceExt as _;

/// Every envelope of the topic, in log order.
fn log_envelopes(bus: &EmbeddedBus) -> Vec<Envelope> {
    let log = bus.topic(TOPIC).unwrap();
    let codec = Codec::default();
    let mut out = Vec::new();
    let mut from = log.start_offset();
    loop {
        let records = log.read(from, 1024).unwrap();
        let Some(last) = records.last() else { break };
        from = last.offset + 1;
        out.extend(records.iter().map(|r| codec.decode(&r.payload).unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_order_events_are_absorbed_by_the_inboxes_and_charge_once() {
    let seed: u64 = std::env::var("PIZZERIA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let store = Store::sqlite(dir.path().join("effects.sqlite"))
        .await
        .unwrap();
    let stock = Stock::generous().with(RARE_INGREDIENT, 4);
    let settings = Settings {
        stock,
        ..Settings::default()
    };
    let pizzeria = Pizzeria::start_with(&bus, settings, store.clone()).unwrap();
    let front = app(pizzeria.front_desk.clone());

    // 80 orders: a tartufo now and then (4 truffles: some are short, cancelled, and their
    // payment refunded), a declined card now and then (cancelled, ingredients released).
    let orders = 80;
    for i in 0..orders {
        let pizzas = if rng.random_bool(0.15) {
            vec!["tartufo", "margherita"]
        } else {
            vec!["margherita"]
        };
        let card = if rng.random_bool(0.1) {
            "4000000000000000"
        } else {
            "4242424242424242"
        };
        let body = json!({"customer": format!("c{i}"), "pizzas": pizzas, "card": card});
        let request = Request::post("/orders")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = front.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    pizzeria.settle(Duration::from_secs(30)).await.unwrap();
    let before = store.audit().await.unwrap();
    assert!(before.is_valid(), "{before}");

    // Publish every OrderAccepted and OrderCancelled again, with the same ids.
    let copies: Vec<Envelope> = log_envelopes(&bus)
        .into_iter()
        .filter(|e| e.ty == OrderAccepted::TYPE || e.ty == OrderCancelled::TYPE)
        .collect();
    let cancelled = copies
        .iter()
        .filter(|e| e.ty == OrderCancelled::TYPE)
        .count();
    assert!(
        cancelled > 0,
        "the seed made no cancellation; every order went through"
    );
    let publisher = Publisher::new(&bus, TOPIC, "/test/duplicator").unwrap();
    for envelope in &copies {
        publisher.publish_envelope(envelope).await.unwrap();
    }
    pizzeria.settle(Duration::from_secs(30)).await.unwrap();

    let stats = store.stats().await.unwrap();
    let after = store.audit().await.unwrap();
    let facts = common::read_back(&Bus::from(&bus), Duration::from_millis(200)).await;
    let report = common::check_orders(&facts);
    println!(
        "orders {orders}, copies injected {}, absorbed: payment {}, inventory {}; ledger: {after}; orders: {report}",
        copies.len(),
        stats.payment.duplicates,
        stats.inventory.duplicates
    );
    // Payment and inventory each saw every copy and applied none of them.
    // Exactly one effect per (service, causing message id), and one for each the bus calls for.
    let effects = tabgrab_testkit::effects::check(
        common::expected_effects(&facts),
        store.effects().await.unwrap(),
    );
    println!("effects: {effects}");
    assert!(effects.is_valid(), "{effects}");
    assert_eq!(stats.payment.duplicates, copies.len() as u64);
    assert_eq!(stats.inventory.duplicates, copies.len() as u64);
    assert_eq!(
        after, before,
        "the copies changed the ledger or the reservations"
    );
    assert!(after.is_valid(), "{after}");
    let count = |fact: &str| common::orders_with(&facts, fact);
    assert_eq!(after.charged, count("collected"));
    assert_eq!(after.refunded, count("refunded"));
    assert_eq!(after.reserved, count("reserved"));
    assert_eq!(after.released, count("released"));
    assert!(after.refunded > 0 && after.released > 0, "{after}");
    assert!(report.is_valid(), "{report}");
    assert_eq!(report.entities, orders);
    assert_eq!(report.copies, copies.len(), "each copy read back as a copy");
    pizzeria.shutdown().await.unwrap();
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pizzeria_keeps_its_ledger_and_its_shelf() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let path = dir.path().join("effects.sqlite");
    let stock = Stock::generous().with(RARE_INGREDIENT, 3);
    let place = |front: axum::Router| async move {
        for i in 0..2 {
            let body = json!({"customer": format!("c{i}"), "pizzas": ["tartufo"], "card": "4242424242424242"});
            let request = Request::post("/orders")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let response = front.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
        }
    };
    for round in 0..2 {
        let store = Store::sqlite(&path).await.unwrap();
        let settings = Settings {
            stock: stock.clone(),
            ..Settings::default()
        };
        let pizzeria = Pizzeria::start_with(&bus, settings, store.clone()).unwrap();
        place(app(pizzeria.front_desk.clone())).await;
        pizzeria.settle(Duration::from_secs(30)).await.unwrap();
        let audit = store.audit().await.unwrap();
        let truffles = pizzeria.inventory.level(RARE_INGREDIENT).await.unwrap();
        println!("round {round}: {audit}, {truffles} truffles left");
        assert!(audit.is_valid(), "{audit}");
        if round == 0 {
            assert_eq!((audit.charged, audit.reserved, truffles), (2, 2, 1));
        } else {
            // The restart did not restock: one truffle for two tartufos, one is cancelled
            // and refunded; the first round's rows are still there.
            assert_eq!((audit.charged, audit.reserved, truffles), (4, 3, 0));
            assert_eq!(audit.refunded, 1);
        }
        pizzeria.shutdown().await.unwrap();
    }
    bus.close().await.unwrap();
}
