//! Shared by the outbox tests that show an outbox row is published as it is stored: the
//! row rewritten in a form the codec never writes, and the wait for a relay to drain.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use tabgrab::outbox::Outbox;

/// Rewrites the one staged row of `outbox` with its envelope indented (the codec never
/// indents) and returns those bytes: a relay that publishes them as they are, rather than
/// encoding the event again, puts exactly these bytes on the bus.
pub async fn indent_the_staged_row(
    pool: &sqlx::SqlitePool,
    outbox: &Outbox<sqlx::Sqlite>,
) -> Vec<u8> {
    let table = outbox.table();
    let stored: Vec<u8> = sqlx::query_scalar(&format!("SELECT envelope FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    let indented = serde_json::to_vec_pretty(&value).unwrap();
    assert_ne!(indented, stored, "the codec does not indent");
    sqlx::query(&format!("UPDATE {table} SET envelope = ?"))
        .bind(&indented)
        .execute(pool)
        .await
        .unwrap();
    indented
}

/// Waits until `outbox` has nothing pending, at most `within`.
pub async fn wait_drained<DB: tabgrab::sql::Database>(outbox: &Outbox<DB>, within: Duration) {
    let deadline = Instant::now() + within;
    while outbox.pending().await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "the relay did not drain the outbox"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
