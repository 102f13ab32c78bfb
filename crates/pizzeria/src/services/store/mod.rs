//! The durable state of payment and inventory: their effects (the ledger, the reservations,
//! the shelf), their inboxes and their outbox, in one SQL database.
//!
//! # Why one transaction per event
//! Delivery is at least once, and a service can die between any two steps. So each handler of
//! payment and inventory does all of its work in **one transaction** of this database
//! ([`Unit`]): it records the event's id in its group's inbox (a redelivered event finds the id
//! and changes nothing), applies its effect (a ledger row, a reservation and the stock it
//! takes), and stages the events it publishes in the outbox. The relay publishes them after
//! the commit, keeping their ids, so a crash anywhere leaves either nothing (the event is
//! redelivered and handled as the first time) or everything (the redelivery is a duplicate,
//! and the staged events are published by the next relay). Payment therefore charges once per
//! order, inventory reserves once, and a refund or a release happens at most once.
//!
//! # One row per order, to serialise an order's handlers
//! `OrderAccepted` and `OrderCancelled` of one order may be handled at the same moment (by two
//! members of a group, or after a crash that redelivers the first past the second). Every
//! handler therefore first upserts its service's row for the order in
//! `pizzeria_order_state`: on PostgreSQL the upsert holds the row's lock until the commit, so
//! the second handler waits and then sees what the first did (SQLite has one writer anyway).
//! The row also remembers a cancellation that came first, so that a late `OrderAccepted` of a
//! cancelled order charges and reserves nothing.
//!
//! # Where
//! - `sqlite:PATH`: a file, the default next to the embedded bus (`<data-dir>/effects.sqlite`),
//!   in WAL mode with `synchronous = NORMAL`: a committed transaction survives a crash of the
//!   process (kill -9); a power loss may lose the last transactions, each whole (inbox, effect
//!   and outbox together).
//! - `postgres://…`: several processes share it (several payment or inventory members, or
//!   one that restarts elsewhere); `FOR UPDATE SKIP LOCKED` lets their relays share the outbox.
//! - `memory`: a private SQLite database in memory, for tests and the lab: the same
//!   transactions, gone with the process.
//!
//! # What a unit costs, and group commit on SQLite
//! On SQLite every statement is a round trip to the thread sqlx runs for the one connection;
//! on two cores that round trip (two context switches, roughly 50 µs) costs far more than
//! SQLite's own work, and units run one after the other. So a unit keeps its round trips few
//! (the shelf is taken in one statement), and on SQLite the units of several events share one
//! transaction, each under a savepoint, committed together (`Batcher`): a unit that joins the
//! open batch makes one round trip where a transaction of its own made three or four
//! (`BEGIN`, `COMMIT`, the pool's check of the connection), and the relay waits for at most
//! one batch instead of queueing behind a hundred handlers. A unit's `commit` returns once
//! its batch committed, so a handler still acknowledges its event only when its inbox record,
//! effect and staged events are durable together. On PostgreSQL each unit keeps a
//! transaction of its own on a connection of the pool.
//!
//! The tables are `pizzeria_payment_ledger` (one row per charge or refund),
//! `pizzeria_inventory_reservations` (one row per reservation or release), `pizzeria_stock`,
//! `pizzeria_order_state`, and tabgrab's `tabgrab_inbox` and `tabgrab_outbox`.

use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::Postgres;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Pool, Transaction};
use tabgrab::backend::Bus;
use tabgrab::inbox::{Inbox, InboxStats, Pruner};
use tabgrab::outbox::{Outbox, OutboxStats, Relay};
use tabgrab::{Envelope, Error, ErrorKind, Event};

use tokio::sync::{OnceCell, OwnedMutexGuard};

use super::inventory::Stock;
use crate::messages::TOPIC;

mod batch;
use batch::{Batch, Batcher};

/// How long the inboxes remember a handled event's id: far beyond any redelivery (a broker's
/// ack wait and backoff, a restart), so a late copy is still recognised.
pub const INBOX_RETENTION: Duration = tabgrab::inbox::DEFAULT_RETENTION;

/// How often the inboxes are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The consumer groups that keep an inbox here.
const GROUPS: [&str; 2] = [super::payment::GROUP, super::inventory::GROUP];

/// Where a [`Store`] keeps its data, parsed from the `--store` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// A private SQLite database in memory (not durable).
    Memory,
    /// A SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl StoreUrl {
    /// Parses `memory`, `sqlite:PATH` (or `sqlite://PATH`) and `postgres://…` /
    /// `postgresql://…`.
    pub fn parse(url: &str) -> Result<StoreUrl, Error> {
        if url == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_owned()));
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
        {
            return Ok(StoreUrl::Sqlite(path.into()));
        }
        Err(Error::new(
            ErrorKind::Malformed,
            format!(
                "store {url:?} is not a store URL: use sqlite:PATH, postgres://user@host/db or memory"
            ),
        ))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory"),
            StoreUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreUrl::Postgres(url) => {
                // Never print a password.
                let shown = match url.split_once('@') {
                    Some((_, host)) => format!("postgres://…@{host}"),
                    None => url.clone(),
                };
                f.write_str(&shown)
            }
        }
    }
}

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
            gate: self.gate.clone(),
        }
    }
}

impl<DB: tabgrab::sql::Database> Parts<DB> {
    fn inbox(&self, group: &str) -> &Inbox<DB> {
        if group == super::payment::GROUP {
            &self.payment
        } else {
            &self.inventory
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

/// A `Storage` error about the pizzeria's store.
fn storage(operation: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| {
        Error::new(
            ErrorKind::Storage,
            format!(
                "pizzeria store: {operation} failed; check that the database is reachable and writable"
            ),
        )
        .with_source(e)
    }
}

/// The pizzeria's own tables; `{seq}` is the dialect's auto-increment key.
const SCHEMA: [&str; 6] = [
    "CREATE TABLE IF NOT EXISTS pizzeria_payment_ledger (seq {seq}, order_id TEXT NOT NULL, \
     kind TEXT NOT NULL, amount_cents BIGINT NOT NULL, cause_id TEXT NOT NULL, at_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pizzeria_payment_ledger_order ON pizzeria_payment_ledger (order_id)",
    "CREATE TABLE IF NOT EXISTS pizzeria_inventory_reservations (seq {seq}, order_id TEXT NOT NULL, \
     kind TEXT NOT NULL, pizzas TEXT NOT NULL, cause_id TEXT NOT NULL, at_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS pizzeria_inventory_reservations_order \
     ON pizzeria_inventory_reservations (order_id)",
    "CREATE TABLE IF NOT EXISTS pizzeria_stock (ingredient TEXT PRIMARY KEY, units BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pizzeria_order_state (service TEXT NOT NULL, order_id TEXT NOT NULL, \
     cancelled BIGINT NOT NULL, PRIMARY KEY (service, order_id))",
];

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

    /// Starts a relay that publishes the staged events to the pizzeria topic of `bus`, and
    /// the pruners that keep the two inboxes to [`INBOX_RETENTION`] (hourly). Several relays
    /// may run on one PostgreSQL store (one per process; pruning twice is harmless).
    pub fn relay(&self, bus: &Bus) -> StoreRelay {
        let store = self.clone();
        let bus = bus.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let db = store.db().await?;
            let relay: Relay = on_db!(db, p => p.outbox.relay(bus).poll_interval(Duration::from_millis(50)).start());
            let pruners: [Pruner; 2] = on_db!(db, p => [
                p.payment.spawn_pruner(PRUNE_EVERY, INBOX_RETENTION),
                p.inventory.spawn_pruner(PRUNE_EVERY, INBOX_RETENTION),
            ]);
            stopped.cancelled().await;
            for pruner in pruners {
                pruner.shutdown().await;
            }
            relay.shutdown().await
        });
        StoreRelay {
            stop,
            task: Some(task),
        }
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
        }))
    }

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

    /// Reads the ledger and the reservations back and checks them: exactly one charge per
    /// charged order, at most one refund and only of a charge, at most one reservation and one
    /// release per order and a release only of a reservation.
    pub async fn audit(&self) -> Result<Audit, Error> {
        /// One ledger or reservation row: the order and what happened to it.
        type Row = (String, String);
        let (payments, reservations): (Vec<Row>, Vec<Row>) = on_db!(self.db().await?, p => {
            let payments = sqlx::query_as(
                "SELECT order_id, kind FROM pizzeria_payment_ledger ORDER BY seq",
            )
            .fetch_all(&p.pool)
            .await
            .map_err(storage("read the ledger"))?;
            let reservations = sqlx::query_as(
                "SELECT order_id, kind FROM pizzeria_inventory_reservations ORDER BY seq",
            )
            .fetch_all(&p.pool)
            .await
            .map_err(storage("read the reservations"))?;
            (payments, reservations)
        });
        Ok(Audit::of(&payments, &reservations))
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

/// Connects and creates the tables.
async fn connect(url: &StoreUrl) -> Result<Db, Error> {
    match url {
        StoreUrl::Memory | StoreUrl::Sqlite(_) => {
            let options = match url {
                StoreUrl::Sqlite(path) => {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            Error::new(
                                ErrorKind::Storage,
                                format!("pizzeria store: cannot create {}", dir.display()),
                            )
                            .with_source(e)
                        })?;
                    }
                    SqliteConnectOptions::new()
                        .filename(path)
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        // A unit's savepoint journal (see `Batcher`) in memory: in a file it
                        // cost a write per page changed (measured with perf).
                        .pragma("temp_store", "memory")
                }
                _ => SqliteConnectOptions::from_str("sqlite::memory:")
                    .map_err(storage("open the memory database"))?,
            }
            .busy_timeout(Duration::from_secs(30));
            // One connection: SQLite has one writer at a time, and a pool queue is fairer and
            // cheaper than connections spinning on the file lock (and a memory database lives
            // as long as its one connection).
            // No ping before each acquire: a SQLite connection is a file, not a socket that
            // a peer may close, and every ping is one more round trip to sqlx's SQLite thread.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .test_before_acquire(false)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(options)
                .await
                .map_err(storage("open SQLite"))?;
            for sql in SCHEMA {
                let sql = sql.replace("{seq}", "INTEGER PRIMARY KEY AUTOINCREMENT");
                sqlx::query(&sql)
                    .execute(&pool)
                    .await
                    .map_err(storage("create the tables"))?;
            }
            Ok(Db::Sqlite(Parts {
                outbox: Outbox::sqlite(pool.clone()).await?,
                payment: Inbox::sqlite(pool.clone(), GROUPS[0]).await?,
                inventory: Inbox::sqlite(pool.clone(), GROUPS[1]).await?,
                gate: Gate::Batches(Arc::new(Batcher::default())),
                pool,
            }))
        }
        StoreUrl::Postgres(url) => {
            // Probes with one direct connection first: a refused one is reported at once,
            // with its reason, not after the pool's acquire timeout as "pool timed out".
            let pool = tabgrab::sql::connect_postgres(
                url,
                16,
                Duration::from_secs(30),
                Duration::from_secs(10),
            )
            .await
            .map_err(storage("connect to PostgreSQL"))?;
            // Processes starting together race on CREATE .. IF NOT EXISTS (PostgreSQL reports
            // a unique violation to the loser): a few tries, then the tables are there.
            let mut attempt = 0;
            loop {
                attempt += 1;
                match create_pg(&pool).await {
                    Ok(parts) => return Ok(Db::Postgres(parts)),
                    Err(e) if attempt >= 5 => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100 * attempt)).await,
                }
            }
        }
    }
}

async fn create_pg(pool: &Pool<Postgres>) -> Result<Parts<Postgres>, Error> {
    for sql in SCHEMA {
        let sql = sql.replace("{seq}", "BIGSERIAL PRIMARY KEY");
        sqlx::query(&sql)
            .execute(pool)
            .await
            .map_err(storage("create the tables"))?;
    }
    Ok(Parts {
        outbox: Outbox::postgres(pool.clone()).await?,
        payment: Inbox::postgres(pool.clone(), GROUPS[0]).await?,
        inventory: Inbox::postgres(pool.clone(), GROUPS[1]).await?,
        gate: Gate::Pool,
        pool: pool.clone(),
    })
}

/// The relay of a [`Store`], started by [`Store::relay`].
#[derive(Debug)]
pub struct StoreRelay {
    /// Stops the relay.
    stop: tokio_util::sync::CancellationToken,
    /// Opens the store, runs the relay, stops it.
    task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
}

impl StoreRelay {
    /// Stops the relay after its current round and waits.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(|e| {
                Error::new(ErrorKind::Closed, "the pizzeria's outbox relay failed").with_source(e)
            })?,
            None => Ok(()),
        }
    }
}

impl Drop for StoreRelay {
    fn drop(&mut self) {
        self.stop.cancel();
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
}

impl StoreStats {
    /// Duplicate deliveries the two inboxes absorbed.
    pub fn duplicates(&self) -> u64 {
        self.payment.duplicates + self.inventory.duplicates
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

/// What [`Store::audit`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Orders charged.
    pub charged: u64,
    /// Orders refunded.
    pub refunded: u64,
    /// Orders whose ingredients were reserved.
    pub reserved: u64,
    /// Orders whose ingredients were released.
    pub released: u64,
    /// Broken promises, one line each: must be empty.
    pub violations: Vec<String>,
}

/// An effect and the one that undoes it (a charge and its refund, a reservation and its
/// release): each at most once per order, and no undoing without the effect before it.
struct Pair {
    done: &'static str,
    undone: &'static str,
    done_word: &'static str,
    undone_word: &'static str,
    before: &'static str,
    table: &'static str,
}

impl Pair {
    /// Counts the orders with the effect and with its undoing; adds the broken rules to
    /// `violations`.
    fn tally(&self, rows: &[(String, String)], violations: &mut Vec<String>) -> (u64, u64) {
        use std::collections::HashMap;
        let mut per_order: HashMap<&str, (u32, u32)> = HashMap::new();
        for (order, k) in rows {
            let entry = per_order.entry(order.as_str()).or_default();
            if k == self.done {
                entry.0 += 1;
            } else if k == self.undone {
                if entry.0 == 0 {
                    violations.push(format!(
                        "order {order}: {} without {} before",
                        self.undone_word, self.before
                    ));
                }
                entry.1 += 1;
            } else {
                violations.push(format!("order {order}: unknown {} row {k:?}", self.table));
            }
        }
        let (mut done, mut undone) = (0, 0);
        for (order, (n_done, n_undone)) in &per_order {
            done += u64::from(*n_done > 0);
            undone += u64::from(*n_undone > 0);
            if *n_done > 1 {
                violations.push(format!("order {order}: {} {n_done} times", self.done_word));
            }
            if *n_undone > 1 {
                violations.push(format!(
                    "order {order}: {} {n_undone} times",
                    self.undone_word
                ));
            }
        }
        (done, undone)
    }
}

impl Audit {
    /// Checks rows (order id, kind) of the ledger and of the reservations, in order.
    pub fn of(payments: &[(String, String)], reservations: &[(String, String)]) -> Audit {
        let mut audit = Audit::default();
        let payment = Pair {
            done: kind::CHARGE,
            undone: kind::REFUND,
            done_word: "charged",
            undone_word: "refunded",
            before: "a charge",
            table: "ledger",
        };
        (audit.charged, audit.refunded) = payment.tally(payments, &mut audit.violations);
        let inventory = Pair {
            done: kind::RESERVE,
            undone: kind::RELEASE,
            done_word: "reserved",
            undone_word: "released",
            before: "a reservation",
            table: "reservation",
        };
        (audit.reserved, audit.released) = inventory.tally(reservations, &mut audit.violations);
        audit.violations.sort();
        audit
    }

    /// No violation.
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} charged, {} refunded, {} reserved, {} released, {} violations",
            self.charged,
            self.refunded,
            self.reserved,
            self.released,
            self.violations.len()
        )?;
        for v in self.violations.iter().take(10) {
            write!(f, "\n  {v}")?;
        }
        Ok(())
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

/// Runs `$body` with `$tx` (the transaction) and `$p` (the parts) of either database.
macro_rules! on_unit {
    ($unit:expr, $tx:ident, $p:ident => $body:expr) => {
        match $unit {
            Unit::Sqlite {
                batch: Batch { tx: $tx, .. },
                parts: $p,
                ..
            } => $body,
            Unit::Postgres {
                tx: $tx, parts: $p, ..
            } => $body,
        }
    };
}

/// Milliseconds since the epoch, as the tables store it.
fn now() -> i64 {
    i64::try_from(super::now_ms()).unwrap_or(i64::MAX)
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
        let sql = "SELECT kind, amount_cents FROM pizzeria_payment_ledger WHERE order_id = $1 ORDER BY seq";
        let rows: Vec<(String, i64)> = on_unit!(self, tx, _p => sqlx::query_as(sql)
            .bind(order_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(storage("read the ledger"))?);
        let charged = rows.iter().find(|(k, _)| k == kind::CHARGE);
        let refunded = rows.iter().any(|(k, _)| k == kind::REFUND);
        Ok(match charged {
            Some((_, amount)) if !refunded => Some(u64::try_from(*amount).unwrap_or(0)),
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
        let sql = "SELECT kind, pizzas FROM pizzeria_inventory_reservations WHERE order_id = $1 ORDER BY seq";
        let rows: Vec<(String, String)> = on_unit!(self, tx, _p => sqlx::query_as(sql)
            .bind(order_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(storage("read the reservations"))?);
        let reserved = rows.iter().find(|(k, _)| k == kind::RESERVE);
        let released = rows.iter().any(|(k, _)| k == kind::RELEASE);
        Ok(match reserved {
            Some((_, pizzas)) if !released => {
                Some(pizzas.split(',').filter_map(|p| p.parse().ok()).collect())
            }
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

    use super::*;
    use crate::menu::RARE_INGREDIENT;
    use crate::services::inventory::GENEROUS;

    /// A PostgreSQL that refuses the connection is reported at once, with the reason, not
    /// after the pool's 30 s acquire timeout as "pool timed out".
    #[tokio::test]
    async fn an_unreachable_postgres_is_reported_at_once_with_the_reason() {
        let started = std::time::Instant::now();
        // Port 1 on loopback: nothing listens, the kernel refuses at once.
        let error = match Store::open("postgres://nobody@127.0.0.1:1/x").await {
            Ok(_) => panic!("nothing listens on port 1"),
            Err(e) => e,
        };
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(error.kind(), ErrorKind::Storage);
        let chain = format!("{error:#}");
        let mut source = std::error::Error::source(&error);
        let mut causes = String::new();
        while let Some(cause) = source {
            causes.push_str(&cause.to_string());
            source = cause.source();
        }
        assert!(
            causes.to_lowercase().contains("refused"),
            "the reason is kept: {chain} / {causes}"
        );
    }

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

    #[test]
    fn store_urls_parse_and_hide_passwords() {
        assert_eq!(StoreUrl::parse("memory").ok(), Some(StoreUrl::Memory));
        assert_eq!(
            StoreUrl::parse("sqlite:./d/e.sqlite").ok(),
            Some(StoreUrl::Sqlite("./d/e.sqlite".into()))
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///tmp/e.sqlite").ok(),
            Some(StoreUrl::Sqlite("/tmp/e.sqlite".into()))
        );
        let pg = StoreUrl::parse("postgres://u:secret@h:5432/db").ok();
        assert_eq!(
            pg.map(|u| u.to_string()).as_deref(),
            Some("postgres://…@h:5432/db")
        );
        let bad = StoreUrl::parse("mysql://x").err().map(|e| e.kind());
        assert_eq!(bad, Some(ErrorKind::Malformed));
        assert!(StoreUrl::parse("sqlite:").is_err());
    }

    #[test]
    fn the_audit_finds_double_charges_and_refunds_without_a_charge() {
        let row = |o: &str, k: &str| (o.to_owned(), k.to_owned());
        let good = Audit::of(
            &[row("a", "charge"), row("b", "charge"), row("b", "refund")],
            &[
                row("a", "reserve"),
                row("c", "reserve"),
                row("c", "release"),
            ],
        );
        assert!(good.is_valid(), "{good}");
        assert_eq!(
            (good.charged, good.refunded, good.reserved, good.released),
            (2, 1, 2, 1)
        );
        let bad = Audit::of(
            &[
                row("a", "charge"),
                row("a", "charge"),
                row("b", "refund"),
                row("a", "refund"),
                row("a", "refund"),
            ],
            &[
                row("c", "release"),
                row("d", "reserve"),
                row("d", "reserve"),
            ],
        );
        assert_eq!(
            bad.violations,
            [
                "order a: charged 2 times",
                "order a: refunded 2 times",
                "order b: refunded without a charge before",
                "order c: released without a reservation before",
                "order d: reserved 2 times",
            ],
            "{bad}"
        );
    }
}
