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
//! # The rail is durable
//! The kitchen acknowledges each of the two events as soon as it noted it: the rail must
//! outlive a crash, or the half-ticket of an acknowledged first event is lost and the order
//! is never baked. The rail is in the kitchen's [`Store`] (SQLite by default, PostgreSQL to
//! share it between several kitchen processes: then an order's two events may reach two
//! kitchens, and a crashed kitchen's unfinished order another one); see the store's `rail`
//! module. The bell (`PizzaReady`) is staged in the store's outbox in the same transaction
//! that marks the ticket baked, so it rings once per order; a kitchen that dies mid-bake bakes
//! again on the redelivery (at least once in the oven, once at the bell).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tabgrab::backend::Bus;
use tabgrab::event::{Context, HandlerError, Subscription};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::Store;
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
/// Ticket flag: the bell rang.
const BAKED: u8 = 8;

/// The kitchen: a cheap-to-clone handle.
#[derive(Clone)]
pub struct Kitchen {
    /// Shared state.
    inner: Arc<Inner>,
}

struct Inner {
    /// The rail, and the outbox of the bell.
    store: Store,
    /// One permit per oven.
    ovens: Arc<Semaphore>,
    /// How many ovens, for the group's concurrency.
    oven_count: usize,
    /// How long an order bakes.
    bake_time: Duration,
    /// Bells rung by this process.
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
    /// A kitchen with `ovens` ovens (at least one) that bakes each order for `bake_time`,
    /// keeping its rail in `store`; its bells are published by the store's relay (see
    /// [`Store::relay`]). Kitchens that share a PostgreSQL store share the rail.
    pub fn new(store: Store, ovens: usize, bake_time: Duration) -> Kitchen {
        let ovens = ovens.max(1);
        Kitchen {
            inner: Arc::new(Inner {
                store,
                ovens: Arc::new(Semaphore::new(ovens)),
                oven_count: ovens,
                bake_time,
                baked: AtomicU64::new(0),
            }),
        }
    }

    /// Adds `flag` to the order's ticket, durably; returns whether the order should be baked
    /// now (paid, reserved, neither cancelled nor baked).
    async fn note(&self, order_id: Uuid, flag: u8) -> Result<bool, HandlerError> {
        let mut unit = self.inner.store.begin().await?;
        let flags = unit.note_ticket(&order_id.to_string(), flag).await?;
        unit.commit().await?;
        Ok(flags == PAID | RESERVED)
    }

    /// Orders in the ovens right now.
    pub fn in_oven(&self) -> usize {
        self.inner.oven_count - self.inner.ovens.available_permits()
    }

    /// Orders baked by this process.
    pub fn baked(&self) -> u64 {
        self.inner.baked.load(Ordering::Relaxed)
    }

    /// Starts the kitchen's consumer group.
    pub fn subscribe(&self, bus: &Bus) -> Result<Subscription, tabgrab::Error> {
        Subscription::builder(bus, TOPIC, GROUP)
            .known(&registry())
            .concurrency(self.inner.oven_count + 64)
            .handle_with(
                self.clone(),
                |kitchen, e: PaymentCollected, ctx| async move {
                    kitchen.saw(e.order_id, PAID, &ctx).await
                },
            )
            .handle_with(
                self.clone(),
                |kitchen, e: IngredientsReserved, ctx| async move {
                    kitchen.saw(e.order_id, RESERVED, &ctx).await
                },
            )
            .handle_with(self.clone(), |kitchen, e: OrderCancelled, ctx| async move {
                kitchen.saw(e.order_id, CANCELLED, &ctx).await
            })
            .start()
    }

    /// Notes what was seen; bakes if the order is now paid, reserved and not cancelled, then
    /// rings the bell (once per order: see the module docs).
    async fn saw(&self, order_id: Uuid, flag: u8, ctx: &Context) -> Result<(), HandlerError> {
        let ready_to_bake = self.note(order_id, flag).await?;
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
        let mut unit = self.inner.store.begin().await?;
        if !unit
            .ring(&order_id.to_string(), BAKED, BAKED | CANCELLED)
            .await?
        {
            // Rung already (a redelivery, another kitchen), or cancelled meanwhile.
            unit.rollback().await?;
            return Ok(());
        }
        unit.stage(SOURCE, &PizzaReady { order_id }, ctx.envelope())
            .await?;
        unit.commit().await?;
        self.inner.baked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
