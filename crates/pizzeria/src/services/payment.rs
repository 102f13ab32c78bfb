//! Payment: charges the card of every accepted order, and refunds cancelled orders it charged.
//!
//! It reacts to `OrderAccepted` by charging the order (a `charge` row in its ledger) and
//! publishing `PaymentCollected`, or `PaymentDeclined` for a card that ends in `0000` (the
//! simulation's bad card). It reacts to `OrderCancelled` by refunding (a `refund` row) and
//! publishing `PaymentRefunded`, *at most once* and only if it charged the order: a declined
//! card is never "refunded".
//!
//! Its state is durable, in the [`Store`]: each event is handled in one transaction that
//! records the event's id in payment's inbox, writes the ledger row and stages the outcome in
//! the outbox, so a redelivered `OrderAccepted` (after a crash, a timeout, a relay that
//! published twice) charges nothing a second time, and the outcome is published if and only
//! if the charge was committed. An `OrderCancelled` that arrives before its `OrderAccepted`
//! (a redelivery overtaken by the cancellation) is remembered, and the late `OrderAccepted`
//! then charges nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tabgrab::backend::Bus;
use tabgrab::event::{Context, HandlerError, Subscription};

use super::store::{Store, kind};
use crate::messages::{
    OrderAccepted, OrderCancelled, PaymentCollected, PaymentDeclined, PaymentRefunded, TOPIC,
    registry,
};

/// The consumer group of payment.
pub const GROUP: &str = "payment";
/// The CloudEvents source of payment's events.
pub const SOURCE: &str = "/pizzeria/payment";
/// Cards ending in these digits are declined (the simulation's bad card).
pub const DECLINED_SUFFIX: &str = "0000";

/// Payment's counters in this process, for the run summary.
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
    /// The ledger, the inbox and the outbox.
    store: Store,
    /// Counters: collected, declined, refunded (committed in this process).
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
    /// A payment service keeping its ledger in `store`; its events are published by the
    /// store's relay (see [`Store::relay`]).
    pub fn new(store: Store) -> Payment {
        Payment {
            inner: Arc::new(Inner {
                store,
                stats: Default::default(),
            }),
        }
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
        Subscription::builder(bus, TOPIC, GROUP)
            .known(&registry())
            .handle_with(self.clone(), |payment, e: OrderAccepted, ctx| async move {
                payment.charge(e, &ctx).await
            })
            .handle_with(self.clone(), |payment, e: OrderCancelled, ctx| async move {
                payment.refund(e, &ctx).await
            })
            .start()
    }

    /// Charges (or declines) the order, once.
    async fn charge(&self, e: OrderAccepted, ctx: &Context) -> Result<(), HandlerError> {
        let cause = ctx.envelope();
        let order = e.order_id.to_string();
        let Some(mut unit) = self.inner.store.begin_once(GROUP, cause).await? else {
            return Ok(()); // a duplicate: charged (or declined) already
        };
        if unit.lock_order(GROUP, &order, false).await? {
            // Cancelled before this (late) OrderAccepted: charge nothing.
            unit.commit().await?;
            return Ok(());
        }
        let counter = if e.card.ends_with(DECLINED_SUFFIX) {
            let event = PaymentDeclined {
                order_id: e.order_id,
                reason: format!("card ending in {DECLINED_SUFFIX} refused by the bank"),
            };
            unit.stage(SOURCE, &event, cause).await?;
            1
        } else {
            unit.ledger(&order, kind::CHARGE, e.amount_cents, cause)
                .await?;
            let event = PaymentCollected {
                order_id: e.order_id,
                amount_cents: e.amount_cents,
            };
            unit.stage(SOURCE, &event, cause).await?;
            0
        };
        unit.commit().await?;
        self.inner.stats[counter].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Refunds the order if it was charged and not refunded yet.
    async fn refund(&self, e: OrderCancelled, ctx: &Context) -> Result<(), HandlerError> {
        let cause = ctx.envelope();
        let order = e.order_id.to_string();
        let Some(mut unit) = self.inner.store.begin_once(GROUP, cause).await? else {
            return Ok(());
        };
        unit.lock_order(GROUP, &order, true).await?;
        let Some(amount_cents) = unit.refundable(&order).await? else {
            unit.commit().await?; // nothing collected, or refunded already
            return Ok(());
        };
        unit.ledger(&order, kind::REFUND, amount_cents, cause)
            .await?;
        let event = PaymentRefunded {
            order_id: e.order_id,
            amount_cents,
        };
        unit.stage(SOURCE, &event, cause).await?;
        unit.commit().await?;
        self.inner.stats[2].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
