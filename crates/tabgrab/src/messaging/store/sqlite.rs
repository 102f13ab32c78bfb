//! The SQLite correlation store: the embedded default, one file next to the bus.
//!
//! Why SQLite: the embedded backend needs no server, and neither should its request state; a
//! single file, with a write-ahead log and `synchronous = FULL`, makes each insert, claim and
//! completion durable against a process crash *and* a power loss before the call returns.
//! Why one connection: SQLite has one writer at a time anyway, and a single connection avoids
//! `SQLITE_BUSY` upgrades between pooled connections; every operation here is one short
//! statement. Several processes may open the same file (SQLite locks it), but for several
//! *nodes* use [`PostgresStore`](super::PostgresStore).

use std::path::Path;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{
    Claim, CorrelationStore, PendingRequest, RecordState, ReplyKey, StoreCounts, add_count,
    classify, db_error, parse_context, validate_table,
};
use crate::Error;

/// A correlation store in a SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection (see the module docs).
    pool: SqlitePool,
    /// The statements, with the table name spliced in once.
    sql: Statements,
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
                "UPDATE {t} SET state = 'replying', lease_until_ms = ? \
                 WHERE id = ? AND request_type = ? AND responder = ? AND deadline_ms > ? \
                 AND (state = 'pending' OR (state = 'replying' AND lease_until_ms < ?)) \
                 RETURNING {COLUMNS}"
            ),
            lookup: format!(
                "SELECT state, request_type, responder, deadline_ms FROM {t} WHERE id = ?"
            ),
            claim_expired: format!(
                "UPDATE {t} SET state = 'timing_out', lease_until_ms = ? WHERE id IN (\
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
                "UPDATE {t} SET state = 'pending', lease_until_ms = 0 \
                 WHERE id = ? AND state IN ('replying', 'timing_out')"
            ),
            remove: format!("DELETE FROM {t} WHERE id = ? AND state = 'pending'"),
            state: format!("SELECT state FROM {t} WHERE id = ?"),
            purge: format!(
                "DELETE FROM {t} WHERE state IN ('replied', 'timed_out') AND finished_ms < ?"
            ),
            counts: format!("SELECT state, COUNT(*) AS n FROM {t} GROUP BY state"),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in the database file `path`, table
    /// `tabgrab_correlation`.
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
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| db_error("sqlite", "open", e))?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
               id TEXT PRIMARY KEY NOT NULL, grp TEXT NOT NULL, request_type TEXT NOT NULL, \
               responder TEXT NOT NULL, sent_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL, \
               context TEXT NOT NULL, state TEXT NOT NULL, \
               lease_until_ms INTEGER NOT NULL DEFAULT 0, finished_ms INTEGER NOT NULL DEFAULT 0)"
        );
        sqlx::query(&create)
            .execute(&pool)
            .await
            .map_err(|e| db_error("sqlite", "create table", e))?;
        let index =
            format!("CREATE INDEX IF NOT EXISTS {table}_due ON {table} (state, deadline_ms)");
        sqlx::query(&index)
            .execute(&pool)
            .await
            .map_err(|e| db_error("sqlite", "create index", e))?;
        Ok(SqliteStore {
            pool,
            sql: Statements::new(table),
        })
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.pool.close().await;
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
        async move {
            sqlx::query(&self.sql.insert)
                .bind(&request.id)
                .bind(&request.group)
                .bind(&request.request_type)
                .bind(&request.responder)
                .bind(request.sent_ms)
                .bind(request.deadline_ms)
                .bind(request.context.to_string())
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("sqlite", "insert", e))?;
            Ok(())
        }
        .boxed()
    }

    fn claim_reply<'a>(
        &'a self,
        reply: ReplyKey<'a>,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> BoxFuture<'a, Result<Claim, Error>> {
        async move {
            let claimed = sqlx::query(&self.sql.claim_reply)
                .bind(lease_until_ms)
                .bind(reply.id)
                .bind(reply.request_type)
                .bind(reply.responder)
                .bind(now_ms)
                .bind(now_ms)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("sqlite", "claim reply", e))?;
            if let Some(row) = claimed {
                let request =
                    row_to_request(&row).map_err(|e| db_error("sqlite", "read claim", e))?;
                return Ok(Claim::Claimed(request));
            }
            let found = sqlx::query(&self.sql.lookup)
                .bind(reply.id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("sqlite", "look up reply", e))?
                .map(|row| {
                    Ok::<_, sqlx::Error>((
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get(2)?,
                        row.try_get(3)?,
                    ))
                })
                .transpose()
                .map_err(|e| db_error("sqlite", "read record", e))?;
            Ok(classify(found, &reply, now_ms))
        }
        .boxed()
    }

    fn claim_expired(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<PendingRequest>, Error>> {
        async move {
            let rows = sqlx::query(&self.sql.claim_expired)
                .bind(lease_until_ms)
                .bind(now_ms)
                .bind(now_ms)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("sqlite", "claim expired", e))?;
            let mut expired = rows
                .iter()
                .map(row_to_request)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| db_error("sqlite", "read expired", e))?;
            // RETURNING gives no order: hand them out earliest deadline first.
            expired.sort_by_key(|r| r.deadline_ms);
            Ok(expired)
        }
        .boxed()
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        state: RecordState,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        async move {
            let done = sqlx::query(&self.sql.complete)
                .bind(state.as_str())
                .bind(now_ms)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("sqlite", "complete", e))?;
            Ok(done.rows_affected() == 1)
        }
        .boxed()
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            sqlx::query(&self.sql.release)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("sqlite", "release", e))?;
            Ok(())
        }
        .boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            sqlx::query(&self.sql.remove)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("sqlite", "remove", e))?;
            Ok(())
        }
        .boxed()
    }

    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RecordState>, Error>> {
        async move {
            let row = sqlx::query(&self.sql.state)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("sqlite", "read state", e))?;
            Ok(row
                .and_then(|r| r.try_get::<String, _>(0).ok())
                .and_then(|s| RecordState::parse(&s)))
        }
        .boxed()
    }

    fn purge(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, Error>> {
        async move {
            let done = sqlx::query(&self.sql.purge)
                .bind(before_ms)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("sqlite", "purge", e))?;
            Ok(done.rows_affected())
        }
        .boxed()
    }

    fn counts(&self) -> BoxFuture<'_, Result<StoreCounts, Error>> {
        async move {
            let rows = sqlx::query(&self.sql.counts)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("sqlite", "count", e))?;
            let mut counts = StoreCounts::default();
            for row in rows {
                let state: String = row.try_get(0).map_err(|e| db_error("sqlite", "count", e))?;
                let n: i64 = row.try_get(1).map_err(|e| db_error("sqlite", "count", e))?;
                add_count(&mut counts, &state, n);
            }
            Ok(counts)
        }
        .boxed()
    }
}
