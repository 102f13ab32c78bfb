//! The client runs the resilience policies of `tabgrab-resilience` and nothing else: composed
//! here by hand (bulkhead → deadline → retry rule with budget → breaker gate → transport),
//! they give the same result for every call, the same attempts on the wire and the same
//! breaker and budget states as `Client`, on random scripts of recipient behaviour, call
//! kinds, deadlines, clock advances and bursts of concurrent calls (paused tokio time).
//!
//! The backoff is zero here, so that full jitter (random by design) cannot make the two runs
//! differ; its formula has unit tests of its own in `tabgrab-resilience`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tabgrab_call::breaker::{BreakerConfig, BreakerHandle, CircuitState, Outcome, is_failure};
use tabgrab_call::retry::{RetryBudget, RetryConfig};
use tabgrab_call::{Call, CallError, CallOptions, Client, RequestKind};
use tabgrab_core::{Envelope, ErrorKind, Message};
use tabgrab_resilience::Bulkhead;
use tabgrab_resilience::retry::next_attempt;
use tokio::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "model.look.v1", query, response = u32)]
struct Look {
    n: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "model.change.v1", command, response = u32)]
struct Change {
    n: u32,
}

/// What the recipient does with one attempt.
#[derive(Clone, Copy, Debug)]
enum Step {
    Answer,
    Fail(ErrorKind),
    /// Answers after this many milliseconds.
    Slow(u64),
}

/// What the test does next.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// One call, awaited: a query (idempotent) or a command without a key (sent once), with a
    /// deadline in milliseconds or the client's default.
    Call {
        query: bool,
        deadline_ms: Option<u64>,
    },
    /// Concurrent calls, each answered after `ms` (the bulkhead sheds beyond its cap).
    Burst { calls: usize, ms: u64 },
    /// The clock moves.
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Answer),
        3 => Just(Step::Fail(ErrorKind::Unavailable)),
        1 => Just(Step::Fail(ErrorKind::Timeout)),
        1 => Just(Step::Fail(ErrorKind::Remote)),
        1 => Just(Step::Fail(ErrorKind::InvalidPayload)),
        2 => (0u64..400).prop_map(Step::Slow),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), proptest::option::of(0u64..500))
            .prop_map(|(query, deadline_ms)| Op::Call { query, deadline_ms }),
        1 => (1usize..6, 0u64..400).prop_map(|(calls, ms)| Op::Burst { calls, ms }),
        2 => (0u64..800).prop_map(Op::Advance),
    ]
}

/// The policies' settings for one case.
#[derive(Clone, Copy, Debug)]
struct Settings {
    max_in_flight: usize,
    default_timeout: Duration,
    max_attempts: u32,
    budget_floor: u32,
    budget_ratio: f32,
    breaker: BreakerConfig,
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        1usize..4,
        100u64..600,
        1u32..4,
        0u32..3,
        prop_oneof![Just(0.0f32), Just(0.2), Just(1.0)],
        (1usize..8, 1usize..6, prop_oneof![Just(0.5f64), Just(1.0)]),
        (proptest::option::of(1u32..4), 50u64..700, 1u32..3),
    )
        .prop_map(
            |(
                max_in_flight,
                timeout,
                max_attempts,
                floor,
                ratio,
                (w, m, rate),
                (row, open, probes),
            )| {
                Settings {
                    max_in_flight,
                    default_timeout: Duration::from_millis(timeout),
                    max_attempts,
                    budget_floor: floor,
                    budget_ratio: ratio,
                    breaker: BreakerConfig {
                        window: w,
                        minimum_calls: m,
                        failure_rate: rate,
                        consecutive_failures: row,
                        open_for: Duration::from_millis(open),
                        probes,
                    },
                }
            },
        )
}

impl Settings {
    fn retry(&self) -> RetryConfig {
        // No backoff: see the module docs.
        RetryConfig {
            max_attempts: self.max_attempts,
            base: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }

    fn budget(&self) -> Arc<RetryBudget> {
        Arc::new(RetryBudget::new(
            Duration::from_secs(10),
            self.budget_floor,
            self.budget_ratio,
        ))
    }
}

/// The recipient: plays the script's steps in order (an answer once they run out); during a
/// burst every attempt is slow instead. Counts the attempts that reached it.
#[derive(Clone)]
struct Recipient {
    script: Arc<Mutex<VecDeque<Step>>>,
    burst: Arc<Mutex<Option<u64>>>,
    attempts: Arc<AtomicU32>,
}

impl Recipient {
    fn new(script: &[Step]) -> Recipient {
        Recipient {
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            burst: Arc::default(),
            attempts: Arc::default(),
        }
    }
}

impl tower::Service<Call> for Recipient {
    type Response = Bytes;
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<Bytes, CallError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let step = match *self.burst.lock().unwrap() {
            Some(ms) => Step::Slow(ms),
            None => self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Step::Answer),
        };
        Box::pin(async move {
            match step {
                Step::Answer => Ok(Bytes::from_static(b"7")),
                Step::Slow(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(Bytes::from_static(b"7"))
                }
                Step::Fail(kind) => Err(CallError::new(
                    kind,
                    Arc::clone(&call.service),
                    call.envelope.ty.as_str(),
                    "scripted failure",
                )),
            }
        })
    }
}

/// The policies composed by hand, in the order of the client's module docs.
struct Composed {
    recipient: Recipient,
    bulkhead: Bulkhead,
    default_timeout: Duration,
    retry: RetryConfig,
    budget: Arc<RetryBudget>,
    breaker: BreakerHandle,
}

/// A breaker ticket that is given back if its attempt is dropped before its outcome.
struct Admitted<'a> {
    breaker: &'a BreakerHandle,
    ticket: Option<tabgrab_call::breaker::Ticket>,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.cancel(ticket);
        }
    }
}

impl Composed {
    async fn call(&self, mut call: Call) -> Result<(), ErrorKind> {
        let Some(_slot) = self.bulkhead.try_enter() else {
            return Err(ErrorKind::Rejected);
        };
        let now = Instant::now();
        let deadline = *call.deadline.get_or_insert(now + self.default_timeout);
        if deadline <= now {
            return Err(ErrorKind::DeadlineExceeded);
        }
        tokio::time::timeout_at(deadline, self.attempts(&call, deadline))
            .await
            .unwrap_or(Err(ErrorKind::DeadlineExceeded))
    }

    async fn attempts(&self, call: &Call, deadline: Instant) -> Result<(), ErrorKind> {
        self.budget.deposit();
        let mut attempts = 1;
        loop {
            let kind = match self.attempt(call, deadline).await {
                Ok(()) => return Ok(()),
                Err(kind) => kind,
            };
            let retryable = kind.is_retryable() && call.kind == RequestKind::Query;
            let Ok(resume) = next_attempt(
                &self.retry,
                &self.budget,
                attempts,
                retryable,
                Some(deadline),
                Instant::now(),
            ) else {
                return Err(kind);
            };
            attempts += 1;
            tokio::time::sleep_until(resume).await;
        }
    }

    async fn attempt(&self, call: &Call, deadline: Instant) -> Result<(), ErrorKind> {
        let now = Instant::now();
        if deadline <= now {
            return Err(ErrorKind::DeadlineExceeded);
        }
        let Some(ticket) = self.breaker.allow(now) else {
            return Err(ErrorKind::CircuitOpen);
        };
        let mut admitted = Admitted {
            breaker: &self.breaker,
            ticket: Some(ticket),
        };
        let result = tower::ServiceExt::oneshot(self.recipient.clone(), call.clone()).await;
        let outcome = match &result {
            Err(e) if is_failure(e.kind()) => Outcome::Failure,
            _ => Outcome::Success,
        };
        if let Some(ticket) = admitted.ticket.take() {
            self.breaker.record(ticket, outcome, Instant::now());
        }
        result.map(|_| ()).map_err(|e| e.kind())
    }
}

/// What one run saw: each call's result with the attempts it sent, the breaker after each
/// step, and the budget's count at the end.
#[derive(Debug, PartialEq)]
struct Trace {
    calls: Vec<(Result<(), ErrorKind>, u32)>,
    breaker: Vec<CircuitState>,
    granted: u64,
    refused: u64,
}

fn call_of(n: u32, query: bool, deadline: Option<Instant>) -> Call {
    let envelope = if query {
        Envelope::new("/tabgrab/client", &Look { n })
    } else {
        Envelope::new("/tabgrab/client", &Change { n })
    };
    Call {
        service: Arc::from("model"),
        kind: if query {
            RequestKind::Query
        } else {
            RequestKind::Command
        },
        envelope: Arc::new(envelope.unwrap()),
        deadline,
        idempotency_key: None,
    }
}

/// Runs `ops` against `one` (a call returns its result), recording the trace.
async fn play<F, Fut>(
    ops: &[Op],
    recipient: &Recipient,
    breaker: &BreakerHandle,
    budget: &RetryBudget,
    one: F,
) -> Trace
where
    F: Fn(u32, bool, Option<Instant>) -> Fut,
    Fut: Future<Output = Result<(), ErrorKind>>,
{
    let mut trace = Trace {
        calls: Vec::new(),
        breaker: Vec::new(),
        granted: 0,
        refused: 0,
    };
    for (n, op) in (0u32..).zip(ops) {
        match *op {
            Op::Call { query, deadline_ms } => {
                let before = recipient.attempts.load(Ordering::SeqCst);
                let deadline = deadline_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
                let result = one(n, query, deadline).await;
                let sent = recipient.attempts.load(Ordering::SeqCst) - before;
                trace.calls.push((result, sent));
            }
            Op::Burst { calls, ms } => {
                *recipient.burst.lock().unwrap() = Some(ms);
                let before = recipient.attempts.load(Ordering::SeqCst);
                let results =
                    futures::future::join_all((0..calls).map(|_| one(n, true, None))).await;
                *recipient.burst.lock().unwrap() = None;
                let sent = recipient.attempts.load(Ordering::SeqCst) - before;
                for result in results {
                    trace.calls.push((result, sent));
                }
            }
            Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        trace.breaker.push(breaker.state());
    }
    trace.granted = budget.granted();
    trace.refused = budget.refused();
    trace
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn through_client(settings: Settings, script: &[Step], ops: &[Op]) -> Trace {
    runtime().block_on(async {
        let recipient = Recipient::new(script);
        let budget = settings.budget();
        let client = Client::builder(recipient.clone())
            .service_name("model")
            .max_in_flight(settings.max_in_flight)
            .default_timeout(settings.default_timeout)
            .retry(settings.retry())
            .retry_budget(Arc::clone(&budget))
            .breaker(settings.breaker)
            .build();
        let breaker = client.breaker().clone();
        play(ops, &recipient, &breaker, &budget, |n, query, deadline| {
            let client = client.clone();
            async move {
                let options = CallOptions {
                    deadline,
                    ..CallOptions::default()
                };
                let result = if query {
                    client.call_with(&Look { n }, options).await
                } else {
                    client.call_with(&Change { n }, options).await
                };
                result.map(|_| ()).map_err(|e| e.kind())
            }
        })
        .await
    })
}

fn through_composition(settings: Settings, script: &[Step], ops: &[Op]) -> Trace {
    runtime().block_on(async {
        let recipient = Recipient::new(script);
        let composed = Arc::new(Composed {
            recipient: recipient.clone(),
            bulkhead: Bulkhead::new(settings.max_in_flight),
            default_timeout: settings.default_timeout,
            retry: settings.retry(),
            budget: settings.budget(),
            breaker: BreakerHandle::new(settings.breaker),
        });
        let (breaker, budget) = (composed.breaker.clone(), Arc::clone(&composed.budget));
        play(ops, &recipient, &breaker, &budget, |n, query, deadline| {
            let composed = Arc::clone(&composed);
            async move { composed.call(call_of(n, query, deadline)).await }
        })
        .await
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_client_behaves_as_the_policies_composed_by_hand(
        settings in settings(),
        script in proptest::collection::vec(step(), 0..60),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let client = through_client(settings, &script, &ops);
        let composed = through_composition(settings, &script, &ops);
        prop_assert_eq!(client, composed);
    }
}

/// The composition is not vacuous: the scripts above reach every policy. One fixed script
/// shows each at work (both ways agree on it by the property; here its content is checked).
#[test]
fn each_policy_acts_in_the_composition() {
    let settings = Settings {
        max_in_flight: 2,
        default_timeout: Duration::from_millis(300),
        max_attempts: 3,
        budget_floor: 0,
        budget_ratio: 1.0,
        breaker: BreakerConfig {
            window: 10,
            minimum_calls: 10,
            failure_rate: 1.0,
            consecutive_failures: Some(3),
            open_for: Duration::from_millis(500),
            probes: 1,
        },
    };
    let script = [
        // Call 0: fails, retried, answers (a retry granted).
        Step::Fail(ErrorKind::Unavailable),
        Step::Answer,
        // Call 1: slower than its deadline.
        Step::Slow(1000),
        // Call 2: a command fails once (not retried); call 3: a query fails, is retried and
        // fails again, the third failure in a row: the breaker opens and refuses the third
        // attempt, so the call ends with `CircuitOpen`; call 4 is refused at once.
        Step::Fail(ErrorKind::Unavailable),
        Step::Fail(ErrorKind::Unavailable),
        Step::Fail(ErrorKind::Unavailable),
        // After the open time: the probe answers and closes it.
        Step::Answer,
    ];
    let ops = [
        Op::Call {
            query: true,
            deadline_ms: None,
        },
        Op::Call {
            query: true,
            deadline_ms: None,
        },
        Op::Call {
            query: false,
            deadline_ms: None,
        },
        Op::Call {
            query: true,
            deadline_ms: None,
        },
        Op::Call {
            query: true,
            deadline_ms: None,
        },
        Op::Advance(500),
        Op::Call {
            query: true,
            deadline_ms: None,
        },
        Op::Burst { calls: 3, ms: 10 },
    ];
    let trace = through_composition(settings, &script, &ops);
    assert_eq!(through_client(settings, &script, &ops), trace);
    use ErrorKind::*;
    assert_eq!(
        trace.calls,
        vec![
            (Ok(()), 2),
            (Err(DeadlineExceeded), 1),
            (Err(Unavailable), 1),
            (Err(CircuitOpen), 2),
            (Err(CircuitOpen), 0),
            (Ok(()), 1),
            (Ok(()), 2),
            (Ok(()), 2),
            (Err(Rejected), 2),
        ]
    );
    assert_eq!(trace.breaker[3], CircuitState::Open);
    assert_eq!(trace.breaker[6], CircuitState::Closed);
    assert!(trace.granted >= 2, "{trace:?}");
}
