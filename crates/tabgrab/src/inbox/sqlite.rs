//! The inbox in SQLite.
//!
//! SQLite has one writer at a time: a second delivery of the same id waits (busy timeout) for
//! the first handler's transaction, then finds the id and is a duplicate.

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::Sqlite;

use super::dialect::InboxSql;

impl InboxSql for Sqlite {
    const INBOX_NAME: &'static str = "sqlite";

    fn create_inbox<'a>(
        pool: &'a sqlx::Pool<Sqlite>,
        t: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            // An existing table is left alone: even `IF NOT EXISTS` DDL takes the write lock,
            // and would wait for a handler stalled inside its transaction.
            if crate::outbox::sqlite_exists(pool, &format!("{t}_age")).await? {
                return Ok(());
            }
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {t} (grp TEXT NOT NULL, id TEXT NOT NULL, \
                   received_ms INTEGER NOT NULL, PRIMARY KEY (grp, id))"
            );
            sqlx::query(&create).execute(pool).await?;
            let index = format!("CREATE INDEX IF NOT EXISTS {t}_age ON {t} (grp, received_ms)");
            sqlx::query(&index).execute(pool).await?;
            Ok(())
        }
        .boxed()
    }

    fn record<'a, 'c>(
        tx: &'a mut sqlx::Transaction<'c, Sqlite>,
        t: &'a str,
        group: &'a str,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        async move {
            let sql = format!(
                "INSERT INTO {t} (grp, id, received_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
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
        pool: &'a sqlx::Pool<Sqlite>,
        t: &'a str,
        group: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        async move {
            let sql = format!("SELECT 1 FROM {t} WHERE grp = ? AND id = ?");
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
        pool: &'a sqlx::Pool<Sqlite>,
        t: &'a str,
        group: &'a str,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        async move {
            let sql = format!("DELETE FROM {t} WHERE grp = ? AND received_ms < ?");
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
