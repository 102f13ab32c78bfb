//! The event-driven restaurant on RabbitMQ, all services in this process: 100 orders placed
//! as `OrderAccepted` events are paid, reserved, baked and delivered, in a namespace of its
//! own on the shared broker (a concurrent run cannot take its orders); the exchanges and
//! queues it made are deleted afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use pizzeria::messages::{OrderAccepted, TOPIC};
use pizzeria::services::{Pizzeria, Settings};
use tabgrab::event::Publisher;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_orders_are_delivered_on_rabbitmq() {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    let namespace = format!("amqp-run-{}", uuid::Uuid::now_v7().simple());
    let connection = pizzeria::namespace::connect(&format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?namespace={namespace}"
    ))
    .await
    .unwrap();
    let bus = connection.bus().clone();
    let pizzeria = Pizzeria::start(&bus, Settings::default()).unwrap();
    pizzeria.ready().await.unwrap();
    let before = pizzeria.kitchen.baked();
    let publisher = Publisher::new(&bus, TOPIC, "/test/customers").unwrap();
    for i in 0..100 {
        let order_id = uuid::Uuid::now_v7();
        let order = OrderAccepted {
            order_id,
            customer: format!("customer {i}"),
            pizzas: vec!["margherita".into()],
            amount_cents: 900,
            card: "**** 4242".into(),
        };
        publisher
            .publish(&order, order_id.to_string())
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while pizzeria.kitchen.baked() < before + 100 {
        assert!(
            Instant::now() < deadline,
            "baked {}",
            pizzeria.kitchen.baked() - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pizzeria.settle(Duration::from_secs(30)).await.unwrap();
    let dead: u64 = pizzeria.stats().iter().map(|(_, s)| s.dead_lettered).sum();
    assert_eq!(dead, 0);
    pizzeria.shutdown().await.unwrap();
    let deleted = connection.clean_up().await.unwrap();
    assert!(deleted >= 1, "the run's topics were cleaned up: {deleted}");
}
