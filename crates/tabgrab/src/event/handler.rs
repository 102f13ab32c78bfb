//! What a handler receives besides the event ([`Context`]) and what it may return
//! ([`HandlerError`], the one failure type of every kind of handler).

use std::sync::Arc;

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
}

/// A handler's failure: one type for every kind of handler; see [`tabgrab_core::handler`].
pub use tabgrab_core::HandlerError;
