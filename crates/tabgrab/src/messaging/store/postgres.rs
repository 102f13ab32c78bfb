//! The PostgreSQL correlation store: request state shared by several nodes of a group.
//!
//! Why PostgreSQL: when a requester group runs on several machines, every node must see the
//! same pending requests, and the claims that make a reply or a timeout be handled once must
//! be atomic across nodes. PostgreSQL's row locks give that: a claim is one conditional
//! `UPDATE .. RETURNING`, and the timeout sweep takes expired rows with `FOR UPDATE SKIP
//! LOCKED`, so sweeping nodes share the work without blocking each other.

use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::Row as _;
use sqlx::postgres::{PgPool, PgRow};

use super::{
    Claim, CorrelationStore, InFlight, PendingRequest, RecordState, ReplyKey, StoreCounts, Tally,
    add_count, add_tally, classify, db_error, default_node, parse_context, validate_table,
};
use crate::Error;

/// A correlation store in a PostgreSQL table.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    /// A pool of connections, shared by the requester's tasks.
    pool: PgPool,
    /// The statements, with the table name spliced in once.
    sql: Statements,
    /// The node name recorded on this handle's claims.
    node: std::sync::Arc<str>,
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
                "INSERT INTO {t} ({COLUMNS}, state) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')"
            ),
            claim_reply: format!(
                "UPDATE {t} SET state = 'replying', lease_until_ms = $1, claimed_by = $6 \
                 WHERE id = $2 AND request_type = COALESCE($3, request_type) AND responder = COALESCE($4, responder) AND deadline_ms > $5 \
                 AND (state = 'pending' OR (state = 'replying' AND lease_until_ms < $5)) \
                 RETURNING {COLUMNS}"
            ),
            lookup: format!(
                "SELECT state, request_type, responder, deadline_ms FROM {t} WHERE id = $1"
            ),
            // SKIP LOCKED: two sweeping nodes take disjoint batches instead of waiting on each
            // other; the outer WHERE re-checks the condition on the locked row, so a reply
            // claimed in between is never taken twice.
            // A CTE, not `id IN (SELECT .. LIMIT)`: PostgreSQL may run such a subquery more
            // than once, which breaks the limit. The outer WHERE re-checks on the locked row.
            claim_expired: format!(
                "WITH due AS (SELECT id FROM {t} WHERE deadline_ms <= $2 AND (state = 'pending' \
                   OR (state IN ('replying', 'timing_out') AND lease_until_ms < $2)) \
                   ORDER BY deadline_ms LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 UPDATE {t} AS c SET state = 'timing_out', lease_until_ms = $1, claimed_by = $4 \
                 FROM due \
                 WHERE c.id = due.id AND c.deadline_ms <= $2 AND (c.state = 'pending' \
                   OR (c.state IN ('replying', 'timing_out') AND c.lease_until_ms < $2)) \
                 RETURNING c.id, c.grp, c.request_type, c.responder, c.sent_ms, c.deadline_ms, c.context"
            ),
            complete: format!(
                "UPDATE {t} SET state = $1, finished_ms = $2 \
                 WHERE id = $3 AND state IN ('replying', 'timing_out')"
            ),
            release: format!(
                "UPDATE {t} SET state = 'pending', lease_until_ms = 0, claimed_by = NULL \
                 WHERE id = $1 AND state IN ('replying', 'timing_out')"
            ),
            remove: format!("DELETE FROM {t} WHERE id = $1 AND state = 'pending'"),
            state: format!("SELECT state FROM {t} WHERE id = $1"),
            purge: format!(
                "DELETE FROM {t} WHERE state IN ('replied', 'timed_out') AND finished_ms < $1"
            ),
            counts: format!("SELECT state, COUNT(*) AS n FROM {t} GROUP BY state"),
            in_flight: format!(
                "SELECT {COLUMNS}, state, lease_until_ms, claimed_by FROM {t} \
                 WHERE state IN ('pending', 'replying', 'timing_out') \
                 ORDER BY sent_ms, id LIMIT $1"
            ),
            tally: format!(
                "INSERT INTO {t}_tallies (kind, n) VALUES ($1, 1) \
                 ON CONFLICT (kind) DO UPDATE SET n = {t}_tallies.n + 1"
            ),
            tallies: format!("SELECT kind, n FROM {t}_tallies"),
        }
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and uses table
    /// `tabgrab_correlation`, created if needed.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tabgrab::Error> {
    /// use tabgrab::backend::embedded::EmbeddedBus;
    /// use tabgrab::messaging::{PostgresStore, Requester};
    ///
    /// // Every node of the group uses the same database.
    /// let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
    /// let bus = EmbeddedBus::open("./data")?;
    /// let requester = Requester::builder(&bus, "front-desk").store(store).start()?;
    /// # requester.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<PostgresStore, Error> {
        PostgresStore::connect_table(url, "tabgrab_correlation").await
    }

    /// Connects to `url` and uses table `table` (`[a-z0-9_]`, created if needed).
    pub async fn connect_table(url: &str, table: &str) -> Result<PostgresStore, Error> {
        validate_table(table)?;
        let pool =
            crate::sql::connect_postgres(url, 8, Duration::from_secs(10), Duration::from_secs(10))
                .await
                .map_err(|e| db_error("postgres", "connect", e))?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
               id TEXT PRIMARY KEY, grp TEXT NOT NULL, request_type TEXT NOT NULL, \
               responder TEXT NOT NULL, sent_ms BIGINT NOT NULL, deadline_ms BIGINT NOT NULL, \
               context TEXT NOT NULL, state TEXT NOT NULL, \
               lease_until_ms BIGINT NOT NULL DEFAULT 0, finished_ms BIGINT NOT NULL DEFAULT 0)"
        );
        sqlx::query(&create)
            .execute(&pool)
            .await
            .map_err(|e| db_error("postgres", "create table", e))?;
        let index =
            format!("CREATE INDEX IF NOT EXISTS {table}_due ON {table} (state, deadline_ms)");
        sqlx::query(&index)
            .execute(&pool)
            .await
            .map_err(|e| db_error("postgres", "create index", e))?;
        // Tables made before claims named their holder get the column.
        let holder = format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS claimed_by TEXT");
        sqlx::query(&holder)
            .execute(&pool)
            .await
            .map_err(|e| db_error("postgres", "add the claim holder column", e))?;
        let tallies = format!(
            "CREATE TABLE IF NOT EXISTS {table}_tallies (kind TEXT PRIMARY KEY, n BIGINT NOT NULL)"
        );
        sqlx::query(&tallies)
            .execute(&pool)
            .await
            .map_err(|e| db_error("postgres", "create the tallies table", e))?;
        Ok(PostgresStore {
            pool,
            sql: Statements::new(table),
            node: default_node().into(),
        })
    }

    /// This handle recording `node` as the holder of the claims it takes (instead of
    /// `<host>:<pid>`), for an operator to see which node handles a reply.
    pub fn node(mut self, node: impl Into<String>) -> PostgresStore {
        self.node = node.into().into();
        self
    }

    /// Drops table `table` (for tests that made their own).
    pub async fn drop_table(&self, table: &str) -> Result<(), Error> {
        validate_table(table)?;
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}, {table}_tallies"))
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("postgres", "drop table", e))?;
        Ok(())
    }

    /// Closes the pool, once every connection is given back (the shape of every `close`;
    /// closing a pool cannot fail).
    pub async fn close(&self) -> Result<(), Error> {
        self.pool.close().await;
        Ok(())
    }
}

/// Reads a request from a row holding [`COLUMNS`].
fn row_to_request(row: &PgRow) -> Result<PendingRequest, sqlx::Error> {
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

impl CorrelationStore for PostgresStore {
    fn name(&self) -> &'static str {
        "postgres"
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
                .map_err(|e| db_error("postgres", "insert", e))?;
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
                .bind(&*self.node)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("postgres", "claim reply", e))?;
            if let Some(row) = claimed {
                let request =
                    row_to_request(&row).map_err(|e| db_error("postgres", "read claim", e))?;
                return Ok(Claim::Claimed(request));
            }
            let found = sqlx::query(&self.sql.lookup)
                .bind(reply.id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("postgres", "look up reply", e))?
                .map(|row| {
                    Ok::<_, sqlx::Error>((
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get(2)?,
                        row.try_get(3)?,
                    ))
                })
                .transpose()
                .map_err(|e| db_error("postgres", "read record", e))?;
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
                .bind(i64::from(limit))
                .bind(&*self.node)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("postgres", "claim expired", e))?;
            let mut expired = rows
                .iter()
                .map(row_to_request)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| db_error("postgres", "read expired", e))?;
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
                .map_err(|e| db_error("postgres", "complete", e))?;
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
                .map_err(|e| db_error("postgres", "release", e))?;
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
                .map_err(|e| db_error("postgres", "remove", e))?;
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
                .map_err(|e| db_error("postgres", "read state", e))?;
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
                .map_err(|e| db_error("postgres", "purge", e))?;
            Ok(done.rows_affected())
        }
        .boxed()
    }

    fn in_flight(&self, limit: usize) -> BoxFuture<'_, Result<Vec<InFlight>, Error>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        async move {
            let rows = sqlx::query(&self.sql.in_flight)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("postgres", "list in-flight requests", e))?;
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
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| db_error("postgres", "list in-flight requests", e))
        }
        .boxed()
    }

    fn counts(&self) -> BoxFuture<'_, Result<StoreCounts, Error>> {
        async move {
            let rows = sqlx::query(&self.sql.counts)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("postgres", "count", e))?;
            let mut counts = StoreCounts::default();
            for row in rows {
                let state: String = row
                    .try_get(0)
                    .map_err(|e| db_error("postgres", "count", e))?;
                let n: i64 = row
                    .try_get(1)
                    .map_err(|e| db_error("postgres", "count", e))?;
                add_count(&mut counts, &state, n);
            }
            let tallies = sqlx::query(&self.sql.tallies)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("postgres", "count", e))?;
            for row in tallies {
                let kind: String = row
                    .try_get(0)
                    .map_err(|e| db_error("postgres", "count", e))?;
                let n: i64 = row
                    .try_get(1)
                    .map_err(|e| db_error("postgres", "count", e))?;
                add_tally(&mut counts, &kind, n);
            }
            Ok(counts)
        }
        .boxed()
    }

    fn tally(&self, tally: Tally) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            sqlx::query(&self.sql.tally)
                .bind(tally.as_str())
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("postgres", "tally a reply", e))?;
            Ok(())
        }
        .boxed()
    }
}
