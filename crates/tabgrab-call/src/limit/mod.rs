//! The bulkhead: a cap on calls in flight to one service, shedding the excess at once.
//!
//! Why: without a cap, a slow recipient makes callers pile up calls (each holding memory, a
//! connection slot, a task) until the caller itself falls over; the failure spreads upstream.
//! With a bulkhead, one service can hold at most `max_in_flight` of the caller's calls, and
//! a call beyond that fails immediately with [`ErrorKind::Rejected`] (load shedding) instead of
//! queueing behind work that is already late. It sits outermost in the client stack, so a
//! call's retries and backoff pauses hold its one slot.
//!
//! Why not tower's `ConcurrencyLimit` + `LoadShed`: they do the same, but reserve the slot in
//! `poll_ready` and return a boxed `Overloaded` error without the service and message type;
//! a semaphore checked in `call` is as small and keeps our error shape.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tabgrab_core::ErrorKind;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::{Call, CallError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The error of a call shed by the bulkhead (shared with the client's fused stack).
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

/// Caps calls in flight; see the module docs.
#[derive(Clone, Debug)]
pub struct LimitLayer {
    /// Shared by every clone of the client.
    permits: Arc<Semaphore>,
    /// The cap, for the error message.
    max: usize,
}

impl LimitLayer {
    /// At most `max_in_flight` calls at a time (at least 1).
    pub fn new(max_in_flight: usize) -> LimitLayer {
        let (permits, max) = permits(max_in_flight);
        LimitLayer { permits, max }
    }
}

/// The semaphore of a bulkhead of `max_in_flight` calls (at least 1), and its cap.
pub(crate) fn permits(max_in_flight: usize) -> (Arc<Semaphore>, usize) {
    let max = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
    (Arc::new(Semaphore::new(max)), max)
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            permits: Arc::clone(&self.permits),
            max: self.max,
        }
    }
}

/// The service of [`LimitLayer`].
#[derive(Clone, Debug)]
pub struct Limit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    max: usize,
}

impl<S> Service<Call> for Limit<S>
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
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return Box::pin(std::future::ready(Err(shed(&call, self.max))));
        };
        let work = self.inner.call(call);
        Box::pin(async move {
            let result = work.await;
            drop(permit);
            result
        })
    }
}
