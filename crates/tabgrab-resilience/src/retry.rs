//! The retry rule: when a failed attempt may be tried again, and when.
//!
//! A retry is granted only when all of these hold (the caller says whether the failure and
//! the request allow a retry at all: for a call, a retryable error kind and an idempotent
//! request; for an event, a transient handler error):
//! - the attempts so far are below the cap;
//! - the backoff ([`Backoff::delay`], full jitter) ends before the deadline, if there is one
//!   (a retry that cannot finish in time only adds load);
//! - the retry budget has a token ([`RetryBudget`]).
//!
//! [`next_attempt`] is the one place these rules live; the call client runs it between its
//! attempts, and a hand-made composition of the policies calls the same function (see
//! `tabgrab-call/tests/policies_model.rs`).

use std::time::Duration;

use tokio::time::Instant;

use crate::{Backoff, RetryBudget};

/// How retries are spaced and capped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts per request, the first included (1: never retry).
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
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.base,
            max: self.max_backoff,
        }
    }
}

/// Why a failed attempt is not tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoRetry {
    /// The failure or the request allows no retry (bad input, a refusal, a command without
    /// an idempotency key, …).
    NotRetryable,
    /// The attempts reached [`RetryConfig::max_attempts`].
    Exhausted,
    /// The backoff would end at or after the deadline.
    PastDeadline,
    /// The retry budget has no token left.
    BudgetSpent,
}

/// When to make attempt `attempts + 1` after a failed attempt `attempts`, at `now`: the
/// rules of the module docs, checked in their order. A granted retry takes a budget token.
pub fn next_attempt(
    config: &RetryConfig,
    budget: &RetryBudget,
    attempts: u32,
    retryable: bool,
    deadline: Option<Instant>,
    now: Instant,
) -> Result<Instant, NoRetry> {
    if !retryable {
        return Err(NoRetry::NotRetryable);
    }
    if attempts >= config.max_attempts {
        return Err(NoRetry::Exhausted);
    }
    let resume = now + config.backoff().delay(attempts);
    if deadline.is_some_and(|deadline| resume >= deadline) {
        return Err(NoRetry::PastDeadline);
    }
    if !budget.withdraw() {
        return Err(NoRetry::BudgetSpent);
    }
    Ok(resume)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_attempts: u32) -> RetryConfig {
        RetryConfig {
            max_attempts,
            base: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        }
    }

    #[test]
    fn the_rules_apply_in_their_order() {
        let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.0);
        let now = Instant::now();
        let far = Some(now + Duration::from_secs(1));
        assert_eq!(
            next_attempt(&config(3), &budget, 1, false, far, now),
            Err(NoRetry::NotRetryable)
        );
        assert_eq!(
            next_attempt(&config(3), &budget, 3, true, far, now),
            Err(NoRetry::Exhausted)
        );
        // The backoff's bound (10 ms) cannot end before a deadline 0 ms away.
        assert_eq!(
            next_attempt(&config(3), &budget, 1, true, Some(now), now),
            Err(NoRetry::PastDeadline)
        );
        let resume = next_attempt(&config(3), &budget, 1, true, far, now).expect("a retry");
        assert!(resume >= now && resume <= now + Duration::from_millis(10));
        // With no requests deposited, only the budget's floor is granted; then it refuses.
        let granted = (0..1000)
            .take_while(|_| next_attempt(&config(3), &budget, 1, true, far, now).is_ok())
            .count();
        assert!(granted < 1000, "the budget never ran out");
        assert_eq!(
            next_attempt(&config(3), &budget, 1, true, far, now),
            Err(NoRetry::BudgetSpent)
        );
    }
}
