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

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};
use tower::retry::Policy;

use crate::{Call, CallError};
use tabgrab_resilience::Backoff;
pub use tabgrab_resilience::RetryBudget;

/// How retries are spaced and capped.
#[derive(Clone, Copy, Debug)]
pub struct RetryConfig {
    /// Attempts per call, the first included (1: never retry).
    pub max_attempts: u32,
    /// The bound of the first backoff; doubled each attempt.
    pub base: Duration,
    /// The largest backoff bound.
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            base: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryConfig {
    /// The exponential bound before attempt `retry` (1 for the first retry): the one backoff
    /// formula of tabgrab ([`Backoff::ceiling`]).
    pub fn bound(&self, retry: u32) -> Duration {
        self.backoff().ceiling(retry)
    }

    /// The backoff these settings describe.
    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.base,
            max: self.max_backoff,
        }
    }
}

/// The tower retry [`Policy`] of the client: see the module docs for the rules.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Caps and backoff.
    config: RetryConfig,
    /// Shared by every call of the client.
    budget: Arc<RetryBudget>,
    /// Attempts made so far by this call (the policy is cloned per call by tower).
    attempts: u32,
}

impl RetryPolicy {
    /// A policy with `config` drawing on `budget`.
    pub fn new(config: RetryConfig, budget: Arc<RetryBudget>) -> RetryPolicy {
        RetryPolicy {
            config,
            budget,
            attempts: 1,
        }
    }
}

impl Policy<Call, Bytes, CallError> for RetryPolicy {
    type Future = Sleep;

    fn retry(&mut self, call: &mut Call, result: &mut Result<Bytes, CallError>) -> Option<Sleep> {
        let Err(error) = result else {
            return None;
        };
        let resume = next_attempt(&self.config, &self.budget, self.attempts, call, error)?;
        self.attempts += 1;
        Some(tokio::time::sleep_until(resume))
    }

    fn clone_request(&mut self, call: &Call) -> Option<Call> {
        if self.attempts == 1 {
            // The first attempt of a call: it earns the budget its share.
            self.budget.deposit();
        }
        call.is_idempotent().then(|| call.clone())
    }
}

/// When to send attempt `attempts + 1` of `call` after `error`, or `None` when it must not be
/// retried (the rules of the module docs; a granted retry takes a budget token). Shared by
/// [`RetryPolicy`] and the client's fused stack, so both decide alike.
pub(crate) fn next_attempt(
    config: &RetryConfig,
    budget: &RetryBudget,
    attempts: u32,
    call: &Call,
    error: &CallError,
) -> Option<Instant> {
    if !error.is_retryable() || !call.is_idempotent() {
        return None;
    }
    if attempts >= config.max_attempts {
        return None;
    }
    let pause = config.backoff().delay(attempts);
    let resume = Instant::now() + pause;
    if call.deadline.is_some_and(|deadline| resume >= deadline) {
        return None;
    }
    if !budget.withdraw() {
        tracing::debug!(service = %call.service, ty = %call.envelope.ty, "retry budget spent; not retrying");
        return None;
    }
    Some(resume)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_double_up_to_the_cap() {
        let config = RetryConfig {
            max_attempts: 10,
            base: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        };
        assert_eq!(config.bound(1), Duration::from_millis(10));
        assert_eq!(config.bound(2), Duration::from_millis(20));
        assert_eq!(config.bound(3), Duration::from_millis(40));
        assert_eq!(config.bound(4), Duration::from_millis(50));
        assert_eq!(config.bound(40), Duration::from_millis(50));
    }
}
