//! Opening a store: the connections to either database, the pizzeria's tables, and tabgrab's
//! outbox and inboxes on them ([`Parts`]).
//!
//! SQLite gets one connection (it has one writer at a time, and a memory database lives as
//! long as its connection), in WAL mode, with the units' batcher in front (see `batch`).
//! PostgreSQL gets a pool, probed with one direct connection first so that a refused one is
//! reported at once with its reason; its tables are created with a few tries, because
//! processes that start together race on `CREATE … IF NOT EXISTS`.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Pool;
use sqlx::postgres::Postgres;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tabgrab::inbox::Inbox;
use tabgrab::outbox::Outbox;
use tabgrab::{Error, ErrorKind};

use super::batch::Batcher;
use super::{Db, Gate, Parts, StoreUrl, storage};

/// The consumer groups that keep an inbox here.
const GROUPS: [&str; 3] = [
    crate::services::payment::GROUP,
    crate::services::inventory::GROUP,
    crate::services::delivery::GROUP,
];

/// The pizzeria's own tables; `{seq}` is the dialect's auto-increment key.
const SCHEMA: [&str; 8] = [
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
    // The kitchen's rail: what it has seen of each order (see `rail`).
    "CREATE TABLE IF NOT EXISTS pizzeria_kitchen_rail (order_id TEXT PRIMARY KEY, flags BIGINT NOT NULL)",
    // The front desk's view of the orders: facts and when each happened (see `orders`).
    "CREATE TABLE IF NOT EXISTS pizzeria_orders (order_id TEXT PRIMARY KEY, flags BIGINT NOT NULL, \
     pizzas BIGINT NOT NULL DEFAULT 0, amount_cents BIGINT NOT NULL DEFAULT 0, reason TEXT, \
     accepted_ms BIGINT, paid_ms BIGINT, declined_ms BIGINT, reserved_ms BIGINT, missing_ms BIGINT, \
     ready_ms BIGINT, delivered_ms BIGINT, cancelled_ms BIGINT, refunded_ms BIGINT, released_ms BIGINT)",
];

/// Connects and creates the tables.
pub(super) async fn connect(url: &StoreUrl) -> Result<Db, Error> {
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
                delivery: Inbox::sqlite(pool.clone(), GROUPS[2]).await?,
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
        delivery: Inbox::postgres(pool.clone(), GROUPS[2]).await?,
        gate: Gate::Pool,
        pool: pool.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

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
}
