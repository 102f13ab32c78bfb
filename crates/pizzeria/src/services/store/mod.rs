//! The durable state of payment and inventory: their effects (the ledger, the reservations,
//! the shelf), their inboxes and their outbox, in one SQL database. The events style's
//! services write it per event; the call and messaging styles' back office
//! ([`crate::backoffice`]) writes the same tables per command (`commands`).
//!
//! # Why one transaction per event
//! Delivery is at least once, and a service can die between any two steps. So each handler of
//! payment and inventory does all of its work in **one transaction** of this database (a
//! `Unit`): it records the event's id in its group's inbox (a redelivered event finds the id
//! and changes nothing), applies its effect (a ledger row, a reservation and the stock it
//! takes), and stages the events it publishes in the outbox. The relay publishes them after
//! the commit, keeping their ids, so a crash anywhere leaves either nothing (the event is
//! redelivered and handled as the first time) or everything (the redelivery is a duplicate,
//! and the staged events are published by the next relay). Payment therefore charges once per
//! order, inventory reserves once, and a refund or a release happens at most once; an
//! [`Audit`] reads the ledger and the reservations back and checks exactly that.
//!
//! # Where
//! - `sqlite:PATH`: a file, the default next to the embedded bus (`<data-dir>/effects.sqlite`),
//!   in WAL mode with `synchronous = NORMAL`: a committed transaction survives a crash of the
//!   process (kill -9); a power loss may lose the last transactions, each whole (inbox, effect
//!   and outbox together). On SQLite the units of several events share one transaction, each
//!   under a savepoint (group commit); a unit's `commit` still returns only once its inbox
//!   record, effect and staged events are durable together.
//! - `postgres://…`: several processes share it (several payment or inventory members, or
//!   one that restarts elsewhere); `FOR UPDATE SKIP LOCKED` lets their relays share the outbox.
//!   Each unit is a transaction of its own on a connection of the pool.
//! - `memory`: a private SQLite database in memory, for tests and the lab: the same
//!   transactions, gone with the process.
//!
//! The tables are `pizzeria_payment_ledger` (one row per charge or refund),
//! `pizzeria_inventory_reservations` (one row per reservation or release), `pizzeria_stock`,
//! `pizzeria_order_state`, and tabgrab's `tabgrab_inbox` and `tabgrab_outbox`.
//!
//! # In the source
//! This file holds [`Store`] and what every part shares (the opened database, `on_db!`, the
//! shelf); the rest is one concept per module: `url` ([`StoreUrl`]), `connect` (the pools
//! and tables), `unit` (one handler's transaction, and why an order's handlers take a row
//! first), `commands` (the same effects asked for by command, in the call and messaging
//! styles), `batch` (SQLite's group commit), `relay` ([`StoreRelay`]) and `audit` ([`Audit`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Pool;
use sqlx::postgres::Postgres;
use sqlx::sqlite::Sqlite;
use tabgrab::inbox::{Inbox, InboxStats};
use tabgrab::outbox::{Outbox, OutboxStats};
use tabgrab::{Error, ErrorKind};

use tokio::sync::OnceCell;

use super::inventory::Stock;

pub use audit::Audit;
use batch::Batcher;
pub(crate) use commands::{Charge, Reservation};
use connect::connect;
pub(crate) use orders::OrderRow;
pub use relay::StoreRelay;
pub use url::StoreUrl;

/// How long the inboxes remember a handled event's id: far beyond any redelivery (a broker's
/// ack wait and backoff, a restart), so a late copy is still recognised.
pub const INBOX_RETENTION: Duration = tabgrab::inbox::DEFAULT_RETENTION;

/// The pool, outbox and inboxes on one kind of database.
pub(crate) struct Parts<DB: tabgrab::sql::Database> {
    /// The connections.
    pool: Pool<DB>,
    /// Events staged by handlers, published by the relay.
    outbox: Outbox<DB>,
    /// Payment's processed event ids.
    payment: Inbox<DB>,
    /// Inventory's processed event ids.
    inventory: Inbox<DB>,
    /// Delivery's processed event ids.
    delivery: Inbox<DB>,
    /// How handlers share the connections.
    gate: Gate<DB>,
}

/// How a store's handlers share its connections.
pub(crate) enum Gate<DB: tabgrab::sql::Database> {
    /// PostgreSQL: a transaction of its own per unit, on a connection of the pool (a limit
    /// in front of the pool's queue made runs slower, measured).
    Pool,
    /// SQLite: units one after the other, several per transaction.
    Batches(Arc<Batcher<DB>>),
}

impl<DB: tabgrab::sql::Database> Clone for Gate<DB> {
    fn clone(&self) -> Self {
        match self {
            Gate::Pool => Gate::Pool,
            Gate::Batches(b) => Gate::Batches(Arc::clone(b)),
        }
    }
}

impl<DB: tabgrab::sql::Database> Clone for Parts<DB> {
    fn clone(&self) -> Self {
        Parts {
            pool: self.pool.clone(),
            outbox: self.outbox.clone(),
            payment: self.payment.clone(),
            inventory: self.inventory.clone(),
            delivery: self.delivery.clone(),
            gate: self.gate.clone(),
        }
    }
}

impl<DB: tabgrab::sql::Database> Parts<DB> {
    fn inbox(&self, group: &str) -> &Inbox<DB> {
        match group {
            super::payment::GROUP => &self.payment,
            super::delivery::GROUP => &self.delivery,
            _ => &self.inventory,
        }
    }
}

/// The opened database.
#[derive(Clone)]
enum Db {
    /// SQLite (a file, or memory).
    Sqlite(Parts<Sqlite>),
    /// PostgreSQL.
    Postgres(Parts<Postgres>),
}

/// Runs `$body` with `$p` bound to the [`Parts`] of either database (the body is compiled for
/// each; the SQL in it must read the same in both, with `$1`-style placeholders).
macro_rules! on_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` with `$tx` (the transaction) and `$p` (the parts) of a [`unit::Unit`] on
/// either database.
macro_rules! on_unit {
    ($unit:expr, $tx:ident, $p:ident => $body:expr) => {
        match $unit {
            super::unit::Unit::Sqlite {
                batch: super::batch::Batch { tx: $tx, .. },
                parts: $p,
                ..
            } => $body,
            super::unit::Unit::Postgres {
                tx: $tx, parts: $p, ..
            } => $body,
        }
    };
}

// Declared after `on_db!` and `on_unit!`, which they use.
mod audit;
mod batch;
mod commands;
mod connect;
mod orders;
mod rail;
mod relay;
mod unit;
mod url;

/// The durable state of payment and inventory. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Store {
    /// Shared by clones.
    inner: Arc<StoreInner>,
}

struct StoreInner {
    /// Where the data is.
    url: StoreUrl,
    /// The database, opened at the first use (at once by [`Store::open`]).
    db: OnceCell<Db>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.inner.url.to_string())
            .finish_non_exhaustive()
    }
}

/// A `Storage` error about the pizzeria's store, or `Unauthenticated` when the database
/// refused the credentials (no retry cures that).
fn storage(operation: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| {
        if tabgrab::sql::refused_credentials(&e) {
            return Error::new(
                ErrorKind::Unauthenticated,
                format!(
                    "pizzeria store: {operation} failed: the database refused the credentials: {e}"
                ),
            )
            .with_source(e);
        }
        Error::new(
            ErrorKind::Storage,
            format!(
                "pizzeria store: {operation} failed; check that the database is reachable and writable"
            ),
        )
        .with_source(e)
    }
}

impl Store {
    /// A private store in memory: the same transactions as a durable one, gone with the
    /// process. Opened at its first use, so this needs no runtime.
    pub fn memory() -> Store {
        Store::lazy(StoreUrl::Memory)
    }

    fn lazy(url: StoreUrl) -> Store {
        Store {
            inner: Arc::new(StoreInner {
                url,
                db: OnceCell::new(),
            }),
        }
    }

    /// Opens the store at `url` (see [`StoreUrl::parse`]), creating its tables if needed.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tabgrab::Error> {
    /// use pizzeria::services::Store;
    ///
    /// let store = Store::open("sqlite:./pizzeria-data/effects.sqlite").await?;
    /// println!("{}", store.audit().await?);
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<Store, Error> {
        let store = Store::lazy(StoreUrl::parse(url)?);
        store.db().await?;
        Ok(store)
    }

    /// Opens a SQLite store in the file at `path`.
    pub async fn sqlite(path: impl AsRef<Path>) -> Result<Store, Error> {
        let store = Store::lazy(StoreUrl::Sqlite(path.as_ref().to_owned()));
        store.db().await?;
        Ok(store)
    }

    /// Where the data is.
    pub fn url(&self) -> &StoreUrl {
        &self.inner.url
    }

    async fn db(&self) -> Result<&Db, Error> {
        self.inner
            .db
            .get_or_try_init(|| connect(&self.inner.url))
            .await
    }

    /// Staged events not yet published (in every process).
    pub async fn pending(&self) -> Result<u64, Error> {
        on_db!(self.db().await?, p => p.outbox.pending().await)
    }

    /// This process's counters of the outbox and of the two inboxes.
    pub async fn stats(&self) -> Result<StoreStats, Error> {
        Ok(on_db!(self.db().await?, p => StoreStats {
            outbox: p.outbox.stats(),
            payment: p.payment.stats(),
            inventory: p.inventory.stats(),
            delivery: p.delivery.stats(),
        }))
    }

    /// Puts `stock` on the shelf where the shelf has no level yet for an ingredient (a new
    /// store); a store that has one keeps it (a restarted inventory does not restock).
    pub async fn open_shelf(&self, stock: &Stock) -> Result<(), Error> {
        self.shelve(stock, "DO NOTHING").await
    }

    /// Sets the shelf to `stock`, whatever it held: a new day (`pizzeria run` restocks before
    /// its first order).
    pub async fn restock(&self, stock: &Stock) -> Result<(), Error> {
        self.shelve(stock, "DO UPDATE SET units = excluded.units")
            .await
    }

    async fn shelve(&self, stock: &Stock, on_conflict: &str) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO pizzeria_stock (ingredient, units) VALUES ($1, $2) \
             ON CONFLICT (ingredient) {on_conflict}"
        );
        on_db!(self.db().await?, p => {
            let mut tx = p.pool.begin().await.map_err(storage("begin"))?;
            for (ingredient, units) in stock.levels() {
                sqlx::query(&sql)
                    .bind(ingredient)
                    .bind(i64::try_from(units).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await
                    .map_err(storage("stock the shelf"))?;
            }
            tx.commit().await.map_err(storage("commit the shelf"))?;
        });
        Ok(())
    }

    /// Units of `ingredient` on the shelf (0 for one never stocked).
    pub async fn level(&self, ingredient: &str) -> Result<u64, Error> {
        let units: Option<i64> = on_db!(self.db().await?, p => {
            sqlx::query_scalar("SELECT units FROM pizzeria_stock WHERE ingredient = $1")
                .bind(ingredient)
                .fetch_optional(&p.pool)
                .await
                .map_err(storage("read the shelf"))?
        });
        Ok(units.map_or(0, |u| u64::try_from(u).unwrap_or(0)))
    }
}

impl Store {
    /// Every effect row, as (`payment:charge` | `payment:refund` | `inventory:reserve` |
    /// `inventory:release`, the id of the event that caused it): what an effects checker
    /// compares with the events on the bus.
    pub async fn effects(&self) -> Result<Vec<(String, String)>, Error> {
        let sql = "SELECT 'payment:' || kind, cause_id FROM pizzeria_payment_ledger \
                   UNION ALL SELECT 'inventory:' || kind, cause_id FROM pizzeria_inventory_reservations";
        Ok(on_db!(self.db().await?, p => sqlx::query_as(sql)
            .fetch_all(&p.pool)
            .await
            .map_err(storage("read the effects"))?))
    }
}

/// This process's counters of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// The outbox and its relays.
    pub outbox: OutboxStats,
    /// Payment's inbox: `duplicates` are redeliveries that changed nothing.
    pub payment: InboxStats,
    /// Inventory's inbox.
    pub inventory: InboxStats,
    /// Delivery's inbox.
    pub delivery: InboxStats,
}

impl StoreStats {
    /// Duplicate deliveries the two inboxes absorbed.
    pub fn duplicates(&self) -> u64 {
        self.payment.duplicates + self.inventory.duplicates + self.delivery.duplicates
    }
}

/// Kinds of ledger and reservation rows.
pub(crate) mod kind {
    /// Payment took the order's money.
    pub(crate) const CHARGE: &str = "charge";
    /// Payment gave it back.
    pub(crate) const REFUND: &str = "refund";
    /// Inventory set the order's ingredients aside.
    pub(crate) const RESERVE: &str = "reserve";
    /// Inventory put them back.
    pub(crate) const RELEASE: &str = "release";
}
