//! The breaker's state machine agrees, step by step, with a small reference model, on random
//! sequences of admissions, successes, failures, timeouts, cancellations and clock advances
//! (paused tokio time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proptest::prelude::*;
use tabgrab_call::breaker::{BreakerConfig, BreakerCore, CircuitState, Outcome, Ticket};
use tokio::time::Instant;

#[derive(Clone, Debug)]
enum Op {
    /// A call arrives.
    Call,
    /// The n-th outstanding call (modulo their number) ends with success.
    Succeed(usize),
    /// ... ends with failure.
    Fail(usize),
    /// ... times out (a failure for the breaker).
    TimeOut(usize),
    /// ... is cancelled by its caller.
    Cancel(usize),
    /// The clock moves.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Call),
        3 => any::<usize>().prop_map(Op::Succeed),
        3 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::TimeOut),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => (0u64..1500).prop_map(Op::Advance),
    ]
}

/// The reference: the rules of the module docs, written as plainly as possible.
#[derive(Debug)]
struct Model {
    window: usize,
    minimum: usize,
    rate: f64,
    in_a_row: Option<u32>,
    open_ms: u64,
    probes: u32,
    state: MState,
    /// Every state change starts a new epoch; calls remember theirs.
    epoch: u64,
    /// Outcomes while closed, newest last (true: failure).
    recent: Vec<bool>,
    /// Failures in a row while closed (not bounded by the window).
    streak: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum MState {
    Closed,
    Open { until_ms: u64 },
    HalfOpen { let_in: u32, passed: u32 },
}

impl Model {
    fn change(&mut self, to: MState) {
        self.state = to;
        self.epoch += 1;
        self.recent.clear();
        self.streak = 0;
    }

    fn call(&mut self, now: u64) -> Option<u64> {
        match self.state {
            MState::Closed => Some(self.epoch),
            MState::Open { until_ms } if now >= until_ms => {
                self.change(MState::HalfOpen {
                    let_in: 1,
                    passed: 0,
                });
                Some(self.epoch)
            }
            MState::Open { .. } => None,
            MState::HalfOpen { let_in, passed } if let_in < self.probes => {
                self.state = MState::HalfOpen {
                    let_in: let_in + 1,
                    passed,
                };
                Some(self.epoch)
            }
            MState::HalfOpen { .. } => None,
        }
    }

    fn end(&mut self, epoch: u64, failed: bool, now: u64) {
        if epoch != self.epoch {
            return;
        }
        match self.state {
            MState::Closed => {
                self.recent.push(failed);
                if self.recent.len() > self.window {
                    self.recent.remove(0);
                }
                let failures = self.recent.iter().filter(|f| **f).count();
                let rate_trips = self.recent.len() >= self.minimum
                    && failures as f64 >= self.rate * self.recent.len() as f64;
                self.streak = if failed { self.streak + 1 } else { 0 };
                let row_trips = self.in_a_row.is_some_and(|n| self.streak >= n);
                if failed && (rate_trips || row_trips) {
                    self.change(MState::Open {
                        until_ms: now + self.open_ms,
                    });
                }
            }
            MState::HalfOpen { let_in, passed } => {
                if failed {
                    self.change(MState::Open {
                        until_ms: now + self.open_ms,
                    });
                } else if passed + 1 >= self.probes {
                    self.change(MState::Closed);
                } else {
                    self.state = MState::HalfOpen {
                        let_in,
                        passed: passed + 1,
                    };
                }
            }
            MState::Open { .. } => {}
        }
    }

    fn cancel(&mut self, epoch: u64) {
        if epoch != self.epoch {
            return;
        }
        if let MState::HalfOpen { let_in, passed } = self.state {
            self.state = MState::HalfOpen {
                let_in: let_in.saturating_sub(1),
                passed,
            };
        }
    }

    fn observed(&self) -> CircuitState {
        match self.state {
            MState::Closed => CircuitState::Closed,
            MState::Open { .. } => CircuitState::Open,
            MState::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        1usize..12,
        0usize..12,
        0.1f64..1.0,
        prop::option::of(1u32..6),
        1u64..1000,
        1u32..4,
    )
        .prop_map(
            |(window, minimum, rate, in_a_row, open_ms, probes)| BreakerConfig {
                window,
                minimum_calls: minimum,
                failure_rate: rate,
                consecutive_failures: in_a_row,
                open_for: Duration::from_millis(open_ms),
                probes,
            },
        )
}

fn run(config: BreakerConfig, ops: Vec<Op>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let start = Instant::now();
        let mut real = BreakerCore::new(config);
        let mut model = Model {
            window: config.window,
            minimum: config.minimum_calls,
            rate: config.failure_rate,
            in_a_row: config.consecutive_failures,
            open_ms: config.open_for.as_millis() as u64,
            probes: config.probes,
            state: MState::Closed,
            epoch: 0,
            recent: Vec::new(),
            streak: 0,
        };
        let mut outstanding: Vec<(Ticket, u64)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            let now = Instant::now();
            let now_ms = now.duration_since(start).as_millis() as u64;
            match op {
                Op::Call => {
                    let got = real.allow(now);
                    let want = model.call(now_ms);
                    assert_eq!(
                        got.is_some(),
                        want.is_some(),
                        "step {step}: admission of {op:?}"
                    );
                    if let (Some(ticket), Some(epoch)) = (got, want) {
                        outstanding.push((ticket, epoch));
                    }
                }
                Op::Succeed(i) | Op::Fail(i) | Op::TimeOut(i) | Op::Cancel(i) => {
                    if outstanding.is_empty() {
                        continue;
                    }
                    let (ticket, epoch) = outstanding.remove(i % outstanding.len());
                    match op {
                        Op::Succeed(_) => {
                            real.record(ticket, Outcome::Success, now);
                            model.end(epoch, false, now_ms);
                        }
                        Op::Fail(_) | Op::TimeOut(_) => {
                            real.record(ticket, Outcome::Failure, now);
                            model.end(epoch, true, now_ms);
                        }
                        _ => {
                            real.cancel(ticket);
                            model.cancel(epoch);
                        }
                    }
                }
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
            }
            assert_eq!(
                real.state(),
                model.observed(),
                "step {step} after {op:?}: {model:?}"
            );
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn breaker_agrees_with_the_reference_model(config in config(), ops in prop::collection::vec(op(), 0..200)) {
        run(config, ops);
    }
}

#[test]
fn opens_at_the_threshold_refuses_while_open_and_admits_exactly_k_probes() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut b = BreakerCore::new(BreakerConfig {
            window: 10,
            minimum_calls: 4,
            failure_rate: 0.5,
            consecutive_failures: None,
            open_for: Duration::from_secs(1),
            probes: 2,
        });
        // 2 successes, then failures: opens at the 4th call (2 of 4 failed).
        for outcome in [Outcome::Success, Outcome::Success, Outcome::Failure] {
            let t = b.allow(Instant::now()).unwrap();
            b.record(t, outcome, Instant::now());
            assert_eq!(b.state(), CircuitState::Closed);
        }
        let t = b.allow(Instant::now()).unwrap();
        b.record(t, Outcome::Failure, Instant::now());
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.allow(Instant::now()).is_none());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(b.allow(Instant::now()).is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        let p1 = b.allow(Instant::now()).unwrap();
        let p2 = b.allow(Instant::now()).unwrap();
        assert!(b.allow(Instant::now()).is_none(), "only 2 probes");
        assert_eq!(b.state(), CircuitState::HalfOpen);
        b.record(p1, Outcome::Success, Instant::now());
        assert_eq!(b.state(), CircuitState::HalfOpen);
        b.record(p2, Outcome::Success, Instant::now());
        assert_eq!(b.state(), CircuitState::Closed);
    });
}
