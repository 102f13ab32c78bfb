//! The outbox in SQLite: claims are leases written into the rows.
//!
//! SQLite has one writer at a time, so a relay cannot hold a write transaction while it
//! publishes (the application could not commit meanwhile). Instead a claim is one atomic
//! `UPDATE .. RETURNING` that stamps the rows with the relay's id and a lease deadline; the
//! relay renews the lease while it publishes, then deletes what it sent. A relay that dies
//! leaves its rows leased until the lease lapses (2 s by default), then any relay takes them.

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::Row as _;
use sqlx::Sqlite;

use super::dialect::{
    Claimed, ClaimedRow, DEAD_COLUMNS, NewRow, OutboxSql, Outcome, dead_row, json_list,
};

impl OutboxSql for Sqlite {
    const NAME: &'static str = "sqlite";
    type Claim = ();

    fn create<'a>(
        pool: &'a sqlx::Pool<Sqlite>,
        t: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            // An existing table is left alone: even `IF NOT EXISTS` DDL takes the write lock,
            // and would wait for a writer that is stalled inside its transaction.
            if !sqlite_exists(pool, &format!("{t}_dead")).await? {
                // Checked on its own: an outbox made before dead letters gets the table too.
                let dead = format!(
                    "CREATE TABLE IF NOT EXISTS {t}_dead (\
                       seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL, \
                       subject TEXT NOT NULL, envelope BLOB NOT NULL, staged_ms INTEGER NOT NULL, \
                       attempts INTEGER NOT NULL, reason TEXT NOT NULL, error TEXT NOT NULL, \
                       dead_ms INTEGER NOT NULL)"
                );
                sqlx::query(&dead).execute(pool).await?;
            }
            if sqlite_exists(pool, &format!("{t}_subject")).await? {
                return Ok(());
            }
            // AUTOINCREMENT: sequence numbers are never reused, even after the newest row
            // was sent and deleted, so `seq` is the staging order for the table's lifetime.
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                   seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, topic TEXT NOT NULL, \
                   subject TEXT NOT NULL, envelope BLOB NOT NULL, staged_ms INTEGER NOT NULL, \
                   owner TEXT NOT NULL DEFAULT '', lease_until_ms INTEGER NOT NULL DEFAULT 0, \
                   attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '')"
            );
            sqlx::query(&create).execute(pool).await?;
            let index =
                format!("CREATE INDEX IF NOT EXISTS {t}_subject ON {t} (topic, subject, seq)");
            sqlx::query(&index).execute(pool).await?;
            Ok(())
        }
        .boxed()
    }

    fn stage<'a, 'c>(
        tx: &'a mut sqlx::Transaction<'c, Sqlite>,
        t: &'a str,
        row: NewRow<'a>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            let sql = format!(
                "INSERT INTO {t} (id, topic, subject, envelope, staged_ms) VALUES (?, ?, ?, ?, ?)"
            );
            sqlx::query(&sql)
                .bind(row.id)
                .bind(row.topic)
                .bind(row.subject)
                .bind(row.envelope)
                .bind(row.staged_ms)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn claim<'a>(
        pool: &'a sqlx::Pool<Sqlite>,
        t: &'a str,
        owner: &'a str,
        limit: i64,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> BoxFuture<'a, Result<Claimed<()>, sqlx::Error>> {
        async move {
            // One statement, so atomic against other relays (SQLite serialises writers). A
            // row is skipped while an earlier row of its (topic, subject) is leased by a live
            // relay: that keeps per-subject order when several relays run. Rows of a subject
            // inside the batch are published in order by this relay.
            let sql = format!(
                "UPDATE {t} SET owner = ?1, lease_until_ms = ?2 WHERE seq IN (\
                   SELECT o.seq FROM {t} o WHERE o.lease_until_ms < ?3 AND NOT EXISTS (\
                     SELECT 1 FROM {t} p WHERE p.topic = o.topic AND p.subject = o.subject \
                     AND p.seq < o.seq AND p.lease_until_ms >= ?3) \
                   ORDER BY o.seq LIMIT ?4) \
                 RETURNING seq, id, topic, subject, envelope"
            );
            let rows = sqlx::query(&sql)
                .bind(owner)
                .bind(lease_until_ms)
                .bind(now_ms)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            let mut claimed = rows
                .iter()
                .map(|r| {
                    Ok(ClaimedRow {
                        seq: r.try_get("seq")?,
                        id: r.try_get("id")?,
                        topic: r.try_get("topic")?,
                        subject: r.try_get("subject")?,
                        envelope: r.try_get::<Vec<u8>, _>("envelope")?.into(),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            // RETURNING has no defined order.
            claimed.sort_by_key(|r| r.seq);
            Ok(((), claimed))
        }
        .boxed()
    }

    fn renew<'a>(
        pool: &'a sqlx::Pool<Sqlite>,
        t: &'a str,
        owner: &'a str,
        seqs: &'a [i64],
        lease_until_ms: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        async move {
            let sql = format!(
                "UPDATE {t} SET lease_until_ms = ? WHERE owner = ? \
                 AND seq IN (SELECT value FROM json_each(?))"
            );
            let done = sqlx::query(&sql)
                .bind(lease_until_ms)
                .bind(owner)
                .bind(json_list(seqs.iter().copied()))
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        }
        .boxed()
    }

    fn finish<'a>(
        _claim: (),
        pool: &'a sqlx::Pool<Sqlite>,
        t: &'a str,
        owner: &'a str,
        outcome: Outcome<'a>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            let delete = format!(
                "DELETE FROM {t} WHERE owner = ? AND seq IN (SELECT value FROM json_each(?))"
            );
            if outcome.failed.is_empty() && outcome.untouched.is_empty() && outcome.dead.is_empty()
            {
                // The usual end of a round: one statement, atomic by itself, so no
                // BEGIN and COMMIT (each a round trip to sqlx's SQLite thread).
                if !outcome.sent.is_empty() {
                    sqlx::query(&delete)
                        .bind(owner)
                        .bind(json_list(outcome.sent.iter().copied()))
                        .execute(pool)
                        .await?;
                }
                return Ok(());
            }
            let mut tx = pool.begin().await?;
            if !outcome.sent.is_empty() {
                sqlx::query(&delete)
                    .bind(owner)
                    .bind(json_list(outcome.sent.iter().copied()))
                    .execute(&mut *tx)
                    .await?;
            }
            let fail = format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = ?, lease_until_ms = 0 \
                 WHERE owner = ? AND seq = ?"
            );
            for (seq, error) in outcome.failed {
                sqlx::query(&fail)
                    .bind(error)
                    .bind(owner)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
            }
            let bury = format!(
                "INSERT INTO {t}_dead ({DEAD_COLUMNS}) \
                 SELECT seq, id, topic, subject, envelope, staged_ms, attempts + 1, ?, ?, ? \
                 FROM {t} WHERE owner = ? AND seq = ?"
            );
            let remove = format!("DELETE FROM {t} WHERE owner = ? AND seq = ?");
            for (seq, reason, error) in outcome.dead {
                sqlx::query(&bury)
                    .bind(*reason)
                    .bind(error)
                    .bind(crate::sql::now_ms())
                    .bind(owner)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&remove)
                    .bind(owner)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
            }
            if !outcome.untouched.is_empty() {
                let sql = format!(
                    "UPDATE {t} SET lease_until_ms = 0 WHERE owner = ? \
                     AND seq IN (SELECT value FROM json_each(?))"
                );
                sqlx::query(&sql)
                    .bind(owner)
                    .bind(json_list(outcome.untouched.iter().copied()))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .boxed()
    }

    fn pending<'a>(
        pool: &'a sqlx::Pool<Sqlite>,
        t: &'a str,
    ) -> BoxFuture<'a, Result<i64, sqlx::Error>> {
        async move {
            let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {t}"))
                .fetch_one(pool)
                .await?;
            row.try_get("n")
        }
        .boxed()
    }

    fn dead_letters<'a>(
        pool: &'a sqlx::Pool<Sqlite>,
        t: &'a str,
    ) -> BoxFuture<'a, Result<Vec<super::OutboxDeadLetter>, sqlx::Error>> {
        async move {
            let sql = format!("SELECT {DEAD_COLUMNS} FROM {t}_dead ORDER BY seq");
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.iter().map(dead_row).collect()
        }
        .boxed()
    }
}

/// Whether the table or index `name` exists (a read: no write lock).
pub(crate) async fn sqlite_exists(
    pool: &sqlx::Pool<Sqlite>,
    name: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("SELECT 1 FROM sqlite_master WHERE name = ?")
        .bind(name)
        .fetch_optional(pool)
        .await?
        .is_some())
}
