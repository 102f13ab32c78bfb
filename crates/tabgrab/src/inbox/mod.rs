//! The idempotent inbox: the ids of the messages a consumer group has processed, recorded in
//! the same transaction as the handler's own writes, so that a redelivered message has no
//! second effect.
//!
//! # Why
//! Every engine delivers at least once: a consumer that dies after its effect and before its
//! acknowledgement gets the message again, a paused consumer's message is redelivered to
//! another member, a relay that crashed republishes, a publisher retries. Handlers must
//! therefore be idempotent, and the general way to make any handler idempotent is to remember
//! what it already did *atomically with doing it*. [`Inbox::record`] inserts (group, message
//! id) in the handler's transaction: the first delivery inserts it and applies its effect in
//! the same transaction; a duplicate finds the id and applies nothing. A crash anywhere
//! before the commit rolls both back (the redelivery is then the first), a crash after the
//! commit leaves both (the redelivery is a duplicate): **effectively once**.
//!
//! Two copies handled at the same moment (a paused member's message redelivered to another)
//! do not both win: the second insert waits for the first transaction (PostgreSQL's unique
//! index, SQLite's single writer) and then finds the id. Like NServiceBus's pessimistic mode,
//! record first, then do the work, so the loser does no work at all.
//!
//! # Retention
//! Ids are kept for `retention` ([`DEFAULT_RETENTION`]: 7 days, as NServiceBus keeps its
//! de-duplication data) and then pruned ([`Inbox::prune`], or [`Inbox::spawn_pruner`]). The
//! retention must be longer than the **redelivery horizon**: the longest time between the
//! first delivery of a message and its last possible redelivery. With tabgrab's defaults a
//! broker redelivers within `max_deliveries` × (`ack_wait` + backoff) ≈ 5 × (30 s + 10 s), a
//! few minutes; but a group that is down keeps its unacknowledged messages, and a replay from
//! the beginning redelivers everything, so the horizon is really "how long the group may be
//! down, or how far back it may replay". A duplicate older than the retention is handled
//! again.
//!
//! Effects outside the database (an email, a call to a card processor) are not covered: the
//! inbox makes the *database* effect exactly-once; pass the message id to the other system as
//! its idempotency key.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::SqlitePool, envelope: tabgrab::Envelope) -> Result<(), tabgrab::Error> {
//! use tabgrab::inbox::Inbox;
//!
//! let inbox = Inbox::sqlite(pool.clone(), "payment").await?;
//! let storage = |e: sqlx::Error| tabgrab::Error::new(tabgrab::ErrorKind::Storage, e.to_string());
//! let mut tx = pool.begin().await.map_err(storage)?;
//! if inbox.record(&mut tx, &envelope).await? {
//!     sqlx::query("INSERT INTO ledger (order_id) VALUES (?)")
//!         .bind(envelope.subject.as_deref())
//!         .execute(&mut *tx)
//!         .await
//!         .map_err(storage)?;
//! }
//! tx.commit().await.map_err(storage)?; // then return Ok: the subscription acknowledges
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::sql::{Database, db_error, now_ms, validate_table};
use crate::{Envelope, Error, ErrorKind};

pub(crate) mod dialect;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

use dialect::InboxSql;

/// The default table name.
pub const DEFAULT_TABLE: &str = "tabgrab_inbox";

/// How long ids are kept by default: 7 days (see the module docs on the redelivery horizon).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Counters of an inbox in this process; its duplicates are read from them for metrics.
#[derive(Debug)]
struct Counters {
    /// The metrics' attributes (the consumer group).
    labels: crate::telemetry::Labels,
    /// Records that inserted the id.
    first: AtomicU64,
    /// Records that found the id.
    duplicates: AtomicU64,
    /// Ids deleted by pruning.
    pruned: AtomicU64,
}

impl crate::telemetry::Source for Counters {
    fn sample(&self, out: &mut crate::telemetry::Samples) {
        let duplicates = self.duplicates.load(Ordering::Relaxed);
        out.counter(
            crate::telemetry::names::INBOX_DUPLICATES,
            &self.labels,
            duplicates,
        );
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        crate::telemetry::retire(self);
    }
}

/// A snapshot of an inbox's counters (this process, every clone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboxStats {
    /// `record` calls that inserted the id: first deliveries (counted at the insert; the
    /// handler's transaction may still roll back).
    pub first: u64,
    /// `record` calls that found the id: duplicates, whose effect was not applied.
    pub duplicates: u64,
    /// Ids deleted by pruning.
    pub pruned: u64,
}

/// The processed message ids of one consumer group, in the application's database. Cheap to
/// clone.
pub struct Inbox<DB: Database> {
    /// The application's pool (pruning and lookups use it; `record` uses the caller's
    /// transaction).
    pool: sqlx::Pool<DB>,
    /// The table (validated, spliced into statements); groups share it.
    table: Arc<str>,
    /// The consumer group whose ids this inbox keeps.
    group: Arc<str>,
    /// Shared by clones.
    counters: Arc<Counters>,
}

impl<DB: Database> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Inbox {
            pool: self.pool.clone(),
            table: Arc::clone(&self.table),
            group: Arc::clone(&self.group),
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<DB: Database> std::fmt::Debug for Inbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("database", &<DB as InboxSql>::INBOX_NAME)
            .field("table", &self.table)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Inbox<sqlx::Sqlite> {
    /// The inbox of consumer group `group` in table `tabgrab_inbox` of the SQLite database
    /// behind `pool` (created if missing).
    pub async fn sqlite(pool: sqlx::SqlitePool, group: &str) -> Result<Inbox<sqlx::Sqlite>, Error> {
        Inbox::open(pool, group, DEFAULT_TABLE).await
    }

    /// [`Inbox::sqlite`] with another table name (`[a-z0-9_]`, at most 55 bytes, so that
    /// the names derived from it fit PostgreSQL's identifiers).
    pub async fn sqlite_table(
        pool: sqlx::SqlitePool,
        group: &str,
        table: &str,
    ) -> Result<Inbox<sqlx::Sqlite>, Error> {
        Inbox::open(pool, group, table).await
    }
}

#[cfg(feature = "postgres")]
impl Inbox<sqlx::Postgres> {
    /// The inbox of consumer group `group` in table `tabgrab_inbox` of the PostgreSQL database
    /// behind `pool` (created if missing).
    pub async fn postgres(pool: sqlx::PgPool, group: &str) -> Result<Inbox<sqlx::Postgres>, Error> {
        Inbox::open(pool, group, DEFAULT_TABLE).await
    }

    /// [`Inbox::postgres`] with another table name (`[a-z0-9_]`, at most 55 bytes, so that
    /// the names derived from it fit PostgreSQL's identifiers).
    pub async fn postgres_table(
        pool: sqlx::PgPool,
        group: &str,
        table: &str,
    ) -> Result<Inbox<sqlx::Postgres>, Error> {
        Inbox::open(pool, group, table).await
    }
}

impl<DB: Database> Inbox<DB> {
    async fn open(pool: sqlx::Pool<DB>, group: &str, table: &str) -> Result<Inbox<DB>, Error> {
        validate_table("inbox", table)?;
        if group.is_empty() {
            return Err(Error::new(
                ErrorKind::Malformed,
                "inbox: the consumer group name is empty; use the subscription's group",
            ));
        }
        <DB as InboxSql>::create_inbox(&pool, table)
            .await
            .map_err(|e| db_error(&Self::what(), "create table", e))?;
        let counters = Arc::new(Counters {
            labels: vec![(crate::telemetry::names::GROUP, group.to_owned())],
            first: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            pruned: AtomicU64::new(0),
        });
        let source: Arc<dyn crate::telemetry::Source> = counters.clone();
        crate::telemetry::register(Arc::downgrade(&source));
        Ok(Inbox {
            pool,
            table: table.into(),
            group: group.into(),
            counters,
        })
    }

    fn what() -> String {
        format!("inbox ({})", <DB as InboxSql>::INBOX_NAME)
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Records that this group processes `envelope`, inside the handler's transaction `tx`.
    /// Returns `true` the first time: apply the effect in `tx`, then commit. Returns `false`
    /// for a duplicate (an id this group already committed): apply nothing, commit or roll
    /// back, and return `Ok` so the delivery is acknowledged.
    ///
    /// If another transaction is recording the same id at the same moment, this waits for it
    /// (and returns `false` if it commits).
    pub async fn record(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        envelope: &Envelope,
    ) -> Result<bool, Error> {
        self.record_id(tx, &envelope.id).await
    }

    /// [`Inbox::record`] by message id.
    pub async fn record_id(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        id: &str,
    ) -> Result<bool, Error> {
        let first = <DB as InboxSql>::record(tx, &self.table, &self.group, id, now_ms())
            .await
            .map_err(|e| db_error(&Self::what(), "record", e))?;
        let counter = if first {
            &self.counters.first
        } else {
            &self.counters.duplicates
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !first {
            tracing::debug!(group = %self.group, id, "inbox: duplicate delivery, no effect");
        }
        Ok(first)
    }

    /// Whether this group has committed `id`.
    pub async fn contains(&self, id: &str) -> Result<bool, Error> {
        <DB as InboxSql>::contains(&self.pool, &self.table, &self.group, id)
            .await
            .map_err(|e| db_error(&Self::what(), "look up", e))
    }

    /// Deletes this group's ids recorded more than `retention` ago; returns how many. Keep
    /// `retention` above the redelivery horizon (module docs): a duplicate of a pruned id
    /// has its effect again.
    pub async fn prune(&self, retention: Duration) -> Result<u64, Error> {
        let age = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let n = <DB as InboxSql>::prune(
            &self.pool,
            &self.table,
            &self.group,
            now_ms().saturating_sub(age),
        )
        .await
        .map_err(|e| db_error(&Self::what(), "prune", e))?;
        self.counters.pruned.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Prunes every `every` in the background, keeping `retention`. The pruner stops when
    /// its handle is dropped or shut down.
    ///
    /// ```no_run
    /// # async fn demo(inbox: tabgrab::inbox::Inbox<sqlx::Sqlite>) -> Result<(), tabgrab::Error> {
    /// use std::time::Duration;
    /// use tabgrab::inbox::DEFAULT_RETENTION;
    ///
    /// let pruner = inbox.spawn_pruner(Duration::from_secs(3600), DEFAULT_RETENTION);
    /// // ... at shutdown
    /// pruner.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn spawn_pruner(&self, every: Duration, retention: Duration) -> Pruner {
        let inbox = self.clone();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let every = every.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(e) = inbox.prune(retention).await {
                    tracing::warn!(group = %inbox.group, error = %e, "inbox pruner: prune failed; retrying at the next interval");
                }
            }
        });
        Pruner {
            cancel,
            task: Some(task),
        }
    }

    /// This inbox's counters in this process.
    pub fn stats(&self) -> InboxStats {
        InboxStats {
            first: self.counters.first.load(Ordering::Relaxed),
            duplicates: self.counters.duplicates.load(Ordering::Relaxed),
            pruned: self.counters.pruned.load(Ordering::Relaxed),
        }
    }
}

/// A background pruner ([`Inbox::spawn_pruner`]). Dropping it stops it.
#[derive(Debug)]
pub struct Pruner {
    /// Stops the task.
    cancel: CancellationToken,
    /// The task, taken by `shutdown`.
    task: Option<JoinHandle<()>>,
}

impl Pruner {
    /// Stops the pruner and waits for it; an error if its task panicked.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.cancel.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(|e| {
                Error::new(ErrorKind::Closed, format!("the inbox pruner failed: {e}"))
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
