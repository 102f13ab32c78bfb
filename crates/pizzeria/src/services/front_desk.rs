//! The front desk (the waiter): takes orders, publishes `OrderAccepted`, and keeps its own
//! view of every order from the outcomes the other services publish.
//!
//! In the event-driven style the front desk asks nobody anything. It answers the customer
//! "accepted" as soon as `OrderAccepted` is durable, and learns what became of the order by
//! reacting to every outcome event. That view answers `GET /orders/{id}`: it is the front
//! desk's own copy, never a question to another service, so it stays up when they are down
//! (and may lag behind them by a few events: eventual consistency, made visible by the
//! timestamps).
//!
//! Failures are events too: on `PaymentDeclined` or `IngredientsMissing` the front desk
//! publishes `OrderCancelled` with the reason, once per order, and payment and inventory
//! compensate by reacting to it.
//!
//! # Durable, and in memory
//! Every fact is written to the front desk's [`Store`] before its event is acknowledged
//! (one idempotent upsert; see the store's `orders` module), and `OrderCancelled` is staged
//! there in the same transaction, once per order: a restarted front desk (or `pizzeria
//! orders`) reads every order's state and history back, and a crash never leaves an order
//! half known. The process also keeps one small fixed-size record per order in memory
//! (flags, ten timestamps, the reason of a cancellation), to answer `GET` for an order it has
//! just taken and to tell its watcher when an order ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::event::{Context, HandlerError, Publisher, Subscription};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::store::OrderRow;
use super::{Store, lock, now_ms};
use crate::messages::{
    IngredientsMissing, IngredientsReleased, IngredientsReserved, OrderAccepted, OrderCancelled,
    OrderDelivered, PaymentCollected, PaymentDeclined, PaymentRefunded, PizzaReady, TOPIC,
    registry,
};
use crate::order::ValidOrder;

/// The consumer group of the front desk.
pub const GROUP: &str = "front-desk";
/// The CloudEvents source of the front desk's events.
pub const SOURCE: &str = "/pizzeria/front-desk";

/// A fact the front desk learned about an order; each has a flag bit and a timestamp slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fact {
    Accepted = 0,
    Paid,
    Declined,
    Reserved,
    Missing,
    Ready,
    Delivered,
    Cancelled,
    Refunded,
    Released,
}

/// How many facts there are (timestamp slots per order).
const FACTS: usize = 10;
/// Flag: the front desk already published `OrderCancelled` for this order.
const CANCEL_SENT: u16 = 1 << 15;

impl Fact {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// What the front desk keeps per order: fixed size, so 100,000 orders stay a few MiB.
#[derive(Clone, Debug, Default)]
struct Record {
    /// `Fact` bits and `CANCEL_SENT`.
    flags: u16,
    /// How many pizzas, for the view.
    pizzas: u8,
    /// The order's price, for the view.
    amount_cents: u64,
    /// Milliseconds since the Unix epoch when each fact happened (0: not yet).
    at: [u64; FACTS],
    /// Why the order was cancelled, once it was.
    reason: Option<Box<str>>,
}

impl Record {
    fn has(&self, fact: Fact) -> bool {
        self.flags & fact.bit() != 0
    }

    fn is_terminal(&self) -> bool {
        self.has(Fact::Delivered) || self.has(Fact::Cancelled)
    }

    fn status(&self) -> OrderStatus {
        if self.has(Fact::Cancelled) {
            OrderStatus::Cancelled
        } else if self.has(Fact::Delivered) {
            OrderStatus::Delivered
        } else if self.has(Fact::Ready) {
            OrderStatus::Ready
        } else if self.has(Fact::Paid) && self.has(Fact::Reserved) {
            OrderStatus::Baking
        } else if self.has(Fact::Paid) {
            OrderStatus::Paid
        } else if self.has(Fact::Reserved) {
            OrderStatus::Reserved
        } else {
            OrderStatus::Accepted
        }
    }

    fn time(&self, fact: Fact) -> Option<u64> {
        Some(self.at[fact as usize]).filter(|t| *t != 0)
    }

    /// The record of an order as the store keeps it.
    fn of_row(row: &OrderRow) -> Record {
        Record {
            flags: row.flags,
            pizzas: row.pizzas,
            amount_cents: row.amount_cents,
            at: row.at,
            reason: row.reason.as_deref().map(Into::into),
        }
    }

    /// The order's view (what `GET /orders/{id}` answers).
    fn view(&self, order_id: Uuid) -> OrderView {
        let r = self;
        let payment = if r.has(Fact::Refunded) {
            Some(PaymentState::Refunded)
        } else if r.has(Fact::Paid) {
            Some(PaymentState::Collected)
        } else if r.has(Fact::Declined) {
            Some(PaymentState::Declined)
        } else {
            None
        };
        let ingredients = if r.has(Fact::Released) {
            Some(IngredientsState::Released)
        } else if r.has(Fact::Reserved) {
            Some(IngredientsState::Reserved)
        } else if r.has(Fact::Missing) {
            Some(IngredientsState::Missing)
        } else {
            None
        };
        OrderView {
            order_id,
            status: r.status(),
            reason: r.reason.as_deref().map(str::to_owned),
            pizzas: r.pizzas,
            amount_cents: r.amount_cents,
            payment,
            ingredients,
            timestamps: Timestamps {
                accepted_at_ms: r.time(Fact::Accepted),
                paid_at_ms: r.time(Fact::Paid),
                declined_at_ms: r.time(Fact::Declined),
                reserved_at_ms: r.time(Fact::Reserved),
                missing_at_ms: r.time(Fact::Missing),
                ready_at_ms: r.time(Fact::Ready),
                delivered_at_ms: r.time(Fact::Delivered),
                cancelled_at_ms: r.time(Fact::Cancelled),
                refunded_at_ms: r.time(Fact::Refunded),
                released_at_ms: r.time(Fact::Released),
            },
        }
    }
}

/// The view of an order from its row in the store (`pizzeria orders` reads it).
pub(crate) fn view_of_row(row: &OrderRow) -> Option<OrderView> {
    let order_id = Uuid::parse_str(&row.order_id).ok()?;
    Some(Record::of_row(row).view(order_id))
}

/// Where an order stands, as the front desk knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Taken; payment and inventory have not answered yet.
    Accepted,
    /// Paid; ingredients not reserved yet.
    Paid,
    /// Ingredients reserved; not paid yet.
    Reserved,
    /// Paid and reserved: the ticket is on the kitchen's rail or in an oven.
    Baking,
    /// The bell rang: out of the oven, waiting for delivery.
    Ready,
    /// Delivered: done.
    Delivered,
    /// Cancelled, with a reason: done.
    Cancelled,
}

impl OrderStatus {
    /// Whether the order is done (delivered or cancelled).
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Delivered | OrderStatus::Cancelled)
    }
}

/// What became of the money.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentState {
    /// Charged.
    Collected,
    /// The card was declined: nothing collected, nothing to refund.
    Declined,
    /// Charged, then given back.
    Refunded,
}

/// What became of the ingredients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngredientsState {
    /// Set aside for the order.
    Reserved,
    /// Some were short: nothing reserved.
    Missing,
    /// Set aside, then put back.
    Released,
}

/// When each step happened, in milliseconds since the Unix epoch (absent: not yet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamps {
    /// The front desk took the order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_at_ms: Option<u64>,
    /// Payment collected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at_ms: Option<u64>,
    /// Payment declined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declined_at_ms: Option<u64>,
    /// Ingredients reserved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_at_ms: Option<u64>,
    /// Ingredients found missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_at_ms: Option<u64>,
    /// The bell rang.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_at_ms: Option<u64>,
    /// Delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at_ms: Option<u64>,
    /// Cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at_ms: Option<u64>,
    /// Money returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refunded_at_ms: Option<u64>,
    /// Ingredients put back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_at_ms: Option<u64>,
}

impl Timestamps {
    /// How many steps happened (each is one event about the order).
    pub fn count(&self) -> u64 {
        self.steps().len() as u64
    }

    /// The steps that happened, oldest first, as (name, ms since the epoch).
    pub fn steps(&self) -> Vec<(&'static str, u64)> {
        let mut steps: Vec<(&'static str, u64)> = [
            ("accepted", self.accepted_at_ms),
            ("paid", self.paid_at_ms),
            ("declined", self.declined_at_ms),
            ("reserved", self.reserved_at_ms),
            ("missing", self.missing_at_ms),
            ("ready", self.ready_at_ms),
            ("delivered", self.delivered_at_ms),
            ("cancelled", self.cancelled_at_ms),
            ("refunded", self.refunded_at_ms),
            ("released", self.released_at_ms),
        ]
        .into_iter()
        .filter_map(|(name, at)| at.map(|at| (name, at)))
        .collect();
        steps.sort_by_key(|(_, at)| *at);
        steps
    }
}

/// One order as the front desk sees it: the body of `GET /orders/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// The order.
    pub order_id: Uuid,
    /// Where it stands.
    pub status: OrderStatus,
    /// Why it was cancelled, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many pizzas (0 if the front desk learned of the order from the log without it).
    pub pizzas: u8,
    /// The price.
    pub amount_cents: u64,
    /// What became of the money, once payment answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentState>,
    /// What became of the ingredients, once inventory answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingredients: Option<IngredientsState>,
    /// When each step happened.
    pub timestamps: Timestamps,
}

/// The front desk's metric: orders `accepted` (published), then `delivered` or `cancelled`
/// (the view learned it), in Prometheus `pizzeria_orders_total{outcome=..}`.
pub const ORDERS: &str = "pizzeria.orders";

/// How an order ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The customer got the pizzas.
    Delivered,
    /// The order was cancelled for this reason.
    Cancelled(String),
}

/// An order reached its end: sent to the watcher of [`FrontDesk::watch`].
#[derive(Clone, Debug)]
pub struct Terminal {
    /// The order.
    pub order_id: Uuid,
    /// How it ended.
    pub outcome: Outcome,
    /// When the front desk learned it, for end-to-end latency.
    pub at: Instant,
}

/// The front desk: a cheap-to-clone handle shared by the HTTP server and the subscription.
#[derive(Clone)]
pub struct FrontDesk {
    /// Shared state.
    inner: Arc<Inner>,
}

struct Inner {
    /// Publishes `OrderAccepted`.
    publisher: Publisher,
    /// The durable view, and the outbox of `OrderCancelled`.
    store: Store,
    /// The order view, one small record per order.
    view: Mutex<HashMap<Uuid, Record>>,
    /// Who is told when an order ends (the load driver), if anyone.
    watcher: Mutex<Option<mpsc::UnboundedSender<Terminal>>>,
}

impl std::fmt::Debug for FrontDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDesk")
            .field("orders", &self.orders())
            .finish()
    }
}

impl FrontDesk {
    /// A front desk publishing to the pizzeria topic of `bus` and keeping its view of the
    /// orders in `store` (whose relay publishes its cancellations: see [`Store::relay`]).
    pub fn new(bus: &Bus, store: Store) -> Result<FrontDesk, tabgrab::Error> {
        Ok(FrontDesk {
            inner: Arc::new(Inner {
                publisher: Publisher::new(bus, TOPIC, SOURCE)?,
                store,
                view: Mutex::new(HashMap::new()),
                watcher: Mutex::new(None),
            }),
        })
    }

    /// Takes a validated order: records it in the view and publishes `OrderAccepted`.
    /// Returns the order id once the event is durable.
    pub async fn take_order(&self, order: ValidOrder) -> Result<Uuid, tabgrab::Error> {
        let order_id = Uuid::now_v7();
        {
            let mut record = Record {
                flags: Fact::Accepted.bit(),
                pizzas: u8::try_from(order.pizzas.len()).unwrap_or(u8::MAX),
                amount_cents: order.amount_cents,
                ..Record::default()
            };
            record.at[Fact::Accepted as usize] = now_ms();
            lock(&self.inner.view).insert(order_id, record);
        }
        let event = OrderAccepted {
            order_id,
            customer: order.customer,
            pizzas: order.pizzas,
            amount_cents: order.amount_cents,
            card: order.masked_card,
        };
        match self
            .inner
            .publisher
            .publish(&event, order_id.to_string())
            .await
        {
            Ok(_) => {
                metrics::counter!(ORDERS, "outcome" => "accepted").increment(1);
                Ok(order_id)
            }
            Err(e) => {
                lock(&self.inner.view).remove(&order_id);
                Err(e)
            }
        }
    }

    /// The view of one order, if the front desk knows it: from the store (which outlives
    /// the process), or, for an order taken a moment ago and not read back yet, from memory.
    pub async fn order(&self, order_id: Uuid) -> Result<Option<OrderView>, tabgrab::Error> {
        if let Some(row) = self.inner.store.order_row(&order_id.to_string()).await? {
            return Ok(Some(Record::of_row(&row).view(order_id)));
        }
        Ok(lock(&self.inner.view)
            .get(&order_id)
            .map(|r| r.view(order_id)))
    }

    /// The store of the front desk's view.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// How many orders the view holds.
    pub fn orders(&self) -> usize {
        lock(&self.inner.view).len()
    }

    /// Reports every order that ends from now on (delivered or cancelled) on the returned
    /// channel. One watcher at a time: a new call replaces the previous one.
    pub fn watch(&self) -> mpsc::UnboundedReceiver<Terminal> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.inner.watcher) = Some(tx);
        rx
    }

    /// Starts the front desk's consumer group: it reacts to every outcome to keep its view,
    /// and cancels orders whose payment or ingredients failed.
    pub fn subscribe(&self, bus: &Bus) -> Result<Subscription, tabgrab::Error> {
        let desk = self.clone();
        let builder = Subscription::builder(bus, TOPIC, GROUP).known(&registry());
        let builder = {
            let desk = desk.clone();
            builder.handle(move |e: OrderAccepted, ctx: Context| {
                let desk = desk.clone();
                async move { desk.learned_accepted(&e, &ctx).await }
            })
        };
        let builder = on_fact::<PaymentCollected>(builder, &desk, Fact::Paid, |e| e.order_id);
        let builder = on_fact::<PaymentRefunded>(builder, &desk, Fact::Refunded, |e| e.order_id);
        let builder =
            on_fact::<IngredientsReserved>(builder, &desk, Fact::Reserved, |e| e.order_id);
        let builder =
            on_fact::<IngredientsReleased>(builder, &desk, Fact::Released, |e| e.order_id);
        let builder = on_fact::<PizzaReady>(builder, &desk, Fact::Ready, |e| e.order_id);
        let builder = on_fact::<OrderDelivered>(builder, &desk, Fact::Delivered, |e| e.order_id);
        let builder = {
            let desk = desk.clone();
            builder.handle(move |e: OrderCancelled, ctx: Context| {
                let desk = desk.clone();
                async move {
                    desk.learned(e.order_id, Fact::Cancelled, &ctx, Some(&e.reason), None)
                        .await
                }
            })
        };
        let builder = {
            let desk = desk.clone();
            builder.handle(move |e: PaymentDeclined, ctx: Context| {
                let desk = desk.clone();
                async move {
                    let reason = format!("payment declined: {}", e.reason);
                    desk.learned(e.order_id, Fact::Declined, &ctx, None, Some(reason))
                        .await
                }
            })
        };
        let builder = builder.handle(move |e: IngredientsMissing, ctx: Context| {
            let desk = desk.clone();
            async move {
                let reason = format!("ingredients missing: {}", e.missing.join(", "));
                desk.learned(e.order_id, Fact::Missing, &ctx, None, Some(reason))
                    .await
            }
        });
        builder.start()
    }

    /// Records an `OrderAccepted` read from the log (the front desk may not have taken the
    /// order itself: another instance, or an earlier run, did).
    async fn learned_accepted(&self, e: &OrderAccepted, ctx: &Context) -> Result<(), HandlerError> {
        let pizzas = u8::try_from(e.pizzas.len()).unwrap_or(u8::MAX);
        let at = event_time(ctx);
        let mut unit = self.inner.store.begin().await?;
        unit.learn(
            &e.order_id.to_string(),
            Fact::Accepted as usize,
            at,
            pizzas,
            e.amount_cents,
            None,
        )
        .await?;
        unit.commit().await?;
        let mut view = lock(&self.inner.view);
        let record = view.entry(e.order_id).or_default();
        if !record.has(Fact::Accepted) {
            record.flags |= Fact::Accepted.bit();
            record.at[Fact::Accepted as usize] = at;
            record.pizzas = pizzas;
            record.amount_cents = e.amount_cents;
        }
        Ok(())
    }

    /// Records a fact about an order, durably; with `cancel`, also cancels the order (stages
    /// `OrderCancelled` with that reason, once per order, in the same transaction). Then tells
    /// the watcher if the order just ended.
    async fn learned(
        &self,
        order_id: Uuid,
        fact: Fact,
        ctx: &Context,
        reason: Option<&str>,
        cancel: Option<String>,
    ) -> Result<(), HandlerError> {
        let at = event_time(ctx);
        let id = order_id.to_string();
        let mut unit = self.inner.store.begin().await?;
        unit.learn(&id, fact as usize, at, 0, 0, reason).await?;
        if let Some(reason) = cancel
            && unit
                .claim_order_flag(&id, CANCEL_SENT, CANCEL_SENT | Fact::Cancelled.bit())
                .await?
        {
            let event = OrderCancelled { order_id, reason };
            unit.stage(SOURCE, &event, ctx.envelope()).await?;
        }
        unit.commit().await?;
        let ended = {
            let mut view = lock(&self.inner.view);
            let record = view.entry(order_id).or_default();
            if record.has(fact) {
                return Ok(()); // a redelivery: the fact is already known
            }
            let was_terminal = record.is_terminal();
            record.flags |= fact.bit();
            record.at[fact as usize] = at;
            if let Some(reason) = reason {
                record.reason = Some(reason.into());
            }
            match fact {
                Fact::Delivered if !was_terminal => Some(Outcome::Delivered),
                Fact::Cancelled if !was_terminal => {
                    Some(Outcome::Cancelled(reason.unwrap_or_default().to_owned()))
                }
                _ => None,
            }
        };
        if let Some(outcome) = &ended {
            let outcome = match outcome {
                Outcome::Delivered => "delivered",
                Outcome::Cancelled(_) => "cancelled",
            };
            metrics::counter!(ORDERS, "outcome" => outcome).increment(1);
        }
        if let Some(outcome) = ended
            && let Some(watcher) = lock(&self.inner.watcher).as_ref()
        {
            // A watcher that went away just stops listening: not the front desk's problem.
            let _ = watcher.send(Terminal {
                order_id,
                outcome,
                at: Instant::now(),
            });
        }
        Ok(())
    }
}

/// Adds a handler that only records `fact` for the order of each event of type `E`.
fn on_fact<E: tabgrab::Event>(
    builder: tabgrab::event::SubscriptionBuilder,
    desk: &FrontDesk,
    fact: Fact,
    order_of: fn(&E) -> Uuid,
) -> tabgrab::event::SubscriptionBuilder {
    let desk = desk.clone();
    builder.handle(move |e: E, ctx: Context| {
        let desk = desk.clone();
        async move { desk.learned(order_of(&e), fact, &ctx, None, None).await }
    })
}

/// When the event happened (its envelope time), or now if it carries none.
fn event_time(ctx: &Context) -> u64 {
    ctx.envelope()
        .time_unix_ms()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or_else(now_ms)
}

/// The events style's front desk: it accepts an order once its `OrderAccepted` is recorded.
impl crate::http::Desk for FrontDesk {
    type View = OrderView;

    async fn place(&self, order: ValidOrder) -> axum::response::Response {
        crate::http::accepted_once_recorded(self.take_order(order).await, "the order")
    }

    async fn view(&self, id: Uuid) -> Result<Option<Self::View>, tabgrab::Error> {
        self.order(id).await
    }
}
