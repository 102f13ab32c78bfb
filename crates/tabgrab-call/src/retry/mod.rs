//! Retries: only what is safe and worth it, spaced with full jitter, within a budget.
//!
//! A retry is sent only when all of these hold:
//! - the error's kind is retryable (`Timeout`, `Unavailable`, `Rejected`, a handler failure;
//!   never bad input, a refusal, an open circuit or a spent deadline);
//! - the call is idempotent: a query, or a command that carries an idempotency key (the
//!   recipient then treats the repeat as the same command);
//! - the attempts so far are below the cap;
//! - the backoff ends before the call's deadline (a retry that cannot finish in time only
//!   adds load);
//! - the retry budget has a token.
//!
//! Why a budget and not only a cap on attempts: with a cap of 3, a recipient that fails
//! everything receives 3× its normal load exactly when it is weakest, and every caller's
//! retries synchronise into a storm. A budget lets retries be at most a share of recent
//! requests (tower's [`TpsBudget`](tower::retry::budget::TpsBudget): a percentage of the requests of the last seconds plus a
//! small floor), so under a broad outage the extra load is bounded, while an isolated failure
//! is still retried. Backoff is exponential with *full jitter* (a uniform pause between zero and
//! the exponential bound) so that callers that failed together do not retry together.
//!
//! The rule itself is `tabgrab_resilience::retry::next_attempt`, shared with the bus; this
//! module says what makes a *call* retryable (its error kind, its idempotency).

use tokio::time::Instant;

use crate::{Call, CallError};
pub use tabgrab_resilience::{NoRetry, RetryBudget, RetryConfig};

/// When to send attempt `attempts + 1` of `call` after `error`, or `None` when it must not be
/// retried (the rules of the module docs; a granted retry takes a budget token).
pub(crate) fn next_attempt(
    config: &RetryConfig,
    budget: &RetryBudget,
    attempts: u32,
    call: &Call,
    error: &CallError,
) -> Option<Instant> {
    let retryable = error.is_retryable() && call.is_idempotent();
    match tabgrab_resilience::retry::next_attempt(
        config,
        budget,
        attempts,
        retryable,
        call.deadline,
        Instant::now(),
    ) {
        Ok(resume) => Some(resume),
        Err(NoRetry::BudgetSpent) => {
            tracing::debug!(service = %call.service, ty = %call.envelope.ty, "retry budget spent; not retrying");
            None
        }
        Err(_) => None,
    }
}
