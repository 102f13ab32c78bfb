//! The front desk's view of the orders in the store (`pizzeria_orders`): per order, the facts
//! it learned (a flag each), when each happened, the pizzas, the price and why it was
//! cancelled.
//!
//! # Why in the store
//! The front desk learns an order's fate from events it acknowledges one by one. A view in
//! memory was gone after a crash, with the events already acknowledged: `GET /orders/{id}`
//! then knew nothing of the order, and nothing could tell a user whether every accepted order
//! ended. So each fact is written here before its event is acknowledged, and `pizzeria
//! orders` reads it back. The write is one idempotent upsert (flags OR-ed in, the first time
//! of each fact kept), so a redelivered event needs no inbox; the front desk's one effect,
//! `OrderCancelled`, is staged in the same transaction that claims the order's
//! "cancellation sent" flag, so it is published once per order whatever is redelivered.

use tabgrab::Error;

use super::unit::Unit;
use super::{Db, Store, storage};

/// The timestamp columns, one per fact, in the order of the front desk's facts.
pub(crate) const COLUMNS: [&str; 10] = [
    "accepted_ms",
    "paid_ms",
    "declined_ms",
    "reserved_ms",
    "missing_ms",
    "ready_ms",
    "delivered_ms",
    "cancelled_ms",
    "refunded_ms",
    "released_ms",
];

/// One order as the store keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OrderRow {
    /// The order.
    pub(crate) order_id: String,
    /// The front desk's fact flags.
    pub(crate) flags: u16,
    /// How many pizzas (0 until `OrderAccepted` was read).
    pub(crate) pizzas: u8,
    /// The price.
    pub(crate) amount_cents: u64,
    /// Why it was cancelled.
    pub(crate) reason: Option<String>,
    /// When each fact happened (ms since the epoch; 0: not yet), in [`COLUMNS`] order.
    pub(crate) at: [u64; 10],
}

/// A row as read: id, flags, pizzas, amount, reason, then the ten times.
type Raw = (
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

const SELECT: &str = "SELECT order_id, flags, pizzas, amount_cents, reason, accepted_ms, paid_ms, \
                      declined_ms, reserved_ms, missing_ms, ready_ms, delivered_ms, cancelled_ms, \
                      refunded_ms, released_ms FROM pizzeria_orders";

fn row(raw: Raw) -> OrderRow {
    let t = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
    OrderRow {
        order_id: raw.0,
        flags: u16::try_from(raw.1 & 0xffff).unwrap_or(0),
        pizzas: u8::try_from(raw.2).unwrap_or(u8::MAX),
        amount_cents: u64::try_from(raw.3).unwrap_or(0),
        reason: raw.4,
        at: [
            t(raw.5),
            t(raw.6),
            t(raw.7),
            t(raw.8),
            t(raw.9),
            t(raw.10),
            t(raw.11),
            t(raw.12),
            t(raw.13),
            t(raw.14),
        ],
    }
}

impl Unit {
    /// Records that the fact of index `fact` (its flag `1 << fact`) happened to the order at
    /// `at_ms`, with the order's pizzas and price when known (non-zero) and the reason of a
    /// cancellation; returns the order's flags after it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn learn(
        &mut self,
        order_id: &str,
        fact: usize,
        at_ms: u64,
        pizzas: u8,
        amount_cents: u64,
        reason: Option<&str>,
    ) -> Result<u16, Error> {
        let column = COLUMNS[fact.min(COLUMNS.len() - 1)];
        let sql = format!(
            "INSERT INTO pizzeria_orders (order_id, flags, pizzas, amount_cents, reason, {column}) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO UPDATE SET \
             flags = pizzeria_orders.flags | excluded.flags, \
             pizzas = CASE WHEN excluded.pizzas > 0 THEN excluded.pizzas ELSE pizzeria_orders.pizzas END, \
             amount_cents = CASE WHEN excluded.amount_cents > 0 THEN excluded.amount_cents \
               ELSE pizzeria_orders.amount_cents END, \
             reason = COALESCE(pizzeria_orders.reason, excluded.reason), \
             {column} = COALESCE(pizzeria_orders.{column}, excluded.{column}) RETURNING flags"
        );
        let flags: i64 = on_unit!(self, tx, _p => sqlx::query_scalar(&sql)
            .bind(order_id)
            .bind(1_i64 << fact)
            .bind(i64::from(pizzas))
            .bind(i64::try_from(amount_cents).unwrap_or(i64::MAX))
            .bind(reason)
            .bind(i64::try_from(at_ms).unwrap_or(i64::MAX))
            .fetch_one(&mut **tx)
            .await
            .map_err(storage("record a fact of an order"))?);
        Ok(u16::try_from(flags & 0xffff).unwrap_or(0))
    }

    /// Sets `claim` on the order unless any of `unless` is set; returns whether it did (the
    /// front desk claims "cancellation sent" before staging `OrderCancelled`).
    pub(crate) async fn claim_order_flag(
        &mut self,
        order_id: &str,
        claim: u16,
        unless: u16,
    ) -> Result<bool, Error> {
        let sql = "UPDATE pizzeria_orders SET flags = flags | $2 \
                   WHERE order_id = $1 AND (flags & $3) = 0 RETURNING flags";
        let row: Option<i64> = on_unit!(self, tx, _p => sqlx::query_scalar(sql)
            .bind(order_id)
            .bind(i64::from(claim))
            .bind(i64::from(unless))
            .fetch_optional(&mut **tx)
            .await
            .map_err(storage("claim an order's flag"))?);
        Ok(row.is_some())
    }
}

impl Store {
    /// One order of the front desk's view, if the store has it.
    pub(crate) async fn order_row(&self, order_id: &str) -> Result<Option<OrderRow>, Error> {
        let sql = format!("{SELECT} WHERE order_id = $1");
        let raw: Option<Raw> = on_db!(self.db().await?, p => sqlx::query_as(&sql)
            .bind(order_id)
            .fetch_optional(&p.pool)
            .await
            .map_err(storage("read an order"))?);
        Ok(raw.map(row))
    }

    /// Every order of the front desk's view, oldest first (order ids are UUIDv7).
    pub(crate) async fn order_rows(&self) -> Result<Vec<OrderRow>, Error> {
        let sql = format!("{SELECT} ORDER BY order_id");
        let raw: Vec<Raw> = on_db!(self.db().await?, p => sqlx::query_as(&sql)
            .fetch_all(&p.pool)
            .await
            .map_err(storage("read the orders"))?);
        Ok(raw.into_iter().map(row).collect())
    }
}
