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

/// The longest table name: the names derived from it (`<table>_subject`, the longest suffix)
/// must fit PostgreSQL's 63-byte identifiers, which it would otherwise truncate.
pub(crate) const MAX_TABLE_NAME: usize = 63 - "_subject".len();

/// Checks a table name (it is spliced into statements).
pub(crate) fn validate_table(what: &str, table: &str) -> Result<(), Error> {
    let ok = !table.is_empty()
        && table.len() <= MAX_TABLE_NAME
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
                "{what} table name {table:?} is invalid: use 1-{MAX_TABLE_NAME} of [a-z0-9_], not \
                 starting with a digit (names derived from it must fit PostgreSQL's 63 bytes)"
            ),
        ))
    }
}

/// Wraps a database error as a `Storage` error naming the component and the operation, or
/// as `Unauthenticated` when the server refused the credentials ([`refused_credentials`]).
pub(crate) fn db_error(what: &str, operation: &str, error: sqlx::Error) -> Error {
    if refused_credentials(&error) {
        return credentials_error(what, error);
    }
    Error::new(
        ErrorKind::Storage,
        format!(
            "{what}: {operation} failed; check that the database is reachable and writable (the application's transaction, if any, should be rolled back)"
        ),
    )
    .with_source(error)
}

/// Whether the server refused who connects: SQLSTATE class 28 (invalid authorization
/// specification: a wrong password, a role that does not exist, a `pg_hba.conf` rule). Not a
/// failure that waiting cures: tabgrab's stores report it as `Unauthenticated`, which no
/// retry repeats, and an application's own store can do the same.
pub fn refused_credentials(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code.starts_with("28"))
}

/// `Unauthenticated` for `what`, with the server's reason (never the password: the URL's
/// secrets are scrubbed where the error is made).
pub(crate) fn credentials_error(what: &str, error: sqlx::Error) -> Error {
    Error::new(
        ErrorKind::Unauthenticated,
        format!("{what}: the database refused the credentials: {error}"),
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

/// A PostgreSQL pool of up to `max_connections`, made after one direct connection succeeded.
///
/// sqlx's pool retries a refused connection until its acquire timeout and then reports only
/// that it timed out, so a wrong host, port, password or database would cost the whole
/// timeout and hide the reason. The direct connection fails at once with it (connection
/// refused, password authentication failed, database does not exist); it is given
/// `probe_timeout` for a server that does not answer at all.
#[cfg(feature = "postgres")]
pub async fn connect_postgres(
    url: &str,
    max_connections: u32,
    acquire_timeout: std::time::Duration,
    probe_timeout: std::time::Duration,
) -> Result<sqlx::PgPool, sqlx::Error> {
    use sqlx::Connection as _;
    let secret = crate::SecretUrl::new(url);
    // The driver's errors must not carry the password onward (see `tabgrab_core::secret`).
    let scrub = |e: sqlx::Error| {
        if secret.has_secret() && secret.scrub_text(&format!("{e} {e:?}")) != format!("{e} {e:?}") {
            sqlx::Error::Configuration(Box::new(secret.scrub(&e)))
        } else {
            e
        }
    };
    let probe = tokio::time::timeout(probe_timeout, sqlx::PgConnection::connect(url))
        .await
        .map_err(|_| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "PostgreSQL did not answer within {} ms",
                    probe_timeout.as_millis()
                ),
            ))
        })?
        .map_err(scrub)?;
    // Closing is a courtesy to the server; the pool opens its own connections.
    let _ = probe.close().await;
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect(url)
        .await
        .map_err(scrub)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name derived from a valid table name fits PostgreSQL's 63-byte identifiers
    /// (longer ones it truncates, with a notice per statement); a longer table name is refused.
    #[test]
    fn table_names_leave_room_for_their_derived_names() {
        let longest = "t".repeat(MAX_TABLE_NAME);
        validate_table("outbox", &longest).expect("the longest name is valid");
        for suffix in ["_subject", "_dead", "_age", "_due"] {
            assert!(format!("{longest}{suffix}").len() <= 63, "{suffix}");
        }
        let error = validate_table("outbox", &format!("{longest}t")).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Malformed);
        assert!(error.to_string().contains("1-55"), "{error}");
        for bad in ["", "9lives", "Orders", "drop table;"] {
            assert!(validate_table("outbox", bad).is_err(), "{bad:?}");
        }
    }
}
