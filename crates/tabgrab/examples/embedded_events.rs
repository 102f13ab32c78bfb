//! Events on the embedded backend: publish durably, react in two consumer groups, and see a
//! poison event land in dead letters while the rest flows.
//!
//! Run: `cargo run -p tabgrab --example embedded_events`

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Context, HandlerError, Publisher, Subscription, read_dead_letters};
use tabgrab::retry::Backoff;

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(type = "example.order.accepted.v1", event)]
struct OrderAccepted {
    order_id: String,
    pizza: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let bus = EmbeddedBus::open(dir.path())?;
    let publisher = Publisher::new(&bus, "orders", "/example/front-desk")?;

    let kitchen = Subscription::builder(&bus, "orders", "kitchen")
        .max_deliveries(3)
        .backoff(Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        })
        .handle(|order: OrderAccepted, ctx: Context| async move {
            if order.pizza == "pineapple" {
                return Err(HandlerError::transient(format!(
                    "the chef refuses (attempt {})",
                    ctx.attempt()
                )));
            }
            println!("kitchen: baking {} for {}", order.pizza, order.order_id);
            Ok(())
        })
        .start()?;
    let audit = Subscription::builder(&bus, "orders", "audit")
        .handle(|order: OrderAccepted, ctx: Context| async move {
            println!("audit:   {} at offset {}", order.order_id, ctx.offset());
            Ok(())
        })
        .start()?;

    for (i, pizza) in ["margherita", "pineapple", "diavola"].iter().enumerate() {
        let order_id = format!("order-{i}");
        let receipt = publisher
            .publish(
                &OrderAccepted {
                    order_id: order_id.clone(),
                    pizza: (*pizza).into(),
                },
                order_id,
            )
            .await?;
        println!(
            "published {} durably at offset {}",
            receipt.id, receipt.offset
        );
    }

    // Wait (bounded) until the poison event has been dead-lettered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while read_dead_letters(&bus, "orders")?.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kitchen.shutdown().await?;
    audit.shutdown().await?;
    for letter in read_dead_letters(&bus, "orders")? {
        println!(
            "dead letter: offset {} reason {} after {} attempts: {}",
            letter.offset, letter.reason, letter.attempts, letter.error
        );
    }
    bus.close().await?;
    Ok(())
}
