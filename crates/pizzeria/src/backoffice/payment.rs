//! Payment: answers `ChargeCard` and `RefundPayment`, once per order, from its ledger.
//!
//! The domain rule is the events style's: a card ending in
//! [`DECLINED_SUFFIX`] is refused, here with the typed rejection [`CARD_DECLINED`]. A repeated
//! charge of one order (a retry after a lost answer, with the order id as idempotency key)
//! answers the first charge again, but a charge of the same order for another amount is a
//! conflict (HTTP 409, gRPC `ALREADY_EXISTS`), not the first charge answered as if it were
//! this one. A refund returns what was collected at most once, and a charge that arrives after
//! its order's refund is refused with [`ORDER_CANCELLED`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tabgrab::{Envelope, HandlerError, Rejection};

use crate::commands::{
    CARD_DECLINED, ChargeCard, Charged, ORDER_CANCELLED, RefundPayment, Refunded,
};
use crate::services::payment::{DECLINED_SUFFIX, PaymentStats};
use crate::services::store::{Charge, Store};

/// The payment service: its ledger in a store. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct PaymentDesk {
    /// The ledger.
    store: Store,
    /// Collected, declined, refunded by this process.
    stats: Arc<[AtomicU64; 3]>,
}

impl PaymentDesk {
    /// A payment service keeping its ledger in `store`.
    pub fn new(store: Store) -> PaymentDesk {
        PaymentDesk {
            store,
            stats: Arc::default(),
        }
    }

    /// What this process collected, declined and refunded.
    pub fn stats(&self) -> PaymentStats {
        PaymentStats {
            collected: self.stats[0].load(Ordering::Relaxed),
            declined: self.stats[1].load(Ordering::Relaxed),
            refunded: self.stats[2].load(Ordering::Relaxed),
        }
    }

    /// Charges the order once (`cause`: the command's envelope, kept in the ledger row).
    pub async fn charge(&self, c: &ChargeCard, cause: &Envelope) -> Result<Charged, HandlerError> {
        c.check()
            .map_err(|invalid| HandlerError::invalid(invalid.0))?;
        let declined = c.card.ends_with(DECLINED_SUFFIX);
        let order = c.order_id.to_string();
        match self
            .store
            .charge_order(&order, c.amount_cents, declined, cause)
            .await?
        {
            Charge::Charged { amount_cents, now } => {
                if now {
                    self.stats[0].fetch_add(1, Ordering::Relaxed);
                }
                Ok(Charged {
                    order_id: c.order_id,
                    amount_cents,
                })
            }
            Charge::Declined => {
                self.stats[1].fetch_add(1, Ordering::Relaxed);
                Err(HandlerError::rejected(Rejection::new(
                    CARD_DECLINED,
                    format!("card ending in {DECLINED_SUFFIX} refused by the bank"),
                )))
            }
            Charge::Cancelled => Err(HandlerError::rejected(Rejection::new(
                ORDER_CANCELLED,
                format!(
                    "order {} was refunded before this charge arrived; nothing was charged",
                    c.order_id
                ),
            ))),
            Charge::Conflict { charged_cents } => {
                Err(HandlerError::permanent(tabgrab::Error::new(
                    tabgrab::ErrorKind::Conflict,
                    format!(
                        "order {} was charged {charged_cents} cents, not {}; an order is \
                         charged once",
                        c.order_id, c.amount_cents
                    ),
                )))
            }
        }
    }

    /// Refunds the order once, if it was charged; a later charge of it takes nothing.
    pub async fn refund(
        &self,
        r: &RefundPayment,
        cause: &Envelope,
    ) -> Result<Refunded, HandlerError> {
        let (amount_cents, now) = self
            .store
            .refund_order(&r.order_id.to_string(), cause)
            .await?;
        if now {
            self.stats[2].fetch_add(1, Ordering::Relaxed);
        }
        Ok(Refunded {
            order_id: r.order_id,
            amount_cents,
        })
    }
}
