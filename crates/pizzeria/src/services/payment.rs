//! Payment: charges the card of every accepted order, and refunds cancelled orders it charged.
//!
//! It reacts to `OrderAccepted` by publishing `PaymentCollected`, or `PaymentDeclined` for a
//! card that ends in `0000` (the simulation's bad card). It reacts to `OrderCancelled` by
//! publishing `PaymentRefunded`, *at most once* and only if it collected money for the order:
//! a declined card is never "refunded". It forgets an order when it is delivered (nothing left
//! to compensate), so its memory is bounded by the orders in flight.
//!
//! Delivery is at least once, so every handler is idempotent: a redelivered `OrderAccepted`
//! for an order already charged changes nothing. The state is kept in memory for now; a
//! durable store and an inbox (processed event ids per group) come later and make the
//! at-most-once refund survive a crash too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tabgrab::backend::Bus;
use tabgrab::event::{Context, HandlerError, Publisher, Subscription};
use uuid::Uuid;

use super::lock;
use crate::messages::{
    OrderAccepted, OrderCancelled, OrderDelivered, PaymentCollected, PaymentDeclined,
    PaymentRefunded, TOPIC, registry,
};

/// The consumer group of payment.
pub const GROUP: &str = "payment";
/// The CloudEvents source of payment's events.
pub const SOURCE: &str = "/pizzeria/payment";
/// Cards ending in these digits are declined (the simulation's bad card).
pub const DECLINED_SUFFIX: &str = "0000";

/// Payment's counters, for the run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PaymentStats {
    /// Cards charged.
    pub collected: u64,
    /// Cards declined.
    pub declined: u64,
    /// Refunds given.
    pub refunded: u64,
}

/// The payment service: a cheap-to-clone handle.
#[derive(Clone)]
pub struct Payment {
    /// Shared state.
    inner: Arc<Inner>,
}

struct Inner {
    /// Publishes payment's outcomes.
    publisher: Publisher,
    /// Amount collected per order not yet delivered or refunded: what a refund returns.
    collected: Mutex<HashMap<Uuid, u64>>,
    /// Counters.
    stats: [AtomicU64; 3],
}

impl std::fmt::Debug for Payment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payment")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Payment {
    /// A payment service publishing to the pizzeria topic of `bus`.
    pub fn new(bus: &Bus) -> Result<Payment, tabgrab::Error> {
        Ok(Payment {
            inner: Arc::new(Inner {
                publisher: Publisher::new(bus, TOPIC, SOURCE)?,
                collected: Mutex::new(HashMap::new()),
                stats: Default::default(),
            }),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> PaymentStats {
        let s = &self.inner.stats;
        PaymentStats {
            collected: s[0].load(Ordering::Relaxed),
            declined: s[1].load(Ordering::Relaxed),
            refunded: s[2].load(Ordering::Relaxed),
        }
    }

    /// Starts payment's consumer group.
    pub fn subscribe(&self, bus: &Bus) -> Result<Subscription, tabgrab::Error> {
        let (a, b, c) = (self.clone(), self.clone(), self.clone());
        Subscription::builder(bus, TOPIC, GROUP)
            .known(&registry())
            .handle(move |e: OrderAccepted, ctx: Context| {
                let payment = a.clone();
                async move { payment.charge(e, &ctx).await }
            })
            .handle(move |e: OrderCancelled, ctx: Context| {
                let payment = b.clone();
                async move { payment.refund(e.order_id, &ctx).await }
            })
            .handle(move |e: OrderDelivered, _ctx: Context| {
                let payment = c.clone();
                async move {
                    lock(&payment.inner.collected).remove(&e.order_id);
                    Ok(())
                }
            })
            .start()
    }

    async fn charge(&self, e: OrderAccepted, ctx: &Context) -> Result<(), HandlerError> {
        if lock(&self.inner.collected).contains_key(&e.order_id) {
            return Ok(()); // a redelivery: already charged
        }
        if e.card.ends_with(DECLINED_SUFFIX) {
            let event = PaymentDeclined {
                order_id: e.order_id,
                reason: format!("card ending in {DECLINED_SUFFIX} refused by the bank"),
            };
            self.inner
                .publisher
                .publish_caused(&event, ctx.envelope())
                .await?;
            self.inner.stats[1].fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let event = PaymentCollected {
            order_id: e.order_id,
            amount_cents: e.amount_cents,
        };
        self.inner
            .publisher
            .publish_caused(&event, ctx.envelope())
            .await?;
        lock(&self.inner.collected).insert(e.order_id, e.amount_cents);
        self.inner.stats[0].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn refund(&self, order_id: Uuid, ctx: &Context) -> Result<(), HandlerError> {
        // Only money collected and not yet returned is refunded; the entry is removed once
        // the refund is durable, so a second cancellation finds nothing: at most once.
        let Some(amount_cents) = lock(&self.inner.collected).get(&order_id).copied() else {
            return Ok(());
        };
        let event = PaymentRefunded {
            order_id,
            amount_cents,
        };
        self.inner
            .publisher
            .publish_caused(&event, ctx.envelope())
            .await?;
        lock(&self.inner.collected).remove(&order_id);
        self.inner.stats[2].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
