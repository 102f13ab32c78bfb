//! The SQL each database speaks for the outbox (sealed: implemented in `sqlite.rs` and
//! `postgres.rs` beside this file).

use futures::future::BoxFuture;

use super::OutboxDeadLetter;

/// A staged event, as `stage` inserts it.
pub struct NewRow<'a> {
    /// The envelope id (the de-duplication key).
    pub id: &'a str,
    /// The topic it goes to.
    pub topic: &'a str,
    /// Its subject (`""` for none): the relay keeps order per (topic, subject).
    pub subject: &'a str,
    /// The encoded envelope.
    pub envelope: &'a [u8],
    /// When it was staged (Unix ms), for diagnostics.
    pub staged_ms: i64,
}

/// A row a relay claimed.
#[derive(Debug)]
pub struct ClaimedRow {
    /// The staging sequence number: the order of publication per subject.
    pub seq: i64,
    /// The envelope id.
    pub id: String,
    /// The topic.
    pub topic: String,
    /// The subject (`""` for none).
    pub subject: String,
    /// The encoded envelope, published as it is where the engine stores that form.
    pub envelope: bytes::Bytes,
}

/// A claim and its rows, in staging order.
pub(crate) type Claimed<C> = (C, Vec<ClaimedRow>);

/// What a relay reports when it is done with a claimed batch.
pub struct Outcome<'a> {
    /// Published: delete them.
    pub sent: &'a [i64],
    /// Publishing failed (with the error): count the attempt, give them back.
    pub failed: &'a [(i64, String)],
    /// Not attempted (held behind a failure of their subject, or shutdown): give them back.
    pub untouched: &'a [i64],
    /// Rows the bus refused for good (bad input), with the reason kind and the error: moved
    /// to the dead-letter table, so that their subject flows again.
    pub dead: &'a [(i64, &'static str, String)],
}

/// The outbox's SQL for one database. Public in a private module: sealed, so only tabgrab
/// implements it, and its methods cannot be called from outside.
#[allow(unreachable_pub)]
pub trait OutboxSql: sqlx::Database + Sized {
    /// `sqlite`, `postgres`: for errors and logs.
    const NAME: &'static str;
    /// What a relay holds while it publishes a claimed batch (PostgreSQL: the transaction
    /// holding the rows' locks; SQLite: nothing, the claim is a lease in the rows).
    type Claim: Send + 'static;

    /// Creates the table and its index if missing.
    fn create<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a str,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Inserts a staged event in the application's transaction.
    fn stage<'a, 'c>(
        tx: &'a mut sqlx::Transaction<'c, Self>,
        table: &'a str,
        row: NewRow<'a>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Claims up to `limit` rows in staging order that no other live relay holds, none of
    /// whose earlier rows of the same (topic, subject) another relay holds.
    fn claim<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a str,
        owner: &'a str,
        limit: i64,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> BoxFuture<'a, Result<Claimed<Self::Claim>, sqlx::Error>>;

    /// Extends the lease on claimed rows (a no-op where the claim is a lock). Returns how many
    /// rows this owner still holds.
    fn renew<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a str,
        owner: &'a str,
        seqs: &'a [i64],
        lease_until_ms: i64,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

    /// Deletes the sent rows and gives the others back, atomically.
    fn finish<'a>(
        claim: Self::Claim,
        pool: &'a sqlx::Pool<Self>,
        table: &'a str,
        owner: &'a str,
        outcome: Outcome<'a>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// How many rows are not sent yet.
    fn pending<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a str,
    ) -> BoxFuture<'a, Result<i64, sqlx::Error>>;

    fn dead_letters<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Vec<OutboxDeadLetter>, sqlx::Error>>;
}

/// A JSON array of sequence numbers (SQLite binds a list as one `json_each` argument).
/// The columns of the dead-letter table `<table>_dead`.
pub(crate) const DEAD_COLUMNS: &str =
    "seq, id, topic, subject, envelope, staged_ms, attempts, reason, error, dead_ms";

/// Reads a row of the dead-letter table.
pub(crate) fn dead_row<R: sqlx::Row>(r: &R) -> Result<OutboxDeadLetter, sqlx::Error>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(OutboxDeadLetter {
        seq: r.try_get("seq")?,
        id: r.try_get("id")?,
        topic: r.try_get("topic")?,
        subject: r.try_get("subject")?,
        envelope: r.try_get("envelope")?,
        staged_ms: r.try_get("staged_ms")?,
        attempts: r.try_get("attempts")?,
        reason: r.try_get("reason")?,
        error: r.try_get("error")?,
        dead_ms: r.try_get("dead_ms")?,
    })
}

pub(crate) fn json_list(seqs: impl IntoIterator<Item = i64>) -> String {
    let mut out = String::from("[");
    for (i, s) in seqs.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&s.to_string());
    }
    out.push(']');
    out
}
