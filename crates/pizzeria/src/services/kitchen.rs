//! The kitchen (the chef): bakes an order once it is both paid and its ingredients are
//! reserved, in one of a limited number of ovens, and rings the bell (`PizzaReady`).
//!
//! The kitchen reacts to `PaymentCollected` and `IngredientsReserved`, which arrive in either
//! order, and keeps a ticket per order with what it has seen. When the second one arrives,
//! and the order was not cancelled (`OrderCancelled`), it waits for a free oven (a
//! [`Semaphore`] with one permit per oven), bakes for the bake time, and publishes
//! `PizzaReady`.
//!
//! # Why the bake runs inside the handler
//! The event is acknowledged only when the handler returns, that is after the bell rang. If
//! the process dies mid-bake, the event is delivered again and the order is baked again:
//! the ticket stays on the rail until the pizza is out. Handing the bake to a detached task
//! would acknowledge an order that may never be baked. The group's concurrency is raised
//! above the number of ovens so that orders waiting for an oven do not hold up the events
//! of other orders.
//!
//! A ticket is dropped once its bell rang; cancelled tickets stay (a few bytes each) so that
//! a late `PaymentCollected` cannot put a cancelled order back on the rail. State is kept in
//! memory for now; a durable store comes later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Context, HandlerError, Publisher, Subscription};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::lock;
use crate::messages::{
    IngredientsReserved, OrderCancelled, PaymentCollected, PizzaReady, TOPIC, registry,
};

/// The consumer group of the kitchen.
pub const GROUP: &str = "kitchen";
/// The CloudEvents source of the kitchen's events.
pub const SOURCE: &str = "/pizzeria/kitchen";

/// Ticket flag: the order is paid.
const PAID: u8 = 1;
/// Ticket flag: the order's ingredients are reserved.
const RESERVED: u8 = 2;
/// Ticket flag: the order was cancelled; never bake it.
const CANCELLED: u8 = 4;

/// The kitchen: a cheap-to-clone handle.
#[derive(Clone)]
pub struct Kitchen {
    /// Shared state.
    inner: Arc<Inner>,
}

struct Inner {
    /// Publishes the bell.
    publisher: Publisher,
    /// One permit per oven.
    ovens: Arc<Semaphore>,
    /// How many ovens, for the group's concurrency.
    oven_count: usize,
    /// How long an order bakes.
    bake_time: Duration,
    /// What the kitchen has seen per order not yet baked.
    tickets: Mutex<HashMap<Uuid, u8>>,
    /// Orders baked by this process.
    baked: AtomicU64,
}

impl std::fmt::Debug for Kitchen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kitchen")
            .field("ovens", &self.inner.oven_count)
            .field("bake_time", &self.inner.bake_time)
            .field("baked", &self.baked())
            .finish()
    }
}

impl Kitchen {
    /// A kitchen with `ovens` ovens (at least one) that bakes each order for `bake_time`.
    pub fn new(
        bus: &EmbeddedBus,
        ovens: usize,
        bake_time: Duration,
    ) -> Result<Kitchen, tabgrab::Error> {
        let ovens = ovens.max(1);
        Ok(Kitchen {
            inner: Arc::new(Inner {
                publisher: Publisher::new(bus, TOPIC, SOURCE)?,
                ovens: Arc::new(Semaphore::new(ovens)),
                oven_count: ovens,
                bake_time,
                tickets: Mutex::new(HashMap::new()),
                baked: AtomicU64::new(0),
            }),
        })
    }

    /// Orders baked by this process.
    pub fn baked(&self) -> u64 {
        self.inner.baked.load(Ordering::Relaxed)
    }

    /// Starts the kitchen's consumer group.
    pub fn subscribe(&self, bus: &EmbeddedBus) -> Result<Subscription, tabgrab::Error> {
        let (a, b, c) = (self.clone(), self.clone(), self.clone());
        Subscription::builder(bus, TOPIC, GROUP)
            .known(&registry())
            .concurrency(self.inner.oven_count + 64)
            .handle(move |e: PaymentCollected, ctx: Context| {
                let kitchen = a.clone();
                async move { kitchen.saw(e.order_id, PAID, &ctx).await }
            })
            .handle(move |e: IngredientsReserved, ctx: Context| {
                let kitchen = b.clone();
                async move { kitchen.saw(e.order_id, RESERVED, &ctx).await }
            })
            .handle(move |e: OrderCancelled, ctx: Context| {
                let kitchen = c.clone();
                async move { kitchen.saw(e.order_id, CANCELLED, &ctx).await }
            })
            .start()
    }

    /// Notes what was seen; bakes if the order is now paid, reserved and not cancelled.
    async fn saw(&self, order_id: Uuid, flag: u8, ctx: &Context) -> Result<(), HandlerError> {
        let ready_to_bake = {
            let mut tickets = lock(&self.inner.tickets);
            let ticket = tickets.entry(order_id).or_default();
            *ticket |= flag;
            *ticket == PAID | RESERVED
        };
        if !ready_to_bake {
            return Ok(());
        }
        {
            // Waiting for an oven gives way to shutdown: the event is then redelivered.
            let _oven = tokio::select! {
                oven = self.inner.ovens.acquire() => oven?,
                () = ctx.shutdown_requested() => {
                    return Err(HandlerError::transient("the kitchen is closing"));
                }
            };
            tokio::time::sleep(self.inner.bake_time).await;
        }
        self.inner
            .publisher
            .publish_caused(&PizzaReady { order_id }, ctx.envelope())
            .await?;
        lock(&self.inner.tickets).remove(&order_id);
        self.inner.baked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
