//! Correlation stores: where a requester keeps its pending requests, so that a reply or a
//! timeout can be handled by any node of its group, after any restart.
//!
//! # The life of a record
//! ```text
//!            insert                     claim_reply                complete(Replied)
//!   (none) ---------> pending -------------------------> replying -----------------> replied
//!                       |  ^                                |
//!                       |  '------------ release -----------'   (handler failed: retried)
//!                       |
//!                       | claim_expired (deadline passed)        complete(TimedOut)
//!                       '-----------------------------> timing_out ----------------> timed_out
//! ```
//! Every transition out of `pending` is one atomic conditional update in the store (`UPDATE ..
//! WHERE state = 'pending' .. RETURNING`), so when a reply and the timeout sweep race, or two
//! nodes of a group see the same reply, exactly one of them wins the claim. The winner hands
//! the outcome to the reply handler and only then marks the record finished (`complete`); if
//! the handler fails it gives the claim back (`release`) and the reply is redelivered (or the
//! next sweep retries the timeout). A reply that finds the request claimed by a live lease
//! ([`Claim::InProgress`]) is retried later rather than dropped: it becomes a duplicate once
//! the claim completes, or takes the claim over once a dead holder's lease lapses.
//!
//! A claim carries a **lease**: if the node holding it dies before `complete`, the claim
//! lapses and a redelivered reply (or the sweep, once the deadline passed) can take it again.
//! So the guarantee is: the reply handler is *completed* exactly once per request, and it is
//! *invoked* more than once only if a node dies (or its handler fails) while handling that
//! request's outcome. Handlers that must not repeat an effect even then should be idempotent
//! on the request id, as any at-least-once consumer must.
//!
//! # Tombstones
//! Finished records stay in the store as tombstones for a retention window (one day by
//! default, [`CorrelationStore::purge`]) so that a later reply can be told apart: a reply
//! for a `replied` request is a **duplicate**, for a `timing_out`/`timed_out` one or one that
//! arrives after its deadline it is **late**, and for an id the store never saw (or that does
//! not match the stored request type or responder) it is **forged**. After the window a late
//! or duplicate reply is indistinguishable from a forged one and is counted as such.
//!
//! # Time
//! Stores take "now" as an argument in Unix milliseconds instead of reading a clock, so tests
//! drive them with any time they like, and all nodes judge deadlines by the caller's clock.

use std::fmt;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::Error;

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// One pending request as the store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingRequest {
    /// The request id, also the `correlationid` of the request and of its reply.
    pub id: String,
    /// The requester group that sent it (and receives its reply).
    pub group: String,
    /// The request's message type; a reply must name the same one. It also names the reply
    /// type: a request type's `Response` is fixed by the type, so the requester decodes the
    /// reply as the `Response` of the type stored here.
    pub request_type: String,
    /// The topic the request was sent to; a reply must come from that responder.
    pub responder: String,
    /// When it was sent, Unix milliseconds.
    pub sent_ms: i64,
    /// After this instant (Unix milliseconds) nobody waits: the outcome is `TimedOut`.
    pub deadline_ms: i64,
    /// The caller's context, handed back with the outcome (a small JSON value).
    pub context: serde_json::Value,
}

/// A request without its outcome yet, as [`CorrelationStore::in_flight`] lists it (what an
/// operator console shows).
#[derive(Clone, Debug, PartialEq)]
pub struct InFlight {
    /// The request.
    pub request: PendingRequest,
    /// `Pending`, or claimed: `Replying` (a node handles its reply) or `TimingOut`.
    pub state: RecordState,
    /// Until when (Unix milliseconds) the claim holds; 0 when not claimed.
    pub lease_until_ms: i64,
    /// The node holding the claim (the `node` of the store handle that claimed it: by
    /// default `<host>:<pid>`); `None` when not claimed, or claimed by an older release.
    pub holder: Option<String>,
}

/// The state of a record in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// Sent, no outcome yet.
    Pending,
    /// A node claimed a reply and is running the reply handler.
    Replying,
    /// The sweep claimed the timeout and is running the reply handler.
    TimingOut,
    /// Finished with a reply (tombstone).
    Replied,
    /// Finished with a timeout (tombstone).
    TimedOut,
}

impl RecordState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Pending => "pending",
            RecordState::Replying => "replying",
            RecordState::TimingOut => "timing_out",
            RecordState::Replied => "replied",
            RecordState::TimedOut => "timed_out",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<RecordState> {
        Some(match s {
            "pending" => RecordState::Pending,
            "replying" => RecordState::Replying,
            "timing_out" => RecordState::TimingOut,
            "replied" => RecordState::Replied,
            "timed_out" => RecordState::TimedOut,
            _ => return None,
        })
    }

    /// Whether the record is finished (a tombstone).
    pub fn is_final(self) -> bool {
        matches!(self, RecordState::Replied | RecordState::TimedOut)
    }
}

impl fmt::Display for RecordState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a reply says about itself, checked against the stored request before it is claimed
/// (what it leaves out is not checked: the correlation id alone then names the request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyKey<'a> {
    /// The reply's correlation id.
    pub id: &'a str,
    /// The request type the reply says it answers; `None` for a reply that cannot say (a
    /// plain AMQP client's, which echoes only the correlation id): then it is not checked.
    pub request_type: Option<&'a str>,
    /// The responder topic the reply says it comes from; `None`: not checked, as above.
    pub responder: Option<&'a str>,
}

/// The result of trying to claim a reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// The request was pending (or its previous claim lapsed): this node now owns it and must
    /// `complete` or `release` it.
    Claimed(PendingRequest),
    /// The request already has its reply: a duplicate.
    Duplicate,
    /// Another node (or task) holds a live claim on the request and is handling a reply. The
    /// caller should retry later: if that node dies, its lease lapses and this reply can
    /// claim the request; if it finishes, this reply becomes a duplicate.
    InProgress,
    /// The request timed out (or its deadline passed) before this reply: a late reply.
    Late,
    /// The correlation id is unknown (never sent, or purged), or the stored request has
    /// another type or responder: a forged or misrouted reply.
    Forged,
}

/// The counts of a store's records by state (for metrics and quiescence checks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// `pending` records.
    pub pending: u64,
    /// Claimed records whose handler runs (`replying` and `timing_out`).
    pub in_progress: u64,
    /// `replied` tombstones.
    pub replied: u64,
    /// `timed_out` tombstones.
    pub timed_out: u64,
    /// Replies that came after their request's deadline, as the requesters of this store
    /// tallied them ([`CorrelationStore::tally`]), since the store was created.
    pub late: u64,
    /// Replies to a request that had its reply already.
    pub duplicate: u64,
    /// Replies that matched no request of the store (unknown id, or another type or
    /// responder than the request's).
    pub forged: u64,
}

/// A reply that a requester did not hand to a handler, tallied in the store so that every
/// node of a group (and an operator's console) sees the group's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tally {
    /// After the request's deadline ([`Claim::Late`]).
    Late,
    /// The request had its reply already ([`Claim::Duplicate`]).
    Duplicate,
    /// No request matches ([`Claim::Forged`]).
    Forged,
}

impl Tally {
    /// The name kept in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Tally::Late => "late",
            Tally::Duplicate => "duplicate",
            Tally::Forged => "forged",
        }
    }
}

/// Adds `n` tallied replies of `kind` (as [`Tally::as_str`] names it) to `counts`.
pub(crate) fn add_tally(counts: &mut StoreCounts, kind: &str, n: i64) {
    let n = u64::try_from(n).unwrap_or(0);
    match kind {
        "late" => counts.late += n,
        "duplicate" => counts.duplicate += n,
        "forged" => counts.forged += n,
        _ => {}
    }
}

/// The node name a store handle records on its claims unless told another: `<host>:<pid>`.
pub(crate) fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// A persistent (or, for tests and benchmarks, in-memory) home for pending requests.
///
/// Every method is one atomic operation of the store; see the module docs for the states.
/// Methods return boxed futures so that stores can be used as `Arc<dyn CorrelationStore>`.
pub trait CorrelationStore: Send + Sync + 'static {
    /// A short name for logs and benchmarks (`sqlite`, `postgres`, `memory`).
    fn name(&self) -> &'static str;

    /// Records a new pending request. Fails with `Storage` if the id exists already.
    fn insert<'a>(&'a self, request: &'a PendingRequest) -> BoxFuture<'a, Result<(), Error>>;

    /// Claims the request a reply answers, if it is pending (or `replying` with a lapsed
    /// lease) and its deadline has not passed at `now_ms`; the claim lasts until
    /// `lease_until_ms`. Otherwise says why the reply cannot be handled.
    fn claim_reply<'a>(
        &'a self,
        reply: ReplyKey<'a>,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> BoxFuture<'a, Result<Claim, Error>>;

    /// Claims up to `limit` requests whose deadline is at or before `now_ms` and that are
    /// pending, or claimed with a lapsed lease: they become `timing_out` until
    /// `lease_until_ms`.
    fn claim_expired(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<PendingRequest>, Error>>;

    /// Finishes a claimed request with `state` (`Replied` or `TimedOut`). Returns `false` if
    /// the record was not claimed any more (its lease lapsed and another node took it).
    fn complete<'a>(
        &'a self,
        id: &'a str,
        state: RecordState,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, Error>>;

    /// Gives a claim back (the handler failed): the record is `pending` again.
    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// Deletes a pending record whose request could not be published (nobody will reply).
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// The state of one record, if the store has it.
    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RecordState>, Error>>;

    /// Deletes tombstones finished before `before_ms`; returns how many.
    fn purge(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, Error>>;

    /// The requests without an outcome yet (pending or claimed), oldest sent first, at most
    /// `limit`.
    fn in_flight(&self, limit: usize) -> BoxFuture<'_, Result<Vec<InFlight>, Error>>;

    /// Counts records by state, and the replies tallied by [`CorrelationStore::tally`].
    fn counts(&self) -> BoxFuture<'_, Result<StoreCounts, Error>>;

    /// Counts one reply that was not handed to a handler (late, duplicate or forged), for
    /// every node of the group to see in [`CorrelationStore::counts`].
    fn tally(&self, tally: Tally) -> BoxFuture<'_, Result<(), Error>>;
}

/// Checks a table name for the SQL stores (it is spliced into statements).
pub(crate) fn validate_table(table: &str) -> Result<(), Error> {
    crate::sql::validate_table("correlation", table)
}

/// Wraps a database error as a `Storage` error naming the store and operation (or
/// `Unauthenticated`: see [`crate::sql::refused_credentials`]).
pub(crate) fn db_error(store: &str, operation: &str, error: sqlx::Error) -> Error {
    if crate::sql::refused_credentials(&error) {
        return crate::sql::credentials_error(&format!("correlation store ({store})"), error);
    }
    Error::new(
        crate::ErrorKind::Storage,
        format!(
            "correlation store ({store}): {operation} failed; check that the database is reachable and writable"
        ),
    )
    .with_source(error)
}

/// Parses a stored context (`TEXT` JSON); a damaged value becomes `null` with a warning
/// rather than making the request impossible to finish.
pub(crate) fn parse_context(id: &str, text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(id, error = %e, "stored request context is not JSON; handing back null");
        serde_json::Value::Null
    })
}

/// Tells why a reply could not be claimed, from the stored record (if any).
pub(crate) fn classify(
    found: Option<(String, String, String, i64)>,
    reply: &ReplyKey<'_>,
    now_ms: i64,
) -> Claim {
    let Some((state, request_type, responder, deadline_ms)) = found else {
        return Claim::Forged;
    };
    if reply.request_type.is_some_and(|t| t != request_type)
        || reply.responder.is_some_and(|r| r != responder)
    {
        return Claim::Forged;
    }
    match RecordState::parse(&state) {
        Some(RecordState::Replied) => Claim::Duplicate,
        Some(RecordState::Replying) if deadline_ms > now_ms => Claim::InProgress,
        Some(_) => Claim::Late,
        None => Claim::Forged,
    }
}

/// Adds `n` records in `state` to `counts`.
pub(crate) fn add_count(counts: &mut StoreCounts, state: &str, n: i64) {
    let n = u64::try_from(n).unwrap_or(0);
    match RecordState::parse(state) {
        Some(RecordState::Pending) => counts.pending += n,
        Some(RecordState::Replying | RecordState::TimingOut) => counts.in_progress += n,
        Some(RecordState::Replied) => counts.replied += n,
        Some(RecordState::TimedOut) => counts.timed_out += n,
        None => {}
    }
}
