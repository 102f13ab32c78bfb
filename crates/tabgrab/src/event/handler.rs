//! What a handler receives besides the event ([`Context`]) and what it may return
//! ([`HandlerError`], the one failure type of every kind of handler).
//!
//! Every handler's context has one shape: [`Context`] (events), `RequestContext`
//! (responders), `ReplyContext` (reply handlers) and `CallContext` (calls) each tell the
//! message's `envelope()`, who sent it (`principal()`), the time left before the sender's
//! deadline (`remaining()`), the handler's `attempt()`, and whether it should give up
//! (`shutdown_requested()`, `is_shutting_down()`). A call has no redelivery (a retry is a new
//! call, attempt 1) and its server drains calls in flight instead of cancelling them, so a
//! call's context says attempt 1 and never shutting down.

use std::sync::Arc;
use std::time::Duration;

use crate::Envelope;

/// The delivery context of one event: its envelope, position and attempt number.
#[derive(Clone, Debug)]
pub struct Context {
    /// The envelope as delivered, for ids, subject, correlation and causation.
    pub(crate) envelope: Arc<Envelope>,
    /// The event's offset in its topic, for logs and idempotency keys.
    pub(crate) offset: u64,
    /// 1 on the first delivery, 2 on the first retry, and so on.
    pub(crate) attempt: u32,
    /// The consumer group that is handling the event.
    pub(crate) group: Arc<str>,
    /// Cancelled when the group shuts down, so a handler that waits (for an oven, a lock)
    /// can give up instead of holding the drain until its timeout.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

impl Context {
    /// The envelope of the event being handled.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The event's subject, if it has one.
    pub fn subject(&self) -> Option<&str> {
        self.envelope.subject.as_deref()
    }

    /// Who sent the event (its `principal` attribute, see [`crate::principal`]), if anyone
    /// said so. A subscription that requires a principal hands its handlers only events that
    /// carry one its rule allows.
    pub fn principal(&self) -> Option<crate::Principal> {
        self.envelope.principal()
    }

    /// The event's offset in its topic.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The handler's attempt on this delivery, starting at 1 (a broker's redelivery, after a
    /// consumer crashed or stopped, starts again at 1; see
    /// [`SubscriptionBuilder::max_redeliveries`](super::SubscriptionBuilder::max_redeliveries)).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The consumer group handling the event.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Completes when the group starts shutting down. A handler that waits for something
    /// can `select!` on it and return an error: the event is then redelivered after restart.
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await;
    }

    /// Whether the group is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The time left before the sender's deadline (the envelope's `deadline` attribute),
    /// zero once it has passed; `None` when the message carries no deadline (most events).
    pub fn remaining(&self) -> Option<Duration> {
        remaining_until(self.envelope.deadline)
    }
}

/// The time from now until `deadline`, zero once it has passed.
pub(crate) fn remaining_until(deadline: Option<time::OffsetDateTime>) -> Option<Duration> {
    deadline.map(|d| {
        let left = d - time::OffsetDateTime::now_utc();
        Duration::try_from(left).unwrap_or(Duration::ZERO)
    })
}

/// A handler's failure: one type for every kind of handler; see [`tabgrab_core::handler`].
pub use tabgrab_core::HandlerError;
