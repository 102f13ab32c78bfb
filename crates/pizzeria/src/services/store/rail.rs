//! The kitchen's rail in the store: what the kitchen has seen of each order
//! (`pizzeria_kitchen_rail`: flags paid, reserved, cancelled, baked).
//!
//! # Why in the store
//! The kitchen bakes an order once it saw both `PaymentCollected` and `IngredientsReserved`,
//! which come as two events, acknowledged one by one. A rail in memory lost the first of them
//! in a crash after its acknowledgement: the second then found half a ticket, and the order
//! was never baked nor refunded (11 of 172,190 orders in 15 kills). So each event's flag is
//! written here before the event is acknowledged. The write is an idempotent upsert (flags
//! are OR-ed in), so a redelivered event needs no inbox.
//!
//! # One bell per order
//! The bell is rung in a unit of its own after the bake: it sets the `baked` flag only if
//! neither `baked` nor `cancelled` is set, and stages `PizzaReady` in the same transaction. A
//! kitchen that dies mid-bake bakes again on the redelivery (the flag is not set yet); two
//! kitchens that both completed the ticket both bake, but only the first to commit rings.

use tabgrab::Error;

use super::storage;
use super::unit::Unit;

impl Unit {
    /// Adds `flag` to the order's ticket; returns all its flags.
    pub(crate) async fn note_ticket(&mut self, order_id: &str, flag: u8) -> Result<u8, Error> {
        let sql = "INSERT INTO pizzeria_kitchen_rail (order_id, flags) VALUES ($1, $2) \
                   ON CONFLICT (order_id) DO UPDATE \
                   SET flags = pizzeria_kitchen_rail.flags | excluded.flags RETURNING flags";
        let flags: i64 = on_unit!(self, tx, _p => sqlx::query_scalar(sql)
            .bind(order_id)
            .bind(i64::from(flag))
            .fetch_one(&mut **tx)
            .await
            .map_err(storage("note a ticket on the rail"))?);
        Ok(u8::try_from(flags & 0xff).unwrap_or(0))
    }

    /// Marks the order's ticket `baked` unless it is baked or cancelled already; returns
    /// whether it did (then the bell is this unit's to ring).
    pub(crate) async fn ring(
        &mut self,
        order_id: &str,
        baked: u8,
        stop: u8,
    ) -> Result<bool, Error> {
        let sql = "UPDATE pizzeria_kitchen_rail SET flags = flags | $2 \
                   WHERE order_id = $1 AND (flags & $3) = 0 RETURNING flags";
        let row: Option<i64> = on_unit!(self, tx, _p => sqlx::query_scalar(sql)
            .bind(order_id)
            .bind(i64::from(baked))
            .bind(i64::from(stop))
            .fetch_optional(&mut **tx)
            .await
            .map_err(storage("ring the bell"))?);
        Ok(row.is_some())
    }
}
