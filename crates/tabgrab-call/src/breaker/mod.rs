//! The circuit breaker: stop calling a recipient that is failing, probe it, resume.
//!
//! Why: when a recipient is down or drowning, every call to it waits for a timeout and adds
//! load to it. An open breaker fails calls at once with
//! [`ErrorKind::CircuitOpen`](tabgrab_core::ErrorKind) (no request leaves the process), the
//! caller can degrade immediately, and the recipient gets room to recover; after the open
//! duration a few probe calls test it. tower has no breaker, so this is our own: a pure state
//! machine ([`state`], shared with the bus's consumers in `tabgrab-resilience`) checked against
//! a reference model by a property test; the client gates each attempt with it.
//!
//! What counts as a failure: `Timeout`, `Unavailable`, `Rejected` (overload), `Handler`,
//! `Protocol` and a `DeadlineExceeded` the server reports. A typed refusal (`Remote`) and bad
//! input are answers of a healthy recipient, so they count as successes. A call dropped before
//! its outcome (the caller's deadline passed, the caller went away) counts as nothing, but gives
//! a half-open probe slot back.
//!
//! An attempt whose deadline has already passed is not sent (`DeadlineExceeded`, no ticket):
//! the breaker is the last gate before the wire.
//!
//! State changes are observable through a `tokio::sync::watch` channel
//! ([`BreakerHandle::subscribe`]).

pub use tabgrab_resilience::breaker::{
    BreakerConfig, BreakerCore, BreakerHandle, CircuitState, Outcome, Ticket, state,
};

use bytes::Bytes;
use tabgrab_core::ErrorKind;
use tokio::time::Instant;

use crate::{Call, CallError};

/// Whether an error says the recipient is unhealthy.
pub fn is_failure(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Timeout
            | ErrorKind::Unavailable
            | ErrorKind::Rejected
            | ErrorKind::Handler
            | ErrorKind::Protocol
            | ErrorKind::DeadlineExceeded
            | ErrorKind::Storage
            | ErrorKind::Closed
    )
}

/// An admitted attempt: reports its outcome with [`Pending::finish`], or a cancellation if it
/// is dropped before its outcome.
pub(crate) struct Pending<'a> {
    handle: &'a BreakerHandle,
    ticket: Option<Ticket>,
}

impl<'a> Pending<'a> {
    /// The gate to the wire: an attempt whose deadline has passed (a retry woken by a timer
    /// in the same tick as the deadline) is not sent, and says nothing about the recipient,
    /// so it takes no ticket; an open breaker refuses it.
    // The error is the call's own error, handed up as it is; boxing it would cost every
    // refused attempt an allocation for nothing.
    #[allow(clippy::result_large_err)]
    pub(crate) fn admit(handle: &'a BreakerHandle, call: &Call) -> Result<Pending<'a>, CallError> {
        let now = Instant::now();
        if call.deadline.is_some_and(|d| d <= now) {
            return Err(CallError::new(
                ErrorKind::DeadlineExceeded,
                call.service.clone(),
                call.envelope.ty.as_str(),
                "the deadline passed before this attempt could be sent",
            ));
        }
        let Some(ticket) = handle.allow(now) else {
            return Err(CallError::new(
                ErrorKind::CircuitOpen,
                call.service.clone(),
                call.envelope.ty.as_str(),
                "the circuit breaker is open after recent failures, so the call was not sent; \
                 it will probe the service again after its open duration",
            ));
        };
        Ok(Pending {
            handle,
            ticket: Some(ticket),
        })
    }

    /// Records the attempt's outcome.
    pub(crate) fn finish(mut self, result: &Result<Bytes, CallError>) {
        let outcome = match result {
            Err(e) if is_failure(e.kind()) => Outcome::Failure,
            _ => Outcome::Success,
        };
        if let Some(ticket) = self.ticket.take() {
            self.handle.record(ticket, outcome, Instant::now());
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.handle.cancel(ticket);
        }
    }
}
