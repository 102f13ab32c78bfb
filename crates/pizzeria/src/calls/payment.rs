//! Payment, call style: handles `ChargeCard` and `RefundPayment`, idempotent per order.
//!
//! The domain rule is the events style's: a card ending in
//! [`crate::services::payment::DECLINED_SUFFIX`] is refused, here with the
//! typed rejection [`CARD_DECLINED`]. A repeated charge of one order (a retry after a lost
//! answer, with the order id as idempotency key) answers the first charge again, but a
//! charge of the same order for another amount is a conflict (HTTP 409, gRPC
//! `ALREADY_EXISTS`), not the first charge answered as if it were this one; a refund returns
//! what was collected at most once. A charge out of its bounds ([`ChargeCard::check`]) is
//! refused as invalid input before anything else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tabgrab::Rejection;
use tabgrab::call::{HandlerError, Handlers};
use uuid::Uuid;

use crate::commands::{CARD_DECLINED, ChargeCard, Charged, RefundPayment, Refunded};
use crate::services::lock;
use crate::services::payment::{DECLINED_SUFFIX, PaymentStats};

/// The payment service's state: a cheap-to-clone handle.
#[derive(Clone, Debug, Default)]
pub struct PaymentDesk {
    /// Amount collected per order and not refunded: what a refund returns.
    collected: Arc<Mutex<HashMap<Uuid, u64>>>,
    /// Collected, declined, refunded.
    stats: Arc<[AtomicU64; 3]>,
}

impl PaymentDesk {
    /// A payment desk with nothing collected.
    pub fn new() -> PaymentDesk {
        PaymentDesk::default()
    }

    /// The counters so far.
    pub fn stats(&self) -> PaymentStats {
        PaymentStats {
            collected: self.stats[0].load(Ordering::Relaxed),
            declined: self.stats[1].load(Ordering::Relaxed),
            refunded: self.stats[2].load(Ordering::Relaxed),
        }
    }

    /// Charges a card; see the module docs.
    pub fn charge(&self, c: &ChargeCard) -> Result<Charged, HandlerError> {
        let mut collected = lock(&self.collected);
        if let Some(&amount_cents) = collected.get(&c.order_id) {
            if amount_cents != c.amount_cents {
                return Err(HandlerError::permanent(tabgrab::Error::new(
                    tabgrab::ErrorKind::Conflict,
                    format!(
                        "order {} was charged {amount_cents} cents, not {}; an order is \
                         charged once",
                        c.order_id, c.amount_cents
                    ),
                )));
            }
            return Ok(Charged {
                order_id: c.order_id,
                amount_cents,
            });
        }
        if c.card.ends_with(DECLINED_SUFFIX) {
            self.stats[1].fetch_add(1, Ordering::Relaxed);
            return Err(HandlerError::rejected(Rejection::new(
                CARD_DECLINED,
                format!("card ending in {DECLINED_SUFFIX} refused by the bank"),
            )));
        }
        collected.insert(c.order_id, c.amount_cents);
        self.stats[0].fetch_add(1, Ordering::Relaxed);
        Ok(Charged {
            order_id: c.order_id,
            amount_cents: c.amount_cents,
        })
    }

    /// Refunds what was collected for an order, at most once.
    pub fn refund(&self, r: &RefundPayment) -> Refunded {
        let amount_cents = lock(&self.collected).remove(&r.order_id).unwrap_or(0);
        if amount_cents > 0 {
            self.stats[2].fetch_add(1, Ordering::Relaxed);
        }
        Refunded {
            order_id: r.order_id,
            amount_cents,
        }
    }

    /// The handlers of payment's commands.
    pub fn handlers(&self) -> Handlers {
        Handlers::new()
            .handle_with(self.clone(), |desk, c: ChargeCard, _ctx| async move {
                c.check()
                    .map_err(|invalid| HandlerError::invalid(invalid.0))?;
                desk.charge(&c)
            })
            .handle_with(self.clone(), |desk, r: RefundPayment, _ctx| async move {
                Ok(desk.refund(&r))
            })
    }
}
