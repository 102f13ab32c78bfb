//! The breaker's pure state machine: no I/O, no clock of its own (the caller passes `now`),
//! so a model test can drive it step by step.
//!
//! - **Closed**: calls pass; each outcome enters a sliding window of the last `window` calls.
//!   The breaker opens when the window holds at least `minimum_calls` outcomes and the share of
//!   failures reaches `failure_rate`, or (when configured) after `consecutive_failures`
//!   failures in a row.
//! - **Open**: calls are refused without being sent, for `open_for`.
//! - **Half-open**: after `open_for`, the next `probes` calls are let through; the rest are
//!   refused. All probes succeeding closes the breaker (with an empty window); one failing
//!   re-opens it for another `open_for`. A probe cancelled before its outcome gives its slot
//!   back, so a cancelled caller cannot wedge the breaker half-open.
//!
//! Every call is admitted with a [`Ticket`] stamped with the breaker's *generation*, which
//! changes at every state change. An outcome whose ticket is from an older generation (a slow
//! call admitted while closed, ending after the breaker opened) is ignored: it says nothing
//! about the recipient *now*, and must not close a breaker it did not probe.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state, as observed from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass.
    Closed,
    /// Calls are refused with `CircuitOpen` until the open duration ends.
    Open,
    /// A fixed number of probe calls pass; their outcomes decide.
    HalfOpen,
}

/// When the breaker opens and for how long.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// The sliding window: the outcomes of the last this-many calls.
    pub window: usize,
    /// No decision on the failure rate before the window holds this many outcomes.
    pub minimum_calls: usize,
    /// The share of failures in the window (0.0–1.0) that opens the breaker.
    pub failure_rate: f64,
    /// Failures in a row that open the breaker regardless of the rate; `None` disables it.
    pub consecutive_failures: Option<u32>,
    /// How long the breaker stays open before probing.
    pub open_for: Duration,
    /// Probe calls admitted half-open; all must succeed to close.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            window: 100,
            minimum_calls: 20,
            failure_rate: 0.5,
            consecutive_failures: Some(5),
            open_for: Duration::from_secs(5),
            probes: 3,
        }
    }
}

/// The outcome of an admitted call, as the breaker counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The recipient answered (an answer or a typed refusal).
    Success,
    /// The recipient failed, timed out or was unreachable.
    Failure,
}

/// Proof that a call was admitted, in a given generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The breaker's generation when the call was admitted.
    generation: u64,
}

/// The internal state, with what each state needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

/// The state machine; see the module docs.
#[derive(Clone, Debug)]
pub struct BreakerCore {
    /// Thresholds and durations.
    config: BreakerConfig,
    /// Where it is.
    state: Inner,
    /// Bumped at each state change; tickets of older generations are ignored.
    generation: u64,
    /// Outcomes of the last `window` calls while closed (`true`: failure).
    window: VecDeque<bool>,
    /// Failures in `window`.
    failures: usize,
    /// Failures in a row while closed.
    consecutive: u32,
}

impl BreakerCore {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> BreakerCore {
        BreakerCore {
            config: BreakerConfig {
                window: config.window.max(1),
                probes: config.probes.max(1),
                ..config
            },
            state: Inner::Closed,
            generation: 0,
            window: VecDeque::with_capacity(config.window.max(1)),
            failures: 0,
            consecutive: 0,
        }
    }

    /// The state (an open breaker whose time is up reports `Open` until the next call).
    pub fn state(&self) -> CircuitState {
        match self.state {
            Inner::Closed => CircuitState::Closed,
            Inner::Open { .. } => CircuitState::Open,
            Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// While open: when the open duration ends (the first call from then on is a probe).
    /// `None` while closed or half-open.
    pub fn open_until(&self) -> Option<Instant> {
        match self.state {
            Inner::Open { until } => Some(until),
            Inner::Closed | Inner::HalfOpen { .. } => None,
        }
    }

    /// Admits a call at `now`, or refuses it (`None`) while open or when every probe slot is
    /// taken.
    pub fn allow(&mut self, now: Instant) -> Option<Ticket> {
        match self.state {
            Inner::Closed => {}
            Inner::Open { until } => {
                if now < until {
                    return None;
                }
                self.transition(Inner::HalfOpen {
                    admitted: 1,
                    succeeded: 0,
                });
            }
            Inner::HalfOpen {
                ref mut admitted, ..
            } => {
                if *admitted >= self.config.probes {
                    return None;
                }
                *admitted += 1;
            }
        }
        Some(Ticket {
            generation: self.generation,
        })
    }

    /// Records the outcome of an admitted call at `now`.
    pub fn record(&mut self, ticket: Ticket, outcome: Outcome, now: Instant) {
        if ticket.generation != self.generation {
            return;
        }
        match (self.state, outcome) {
            (Inner::Closed, outcome) => {
                let failed = outcome == Outcome::Failure;
                if self.window.len() == self.config.window && self.window.pop_front() == Some(true)
                {
                    self.failures -= 1;
                }
                self.window.push_back(failed);
                if failed {
                    self.failures += 1;
                    self.consecutive += 1;
                } else {
                    self.consecutive = 0;
                }
                let by_rate = self.window.len() >= self.config.minimum_calls
                    && self.failures as f64 >= self.config.failure_rate * self.window.len() as f64;
                let in_a_row = self
                    .config
                    .consecutive_failures
                    .is_some_and(|n| self.consecutive >= n);
                if failed && (by_rate || in_a_row) {
                    self.open(now);
                }
            }
            (Inner::HalfOpen { .. }, Outcome::Failure) => self.open(now),
            (
                Inner::HalfOpen {
                    admitted,
                    succeeded,
                },
                Outcome::Success,
            ) => {
                if succeeded + 1 >= self.config.probes {
                    self.transition(Inner::Closed);
                } else {
                    self.state = Inner::HalfOpen {
                        admitted,
                        succeeded: succeeded + 1,
                    };
                }
            }
            // Only tickets of the current generation get here, and no ticket is issued
            // while open.
            (Inner::Open { .. }, _) => {}
        }
    }

    /// Forgets an admitted call that ended without an outcome (its caller went away).
    /// Returns whether that gave a probe slot back (a waiting caller may now probe).
    pub fn cancel(&mut self, ticket: Ticket) -> bool {
        if ticket.generation != self.generation {
            return false;
        }
        match self.state {
            Inner::HalfOpen {
                ref mut admitted, ..
            } if *admitted > 0 => {
                *admitted -= 1;
                true
            }
            _ => false,
        }
    }

    fn open(&mut self, now: Instant) {
        self.transition(Inner::Open {
            until: now + self.config.open_for,
        });
    }

    fn transition(&mut self, to: Inner) {
        self.state = to;
        self.generation += 1;
        self.window.clear();
        self.failures = 0;
        self.consecutive = 0;
    }
}
