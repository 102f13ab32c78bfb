//! The bulkhead: a cap on calls in flight to one service, shedding the excess at once.
//!
//! Why: without a cap, a slow recipient makes callers pile up calls (each holding memory, a
//! connection slot, a task) until the caller itself falls over; the failure spreads upstream.
//! With a bulkhead, one service can hold at most `max_in_flight` of the caller's calls, and
//! a call beyond that fails immediately with [`ErrorKind::Rejected`] (load shedding) instead of
//! queueing behind work that is already late. It sits outermost in the client stack, so a
//! call's retries and backoff pauses hold its one slot.
//!
//! The cap is `tabgrab_resilience::Bulkhead`. Why not tower's `ConcurrencyLimit` +
//! `LoadShed`: they do the same, but reserve the slot in `poll_ready` and return a boxed
//! `Overloaded` error without the service and message type.

use tabgrab_core::ErrorKind;

use crate::{Call, CallError};

/// The error of a call shed by the bulkhead.
pub(crate) fn shed(call: &Call, max: usize) -> CallError {
    CallError::new(
        ErrorKind::Rejected,
        call.service.clone(),
        call.envelope.ty.as_str(),
        format!(
            "shed: {max} calls to this service are already in flight (the bulkhead's cap); \
             slow down or raise max_in_flight"
        ),
    )
}
