//! The SQL each database speaks for the inbox (sealed: implemented in `sqlite.rs` and
//! `postgres.rs` beside this file).

use futures::future::BoxFuture;

/// The inbox's SQL for one database. Public in a private module: sealed, so only tabgrab
/// implements it, and its methods cannot be called from outside.
#[allow(unreachable_pub)]
pub trait InboxSql: sqlx::Database + Sized {
    /// `sqlite`, `postgres`: for errors and logs.
    const INBOX_NAME: &'static str;

    /// Creates the table and its index if missing.
    fn create_inbox<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Inserts (group, id) unless present, in the handler's transaction; `true` if inserted.
    fn record<'a, 'c>(
        tx: &'a mut sqlx::Transaction<'c, Self>,
        table: &'a str,
        group: &'a str,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

    /// Whether (group, id) is recorded (committed).
    fn contains<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a str,
        group: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

    /// Deletes the group's ids recorded before `before_ms`; returns how many.
    fn prune<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a str,
        group: &'a str,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
}
