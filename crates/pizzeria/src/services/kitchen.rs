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
//! a late `PaymentCollected` cannot put a cancelled order back on the rail.
//!
//! # Several kitchens
//! The rail is in memory by default: one kitchen process. Several kitchen processes share the
//! work as one consumer group (`pizzeria service kitchen --bus nats://..`), and then an
//! order's two events may reach two different kitchens, and a crashed kitchen's unfinished
//! order reaches another one: the rail must be shared. [`Kitchen::shared`] keeps it in
//! PostgreSQL (`pizzeria_kitchen_tickets`), where one atomic upsert adds what a kitchen saw
//! and returns everything seen so far; the kitchen that completes the ticket bakes, and a
//! ticket is marked baked after its bell rang (a crash before that bakes it again elsewhere:
//! at least once, never lost).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tabgrab::backend::Bus;
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
/// Ticket flag (shared rail only): the bell rang.
const BAKED: u8 = 8;

/// Where the kitchen keeps its tickets.
enum Rail {
    /// In this process: one kitchen.
    Memory(Mutex<HashMap<Uuid, u8>>),
    /// In PostgreSQL: several kitchens share it.
    Shared(sqlx::PgPool),
}

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
    tickets: Rail,
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
    pub fn new(bus: &Bus, ovens: usize, bake_time: Duration) -> Result<Kitchen, tabgrab::Error> {
        Kitchen::with_rail(
            bus,
            ovens,
            bake_time,
            Rail::Memory(Mutex::new(HashMap::new())),
        )
    }

    /// A kitchen whose rail is shared with other kitchen processes through PostgreSQL at
    /// `database_url` (the table is created if needed).
    pub async fn shared(
        bus: &Bus,
        ovens: usize,
        bake_time: Duration,
        database_url: &str,
    ) -> Result<Kitchen, tabgrab::Error> {
        let shown = tabgrab::SecretUrl::new(database_url);
        let db = |e: sqlx::Error| {
            tabgrab::Error::new(
                tabgrab::ErrorKind::Storage,
                format!("kitchen: the shared rail in PostgreSQL ({shown}) failed"),
            )
            .with_source(e)
        };
        let pool = tabgrab::sql::connect_postgres(
            database_url,
            8,
            Duration::from_secs(30),
            Duration::from_secs(10),
        )
        .await
        .map_err(db)?;
        let create = "CREATE TABLE IF NOT EXISTS pizzeria_kitchen_tickets \
                      (order_id UUID PRIMARY KEY, flags SMALLINT NOT NULL)";
        // Two kitchens starting together race on CREATE TABLE IF NOT EXISTS (PostgreSQL
        // reports a unique violation for the loser); the second try sees the table.
        if sqlx::query(create).execute(&pool).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sqlx::query(create).execute(&pool).await.map_err(db)?;
        }
        Kitchen::with_rail(bus, ovens, bake_time, Rail::Shared(pool))
    }

    fn with_rail(
        bus: &Bus,
        ovens: usize,
        bake_time: Duration,
        tickets: Rail,
    ) -> Result<Kitchen, tabgrab::Error> {
        let ovens = ovens.max(1);
        Ok(Kitchen {
            inner: Arc::new(Inner {
                publisher: Publisher::new(bus, TOPIC, SOURCE)?,
                ovens: Arc::new(Semaphore::new(ovens)),
                oven_count: ovens,
                bake_time,
                tickets,
                baked: AtomicU64::new(0),
            }),
        })
    }

    /// Adds `flag` to the order's ticket; returns whether the order should be baked now.
    async fn note(&self, order_id: Uuid, flag: u8) -> Result<bool, HandlerError> {
        match &self.inner.tickets {
            Rail::Memory(tickets) => {
                let mut tickets = lock(tickets);
                let ticket = tickets.entry(order_id).or_default();
                *ticket |= flag;
                Ok(*ticket == PAID | RESERVED)
            }
            Rail::Shared(pool) => {
                let flags: i16 = sqlx::query_scalar(
                    "INSERT INTO pizzeria_kitchen_tickets (order_id, flags) VALUES ($1, $2) \
                     ON CONFLICT (order_id) DO UPDATE \
                     SET flags = pizzeria_kitchen_tickets.flags | EXCLUDED.flags RETURNING flags",
                )
                .bind(order_id)
                .bind(i16::from(flag))
                .fetch_one(pool)
                .await?;
                Ok(flags == i16::from(PAID | RESERVED))
            }
        }
    }

    /// The bell rang for `order_id`: take its ticket off the rail.
    async fn rang(&self, order_id: Uuid) -> Result<(), HandlerError> {
        match &self.inner.tickets {
            Rail::Memory(tickets) => {
                lock(tickets).remove(&order_id);
            }
            Rail::Shared(pool) => {
                sqlx::query(
                    "UPDATE pizzeria_kitchen_tickets SET flags = flags | $2 WHERE order_id = $1",
                )
                .bind(order_id)
                .bind(i16::from(BAKED))
                .execute(pool)
                .await?;
            }
        }
        Ok(())
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
        self.inner
            .publisher
            .publish_caused(&PizzaReady { order_id }, ctx.envelope())
            .await?;
        self.rang(order_id).await?;
        self.inner.baked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
