//! The SQL databases an [`Outbox`](crate::outbox::Outbox) and an
//! [`Inbox`](crate::inbox::Inbox) live in: SQLite (the embedded default) and PostgreSQL
//! (feature `postgres`).
//!
//! Why the application's own database: the whole point of an outbox and an inbox is that their
//! rows are written in the *same transaction* as the application's state change, so the two
//! commit or vanish together. So both take the application's `sqlx` pool and its
//! `sqlx::Transaction`, and are generic over the `sqlx` database type. [`Database`] is sealed:
//! each implementation carries its own SQL dialect (placeholders, `RETURNING`, `FOR UPDATE SKIP
//! LOCKED`), and only the databases tabgrab has tested implement it.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Error, ErrorKind};

/// A SQL database that can hold tabgrab's outbox and inbox tables: `sqlx::Sqlite`, and
/// `sqlx::Postgres` with the `postgres` feature. Sealed.
pub trait Database:
    sqlx::Database + crate::outbox::dialect::OutboxSql + crate::inbox::dialect::InboxSql
{
}

impl Database for sqlx::Sqlite {}

#[cfg(feature = "postgres")]
impl Database for sqlx::Postgres {}

/// Checks a table name (it is spliced into statements).
pub(crate) fn validate_table(what: &str, table: &str) -> Result<(), Error> {
    let ok = !table.is_empty()
        && table.len() <= 60
        && table
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && table
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Malformed,
            format!(
                "{what} table name {table:?} is invalid: use 1-60 of [a-z0-9_], not starting with a digit"
            ),
        ))
    }
}

/// Wraps a database error as a `Storage` error naming the component and the operation.
pub(crate) fn db_error(what: &str, operation: &str, error: sqlx::Error) -> Error {
    Error::new(
        ErrorKind::Storage,
        format!(
            "{what}: {operation} failed; check that the database is reachable and writable (the application's transaction, if any, should be rolled back)"
        ),
    )
    .with_source(error)
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
