//! Deadlines: the caller's whole budget, and an optional timeout per attempt.
//!
//! Why a deadline and not only a timeout: a call crosses hops (front desk → payment → fraud
//! check) and may be retried. A per-hop timeout lets each hop and each retry spend its own full
//! timeout, so the edge waits for their sum. A deadline is one instant: every retry, every
//! nested call and the server itself (the transports send the remaining budget as
//! `grpc-timeout` or the `tabgrab-timeout` header) work against it, and when it passes the
//! whole chain stops and drops its work.
//!
//! The client sets a call's deadline from its default timeout when the caller gave none, and
//! fails the call with `DeadlineExceeded` when it passes (dropping the attempt in flight,
//! which cancels it). An attempt timeout bounds one attempt with `Timeout`, which is
//! retryable while the deadline allows.

use std::sync::Arc;
use std::time::Duration;

use tabgrab_core::ErrorKind;

use crate::CallError;

/// The error of a call whose deadline passed.
pub(crate) fn expired(service: &Arc<str>, ty: &str) -> CallError {
    CallError::new(
        ErrorKind::DeadlineExceeded,
        Arc::clone(service),
        ty,
        "the deadline passed before an answer came; the caller's budget is spent, \
         raise the deadline or make the recipient faster",
    )
}

/// The error of an attempt that outlived the attempt timeout.
pub(crate) fn attempt_timed_out(service: &Arc<str>, ty: &str, timeout: Duration) -> CallError {
    CallError::new(
        ErrorKind::Timeout,
        Arc::clone(service),
        ty,
        format!("no answer within the attempt timeout of {timeout:?}"),
    )
}
