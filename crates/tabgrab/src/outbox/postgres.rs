//! The outbox in PostgreSQL: a claim is a transaction holding the rows' locks.
//!
//! A relay begins a transaction, takes the oldest rows with `FOR UPDATE SKIP LOCKED` (rows
//! another relay holds are skipped, not waited for), publishes them, deletes the ones it
//! published and commits. The locks are held while it publishes, so no other relay can
//! publish the same rows meanwhile; if the relay dies, its connection closes, PostgreSQL rolls
//! the transaction back and the rows are free at once (no lease to wait out).
//!
//! Per-subject order with several relays: after the claim, rows that have an *earlier* row of
//! the same (topic, subject) outside the claimed batch are held back (that earlier row is
//! locked by another relay, or not yet claimable): they are published by a later claim, after
//! the earlier row is gone.

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sqlx::Postgres;
use sqlx::Row as _;

use super::dialect::{Claimed, ClaimedRow, DEAD_COLUMNS, NewRow, OutboxSql, Outcome, dead_row};

impl OutboxSql for Postgres {
    const NAME: &'static str = "postgres";
    type Claim = sqlx::Transaction<'static, Postgres>;

    fn create<'a>(
        pool: &'a sqlx::Pool<Postgres>,
        t: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            // An existing table is left alone: CREATE INDEX would wait for every open
            // transaction that wrote to it (a relay holding its claim, a stalled consumer).
            if !table_exists(pool, &format!("{t}_dead")).await? {
                // Checked on its own: an outbox made before dead letters gets the table too.
                let dead = format!(
                    "CREATE TABLE IF NOT EXISTS {t}_dead (\
                       seq BIGINT PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL, \
                       subject TEXT NOT NULL, envelope BYTEA NOT NULL, staged_ms BIGINT NOT NULL, \
                       attempts BIGINT NOT NULL, reason TEXT NOT NULL, error TEXT NOT NULL, \
                       dead_ms BIGINT NOT NULL)"
                );
                sqlx::query(&dead).execute(pool).await?;
            }
            if table_exists(pool, &format!("{t}_subject")).await? {
                return Ok(());
            }
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                   seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL, \
                   topic TEXT NOT NULL, subject TEXT NOT NULL, envelope BYTEA NOT NULL, \
                   staged_ms BIGINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, \
                   last_error TEXT NOT NULL DEFAULT '')"
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
        tx: &'a mut sqlx::Transaction<'c, Postgres>,
        t: &'a str,
        row: NewRow<'a>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            let sql = format!(
                "INSERT INTO {t} (id, topic, subject, envelope, staged_ms) \
                 VALUES ($1, $2, $3, $4, $5)"
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
        pool: &'a sqlx::Pool<Postgres>,
        t: &'a str,
        _owner: &'a str,
        limit: i64,
        _now_ms: i64,
        _lease_until_ms: i64,
    ) -> BoxFuture<'a, Result<Claimed<Self::Claim>, sqlx::Error>> {
        async move {
            let mut tx = pool.begin().await?;
            let sql = format!(
                "SELECT seq, id, topic, subject, envelope FROM {t} \
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            );
            let rows = sqlx::query(&sql).bind(limit).fetch_all(&mut *tx).await?;
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
            if claimed.is_empty() {
                return Ok((tx, claimed));
            }
            // Rows behind an earlier row of their subject that this claim does not hold: that
            // row is being published by another relay (or was skipped): wait for it.
            let seqs: Vec<i64> = claimed.iter().map(|r| r.seq).collect();
            let blocked_sql = format!(
                "SELECT o.seq FROM {t} o WHERE o.seq = ANY($1) AND EXISTS (\
                   SELECT 1 FROM {t} p WHERE p.topic = o.topic AND p.subject = o.subject \
                   AND p.seq < o.seq AND NOT (p.seq = ANY($1)))"
            );
            let blocked: Vec<i64> = sqlx::query(&blocked_sql)
                .bind(&seqs)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>("seq"))
                .collect::<Result<_, _>>()?;
            claimed.retain(|r| !blocked.contains(&r.seq));
            claimed.sort_by_key(|r| r.seq);
            Ok((tx, claimed))
        }
        .boxed()
    }

    fn renew<'a>(
        _pool: &'a sqlx::Pool<Postgres>,
        _t: &'a str,
        _owner: &'a str,
        seqs: &'a [i64],
        _lease_until_ms: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        // The claim is a lock held by an open transaction: nothing lapses.
        async move { Ok(seqs.len() as u64) }.boxed()
    }

    fn finish<'a>(
        mut tx: Self::Claim,
        _pool: &'a sqlx::Pool<Postgres>,
        t: &'a str,
        _owner: &'a str,
        outcome: Outcome<'a>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            if !outcome.sent.is_empty() {
                sqlx::query(&format!("DELETE FROM {t} WHERE seq = ANY($1)"))
                    .bind(outcome.sent)
                    .execute(&mut *tx)
                    .await?;
            }
            let fail =
                format!("UPDATE {t} SET attempts = attempts + 1, last_error = $1 WHERE seq = $2");
            for (seq, error) in outcome.failed {
                sqlx::query(&fail)
                    .bind(error)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
            }
            let bury = format!(
                "INSERT INTO {t}_dead ({DEAD_COLUMNS}) \
                 SELECT seq, id, topic, subject, envelope, staged_ms, attempts + 1, $1, $2, $3 \
                 FROM {t} WHERE seq = $4"
            );
            let remove = format!("DELETE FROM {t} WHERE seq = $1");
            for (seq, reason, error) in outcome.dead {
                sqlx::query(&bury)
                    .bind(*reason)
                    .bind(error)
                    .bind(crate::sql::now_ms())
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&remove).bind(seq).execute(&mut *tx).await?;
            }
            // Untouched rows need nothing: committing releases their locks.
            tx.commit().await
        }
        .boxed()
    }

    fn pending<'a>(
        pool: &'a sqlx::Pool<Postgres>,
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
        pool: &'a sqlx::Pool<Postgres>,
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

/// Whether the relation `name` (a table or index) exists in the search path.
pub(crate) async fn table_exists(
    pool: &sqlx::Pool<Postgres>,
    table: &str,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT to_regclass($1) IS NOT NULL AS present")
        .bind(table)
        .fetch_one(pool)
        .await?;
    row.try_get("present")
}
