//! Delivery: hears the bell (`PizzaReady`) and brings the pizzas to the customer
//! (`OrderDelivered`).
//!
//! Delivery keeps no state: a redelivered `PizzaReady` would publish a second
//! `OrderDelivered`, which every reader treats as the fact it already knows (the front desk
//! records each fact once). Delivery is at least once on purpose: its effect is the event
//! itself, so an inbox would only save a repeated `OrderDelivered`, which is harmless.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tabgrab::backend::Bus;
use tabgrab::event::{Context, Publisher, Subscription};

use crate::messages::{OrderDelivered, PizzaReady, TOPIC, registry};

/// The consumer group of delivery.
pub const GROUP: &str = "delivery";
/// The CloudEvents source of delivery's events.
pub const SOURCE: &str = "/pizzeria/delivery";

/// The delivery service: a cheap-to-clone handle.
#[derive(Clone)]
pub struct Delivery {
    /// Publishes `OrderDelivered`.
    publisher: Publisher,
    /// Orders delivered by this process, for the run summary.
    delivered: Arc<AtomicU64>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("delivered", &self.delivered())
            .finish()
    }
}

impl Delivery {
    /// A delivery service publishing to the pizzeria topic of `bus`.
    pub fn new(bus: &Bus) -> Result<Delivery, tabgrab::Error> {
        Ok(Delivery {
            publisher: Publisher::new(bus, TOPIC, SOURCE)?,
            delivered: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Orders delivered by this process.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Starts delivery's consumer group.
    pub fn subscribe(&self, bus: &Bus) -> Result<Subscription, tabgrab::Error> {
        let delivery = self.clone();
        Subscription::builder(bus, TOPIC, GROUP)
            .known(&registry())
            .handle(move |e: PizzaReady, ctx: Context| {
                let delivery = delivery.clone();
                async move {
                    let event = OrderDelivered {
                        order_id: e.order_id,
                    };
                    delivery
                        .publisher
                        .publish_caused(&event, ctx.envelope())
                        .await?;
                    delivery.delivered.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .start()
    }
}
