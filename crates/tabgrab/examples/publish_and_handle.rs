//! README.md's first example: publish an event and handle it, on the embedded bus.
//!
//! Run: `cargo run -p tabgrab --example publish_and_handle`

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Publisher, Subscription};
use tokio::sync::mpsc;

/// A fact nobody answers: an order was accepted.
#[derive(Serialize, Deserialize, Message)]
#[message(type = "readme.order.accepted.v1", event)]
struct OrderAccepted {
    order_id: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let bus = EmbeddedBus::open(dir.path())?; // a durable log on disk, no server
    let (baked, mut bakes) = mpsc::unbounded_channel();
    let kitchen = Subscription::builder(&bus, "orders", "kitchen")
        .handle_with(baked, |baked, order: OrderAccepted, _ctx| async move {
            baked.send(order.order_id)?;
            Ok(())
        })
        .start()?;
    let front_desk = Publisher::new(&bus, "orders", "/readme/front-desk")?;
    let order = OrderAccepted {
        order_id: "o-1".into(),
    };
    front_desk.publish(&order, "o-1").await?; // returns once it is durable
    println!(
        "the kitchen bakes {}",
        bakes.recv().await.ok_or("no order")?
    );
    kitchen.shutdown().await?;
    bus.close().await?;
    Ok(())
}
