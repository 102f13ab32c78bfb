//! A group on RabbitMQ whose consumer the broker ended (here: its queue was deleted) joins
//! again on a new channel, where delivery tags count from 1 again, while a delivery of the old
//! channel is still being handled.
//! - The group joins again: it declares its queue again instead of trusting that it exists.
//! - The new delivery runs: by delivery tag alone it took the held one's place, was never
//!   handled, and was acknowledged when the old one's handler finished.
#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::event::{Context, Publisher, Subscription};
use tabgrab::{ErrorKind, Message};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Message)]
#[message(type = "test.ticket.v1", event)]
struct Ticket {
    order: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_joins_again_after_its_queue_was_deleted_and_runs_new_deliveries() {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    let bus = Bus::connect(URL).await.unwrap();
    let topic = format!("rejoin-{}", uuid::Uuid::now_v7().simple());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let release = Arc::new(tokio::sync::Notify::new());
    let sub = {
        let (seen, release) = (Arc::clone(&seen), Arc::clone(&release));
        Subscription::builder(&bus, &topic, "kitchen")
            .handle(move |t: Ticket, _ctx: Context| {
                let (seen, release) = (Arc::clone(&seen), Arc::clone(&release));
                async move {
                    seen.lock().unwrap().push(t.order.clone());
                    if t.order == "slow" {
                        release.notified().await;
                    }
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    sub.ready().await.unwrap();
    let publisher = Publisher::new(&bus, &topic, "/test").unwrap();
    let ticket = |order: &str| Ticket {
        order: order.into(),
    };
    // Delivery tag 1 of the first channel, held while its handler waits.
    publisher.publish(&ticket("slow"), "slow").await.unwrap();
    wait_for(&seen, "slow").await;

    // The broker ends the group's consumer: its queue is deleted under it.
    let raw = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = raw.create_channel().await.unwrap();
    channel
        .queue_delete(
            tabgrab::backend::amqp::queue_name(&topic, "kitchen")
                .as_str()
                .into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();

    // The group joins again (after a second), declaring its queue; until then a publish has
    // no queue to go to and is refused.
    let start = Instant::now();
    loop {
        match publisher.publish(&ticket("fast"), "fast").await {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Unavailable && start.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the group did not join again: {e}"),
        }
    }
    // Delivery tag 1 of the new channel, while tag 1 of the old one is still held.
    wait_for(&seen, "fast").await;
    release.notify_one();
    sub.shutdown().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}

async fn wait_for(seen: &Mutex<Vec<String>>, order: &str) {
    let start = Instant::now();
    while !seen.lock().unwrap().iter().any(|o| o == order) {
        assert!(
            start.elapsed() < DEADLINE,
            "{order} was never handled; handled: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
