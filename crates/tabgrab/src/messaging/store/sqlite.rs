//! The SQLite correlation store: the embedded default, one file next to the bus.
//!
//! Why SQLite: the embedded backend needs no server, and neither should its request state; a
//! single file, with a write-ahead log and `synchronous = FULL`, makes each insert, claim and
//! completion durable against a process crash *and* a power loss before the call returns.
//!
//! # Group commit
//! SQLite has one writer at a time, and with `synchronous = FULL` every commit waits for the
//! disk. One transaction per operation would cap a requester at about a third of the disk's
//! syncs per second in round trips (insert, claim, complete). So the store owns one
//! connection in a writer task: operations queue on a channel, and the task runs everything
//! queued (up to 512 operations) in one transaction with one commit, then answers each
//! caller, only after the commit is durable. Every operation is still atomic on its own (one
//! statement); a batch only shares the sync. If the commit fails, every operation of the
//! batch fails and nothing of it is applied. Several processes may open the same file
//! (SQLite locks it), but for several *nodes* use [`PostgresStore`](super::PostgresStore).

use std::path::Path;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Connection as _, Executor as _};
use tokio::sync::{mpsc, oneshot};

use super::{
    Claim, CorrelationStore, InFlight, PendingRequest, RecordState, ReplyKey, StoreCounts, Tally,
    add_count, add_tally, classify, db_error, default_node, parse_context, validate_table,
};
use crate::{Error, ErrorKind};

/// A correlation store in a SQLite database file. Cheap to clone: clones share the writer.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// The writer task's queue (see the module docs).
    jobs: mpsc::Sender<Job>,
    /// The statements, with the table name spliced in once.
    sql: std::sync::Arc<Statements>,
    /// The node name recorded on this handle's claims.
    node: std::sync::Arc<str>,
}

/// What a job hands back after running: called with the batch's commit result, it answers
/// the caller (the job's own result if the commit succeeded, an error otherwise).
type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;

/// One operation, run by the writer task inside the batch's transaction.
type Job = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Deliver> + Send>;

/// Most operations in one transaction.
const MAX_BATCH: usize = 512;

/// The writer task: runs queued jobs in batches, one transaction and one sync per batch.
async fn writer(mut conn: SqliteConnection, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut delivers = Vec::with_capacity(batch.len());
        let committed = match conn.begin().await {
            Ok(mut tx) => {
                for job in batch.drain(..) {
                    delivers.push(job(&mut tx).await);
                }
                tx.commit().await.map_err(|e| e.to_string())
            }
            Err(e) => {
                // Not even a transaction: run nothing; dropping the jobs fails their callers.
                tracing::error!(error = %e, "correlation store (sqlite): cannot begin a transaction");
                batch.clear();
                Err(e.to_string())
            }
        };
        for deliver in delivers {
            deliver(committed.clone());
        }
    }
    let _ = conn.close().await;
}

/// The SQL of every operation, for one table.
#[derive(Clone, Debug)]
struct Statements {
    insert: String,
    claim_reply: String,
    lookup: String,
    claim_expired: String,
    complete: String,
    release: String,
    remove: String,
    state: String,
    purge: String,
    counts: String,
    in_flight: String,
    tally: String,
    tallies: String,
}

/// The columns of a [`PendingRequest`], in the order `row_to_request` reads them.
const COLUMNS: &str = "id, grp, request_type, responder, sent_ms, deadline_ms, context";

impl Statements {
    fn new(t: &str) -> Statements {
        Statements {
            insert: format!(
                "INSERT INTO {t} ({COLUMNS}, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')"
            ),
            claim_reply: format!(
                "UPDATE {t} SET state = 'replying', lease_until_ms = ?, claimed_by = ? \
                 WHERE id = ? AND request_type = COALESCE(?, request_type) AND responder = COALESCE(?, responder) AND deadline_ms > ? \
                 AND (state = 'pending' OR (state = 'replying' AND lease_until_ms < ?)) \
                 RETURNING {COLUMNS}"
            ),
            lookup: format!(
                "SELECT state, request_type, responder, deadline_ms FROM {t} WHERE id = ?"
            ),
            claim_expired: format!(
                "UPDATE {t} SET state = 'timing_out', lease_until_ms = ?, claimed_by = ? \
                 WHERE id IN (\
                   SELECT id FROM {t} WHERE deadline_ms <= ? AND (state = 'pending' \
                   OR (state IN ('replying', 'timing_out') AND lease_until_ms < ?)) \
                   ORDER BY deadline_ms LIMIT ?) \
                 RETURNING {COLUMNS}"
            ),
            complete: format!(
                "UPDATE {t} SET state = ?, finished_ms = ? \
                 WHERE id = ? AND state IN ('replying', 'timing_out')"
            ),
            release: format!(
                "UPDATE {t} SET state = 'pending', lease_until_ms = 0, claimed_by = NULL \
                 WHERE id = ? AND state IN ('replying', 'timing_out')"
            ),
            remove: format!("DELETE FROM {t} WHERE id = ? AND state = 'pending'"),
            state: format!("SELECT state FROM {t} WHERE id = ?"),
            purge: format!(
                "DELETE FROM {t} WHERE state IN ('replied', 'timed_out') AND finished_ms < ?"
            ),
            counts: format!("SELECT state, COUNT(*) AS n FROM {t} GROUP BY state"),
            in_flight: format!(
                "SELECT {COLUMNS}, state, lease_until_ms, claimed_by FROM {t} \
                 WHERE state IN ('pending', 'replying', 'timing_out') \
                 ORDER BY sent_ms, id LIMIT ?"
            ),
            tally: format!(
                "INSERT INTO {t}_tallies (kind, n) VALUES (?, 1) \
                 ON CONFLICT (kind) DO UPDATE SET n = n + 1"
            ),
            tallies: format!("SELECT kind, n FROM {t}_tallies"),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in the database file `path`, table
    /// `tabgrab_correlation`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tabgrab::Error> {
    /// use tabgrab::messaging::SqliteStore;
    /// use tabgrab::messaging::store::CorrelationStore as _;
    ///
    /// let store = SqliteStore::open("./data/correlation.db").await?;
    /// println!("{} pending", store.counts().await?.pending);
    /// # Ok(()) }
    /// ```
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, Error> {
        SqliteStore::open_table(path, "tabgrab_correlation").await
    }

    /// Opens the store in `path` using table `table` (`[a-z0-9_]`, created if needed).
    pub async fn open_table(path: impl AsRef<Path>, table: &str) -> Result<SqliteStore, Error> {
        validate_table(table)?;
        let options = SqliteConnectOptions::new()
            .filename(path.as_ref())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let mut conn = options
            .connect()
            .await
            .map_err(|e| db_error("sqlite", "open", e))?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
               id TEXT PRIMARY KEY NOT NULL, grp TEXT NOT NULL, request_type TEXT NOT NULL, \
               responder TEXT NOT NULL, sent_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL, \
               context TEXT NOT NULL, state TEXT NOT NULL, \
               lease_until_ms INTEGER NOT NULL DEFAULT 0, finished_ms INTEGER NOT NULL DEFAULT 0)"
        );
        conn.execute(sqlx::query(&create))
            .await
            .map_err(|e| db_error("sqlite", "create table", e))?;
        let index =
            format!("CREATE INDEX IF NOT EXISTS {table}_due ON {table} (state, deadline_ms)");
        conn.execute(sqlx::query(&index))
            .await
            .map_err(|e| db_error("sqlite", "create index", e))?;
        // Tables made before claims named their holder get the column.
        let has_holder: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = 'claimed_by'"
        ))
        .fetch_one(&mut conn)
        .await
        .map_err(|e| db_error("sqlite", "read the table's columns", e))?;
        if has_holder == 0 {
            conn.execute(sqlx::query(&format!(
                "ALTER TABLE {table} ADD COLUMN claimed_by TEXT"
            )))
            .await
            .map_err(|e| db_error("sqlite", "add the claim holder column", e))?;
        }
        let tallies = format!(
            "CREATE TABLE IF NOT EXISTS {table}_tallies (kind TEXT PRIMARY KEY NOT NULL, \
             n INTEGER NOT NULL)"
        );
        conn.execute(sqlx::query(&tallies))
            .await
            .map_err(|e| db_error("sqlite", "create the tallies table", e))?;
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(writer(conn, queue));
        Ok(SqliteStore {
            jobs,
            sql: std::sync::Arc::new(Statements::new(table)),
            node: default_node().into(),
        })
    }

    /// This handle recording `node` as the holder of the claims it takes (instead of
    /// `<host>:<pid>`), for an operator to see which node handles a reply.
    pub fn node(mut self, node: impl Into<String>) -> SqliteStore {
        self.node = node.into().into();
        self
    }

    /// Runs `op` in the writer task; returns its result once its batch is committed.
    async fn exec<T, F>(&self, operation: &'static str, op: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut SqliteConnection,
                &'c Statements,
            ) -> BoxFuture<'c, Result<T, sqlx::Error>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, Error>>();
        let sql = std::sync::Arc::clone(&self.sql);
        let job: Job = Box::new(move |conn: &mut SqliteConnection| {
            async move {
                let result = op(conn, &sql).await;
                let deliver: Deliver = Box::new(move |committed: Result<(), String>| {
                    let answer = match (result, committed) {
                        (Err(e), _) => Err(db_error("sqlite", operation, e)),
                        (Ok(_), Err(why)) => Err(Error::new(
                            ErrorKind::Storage,
                            format!(
                                "correlation store (sqlite): {operation} was not committed: {why}"
                            ),
                        )),
                        (Ok(value), Ok(())) => Ok(value),
                    };
                    let _ = tx.send(answer);
                });
                deliver
            }
            .boxed()
        });
        let closed = || {
            Error::new(
                ErrorKind::Closed,
                format!(
                    "correlation store (sqlite): {operation} did not run (the writer stopped, or could not begin a transaction: see the log)"
                ),
            )
        };
        self.jobs.send(job).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Waits until every operation queued so far is committed, and says whether they were.
    /// (The connection closes when the last clone of the store is dropped.)
    pub async fn close(&self) -> Result<(), Error> {
        self.exec("flush", |_conn, _sql| async { Ok(()) }.boxed())
            .await
    }
}

/// Reads a request from a row holding [`COLUMNS`].
fn row_to_request(row: &SqliteRow) -> Result<PendingRequest, sqlx::Error> {
    let id: String = row.try_get(0)?;
    let context: String = row.try_get(6)?;
    Ok(PendingRequest {
        context: parse_context(&id, &context),
        id,
        group: row.try_get(1)?,
        request_type: row.try_get(2)?,
        responder: row.try_get(3)?,
        sent_ms: row.try_get(4)?,
        deadline_ms: row.try_get(5)?,
    })
}

impl CorrelationStore for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn insert<'a>(&'a self, request: &'a PendingRequest) -> BoxFuture<'a, Result<(), Error>> {
        let request = request.clone();
        self.exec("insert", move |conn, sql| {
            async move {
                sqlx::query(&sql.insert)
                    .bind(&request.id)
                    .bind(&request.group)
                    .bind(&request.request_type)
                    .bind(&request.responder)
                    .bind(request.sent_ms)
                    .bind(request.deadline_ms)
                    .bind(request.context.to_string())
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            .boxed()
        })
        .boxed()
    }

    fn claim_reply<'a>(
        &'a self,
        reply: ReplyKey<'a>,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> BoxFuture<'a, Result<Claim, Error>> {
        let (id, request_type, responder) = (
            reply.id.to_owned(),
            reply.request_type.map(str::to_owned),
            reply.responder.map(str::to_owned),
        );
        let node = std::sync::Arc::clone(&self.node);
        self.exec("claim reply", move |conn, sql| {
            async move {
                let claimed = sqlx::query(&sql.claim_reply)
                    .bind(lease_until_ms)
                    .bind(&*node)
                    .bind(&id)
                    .bind(&request_type)
                    .bind(&responder)
                    .bind(now_ms)
                    .bind(now_ms)
                    .fetch_optional(&mut *conn)
                    .await?;
                if let Some(row) = claimed {
                    return Ok(Claim::Claimed(row_to_request(&row)?));
                }
                let found = sqlx::query(&sql.lookup)
                    .bind(&id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .map(|row| {
                        Ok::<_, sqlx::Error>((
                            row.try_get(0)?,
                            row.try_get(1)?,
                            row.try_get(2)?,
                            row.try_get(3)?,
                        ))
                    })
                    .transpose()?;
                let key = ReplyKey {
                    id: &id,
                    request_type: request_type.as_deref(),
                    responder: responder.as_deref(),
                };
                Ok(classify(found, &key, now_ms))
            }
            .boxed()
        })
        .boxed()
    }

    fn claim_expired(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<PendingRequest>, Error>> {
        let node = std::sync::Arc::clone(&self.node);
        self.exec("claim expired", move |conn, sql| {
            async move {
                let rows = sqlx::query(&sql.claim_expired)
                    .bind(lease_until_ms)
                    .bind(&*node)
                    .bind(now_ms)
                    .bind(now_ms)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                let mut expired = rows
                    .iter()
                    .map(row_to_request)
                    .collect::<Result<Vec<_>, _>>()?;
                // RETURNING gives no order: hand them out earliest deadline first.
                expired.sort_by_key(|r| r.deadline_ms);
                Ok(expired)
            }
            .boxed()
        })
        .boxed()
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        state: RecordState,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let id = id.to_owned();
        self.exec("complete", move |conn, sql| {
            async move {
                let done = sqlx::query(&sql.complete)
                    .bind(state.as_str())
                    .bind(now_ms)
                    .bind(&id)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            }
            .boxed()
        })
        .boxed()
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        let id = id.to_owned();
        self.exec("release", move |conn, sql| {
            async move {
                sqlx::query(&sql.release)
                    .bind(&id)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            .boxed()
        })
        .boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        let id = id.to_owned();
        self.exec("remove", move |conn, sql| {
            async move {
                sqlx::query(&sql.remove)
                    .bind(&id)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            .boxed()
        })
        .boxed()
    }

    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RecordState>, Error>> {
        let id = id.to_owned();
        self.exec("read state", move |conn, sql| {
            async move {
                let row = sqlx::query(&sql.state)
                    .bind(&id)
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(row
                    .and_then(|r| r.try_get::<String, _>(0).ok())
                    .and_then(|s| RecordState::parse(&s)))
            }
            .boxed()
        })
        .boxed()
    }

    fn purge(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, Error>> {
        self.exec("purge", move |conn, sql| {
            async move {
                let done = sqlx::query(&sql.purge)
                    .bind(before_ms)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected())
            }
            .boxed()
        })
        .boxed()
    }

    fn in_flight(&self, limit: usize) -> BoxFuture<'_, Result<Vec<InFlight>, Error>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.exec("list in-flight requests", move |conn, sql| {
            async move {
                let rows = sqlx::query(&sql.in_flight)
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let state: String = row.try_get(7)?;
                        Ok(InFlight {
                            request: row_to_request(row)?,
                            state: RecordState::parse(&state).unwrap_or(RecordState::Pending),
                            lease_until_ms: row.try_get(8)?,
                            holder: row.try_get(9)?,
                        })
                    })
                    .collect()
            }
            .boxed()
        })
        .boxed()
    }

    fn counts(&self) -> BoxFuture<'_, Result<StoreCounts, Error>> {
        self.exec("count", move |conn, sql| {
            async move {
                let rows = sqlx::query(&sql.counts).fetch_all(&mut *conn).await?;
                let mut counts = StoreCounts::default();
                for row in rows {
                    let state: String = row.try_get(0)?;
                    let n: i64 = row.try_get(1)?;
                    add_count(&mut counts, &state, n);
                }
                for row in sqlx::query(&sql.tallies).fetch_all(&mut *conn).await? {
                    let kind: String = row.try_get(0)?;
                    add_tally(&mut counts, &kind, row.try_get(1)?);
                }
                Ok(counts)
            }
            .boxed()
        })
        .boxed()
    }

    fn tally(&self, tally: Tally) -> BoxFuture<'_, Result<(), Error>> {
        self.exec("tally a reply", move |conn, sql| {
            async move {
                sqlx::query(&sql.tally)
                    .bind(tally.as_str())
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            .boxed()
        })
        .boxed()
    }
}
