//! One handler's transaction, a [`Unit`]: the event's id in its group's inbox, the effect (a
//! ledger row; a reservation and the stock it takes) and the events it stages in the outbox,
//! committed together or not at all. Payment and inventory begin one per event with
//! [`Store::begin_once`], which finds a redelivered event in the inbox and changes nothing.
//!
//! # One row per order, to serialise an order's handlers
//! `OrderAccepted` and `OrderCancelled` of one order may be handled at the same moment (by two
//! members of a group, or after a crash that redelivers the first past the second). Every
//! handler therefore first upserts its service's row for the order in
//! `pizzeria_order_state` ([`Unit::lock_order`]): on PostgreSQL the upsert holds the row's lock
//! until the commit, so the second handler waits and then sees what the first did (SQLite has
//! one writer anyway). The row also remembers a cancellation that came first, so that a late
//! `OrderAccepted` of a cancelled order charges and reserves nothing.
//!
//! # What a unit costs
//! On SQLite every statement is a round trip to the thread sqlx runs for the one connection;
//! on two cores that round trip (two context switches, roughly 50 µs) costs far more than
//! SQLite's own work, and units run one after the other. So a unit keeps its round trips few
//! (the shelf is taken in one statement), and on SQLite it runs under a savepoint in a batch
//! shared with other events' units ([`Batcher`]): one round trip to join where a transaction
//! of its own made three or four (`BEGIN`, `COMMIT`, the pool's check of the connection). Its
//! `commit` returns once the batch committed, so a handler still acknowledges its event only
//! when its inbox record, effect and staged events are durable together. On PostgreSQL each
//! unit is a transaction of its own on a connection of the pool.

use std::sync::Arc;

use sqlx::Transaction;
use sqlx::postgres::Postgres;
use sqlx::sqlite::Sqlite;
use tabgrab::{Envelope, Error, ErrorKind, Event};
use tokio::sync::OwnedMutexGuard;

use super::batch::{Batch, Batcher};
use super::{Db, Gate, Parts, Store, storage};
use crate::messages::TOPIC;

impl Store {
    /// Begins the unit of `envelope`'s handling by `group` and records the envelope in the
    /// group's inbox; `None` (the unit rolled back) when the group has handled it already, so a
    /// redelivery changes nothing.
    pub(crate) async fn begin_once(
        &self,
        group: &str,
        envelope: &Envelope,
    ) -> Result<Option<Unit>, Error> {
        let mut unit = self.begin().await?;
        if unit.record(group, envelope).await? {
            return Ok(Some(unit));
        }
        unit.rollback().await?;
        Ok(None)
    }

    /// Begins one handler's unit: on SQLite in the open batch (see [`Batcher`]), on
    /// PostgreSQL in a transaction of its own.
    pub(crate) async fn begin(&self) -> Result<Unit, Error> {
        Ok(match self.db().await? {
            Db::Sqlite(p) => {
                let Gate::Batches(batcher) = &p.gate else {
                    return Err(Error::new(ErrorKind::Storage, "pizzeria store: no batcher"));
                };
                let (batch, slot, first) = batcher.enter(&p.pool).await?;
                Unit::Sqlite {
                    batch,
                    slot,
                    first,
                    batcher: Arc::clone(batcher),
                    parts: p.clone(),
                }
            }
            Db::Postgres(p) => Unit::Postgres {
                tx: p.pool.begin().await.map_err(storage("begin"))?,
                parts: p.clone(),
            },
        })
    }
}

/// One handler's transaction: inbox, effect and outbox commit together or not at all.
pub(crate) enum Unit {
    /// On SQLite.
    Sqlite {
        /// The batch this unit runs in, taken out of the slot; dropped (rolled back whole)
        /// if the unit is dropped without `commit` or `rollback`.
        batch: Batch<Sqlite>,
        /// The batcher's slot, held while this unit runs: the next units wait for it.
        slot: OwnedMutexGuard<Option<Batch<Sqlite>>>,
        /// Whether this unit is the batch's first (then it has no savepoint: its rollback
        /// rolls the whole transaction back, which holds nothing else).
        first: bool,
        /// Where the batch goes back.
        batcher: Arc<Batcher<Sqlite>>,
        /// The outbox and inboxes.
        parts: Parts<Sqlite>,
    },
    /// On PostgreSQL.
    Postgres {
        /// The transaction.
        tx: Transaction<'static, Postgres>,
        /// The outbox and inboxes.
        parts: Parts<Postgres>,
    },
}

/// Milliseconds since the epoch, as the tables store it.
pub(super) fn now() -> i64 {
    i64::try_from(crate::services::now_ms()).unwrap_or(i64::MAX)
}

impl Unit {
    /// Records `envelope` in `group`'s inbox: `true` the first time, `false` for a duplicate
    /// (then apply nothing).
    pub(crate) async fn record(&mut self, group: &str, envelope: &Envelope) -> Result<bool, Error> {
        on_unit!(self, tx, p => p.inbox(group).record(tx, envelope).await)
    }

    /// Takes `service`'s row of `order_id` (waiting for another handler of the same order to
    /// commit), marking it cancelled if `cancel`; returns whether it is cancelled.
    pub(crate) async fn lock_order(
        &mut self,
        service: &str,
        order_id: &str,
        cancel: bool,
    ) -> Result<bool, Error> {
        let sql = "INSERT INTO pizzeria_order_state (service, order_id, cancelled) \
                   VALUES ($1, $2, $3) ON CONFLICT (service, order_id) DO UPDATE \
                   SET cancelled = CASE WHEN excluded.cancelled = 1 THEN 1 \
                   ELSE pizzeria_order_state.cancelled END RETURNING cancelled";
        let cancelled: i64 = on_unit!(self, tx, _p => sqlx::query_scalar(sql)
            .bind(service)
            .bind(order_id)
            .bind(i64::from(cancel))
            .fetch_one(&mut **tx)
            .await
            .map_err(storage("lock the order"))?);
        Ok(cancelled != 0)
    }

    /// Appends a ledger row.
    pub(crate) async fn ledger(
        &mut self,
        order_id: &str,
        kind: &str,
        amount_cents: u64,
        cause: &Envelope,
    ) -> Result<(), Error> {
        let sql = "INSERT INTO pizzeria_payment_ledger (order_id, kind, amount_cents, cause_id, at_ms) \
                   VALUES ($1, $2, $3, $4, $5)";
        on_unit!(self, tx, _p => sqlx::query(sql)
            .bind(order_id)
            .bind(kind)
            .bind(i64::try_from(amount_cents).unwrap_or(i64::MAX))
            .bind(cause.id.as_str())
            .bind(now())
            .execute(&mut **tx)
            .await
            .map_err(storage("write the ledger"))
            .map(drop)?);
        Ok(())
    }

    /// The amount charged for `order_id` and not refunded, if any.
    pub(crate) async fn refundable(&mut self, order_id: &str) -> Result<Option<u64>, Error> {
        Ok(match self.payments(order_id).await? {
            (Some(charged), None) => Some(charged),
            _ => None,
        })
    }

    /// Takes `needs` (ingredient, units) from the shelf, all or nothing: the names of the
    /// ingredients short if any (then this unit must be rolled back).
    pub(crate) async fn take(
        &mut self,
        needs: &[(&'static str, u64)],
    ) -> Result<Vec<String>, Error> {
        let mut needs = needs.to_vec();
        needs.sort_unstable();
        let taken: Vec<String> = match self {
            // SQLite: one statement for all the ingredients (each statement is a round trip
            // to sqlx's SQLite thread, the main cost of a unit); one writer, so no lock cycle.
            Unit::Sqlite {
                batch: Batch { tx, .. },
                ..
            } => {
                let sql = "UPDATE pizzeria_stock SET units = units - n.value FROM json_each($1) n \
                           WHERE pizzeria_stock.ingredient = n.key AND units >= n.value \
                           RETURNING ingredient";
                let wanted: serde_json::Map<String, serde_json::Value> = needs
                    .iter()
                    .map(|(ingredient, units)| ((*ingredient).to_owned(), (*units).into()))
                    .collect();
                sqlx::query_scalar(sql)
                    .bind(serde_json::Value::Object(wanted).to_string())
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(storage("take from the shelf"))?
            }
            // PostgreSQL: one row after the other, in name order, so that two inventories
            // never wait for each other's rows in a cycle.
            Unit::Postgres { tx, .. } => {
                let sql = "UPDATE pizzeria_stock SET units = units - $1 \
                           WHERE ingredient = $2 AND units >= $1 RETURNING ingredient";
                let mut taken = Vec::new();
                for (ingredient, units) in &needs {
                    let row: Option<String> = sqlx::query_scalar(sql)
                        .bind(i64::try_from(*units).unwrap_or(i64::MAX))
                        .bind(*ingredient)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(storage("take from the shelf"))?;
                    taken.extend(row);
                }
                taken
            }
        };
        Ok(needs
            .iter()
            .filter(|(ingredient, _)| !taken.iter().any(|t| t == ingredient))
            .map(|(ingredient, _)| (*ingredient).to_owned())
            .collect())
    }

    /// Puts `needs` back on the shelf.
    pub(crate) async fn put_back(&mut self, needs: &[(&'static str, u64)]) -> Result<(), Error> {
        let mut needs = needs.to_vec();
        needs.sort_unstable();
        let sql = "UPDATE pizzeria_stock SET units = units + $1 WHERE ingredient = $2";
        for (ingredient, units) in needs {
            on_unit!(self, tx, _p => sqlx::query(sql)
                .bind(i64::try_from(units).unwrap_or(i64::MAX))
                .bind(ingredient)
                .execute(&mut **tx)
                .await
                .map_err(storage("put back on the shelf"))
            .map(drop)?);
        }
        Ok(())
    }

    /// Appends a reservation row; `pizzas` are menu indices.
    pub(crate) async fn reservation(
        &mut self,
        order_id: &str,
        kind: &str,
        pizzas: &[u8],
        cause: &Envelope,
    ) -> Result<(), Error> {
        let pizzas: Vec<String> = pizzas.iter().map(ToString::to_string).collect();
        let sql = "INSERT INTO pizzeria_inventory_reservations (order_id, kind, pizzas, cause_id, at_ms) \
                   VALUES ($1, $2, $3, $4, $5)";
        on_unit!(self, tx, _p => sqlx::query(sql)
            .bind(order_id)
            .bind(kind)
            .bind(pizzas.join(","))
            .bind(cause.id.as_str())
            .bind(now())
            .execute(&mut **tx)
            .await
            .map_err(storage("write the reservation"))
            .map(drop)?);
        Ok(())
    }

    /// The pizzas (menu indices) reserved for `order_id` and not released, if any.
    pub(crate) async fn releasable(&mut self, order_id: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(match self.reservations(order_id).await? {
            (Some(pizzas), false) => Some(pizzas),
            _ => None,
        })
    }

    /// Stages `event` as an effect of `cause` (same subject, causation and correlation): it is
    /// published after the commit.
    pub(crate) async fn stage<E: Event>(
        &mut self,
        source: &str,
        event: &E,
        cause: &Envelope,
    ) -> Result<(), Error> {
        let mut envelope = Envelope::new(source, event)?.caused_by(cause);
        envelope.subject.clone_from(&cause.subject);
        on_unit!(self, tx, p => p.outbox.stage(tx, TOPIC, &envelope).await)
    }

    /// Commits (on SQLite: waits until the batch holding this unit committed), then wakes
    /// this process's relay. Returns only once the unit is durable as far as the store
    /// promises: the handler may then acknowledge its event.
    pub(crate) async fn commit(self) -> Result<(), Error> {
        match self {
            Unit::Sqlite {
                batch,
                slot,
                batcher,
                parts,
                ..
            } => batcher.leave(batch, slot, &parts.outbox).await,
            Unit::Postgres { tx, parts, .. } => parts.outbox.commit(tx).await,
        }
    }

    /// Rolls this unit's work back (on SQLite, to its savepoint: the other units of the batch
    /// keep theirs).
    pub(crate) async fn rollback(self) -> Result<(), Error> {
        match self {
            Unit::Sqlite {
                mut batch,
                slot,
                first,
                batcher,
                parts,
            } => {
                if first {
                    // Nothing else is in the transaction: end it.
                    let Batch { tx, .. } = batch;
                    drop(slot);
                    return tx.rollback().await.map_err(storage("roll back"));
                }
                sqlx::query("ROLLBACK TO pizzeria_unit")
                    .execute(&mut *batch.tx)
                    .await
                    .map_err(storage("roll back to the unit's savepoint"))?;
                // The batch goes on (or commits) for the others; this unit changed nothing,
                // whatever becomes of the batch.
                let _ = batcher.leave(batch, slot, &parts.outbox).await;
                Ok(())
            }
            Unit::Postgres { tx, .. } => tx.rollback().await.map_err(storage("roll back")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::menu::RARE_INGREDIENT;
    use crate::services::inventory::{GENEROUS, Stock};
    use crate::services::store::kind;

    /// Takes from `store`'s shelf: all or nothing, naming what is short (an ingredient the
    /// shelf never had included), and nothing left taken after a rollback.
    async fn the_shelf_is_taken_all_or_nothing(store: &Store) {
        store
            .restock(&Stock::generous().with(RARE_INGREDIENT, 1))
            .await
            .unwrap();
        let mut unit = store.begin().await.unwrap();
        let missing = unit
            .take(&[("dough", 2), (RARE_INGREDIENT, 2), ("unicorn", 1)])
            .await
            .unwrap();
        assert_eq!(missing, [RARE_INGREDIENT, "unicorn"]);
        unit.rollback().await.unwrap();
        assert_eq!(store.level("dough").await.unwrap(), GENEROUS);
        assert_eq!(store.level(RARE_INGREDIENT).await.unwrap(), 1);

        let mut unit = store.begin().await.unwrap();
        let missing = unit
            .take(&[(RARE_INGREDIENT, 1), ("dough", 2)])
            .await
            .unwrap();
        assert!(missing.is_empty(), "{missing:?}");
        unit.commit().await.unwrap();
        assert_eq!(store.level("dough").await.unwrap(), GENEROUS - 2);
        assert_eq!(store.level(RARE_INGREDIENT).await.unwrap(), 0);
    }

    /// Begins a unit on `store` and returns once it waits for the slot that `holder` holds.
    async fn second_unit(store: &Store) -> tokio::task::JoinHandle<Unit> {
        let Ok(Db::Sqlite(p)) = store.db().await else {
            panic!("a SQLite store")
        };
        let Gate::Batches(batcher) = p.gate.clone() else {
            panic!("a batcher")
        };
        let waiting = batcher.waiting.load(Ordering::SeqCst);
        let next = {
            let store = store.clone();
            tokio::spawn(async move { store.begin().await.unwrap() })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while batcher.waiting.load(Ordering::SeqCst) == waiting {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the second unit never waited"
            );
            tokio::task::yield_now().await;
        }
        next
    }

    async fn ledger_orders(store: &Store) -> Vec<String> {
        let Ok(Db::Sqlite(p)) = store.db().await else {
            panic!("a SQLite store")
        };
        sqlx::query_scalar("SELECT order_id FROM pizzeria_payment_ledger ORDER BY seq")
            .fetch_all(&p.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_unit_rolled_back_inside_a_batch_keeps_the_other_units() {
        let store = Store::memory();
        let cause = Envelope::raw("/test", "test.v1", "{}".into());
        let mut first = store.begin().await.unwrap();
        first
            .ledger("o-1", kind::CHARGE, 100, &cause)
            .await
            .unwrap();
        let second = second_unit(&store).await;
        // A unit waits for the slot: the first leaves the batch open for it and waits for
        // the commit.
        let committed = tokio::spawn(first.commit());
        let mut second = second.await.unwrap();
        second
            .ledger("o-2", kind::CHARGE, 100, &cause)
            .await
            .unwrap();
        second.rollback().await.unwrap();
        committed.await.unwrap().unwrap();
        assert_eq!(ledger_orders(&store).await, ["o-1"]);
    }

    #[tokio::test]
    async fn a_unit_dropped_half_way_fails_its_whole_batch() {
        let store = Store::memory();
        let cause = Envelope::raw("/test", "test.v1", "{}".into());
        let mut first = store.begin().await.unwrap();
        first
            .ledger("o-1", kind::CHARGE, 100, &cause)
            .await
            .unwrap();
        let second = second_unit(&store).await;
        let committed = tokio::spawn(first.commit());
        let mut second = second.await.unwrap();
        second
            .ledger("o-2", kind::CHARGE, 100, &cause)
            .await
            .unwrap();
        drop(second); // a handler that failed (or was cancelled) half-way
        let error = committed.await.unwrap().err().map(|e| e.kind());
        assert_eq!(
            error,
            Some(ErrorKind::Storage),
            "the first unit's commit must fail"
        );
        assert!(ledger_orders(&store).await.is_empty());
        // The store goes on.
        let mut third = store.begin().await.unwrap();
        third
            .ledger("o-3", kind::CHARGE, 100, &cause)
            .await
            .unwrap();
        third.commit().await.unwrap();
        assert_eq!(ledger_orders(&store).await, ["o-3"]);
    }

    #[tokio::test]
    async fn sqlite_takes_the_shelf_in_one_statement_all_or_nothing() {
        the_shelf_is_taken_all_or_nothing(&Store::memory()).await;
    }

    #[tokio::test]
    async fn postgres_takes_the_shelf_row_by_row_all_or_nothing() {
        const SERVER: &str = "postgres://postgres@127.0.0.1:5432";
        let admin = match sqlx::PgPool::connect(&format!("{SERVER}/test")).await {
            Ok(admin) => admin,
            Err(e) => {
                assert!(
                    std::env::var_os("TABGRAB_REQUIRE_SERVICES").is_none(),
                    "PostgreSQL is required (TABGRAB_REQUIRE_SERVICES is set): {e}"
                );
                return;
            }
        };
        let name = format!("pizzeria_take_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let store = Store::open(&format!("{SERVER}/{name}")).await.unwrap();
        the_shelf_is_taken_all_or_nothing(&store).await;
        if let Ok(Db::Postgres(p)) = store.db().await {
            p.pool.close().await;
        }
        // FORCE: a closed connection's server process may still be exiting (the store's
        // probe connection, for one), and PostgreSQL counts it as a session until it is gone.
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&admin)
            .await
            .unwrap();
    }
}
