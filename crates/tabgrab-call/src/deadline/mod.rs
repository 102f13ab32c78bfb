//! Deadlines: the caller's whole budget, and an optional timeout per attempt.
//!
//! Why a deadline and not only a timeout: a call crosses hops (front desk → payment → fraud
//! check) and may be retried. A per-hop timeout lets each hop and each retry spend its own full
//! timeout, so the edge waits for their sum. A deadline is one instant: every retry, every
//! nested call and the server itself (the transports send the remaining budget as
//! `grpc-timeout` or the `tabgrab-timeout` header) work against it, and when it passes the
//! whole chain stops and drops its work.
//!
//! [`DeadlineLayer`] sets a call's deadline from the client's default timeout when the caller
//! gave none, and fails the call with [`ErrorKind::DeadlineExceeded`] when it passes (dropping
//! the inner future, which cancels the attempt in flight). [`AttemptTimeoutLayer`] bounds one
//! attempt with [`ErrorKind::Timeout`], which is retryable while the deadline allows.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tabgrab_core::ErrorKind;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{Call, CallError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The error of a call whose deadline passed (shared by [`Deadline`] and the client's fused
/// stack, so both say the same).
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

/// Applies a default deadline and enforces the deadline of each call.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    /// Used when the call has no deadline of its own.
    default_timeout: Duration,
}

impl DeadlineLayer {
    /// A layer that gives calls without a deadline `default_timeout` from now.
    pub fn new(default_timeout: Duration) -> DeadlineLayer {
        DeadlineLayer { default_timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            default_timeout: self.default_timeout,
        }
    }
}

/// The service of [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    default_timeout: Duration,
}

impl<S> Service<Call> for Deadline<S>
where
    S: Service<Call, Response = Bytes, Error = CallError>,
    S::Future: Send + 'static,
{
    type Response = Bytes;
    type Error = CallError;
    type Future = BoxFuture<Result<Bytes, CallError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        let deadline = *call
            .deadline
            .get_or_insert_with(|| Instant::now() + self.default_timeout);
        let service = call.service.clone();
        let envelope = Arc::clone(&call.envelope);
        let expired = move || expired(&service, &envelope.ty);
        if deadline <= Instant::now() {
            return Box::pin(std::future::ready(Err(expired())));
        }
        let work = self.inner.call(call);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, work).await {
                Ok(result) => result,
                Err(_) => Err(expired()),
            }
        })
    }
}

/// Bounds each attempt; the retry layer above may try again while the deadline allows.
#[derive(Clone, Copy, Debug)]
pub struct AttemptTimeoutLayer {
    /// The longest one attempt may take; `None`: attempts are bounded by the deadline only.
    timeout: Option<Duration>,
}

impl AttemptTimeoutLayer {
    /// A layer bounding each attempt to `timeout` (`None`: no bound of its own).
    pub fn new(timeout: Option<Duration>) -> AttemptTimeoutLayer {
        AttemptTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;
    fn layer(&self, inner: S) -> AttemptTimeout<S> {
        AttemptTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service of [`AttemptTimeoutLayer`].
#[derive(Clone, Debug)]
pub struct AttemptTimeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S> Service<Call> for AttemptTimeout<S>
where
    S: Service<Call, Response = Bytes, Error = CallError>,
    S::Future: Send + 'static,
{
    type Response = Bytes;
    type Error = CallError;
    type Future = BoxFuture<Result<Bytes, CallError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let Some(timeout) = self.timeout else {
            return Box::pin(self.inner.call(call));
        };
        let service = call.service.clone();
        let envelope = Arc::clone(&call.envelope);
        let work = self.inner.call(call);
        Box::pin(async move {
            match tokio::time::timeout(timeout, work).await {
                Ok(result) => result,
                Err(_) => Err(attempt_timed_out(&service, &envelope.ty, timeout)),
            }
        })
    }
}
