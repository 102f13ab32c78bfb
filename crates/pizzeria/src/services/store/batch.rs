//! SQLite's group commit for the store's units: why several events' units share one
//! transaction, and what stays the same (see [`Batcher`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::{Pool, Sqlite, Transaction};
use tabgrab::outbox::Outbox;
use tabgrab::{Error, ErrorKind};

use super::storage;
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

/// Most units in one SQLite transaction (see [`Batcher`]).
///
/// SQLite has one connection here, and sqlx's pool serves waiters in order. Payment and
/// inventory run up to 64 handlers each; when each took the connection for its own
/// transaction, the relay's every claim and every "mark sent" queued behind about a hundred
/// of them (80 ms each on two cores, measured): it published 100 rows per 170 ms while the
/// handlers staged more, and nearly every event went out after the last handler. A batch
/// ends after this many units, so the relay waits for at most one batch.
const SQLITE_BATCH: usize = 32;

/// How long a unit waits for its batch's commit before it commits the batch itself (only
/// when the unit that should have committed it was cancelled).
const SQLITE_LINGER: Duration = Duration::from_millis(50);

/// The savepoint of a unit that joined a batch.
const SAVEPOINT: &str = "SAVEPOINT pizzeria_unit";

/// SQLite's group commit: the units of several events, one after the other, in one
/// transaction of the one connection.
///
/// # Why
/// Each statement on SQLite is a round trip to sqlx's thread for the connection, and so are
/// `BEGIN`, `COMMIT` and the pool's check of a connection it takes back; on two cores the
/// round trips, not SQLite, were the cost of an event. A unit that joins the open batch makes
/// one round trip (`SAVEPOINT`) where a transaction of its own made three or four, and a
/// commit writes each page once for the whole batch.
///
/// # What stays the same
/// A unit is still all or nothing: it runs under a savepoint, and its rollback goes back to
/// it, keeping the batch's other units. A unit's `commit` returns only after the batch
/// committed, so a handler acknowledges its event only when its inbox record, effect and
/// staged events are committed; if the batch fails (or a unit is dropped half-way, which
/// rolls the whole batch back), every unit in it fails and its event is delivered again.
///
/// # When a batch commits
/// When the unit that ends finds no other unit waiting for the connection, or the batch
/// holds [`SQLITE_BATCH`] units. Under load batches fill; alone, a unit commits at once.
pub(crate) struct Batcher<DB: tabgrab::sql::Database> {
    /// The open batch between two units (`None` when no transaction is open).
    pub(super) slot: Arc<Mutex<Option<Batch<DB>>>>,
    /// Units waiting for the slot.
    pub(super) waiting: AtomicUsize,
    /// Numbers the batches, to recognise one.
    pub(super) batches: AtomicU64,
}

/// A batch: the open transaction and who waits for its commit.
pub(crate) struct Batch<DB: tabgrab::sql::Database> {
    /// The transaction.
    pub(super) tx: Transaction<'static, DB>,
    /// Its number.
    pub(super) id: u64,
    /// Units that ended in it.
    pub(super) units: usize,
    /// `Some(committed)` once it ended; dropped unsent when the batch is dropped (rolled
    /// back), which its units take as a failure.
    pub(super) outcome: watch::Sender<Option<bool>>,
}

/// Counts a unit waiting for the slot while it waits (also if it is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<DB: tabgrab::sql::Database> Default for Batcher<DB> {
    fn default() -> Self {
        Batcher {
            slot: Arc::new(Mutex::new(None)),
            waiting: AtomicUsize::new(0),
            batches: AtomicU64::new(0),
        }
    }
}

impl Batcher<Sqlite> {
    /// Takes the slot and joins the open batch under a savepoint, or begins one. Returns the
    /// batch, the held slot, and whether this unit is the batch's first.
    pub(super) async fn enter(
        &self,
        pool: &Pool<Sqlite>,
    ) -> Result<(Batch<Sqlite>, OwnedMutexGuard<Option<Batch<Sqlite>>>, bool), Error> {
        let mut slot = {
            let _waiting = Waiting::new(&self.waiting);
            Arc::clone(&self.slot).lock_owned().await
        };
        if let Some(mut batch) = slot.take() {
            // On failure the batch is dropped: rolled back, and its units fail.
            sqlx::query(SAVEPOINT)
                .execute(&mut *batch.tx)
                .await
                .map_err(storage("begin a unit (savepoint)"))?;
            return Ok((batch, slot, false));
        }
        let batch = Batch {
            tx: pool.begin().await.map_err(storage("begin"))?,
            id: self.batches.fetch_add(1, Ordering::Relaxed),
            units: 0,
            outcome: watch::channel(None).0,
        };
        Ok((batch, slot, true))
    }

    /// Ends a unit in `batch`: commits the batch if no unit waits for the slot or it is
    /// full, else puts it back for the next unit; then waits for the batch's commit.
    pub(super) async fn leave(
        &self,
        mut batch: Batch<Sqlite>,
        mut slot: OwnedMutexGuard<Option<Batch<Sqlite>>>,
        outbox: &Outbox<Sqlite>,
    ) -> Result<(), Error> {
        batch.units += 1;
        if self.waiting.load(Ordering::SeqCst) == 0 || batch.units >= SQLITE_BATCH {
            let committed = Self::commit(batch, outbox).await;
            drop(slot);
            return committed;
        }
        let id = batch.id;
        let mut outcome = batch.outcome.subscribe();
        *slot = Some(batch);
        drop(slot);
        loop {
            let ended = tokio::time::timeout(SQLITE_LINGER, async {
                outcome
                    .wait_for(Option::is_some)
                    .await
                    .map(|committed| *committed == Some(true))
            })
            .await;
            match ended {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false) | Err(_)) => return Err(batch_failed()),
                Err(_lingered) => {
                    // The unit that took the slot after this one went away without ending
                    // its unit: commit the batch here if it is still waiting in the slot.
                    let mut slot = Arc::clone(&self.slot).lock_owned().await;
                    if slot.as_ref().is_some_and(|b| b.id == id)
                        && let Some(batch) = slot.take()
                    {
                        let committed = Self::commit(batch, outbox).await;
                        drop(slot);
                        return committed;
                    }
                }
            }
        }
    }

    /// Commits `batch`, tells its units, and wakes the relay.
    async fn commit(batch: Batch<Sqlite>, outbox: &Outbox<Sqlite>) -> Result<(), Error> {
        let Batch { tx, outcome, .. } = batch;
        let committed = tx.commit().await;
        outcome.send_replace(Some(committed.is_ok()));
        if committed.is_ok() {
            outbox.notify();
        }
        committed.map_err(storage("commit"))
    }
}

/// The error of a unit whose batch did not commit.
pub(super) fn batch_failed() -> Error {
    Error::new(
        ErrorKind::Storage,
        "pizzeria store: the transaction holding this event's unit did not commit; \
         the event will be delivered again",
    )
}
