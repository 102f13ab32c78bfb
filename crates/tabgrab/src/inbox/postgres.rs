//! The inbox in PostgreSQL.
//!
//! A second delivery of the same id inserting concurrently waits on the unique index for
//! the first handler's transaction: if it commits, the insert does nothing (a duplicate); if it
//! rolls back, the insert goes through (the first handling failed, this one is the first).

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::Postgres;

use super::dialect::InboxSql;

impl InboxSql for Postgres {
    const INBOX_NAME: &'static str = "postgres";

    fn create_inbox<'a>(
        pool: &'a sqlx::Pool<Postgres>,
        t: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            // An existing table is left alone: CREATE INDEX would wait for every open
            // transaction that wrote to it (a handler's transaction in another process).
            if crate::outbox::table_exists(pool, &format!("{t}_age")).await? {
                return Ok(());
            }
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {t} (grp TEXT NOT NULL, id TEXT NOT NULL, \
                   received_ms BIGINT NOT NULL, PRIMARY KEY (grp, id))"
            );
            sqlx::query(&create).execute(pool).await?;
            let index = format!("CREATE INDEX IF NOT EXISTS {t}_age ON {t} (grp, received_ms)");
            sqlx::query(&index).execute(pool).await?;
            Ok(())
        }
        .boxed()
    }

    fn record<'a, 'c>(
        tx: &'a mut sqlx::Transaction<'c, Postgres>,
        t: &'a str,
        group: &'a str,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        async move {
            let sql = format!(
                "INSERT INTO {t} (grp, id, received_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            );
            let done = sqlx::query(&sql)
                .bind(group)
                .bind(id)
                .bind(now_ms)
                .execute(&mut **tx)
                .await?;
            Ok(done.rows_affected() == 1)
        }
        .boxed()
    }

    fn contains<'a>(
        pool: &'a sqlx::Pool<Postgres>,
        t: &'a str,
        group: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        async move {
            let sql = format!("SELECT 1 FROM {t} WHERE grp = $1 AND id = $2");
            Ok(sqlx::query(&sql)
                .bind(group)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .is_some())
        }
        .boxed()
    }

    fn prune<'a>(
        pool: &'a sqlx::Pool<Postgres>,
        t: &'a str,
        group: &'a str,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        async move {
            let sql = format!("DELETE FROM {t} WHERE grp = $1 AND received_ms < $2");
            Ok(sqlx::query(&sql)
                .bind(group)
                .bind(before_ms)
                .execute(pool)
                .await?
                .rows_affected())
        }
        .boxed()
    }
}
