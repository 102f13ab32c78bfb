//! The timeout sweep: turns expired pending requests into `TimedOut` outcomes.
//!
//! Every requester node runs one. Each pass claims up to a batch of requests whose deadline
//! has passed (atomically, in the store, so a racing reply or another node's sweep never
//! takes the same request), hands each a `TimedOut` outcome, and marks it finished. A failed
//! handler releases its claim and the next pass retries it. Because deadlines live in the
//! store, a request sent before a crash times out after the restart, on any node.
//! Once a minute a pass also purges tombstones older than the retention window.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::duration_ms;
use super::reply::RawOutcome;
use super::requester::Inner;
use super::store::RecordState;
use crate::Error;

/// How often tombstones are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Runs passes every sweep interval until cancelled.
pub(crate) async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    let mut last_purge = tokio::time::Instant::now();
    loop {
        inner.admission.forget_expired(tokio::time::Instant::now());
        let full = match sweep_once(&inner).await {
            Ok(n) => n >= inner.options.sweep_batch as usize,
            Err(e) => {
                tracing::warn!(group = %inner.group, error = %e, "timeout sweep failed; retrying next interval");
                false
            }
        };
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = tokio::time::Instant::now();
            let before = inner
                .clock
                .now_ms()
                .saturating_sub(duration_ms(inner.options.retention));
            match inner.store.purge(before).await {
                Ok(n) if n > 0 => tracing::debug!(group = %inner.group, n, "purged tombstones"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(group = %inner.group, error = %e, "purging tombstones failed")
                }
            }
        }
        if full {
            // More may be due: go on at once (but let cancellation in).
            if cancel.is_cancelled() {
                return;
            }
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(inner.options.sweep_interval) => {}
        }
    }
}

/// One pass: claims expired requests and hands each its `TimedOut` outcome. Returns how many
/// were claimed.
pub(crate) async fn sweep_once(inner: &Arc<Inner>) -> Result<usize, Error> {
    let now = inner.clock.now_ms();
    let lease_until = now.saturating_add(duration_ms(inner.options.lease));
    let expired = inner
        .store
        .claim_expired(now, lease_until, inner.options.sweep_batch)
        .await?;
    let n = expired.len();
    futures::stream::iter(expired)
        .for_each_concurrent(inner.options.concurrency, |request| async move {
            let request = Arc::new(request);
            match inner
                .deliver(Arc::clone(&request), RawOutcome::TimedOut, None)
                .await
            {
                Ok(()) => {
                    inner.finish(&request.id, RecordState::TimedOut).await;
                    inner.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if !e.is_retryable() => {
                    inner.counters.handler_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(group = %inner.group, id = %request.id, error = %e, "reply handler refused a timeout permanently; the request ends as timed out");
                    inner.finish(&request.id, RecordState::TimedOut).await;
                    inner.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    inner.counters.handler_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %inner.group, id = %request.id, error = %e, "reply handler failed on a timeout; retrying next sweep");
                    if let Err(e) = inner.store.release(&request.id).await {
                        tracing::error!(group = %inner.group, id = %request.id, error = %e, "cannot release a timeout claim; it lapses after the lease");
                    }
                }
            }
        })
        .await;
    Ok(n)
}
