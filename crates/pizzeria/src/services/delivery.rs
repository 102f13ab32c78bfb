//! Delivery: hears the bell (`PizzaReady`) and brings the pizzas to the customer
//! (`OrderDelivered`).
//!
//! Its one effect is the event, staged in its [`Store`]'s outbox in the same transaction that
//! records the bell in delivery's inbox: a redelivered `PizzaReady` (a crash between the
//! commit and the acknowledgement) finds the inbox record and delivers nothing twice, and the
//! store's relay publishes `OrderDelivered` even if the process dies right after the commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tabgrab::backend::Bus;
use tabgrab::event::{Context, HandlerError, Subscription};

use super::Store;
use crate::messages::{OrderDelivered, PizzaReady, TOPIC, registry};

/// The consumer group of delivery.
pub const GROUP: &str = "delivery";
/// The CloudEvents source of delivery's events.
pub const SOURCE: &str = "/pizzeria/delivery";

/// The delivery service: a cheap-to-clone handle.
#[derive(Clone)]
pub struct Delivery {
    /// Its inbox, and the outbox of `OrderDelivered`.
    store: Store,
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
    /// A delivery service keeping its inbox in `store`; its events are published by the
    /// store's relay (see [`Store::relay`]).
    pub fn new(store: Store) -> Delivery {
        Delivery {
            store,
            delivered: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Orders delivered by this process.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Starts delivery's consumer group.
    pub fn subscribe(&self, bus: &Bus) -> Result<Subscription, tabgrab::Error> {
        Subscription::builder(bus, TOPIC, GROUP)
            .known(&registry())
            .handle_with(self.clone(), |delivery, e: PizzaReady, ctx| async move {
                delivery.deliver(e, &ctx).await
            })
            .start()
    }

    /// Delivers the order, once per bell.
    async fn deliver(&self, e: PizzaReady, ctx: &Context) -> Result<(), HandlerError> {
        let cause = ctx.envelope();
        let Some(mut unit) = self.store.begin_once(GROUP, cause).await? else {
            return Ok(()); // a redelivery: delivered already
        };
        let event = OrderDelivered {
            order_id: e.order_id,
        };
        unit.stage(SOURCE, &event, cause).await?;
        unit.commit().await?;
        self.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
