//! The transactional outbox: events written in the same database transaction as the state
//! change they announce, and published by a relay after the commit.
//!
//! # Why
//! A service that changes its database and then publishes an event can crash in between, and
//! the two systems do not share a transaction. Publish first and crash before the commit: the
//! world hears of a change that never happened (a **ghost**). Commit first and crash before the
//! publish: the change happened and nobody hears of it (a **zombie**). An outbox removes both:
//! [`Outbox::stage`] inserts the event into a table of the application's own database, inside
//! the application's transaction, so the event exists if and only if the state change was
//! committed; a [`Relay`] then reads the table and publishes.
//!
//! # What the relay promises
//! - **No ghost:** only committed rows are visible to the relay.
//! - **No zombie:** a row is deleted only after the bus acknowledged its publish (durably); a
//!   relay that dies before that leaves the row, and the next relay publishes it again. A
//!   restarted relay catches up within its poll interval, plus (SQLite) the lease of the dead
//!   relay's claim: 2 s by default.
//! - **At least once, de-duplicated where the engine can:** a crash between the publish and
//!   the delete publishes the event again *with the same envelope id*; JetStream drops the
//!   copy within its duplicate window (`Nats-Msg-Id`), and an [`Inbox`](crate::inbox::Inbox)
//!   drops it on any engine (the embedded log does not de-duplicate publishes).
//! - **Order per subject:** events of one (topic, subject) are published in staging order,
//!   one after the other; different subjects are published concurrently. With several relays
//!   (several processes, or several relays in one) a relay never publishes a row while an
//!   earlier row of the same subject is held by another relay: PostgreSQL claims with
//!   `FOR UPDATE SKIP LOCKED` and holds the locks while it publishes, SQLite with leases the
//!   relay renews while it publishes. Two limits, both documented in the relay:
//!   "staging order" is the order of the rows' sequence numbers, which is the commit order when
//!   the application serialises the transactions that stage events of one subject (it does
//!   when they update that subject's row); and a relay stalled past its lease (SQLite) may
//!   publish a copy after its successor, out of order (the copy is a duplicate by id).
//! - **Bounded table:** sent rows are deleted in the transaction that ends the claim.
//! - **Bad input does not block a subject:** an event the bus refuses for good (too large for
//!   it, malformed) is moved, in the transaction that ends the claim, to the dead-letter
//!   table `<table>_dead` with the reason ([`Outbox::dead_letters`]), and the events behind
//!   it on its subject are published. A failure that a retry may fix (the bus down) keeps the
//!   row, and its subject waits.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tabgrab::Error> {
//! use std::time::Duration;
//! use tabgrab::backend::embedded::EmbeddedBus;
//! use tabgrab::outbox::Outbox;
//! use tabgrab::Envelope;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite://./data/app.db?mode=rwc").await
//!     .map_err(|e| tabgrab::Error::new(tabgrab::ErrorKind::Storage, e.to_string()))?;
//! let bus = EmbeddedBus::open("./data/bus")?;
//! let outbox = Outbox::sqlite(pool.clone()).await?;
//! let relay = outbox.relay(&bus).poll_interval(Duration::from_millis(100)).start();
//!
//! let event = Envelope::raw("/shop", "shop.order.accepted.v1", r#"{"order":"o-1"}"#.into())
//!     .with_subject("o-1");
//! let mut tx = pool.begin().await.map_err(|e| tabgrab::Error::new(tabgrab::ErrorKind::Storage, e.to_string()))?;
//! // ... the application's own writes in `tx` ...
//! outbox.stage(&mut tx, "orders", &event).await?;
//! outbox.commit(tx).await?; // commits, then wakes the relay
//! relay.shutdown().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::backend::Bus;
use crate::sql::{Database, db_error, now_ms, validate_table};
use crate::{Codec, Envelope, Error, ErrorKind, Topic};

pub(crate) mod dialect;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub(crate) use postgres::table_exists;
mod relay;
mod sqlite;
pub(crate) use sqlite::sqlite_exists;

pub use relay::{Relay, RelayBuilder, RelayEvent, RelayStats};

/// The default table name.
pub const DEFAULT_TABLE: &str = "tabgrab_outbox";

/// Counters shared by an outbox's clones and its relays.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// `stage` calls that inserted a row (their transaction may still roll back).
    pub(crate) staged: AtomicU64,
    /// Events whose publish the bus acknowledged.
    pub(crate) published: AtomicU64,
    /// Publishes the engine recognised as already done (same id): no second event.
    pub(crate) duplicates: AtomicU64,
    /// Publishes that failed (the row stays and is retried).
    pub(crate) publish_errors: AtomicU64,
    /// Claims, renewals or deletes that failed (retried after a poll interval).
    pub(crate) store_errors: AtomicU64,
    /// Rows moved to the dead-letter table.
    pub(crate) dead_lettered: AtomicU64,
    /// Rows deleted after their publish.
    pub(crate) marked_sent: AtomicU64,
}

/// A snapshot of an outbox's counters (this process only: every clone and relay of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Rows inserted by [`Outbox::stage`] (counted at the insert: a transaction that rolls
    /// back afterwards still counts).
    pub staged: u64,
    /// Events published by this outbox's relays (acknowledged by the bus).
    pub published: u64,
    /// Of those, publishes the engine recognised as duplicates of an earlier publish of the
    /// same id (a relay republishing after a crash); no second event was made.
    pub duplicates: u64,
    /// Failed publishes (the rows stay and are retried).
    pub publish_errors: u64,
    /// Failed claims, lease renewals or deletes.
    pub store_errors: u64,
    /// Rows deleted after their publish.
    pub marked_sent: u64,
    /// Rows the bus refused for good (too large, malformed), moved by a relay to the
    /// dead-letter table ([`Outbox::dead_letters`]).
    pub dead_lettered: u64,
}

/// A staged event the bus refused for good (too large for it, malformed), which a relay moved
/// out of the outbox into `<table>_dead` so that the events behind it on its subject flow.
/// Nothing is lost: the row keeps the envelope as it was staged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxDeadLetter {
    /// The row's staging sequence number.
    pub seq: i64,
    /// The envelope id.
    pub id: String,
    /// The topic it was staged for.
    pub topic: String,
    /// Its subject (empty when it had none).
    pub subject: String,
    /// The envelope as staged (the outbox codec's structured JSON).
    pub envelope: Vec<u8>,
    /// When it was staged, in milliseconds since the Unix epoch.
    pub staged_ms: i64,
    /// Publish attempts, the refused one included.
    pub attempts: i64,
    /// The error kind, e.g. `too_large`.
    pub reason: String,
    /// The bus's error, in words.
    pub error: String,
    /// When it was moved, in milliseconds since the Unix epoch.
    pub dead_ms: i64,
}

/// A transactional outbox in the application's database. Cheap to clone.
///
/// `DB` is `sqlx::Sqlite` ([`Outbox::sqlite`]) or `sqlx::Postgres` ([`Outbox::postgres`]).
pub struct Outbox<DB: Database> {
    /// The application's pool; relays take their connections from it.
    pub(crate) pool: sqlx::Pool<DB>,
    /// The table (validated, spliced into statements).
    pub(crate) table: Arc<str>,
    /// Encodes envelopes into rows (and checks their size at staging).
    pub(crate) codec: Codec,
    /// Bumped by [`Outbox::notify`]; relays wait on it between polls.
    pub(crate) wake: Arc<watch::Sender<u64>>,
    /// Counters shared with the relays.
    pub(crate) counters: Arc<Counters>,
}

impl<DB: Database> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Outbox {
            pool: self.pool.clone(),
            table: Arc::clone(&self.table),
            codec: self.codec,
            wake: Arc::clone(&self.wake),
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<DB: Database> std::fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("database", &<DB as dialect::OutboxSql>::NAME)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl Outbox<sqlx::Sqlite> {
    /// An outbox in table `tabgrab_outbox` of the SQLite database behind `pool` (the table
    /// is created if missing).
    ///
    /// Open the pool with a busy timeout (sqlx's default is 5 s): the relay and the
    /// application write to the same file.
    pub async fn sqlite(pool: sqlx::SqlitePool) -> Result<Outbox<sqlx::Sqlite>, Error> {
        Outbox::open(pool, DEFAULT_TABLE).await
    }

    /// [`Outbox::sqlite`] with another table name (`[a-z0-9_]`, at most 55 bytes, so that
    /// the names derived from it fit PostgreSQL's identifiers).
    pub async fn sqlite_table(
        pool: sqlx::SqlitePool,
        table: &str,
    ) -> Result<Outbox<sqlx::Sqlite>, Error> {
        Outbox::open(pool, table).await
    }
}

#[cfg(feature = "postgres")]
impl Outbox<sqlx::Postgres> {
    /// An outbox in table `tabgrab_outbox` of the PostgreSQL database behind `pool` (the
    /// table is created if missing). Several processes may run relays on it. Every relay on
    /// a table publishes any of its rows to the bus it was given: systems that share a
    /// database but not a bus need a table each ([`Outbox::postgres_table`]).
    pub async fn postgres(pool: sqlx::PgPool) -> Result<Outbox<sqlx::Postgres>, Error> {
        Outbox::open(pool, DEFAULT_TABLE).await
    }

    /// [`Outbox::postgres`] with another table name (`[a-z0-9_]`, at most 55 bytes, so that
    /// the names derived from it fit PostgreSQL's identifiers).
    pub async fn postgres_table(
        pool: sqlx::PgPool,
        table: &str,
    ) -> Result<Outbox<sqlx::Postgres>, Error> {
        Outbox::open(pool, table).await
    }
}

impl<DB: Database> Outbox<DB> {
    /// Opens the outbox in `table`, creating it if missing.
    async fn open(pool: sqlx::Pool<DB>, table: &str) -> Result<Outbox<DB>, Error> {
        validate_table("outbox", table)?;
        <DB as dialect::OutboxSql>::create(&pool, table)
            .await
            .map_err(|e| db_error(&Self::what(), "create table", e))?;
        Ok(Outbox {
            pool,
            table: table.into(),
            codec: Codec::default(),
            wake: Arc::new(watch::channel(0).0),
            counters: Arc::new(Counters::default()),
        })
    }

    /// `outbox (sqlite)`, for messages.
    fn what() -> String {
        format!("outbox ({})", <DB as dialect::OutboxSql>::NAME)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Stages `envelope` for publication to `topic`, inside the application's transaction
    /// `tx`: it will be published if and only if `tx` commits. Call [`Outbox::notify`] after
    /// the commit (or commit with [`Outbox::commit`]) so that a relay in this process
    /// publishes at once instead of at its next poll.
    ///
    /// The envelope keeps its id: that id is the de-duplication key of the publish (and of
    /// the consumers' inboxes). `topic` is a [`Topic`] or a name (checked here, on every
    /// call: hold a `Topic` in a hot loop). Fails with `Malformed` for an invalid topic, `TooLarge` for
    /// an envelope over the size limit, `Storage` if the insert fails (roll `tx` back then).
    pub async fn stage(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        topic: impl TryInto<Topic, Error = Error>,
        envelope: &Envelope,
    ) -> Result<(), Error> {
        let topic: Topic = topic.try_into()?;
        let bytes = self.codec.encode(envelope)?;
        let row = dialect::NewRow {
            id: &envelope.id,
            topic: &topic,
            subject: envelope.subject.as_deref().unwrap_or(""),
            envelope: &bytes,
            staged_ms: now_ms(),
        };
        <DB as dialect::OutboxSql>::stage(tx, &self.table, row)
            .await
            .map_err(|e| db_error(&Self::what(), "stage", e))?;
        self.counters.staged.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Commits the application's transaction, then wakes this process's relays.
    pub async fn commit(&self, tx: sqlx::Transaction<'_, DB>) -> Result<(), Error> {
        tx.commit()
            .await
            .map_err(|e| db_error(&Self::what(), "commit", e))?;
        self.notify();
        Ok(())
    }

    /// Wakes this process's relays of this outbox: call it after committing a transaction
    /// that staged events. (Relays in other processes find the rows at their next poll.)
    pub fn notify(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// How many staged rows are not yet sent (committed ones, in every process).
    pub async fn pending(&self) -> Result<u64, Error> {
        let n = <DB as dialect::OutboxSql>::pending(&self.pool, &self.table)
            .await
            .map_err(|e| db_error(&Self::what(), "count", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The counters of this outbox and its relays in this process.
    pub fn stats(&self) -> OutboxStats {
        let c = &self.counters;
        OutboxStats {
            staged: c.staged.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            store_errors: c.store_errors.load(Ordering::Relaxed),
            marked_sent: c.marked_sent.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// The events a relay moved out of the outbox because the bus refused them for good,
    /// oldest first. They stay until the application deletes them from `<table>_dead`.
    pub async fn dead_letters(&self) -> Result<Vec<OutboxDeadLetter>, Error> {
        <DB as dialect::OutboxSql>::dead_letters(&self.pool, &self.table)
            .await
            .map_err(|e| db_error(&Self::what(), "list the dead letters", e))
    }

    /// Starts building a relay that publishes this outbox's rows to `bus` (a [`Bus`] or an
    /// `&EmbeddedBus`). Several relays may run, in this process or others.
    ///
    /// ```no_run
    /// # async fn demo(outbox: tabgrab::outbox::Outbox<sqlx::Sqlite>) -> Result<(), tabgrab::Error> {
    /// use std::time::Duration;
    /// use tabgrab::backend::Bus;
    ///
    /// let bus = Bus::connect("nats://127.0.0.1:4222").await?;
    /// let relay = outbox
    ///     .relay(&bus)
    ///     .poll_interval(Duration::from_millis(50))
    ///     .batch_size(200)
    ///     .start();
    /// // ... later
    /// println!("{:?}", relay.stats());
    /// relay.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn relay(&self, bus: impl Into<Bus>) -> RelayBuilder<DB> {
        RelayBuilder::new(self.clone(), bus.into())
    }
}

/// The error for an envelope that a relay cannot decode from its row (a damaged row).
pub(crate) fn damaged(table: &str, seq: i64, e: &Error) -> Error {
    Error::new(
        ErrorKind::Storage,
        format!(
            "outbox table {table}: row {seq} does not hold a readable envelope ({e}); delete or repair it"
        ),
    )
}
