//! Payment's, inventory's and delivery's effects when the front desk *asks* for them (the call
//! and messaging styles): the same ledger, reservations and shelf as the events style, keyed by
//! the order instead of by the event.
//!
//! A command may arrive more than once (a client retry after a lost answer, a request message
//! redelivered after a crash), and a compensation may overtake what it undoes (a refund sent
//! because the charge timed out, while the charge still waits in its topic). So each method
//! here is one [`Unit`](super::unit::Unit) that first takes the order's row of its service
//! (`lock_order`, as the event handlers do) and then answers from what the tables already
//! hold:
//! - a repeated command gets the first one's answer and changes nothing (a second charge
//!   answers the first charge; a second refund answers the amount refunded the first time);
//! - an undoing command marks the order cancelled even when there is nothing to undo yet, and
//!   a late charge or reservation of a cancelled order takes nothing ([`Charge::Cancelled`],
//!   [`Reservation::Cancelled`]).
//!
//! The answer is read and written in the transaction that holds the order's row, so two copies
//! of one command handled at once (two members of a group) still charge once.

use tabgrab::{Envelope, Error};

use super::{Store, kind, storage};
use crate::services::inventory::needs;

/// The service names of the order rows (the events style's group names).
const PAYMENT: &str = crate::services::payment::GROUP;
const INVENTORY: &str = crate::services::inventory::GROUP;
const DELIVERY: &str = crate::services::delivery::GROUP;

/// What a charge command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Charge {
    /// The order is charged `amount_cents`; `now` is false for a repeat of an earlier charge.
    Charged {
        /// What the order was charged.
        amount_cents: u64,
        /// Whether this command charged it (false: an earlier copy did).
        now: bool,
    },
    /// The card is declined; nothing was charged.
    Declined,
    /// The order was cancelled (refunded) before this charge: nothing was charged.
    Cancelled,
    /// The order was charged a different amount before: a command for it is not this one.
    Conflict {
        /// What the order was charged.
        charged_cents: u64,
    },
}

/// What a reservation command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// The ingredients are set aside; `now` is false for a repeat.
    Reserved {
        /// Whether this command reserved them (false: an earlier copy did).
        now: bool,
    },
    /// Not enough of these ingredients: nothing was taken.
    Missing(Vec<String>),
    /// The order was cancelled (released) before this reservation: nothing was taken.
    Cancelled,
}

impl Store {
    /// Charges `order_id` `amount_cents` once, unless `declined` or the order was cancelled.
    pub(crate) async fn charge_order(
        &self,
        order_id: &str,
        amount_cents: u64,
        declined: bool,
        cause: &Envelope,
    ) -> Result<Charge, Error> {
        let mut unit = self.begin().await?;
        if unit.lock_order(PAYMENT, order_id, false).await? {
            unit.commit().await?;
            return Ok(Charge::Cancelled);
        }
        let (charged, _) = unit.payments(order_id).await?;
        let answer = match charged {
            Some(charged) if charged == amount_cents => Charge::Charged {
                amount_cents,
                now: false,
            },
            Some(charged_cents) => Charge::Conflict { charged_cents },
            None if declined => Charge::Declined,
            None => {
                unit.ledger(order_id, kind::CHARGE, amount_cents, cause)
                    .await?;
                Charge::Charged {
                    amount_cents,
                    now: true,
                }
            }
        };
        unit.commit().await?;
        Ok(answer)
    }

    /// Refunds `order_id` once if it was charged, and marks it cancelled (a later charge
    /// takes nothing). Returns what the order has been refunded, by this command or an
    /// earlier copy (0: it was never charged), and whether this command refunded it.
    pub(crate) async fn refund_order(
        &self,
        order_id: &str,
        cause: &Envelope,
    ) -> Result<(u64, bool), Error> {
        let mut unit = self.begin().await?;
        unit.lock_order(PAYMENT, order_id, true).await?;
        let answer = match unit.payments(order_id).await? {
            (Some(_), Some(refunded)) => (refunded, false),
            (Some(charged), None) => {
                unit.ledger(order_id, kind::REFUND, charged, cause).await?;
                (charged, true)
            }
            (None, _) => (0, false),
        };
        unit.commit().await?;
        Ok(answer)
    }

    /// Reserves the ingredients of `pizzas` (menu indices) for `order_id` once, all or
    /// nothing, unless the order was cancelled.
    pub(crate) async fn reserve_order(
        &self,
        order_id: &str,
        pizzas: &[u8],
        cause: &Envelope,
    ) -> Result<Reservation, Error> {
        let mut unit = self.begin().await?;
        if unit.lock_order(INVENTORY, order_id, false).await? {
            unit.commit().await?;
            return Ok(Reservation::Cancelled);
        }
        if unit.reservations(order_id).await?.0.is_some() {
            unit.commit().await?;
            return Ok(Reservation::Reserved { now: false });
        }
        let missing = unit.take(&needs(pizzas)).await?;
        if !missing.is_empty() {
            // Something is short: take nothing (the statement may have taken the rest).
            unit.rollback().await?;
            return Ok(Reservation::Missing(missing));
        }
        unit.reservation(order_id, kind::RESERVE, pizzas, cause)
            .await?;
        unit.commit().await?;
        Ok(Reservation::Reserved { now: true })
    }

    /// Puts `order_id`'s ingredients back once if they were reserved, and marks it cancelled
    /// (a later reservation takes nothing). Returns whether they are back, by this command
    /// or an earlier copy, and whether this command put them back.
    pub(crate) async fn release_order(
        &self,
        order_id: &str,
        cause: &Envelope,
    ) -> Result<(bool, bool), Error> {
        let mut unit = self.begin().await?;
        unit.lock_order(INVENTORY, order_id, true).await?;
        let answer = match unit.reservations(order_id).await? {
            (Some(_), true) => (true, false),
            (Some(pizzas), false) => {
                unit.put_back(&needs(&pizzas)).await?;
                unit.reservation(order_id, kind::RELEASE, &pizzas, cause)
                    .await?;
                (true, true)
            }
            (None, _) => (false, false),
        };
        unit.commit().await?;
        Ok(answer)
    }

    /// Notes that `order_id` was delivered: true the first time, false for a repeat.
    pub(crate) async fn deliver_order(&self, order_id: &str) -> Result<bool, Error> {
        let mut unit = self.begin().await?;
        let first = unit.first_time(DELIVERY, order_id).await?;
        unit.commit().await?;
        Ok(first)
    }
}

impl super::unit::Unit {
    /// What the ledger holds for `order_id`: the amount charged and the amount refunded.
    pub(crate) async fn payments(
        &mut self,
        order_id: &str,
    ) -> Result<(Option<u64>, Option<u64>), Error> {
        let sql = "SELECT kind, amount_cents FROM pizzeria_payment_ledger WHERE order_id = $1 ORDER BY seq";
        let rows: Vec<(String, i64)> = on_unit!(self, tx, _p => sqlx::query_as(sql)
            .bind(order_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(storage("read the ledger"))?);
        let amount = |k: &str| {
            rows.iter()
                .find(|(kind, _)| kind == k)
                .map(|(_, cents)| u64::try_from(*cents).unwrap_or(0))
        };
        Ok((amount(kind::CHARGE), amount(kind::REFUND)))
    }

    /// What the reservations hold for `order_id`: the pizzas reserved (menu indices), and
    /// whether they were released.
    pub(crate) async fn reservations(
        &mut self,
        order_id: &str,
    ) -> Result<(Option<Vec<u8>>, bool), Error> {
        let sql = "SELECT kind, pizzas FROM pizzeria_inventory_reservations WHERE order_id = $1 ORDER BY seq";
        let rows: Vec<(String, String)> = on_unit!(self, tx, _p => sqlx::query_as(sql)
            .bind(order_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(storage("read the reservations"))?);
        let reserved = rows
            .iter()
            .find(|(k, _)| k == kind::RESERVE)
            .map(|(_, pizzas)| pizzas.split(',').filter_map(|p| p.parse().ok()).collect());
        let released = rows.iter().any(|(k, _)| k == kind::RELEASE);
        Ok((reserved, released))
    }

    /// Inserts `service`'s row of `order_id`: true if it was not there yet.
    pub(crate) async fn first_time(
        &mut self,
        service: &str,
        order_id: &str,
    ) -> Result<bool, Error> {
        let sql = "INSERT INTO pizzeria_order_state (service, order_id, cancelled) \
                   VALUES ($1, $2, 0) ON CONFLICT (service, order_id) DO NOTHING RETURNING 1";
        let inserted: Option<i32> = on_unit!(self, tx, _p => sqlx::query_scalar(sql)
            .bind(service)
            .bind(order_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(storage("note the delivery"))?);
        Ok(inserted.is_some())
    }
}
