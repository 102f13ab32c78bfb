//! Request-response messaging: commands and queries sent through the bus, with their state
//! persisted, so replies reach any node of the requester's group and timeouts survive
//! restarts.
//!
//! # Why persisted correlation
//! Request-response over a bus is for when a call cannot work: the recipient is often down,
//! or only speaks messaging. Then the answer may come minutes later, after the sender
//! restarted, or to another node of the sender's service. Frameworks that keep the pending
//! request in one process's memory (a callback map keyed by correlation id) lose it on
//! restart: the reply arrives and nobody knows what it was for, and a request that is never
//! answered is never noticed. A [`Requester`] instead writes each pending request to a
//! [`CorrelationStore`] *before* it publishes it, and everything after that works from the
//! store:
//!
//! - **Replies go to the group, not to a process.** A request's `replyto` is the group's
//!   reply topic (`replies.<group>` on the embedded backend: the topic name is the address),
//!   consumed as a consumer group; whichever node gets a reply loads the request from the
//!   store and hands the typed reply to the reply handler registered for its type. On an
//!   engine with [`Capabilities::reply_queues`](crate::backend::Capabilities::reply_queues)
//!   (RabbitMQ) the address is instead the queue that group consumes, `/queues/<name>`, so
//!   that a plain AMQP client, which replies to the queue named in `reply_to`, reaches the
//!   group too.
//! - **Plain clients.** A responder answers a request whose `replyto` is a queue by putting
//!   the reply into that queue ([`ReplyAddress`](crate::backend::ReplyAddress)); a requester
//!   takes a reply without CloudEvents attributes ([`PLAIN_REPLY_TYPE`]: its body is the
//!   response) by its correlation id alone. `docs/engines.md` has the AMQP contract.
//! - **Exactly one outcome.** A reply and the timeout sweep race for a request through one
//!   atomic claim in the store, so every request ends exactly once: [`Outcome::Replied`]
//!   with the response or the responder's typed [`Rejection`](crate::Rejection), or
//!   [`Outcome::TimedOut`]. The store module documents the claim, its lease and what happens
//!   when a node dies while handling an outcome.
//! - **Durable timeouts.** Deadlines are stored; a sweep on every node turns expired
//!   requests into `TimedOut` outcomes, whichever node sent them and however many restarts
//!   happened in between.
//! - **Late, duplicate and forged replies are counted, never delivered.** A reply after its
//!   deadline is logged and counted as late; a second reply to a finished request as a
//!   duplicate; a reply whose correlation id the store does not know, or whose request type
//!   or responder does not match the stored request, as rejected (and dead-lettered, so it
//!   can be inspected). See [`RequesterStats`].
//!
//! A [`Responder`] handles a request type on a topic, skips requests whose deadline has
//! passed (nobody waits for them), and replies to `replyto` with the same correlation id.
//! Requests are delivered at least once, so a responder may see a request again after a
//! crash: its handler must treat a repeated command as the same command (key on the request's
//! business id).
//!
//! The price of persistence (three store writes per request: insert, claim, complete) is
//! measured by the `request_reply_overhead` example against the in-memory store; see
//! BENCHMARKS.md.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tabgrab::Error> {
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use tabgrab::backend::embedded::EmbeddedBus;
//! use tabgrab::messaging::{Outcome, Requester, Responder, SendOptions, SqliteStore};
//! use tabgrab::{Message, Rejection};
//!
//! #[derive(Serialize, Deserialize, Message)]
//! #[message(type = "pizzeria.menu.get-price.v1", query, response = u64)]
//! struct GetPrice { pizza: String }
//!
//! let bus = EmbeddedBus::open("./data")?;
//! let responder = Responder::builder(&bus, "menu", "menu")
//!     .handle(|q: GetPrice, _ctx| async move {
//!         if q.pizza == "margherita" { Ok(900) } else { Err(Rejection::new("menu.unknown", "no such pizza").into()) }
//!     })
//!     .start()?;
//! let requester = Requester::builder(&bus, "front-desk")
//!     .store(SqliteStore::open("./data/correlation.db").await?)
//!     .on_reply("menu", |outcome: Outcome<GetPrice>, ctx| async move {
//!         println!("{}: {outcome:?}", ctx.request_id());
//!         Ok(())
//!     })
//!     .start()?;
//! let id = requester
//!     .send(&GetPrice { pizza: "margherita".into() }, SendOptions::default().timeout(Duration::from_secs(5)))
//!     .await?;
//! println!("sent {id}; the reply handler gets the answer, on whichever node");
//! # requester.shutdown().await?; responder.shutdown().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

mod admission;
mod reply;
mod requester;
mod responder;
pub mod store;
mod sweep;

pub use reply::{
    Outcome, PLAIN_REPLY_TYPE, REPLY_TYPE, REQUEST_TYPE_ATTR, RESPONDER_ATTR, ReplyBody,
};
pub use requester::{ReplyContext, Requester, RequesterBuilder, RequesterStats};
pub use responder::{RequestContext, Responder, ResponderBuilder, ResponderStats};
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
pub use store::{CorrelationStore, InFlight, MemoryStore, SqliteStore};

/// The id of a request: a UUIDv7, also its `correlationid` and its reply's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh, time-ordered id.
    pub(crate) fn new() -> RequestId {
        RequestId(uuid::Uuid::now_v7().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<RequestId> for String {
    fn from(id: RequestId) -> String {
        id.0
    }
}

/// How to send one request.
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// How long to wait for the reply; `None`: the requester's default (30 s).
    pub timeout: Option<Duration>,
    /// A small value handed back with the outcome (what the caller needs to continue: an
    /// order id, a step). It is stored with the request, so it survives restarts.
    pub context: serde_json::Value,
    /// The request's subject (what it is about); requests and replies are ordered per
    /// subject. `None`: no subject, and no ordering between requests (each has a lane of
    /// its own).
    pub subject: Option<String>,
    /// On whose behalf the request is sent: carried as its `principal` attribute (see
    /// [`crate::principal`]), for a responder that requires one.
    pub principal: Option<crate::Principal>,
}

impl SendOptions {
    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> SendOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the context value.
    pub fn context(mut self, context: serde_json::Value) -> SendOptions {
        self.context = context;
        self
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> SendOptions {
        self.subject = Some(subject.into());
        self
    }

    /// Sends the request on behalf of `principal`.
    pub fn principal(mut self, principal: crate::Principal) -> SendOptions {
        self.principal = Some(principal);
        self
    }
}

/// Wall-clock milliseconds that follow tokio's clock: `now = start + elapsed`. In production
/// that is the system time; under paused tokio time in tests, it moves only when tokio's time
/// does, so deadline and sweep logic can be tested without sleeping.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    /// Unix milliseconds at `base`.
    base_ms: i64,
    /// The tokio instant the clock started.
    base: tokio::time::Instant,
}

impl Clock {
    /// A clock starting at the system time.
    pub(crate) fn new() -> Clock {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Clock {
            base_ms,
            base: tokio::time::Instant::now(),
        }
    }

    /// Unix milliseconds now.
    pub(crate) fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base_ms.saturating_add(elapsed)
    }
}

/// Unix milliseconds to a timestamp (for the envelope's `deadline`).
pub(crate) fn to_datetime(ms: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// A timestamp to Unix milliseconds.
pub(crate) fn to_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Milliseconds of a duration, saturating.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
