//! What a handler receives besides the event ([`Context`]) and what it may return
//! ([`HandlerError`]).

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

/// A handler's failure: transient (retried with backoff) unless marked permanent.
///
/// Any error converts into a transient `HandlerError` with `?`. A permanent error sends the
/// event to dead letters at once: use it when retrying cannot help (the event is invalid for
/// this handler).
#[derive(Debug)]
pub struct HandlerError {
    /// Whether a retry may succeed.
    retryable: bool,
    /// What went wrong, kept for the dead letter's `error` field.
    error: Box<dyn std::error::Error + Send + Sync + 'static>,
    /// The dead-letter reason when it is more precise than `permanent_error` (bad input).
    reason: Option<&'static str>,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> HandlerError {
        HandlerError {
            retryable: true,
            error: error.into(),
            reason: None,
        }
    }

    /// A failure that no retry can fix: the event goes to dead letters at once.
    pub fn permanent(
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> HandlerError {
        HandlerError {
            retryable: false,
            error: error.into(),
            reason: None,
        }
    }

    /// A payload that does not decode as the handler's type: bad input, never retried.
    pub(crate) fn bad_input(error: crate::Error) -> HandlerError {
        HandlerError {
            retryable: false,
            reason: Some(error.kind().as_str()),
            error: Box::new(error),
        }
    }

    /// The dead-letter reason of a permanent error.
    pub(crate) fn reason(&self) -> &'static str {
        self.reason.unwrap_or("permanent_error")
    }

    /// The failure's `error.type` in metrics: `transient`, or the dead-letter reason.
    pub(crate) fn kind_str(&self) -> &'static str {
        if self.retryable {
            "transient"
        } else {
            self.reason()
        }
    }

    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>> From<E> for HandlerError {
    fn from(error: E) -> HandlerError {
        HandlerError::transient(error)
    }
}
