//! The retry budget: retries may be at most a share of recent requests.
//!
//! A thin wrapper over tower's [`TpsBudget`] (which keeps deposits for a time-to-live in a ring
//! of slots, lock-free) that clamps its arguments to the ranges tower asserts, so a bad
//! configuration cannot panic, and counts what it refused so tests and metrics can see it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower::retry::budget::{Budget as _, TpsBudget};

/// A share of recent requests that may be retried, plus a small floor per second.
#[derive(Debug)]
pub struct RetryBudget {
    /// tower's token bucket over a time-to-live window.
    inner: TpsBudget,
    /// Retries granted so far.
    granted: AtomicU64,
    /// Retries refused so far.
    refused: AtomicU64,
}

impl RetryBudget {
    /// Retries up to `ratio` of the requests of the last `ttl` (clamped to 1–60 s), plus
    /// `min_per_sec` retries per second for quiet clients.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f32) -> RetryBudget {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        RetryBudget {
            inner: TpsBudget::new(ttl, min_per_sec.min(i32::MAX as u32 - 1), ratio),
            granted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Records one original request.
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes a token for one retry; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let ok = self.inner.withdraw();
        let counter = if ok { &self.granted } else { &self.refused };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }

    /// Retries granted so far.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Retries refused for lack of budget so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Default for RetryBudget {
    /// 20 % of the requests of the last 10 s, plus 10 retries per second.
    fn default() -> RetryBudget {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2)
    }
}
