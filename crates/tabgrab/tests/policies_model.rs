//! Consumers and requesters run the resilience policies of `tabgrab-resilience` and nothing
//! else; composed here by hand, the policies give the same behaviour.
//!
//! - A consumer: the breaker (admission before each handler run, transient failures and
//!   panics as failures), the attempt cap and its rule for failures the breaker does not
//!   charge, composed on a virtual clock, give the same handler runs, in the same order, with
//!   the same attempt numbers, the same dead letters and the same final breaker state as a
//!   `Subscription` on the embedded bus, on random scripts of handler outcomes and random
//!   breaker settings. One subject, so the order of runs is the lane's.
//! - A requester: its bulkhead and breaker (replies as successes, time-outs as failures),
//!   composed the same way, give the same result for every request (replied, timed out,
//!   refused as `CircuitOpen` or shed as `Rejected`) and the same breaker states as a
//!   `Requester` with a responder that answers or stays silent as scripted, through the
//!   breaker's opening, a refusal, its probe and a burst beyond the bulkhead.
//!
//! (The call client's counterpart is `tabgrab-call/tests/policies_model.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::breaker::{BreakerConfig, BreakerHandle, CircuitState, Outcome};
use tabgrab::event::{Context, HandlerError, Publisher, Subscription};
use tabgrab::messaging::{MemoryStore, Requester, Responder, SendOptions};
use tabgrab::retry::Backoff;
use tabgrab::{ErrorKind, Message};
use tabgrab_resilience::Bulkhead;
use tokio::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "model.item.v1", event)]
struct Item {
    n: u32,
}

/// What the handler does on one run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    Ok,
    Transient,
    Permanent,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![3 => Just(Step::Ok), 4 => Just(Step::Transient), 1 => Just(Step::Permanent)]
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    max_deliveries: u32,
    breaker: BreakerConfig,
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        1u32..5,
        1usize..6,
        1usize..5,
        prop_oneof![Just(0.5f64), Just(1.0)],
        proptest::option::of(1u32..5),
        1u32..3,
    )
        .prop_map(
            |(max_deliveries, window, minimum_calls, failure_rate, row, probes)| Settings {
                max_deliveries,
                breaker: BreakerConfig {
                    window,
                    minimum_calls,
                    failure_rate,
                    consecutive_failures: row,
                    // Short: each opening is waited out in real time by the subscription.
                    open_for: Duration::from_millis(5),
                    probes,
                },
            },
        )
}

/// What a run saw: each handler run as (offset, attempt), the dead letters as (offset,
/// reason, attempts), and the breaker at the end.
#[derive(Debug, PartialEq)]
struct Trace {
    runs: Vec<(u64, u32)>,
    dead: Vec<(u64, String, u32)>,
    breaker: CircuitState,
}

/// The policies composed by hand. The clock is virtual: a refused admission jumps to the end
/// of the open time (the only thing the breaker's clock decides with one lane).
fn composed(settings: Settings, script: &[Step], offsets: &[u64]) -> Trace {
    let breaker = BreakerHandle::new(settings.breaker);
    let mut script: VecDeque<Step> = script.iter().copied().collect();
    let mut now = Instant::now();
    let mut trace = Trace {
        runs: Vec::new(),
        dead: Vec::new(),
        breaker: CircuitState::Closed,
    };
    for &offset in offsets {
        let mut attempt = 1;
        loop {
            let ticket = loop {
                if let Some(ticket) = breaker.allow(now) {
                    break ticket;
                }
                now = breaker
                    .open_until()
                    .expect("one lane is refused only while open");
            };
            let step = script.pop_front().unwrap_or(Step::Ok);
            trace.runs.push((offset, attempt));
            let outcome = if step == Step::Transient {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            breaker.record(ticket, outcome, now);
            match step {
                Step::Ok => break,
                Step::Permanent => {
                    trace.dead.push((offset, "permanent_error".into(), attempt));
                    break;
                }
                Step::Transient if breaker.state() != CircuitState::Closed => {}
                Step::Transient if attempt >= settings.max_deliveries => {
                    trace.dead.push((offset, "max_deliveries".into(), attempt));
                    break;
                }
                Step::Transient => attempt += 1,
            }
        }
    }
    trace.breaker = breaker.state();
    trace
}

/// The same script through a subscription on the embedded bus.
fn subscribed(settings: Settings, script: &[Step], events: u32) -> (Trace, Vec<u64>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::from(EmbeddedBus::open(dir.path()).unwrap());
        let publisher = Publisher::new(&bus, "items", "/model").unwrap();
        let mut offsets = Vec::new();
        for n in 0..events {
            offsets.push(publisher.publish(&Item { n }, "one").await.unwrap().offset);
        }
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let breaker = BreakerHandle::new(settings.breaker);
        let sub = {
            let (script, runs) = (Arc::clone(&script), Arc::clone(&runs));
            Subscription::builder(&bus, "items", "model")
                .max_deliveries(settings.max_deliveries)
                .backoff(Backoff {
                    base: Duration::from_micros(100),
                    max: Duration::from_millis(1),
                })
                .breaker(breaker.clone())
                .handle(move |_: Item, ctx: Context| {
                    let step = script.lock().unwrap().pop_front().unwrap_or(Step::Ok);
                    runs.lock().unwrap().push((ctx.offset(), ctx.attempt()));
                    async move {
                        match step {
                            Step::Ok => Ok(()),
                            Step::Transient => {
                                Err(HandlerError::transient("the dependency is down"))
                            }
                            Step::Permanent => Err(HandlerError::permanent("the order is bad")),
                        }
                    }
                })
                .start()
                .unwrap()
        };
        let started = std::time::Instant::now();
        loop {
            let stats = sub.stats();
            if stats.acked + stats.dead_lettered == u64::from(events) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not settled: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sub.shutdown().await.unwrap();
        let mut dead: Vec<(u64, String, u32)> = bus
            .dead_letters("items")
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.offset, l.reason, l.attempts))
            .collect();
        dead.sort();
        let runs = runs.lock().unwrap().clone();
        (
            Trace {
                runs,
                dead,
                breaker: breaker.state(),
            },
            offsets,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn a_consumer_behaves_as_the_policies_composed_by_hand(
        settings in settings(),
        script in proptest::collection::vec(step(), 0..24),
        events in 1u32..7,
    ) {
        let (subscribed, offsets) = subscribed(settings, &script, events);
        let composed = composed(settings, &script, &offsets);
        prop_assert_eq!(subscribed, composed);
    }
}

/// The scripts reach each rule: a fixed one shows a charged retry, a dead letter at the cap,
/// the breaker opening on a failure it does not charge, a failed and a good probe, and a
/// permanent error.
#[test]
fn each_rule_acts_in_the_composition() {
    let settings = Settings {
        max_deliveries: 2,
        breaker: BreakerConfig {
            window: 10,
            minimum_calls: 10,
            failure_rate: 1.0,
            consecutive_failures: Some(3),
            open_for: Duration::from_millis(5),
            probes: 1,
        },
    };
    use Step::*;
    let script = [
        Transient, Ok, // event 0: retried once (charged), then handled
        Transient, Transient, // event 1: two charged failures: dead-lettered at the cap
        Transient, // event 2: the third failure in a row opens the breaker (not charged)
        Transient, // its probe fails: open again, still not charged
        Ok,        // the next probe succeeds and closes it
        Permanent, // event 3: dead-lettered at once (an answer, for the breaker)
        Transient, Ok, // event 4: a charged retry again
    ];
    let (trace, offsets) = subscribed(settings, &script, 5);
    assert_eq!(trace, composed(settings, &script, &offsets));
    let o = &offsets;
    assert_eq!(
        trace.runs,
        vec![
            (o[0], 1),
            (o[0], 2),
            (o[1], 1),
            (o[1], 2),
            (o[2], 1),
            (o[2], 1),
            (o[2], 1),
            (o[3], 1),
            (o[4], 1),
            (o[4], 2),
        ]
    );
    assert_eq!(
        trace.dead,
        vec![
            (o[1], "max_deliveries".to_owned(), 2),
            (o[3], "permanent_error".to_owned(), 1),
        ]
    );
    assert_eq!(trace.breaker, CircuitState::Closed);
}

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "model.ask.v1", query, response = u32)]
struct Ask {
    n: u32,
    /// Whether the responder answers (else it stays silent until after the deadline).
    answer: bool,
}

/// A request's end as the test sees it.
#[derive(Clone, Debug, PartialEq)]
enum End {
    Replied(u32),
    TimedOut,
    Refused(ErrorKind),
    /// Sent without waiting (in a burst).
    Sent,
}

/// What the requester scenario does.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// `request` and wait: answered or not.
    Request { answer: bool },
    /// Wait until the breaker's open time is over.
    WaitOpen,
    /// `send` this many silent requests at once, then wait until their time-outs are in.
    Burst(u32),
}

/// How long a silent request waits; answered ones get a long timeout, so that a slow
/// machine cannot turn them into time-outs.
const SILENT: Duration = Duration::from_millis(200);
const ANSWERED: Duration = Duration::from_secs(20);

fn requester_breaker() -> BreakerConfig {
    BreakerConfig {
        window: 10,
        minimum_calls: 10,
        failure_rate: 1.0,
        consecutive_failures: Some(2),
        // Long enough that the refusal right after the opening is inside it on any machine.
        open_for: Duration::from_secs(1),
        probes: 1,
    }
}

/// The scenario through the policies composed by hand, on a virtual clock.
fn requests_composed(steps: &[Act], max_in_flight: usize) -> (Vec<End>, Vec<CircuitState>) {
    let bulkhead = Bulkhead::new(max_in_flight);
    let breaker = BreakerHandle::new(requester_breaker());
    let mut now = Instant::now();
    let (mut ends, mut states) = (Vec::new(), Vec::new());
    let mut n = 0;
    for step in steps {
        match *step {
            Act::Request { answer } => {
                n += 1;
                // The bulkhead first, then the breaker, as the requester admits.
                let slot = bulkhead.try_enter();
                let ticket = slot.as_ref().and_then(|_| breaker.allow(now));
                let end = match (slot, ticket) {
                    (None, _) => End::Refused(ErrorKind::Rejected),
                    (Some(_slot), None) => End::Refused(ErrorKind::CircuitOpen),
                    (Some(_slot), Some(ticket)) => {
                        let outcome = if answer {
                            Outcome::Success
                        } else {
                            Outcome::Failure
                        };
                        breaker.record(ticket, outcome, now);
                        if answer {
                            End::Replied(n)
                        } else {
                            End::TimedOut
                        }
                    }
                };
                ends.push(end);
            }
            Act::WaitOpen => now = breaker.open_until().expect("open"),
            Act::Burst(k) => {
                let mut admitted = Vec::new();
                for _ in 0..k {
                    n += 1;
                    match bulkhead.try_enter() {
                        None => ends.push(End::Refused(ErrorKind::Rejected)),
                        Some(slot) => match breaker.allow(now) {
                            None => ends.push(End::Refused(ErrorKind::CircuitOpen)),
                            Some(ticket) => {
                                ends.push(End::Sent);
                                admitted.push((slot, ticket));
                            }
                        },
                    }
                }
                for (_slot, ticket) in admitted {
                    breaker.record(ticket, Outcome::Failure, now);
                }
            }
        }
        states.push(breaker.state());
    }
    (ends, states)
}

/// The scenario through a `Requester` on the embedded bus.
async fn requests_sent(steps: &[Act], max_in_flight: usize) -> (Vec<End>, Vec<CircuitState>) {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::from(EmbeddedBus::open(dir.path()).unwrap());
    let responder = Responder::builder(&bus, "asks", "answers")
        .handle(|ask: Ask, _ctx| async move {
            if !ask.answer {
                // Silent: the answer comes after the deadline and is dropped as late.
                tokio::time::sleep(SILENT * 2).await;
            }
            Ok(ask.n)
        })
        .start()
        .unwrap();
    let breaker = BreakerHandle::new(requester_breaker());
    let requester = Requester::builder(&bus, "askers")
        .store(MemoryStore::new())
        .route::<Ask>("asks")
        .sweep_interval(Duration::from_millis(20))
        .max_in_flight(max_in_flight)
        .breaker(breaker.clone())
        .start()
        .unwrap();
    responder.ready().await.unwrap();
    requester.ready().await.unwrap();
    let (mut ends, mut states) = (Vec::new(), Vec::new());
    let mut n = 0;
    for step in steps {
        match *step {
            Act::Request { answer } => {
                n += 1;
                let timeout = if answer { ANSWERED } else { SILENT };
                let end = match requester
                    .request(&Ask { n, answer }, SendOptions::default().timeout(timeout))
                    .await
                {
                    Ok(v) => End::Replied(v),
                    Err(e) if e.kind() == ErrorKind::DeadlineExceeded => End::TimedOut,
                    Err(e) => {
                        assert!(
                            matches!(e.kind(), ErrorKind::CircuitOpen | ErrorKind::Rejected),
                            "{e}"
                        );
                        End::Refused(e.kind())
                    }
                };
                ends.push(end);
            }
            Act::WaitOpen => {
                tokio::time::sleep_until(breaker.open_until().expect("open")).await;
            }
            Act::Burst(k) => {
                let before = requester.stats().timed_out;
                let sends = (0..k).map(|i| {
                    let requester = requester.clone();
                    let n = n + 1 + i;
                    async move {
                        requester
                            .send(
                                &Ask { n, answer: false },
                                SendOptions::default().timeout(SILENT),
                            )
                            .await
                    }
                });
                let results = futures::future::join_all(sends).await;
                n += k;
                let mut sent = 0;
                for result in results {
                    ends.push(match result {
                        Ok(_) => {
                            sent += 1;
                            End::Sent
                        }
                        Err(e) => End::Refused(e.kind()),
                    });
                }
                assert_eq!(requester.stats().in_flight, Some(sent as usize));
                let started = std::time::Instant::now();
                while requester.stats().timed_out < before + sent {
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "time-outs not in"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert_eq!(requester.stats().in_flight, Some(0));
            }
        }
        states.push(breaker.state());
    }
    let stats = requester.stats();
    assert_eq!(stats.breaker, Some(breaker.state()));
    let refused = |kind| ends.iter().filter(|e| **e == End::Refused(kind)).count() as u64;
    assert_eq!(stats.circuit_open, refused(ErrorKind::CircuitOpen));
    assert_eq!(stats.shed, refused(ErrorKind::Rejected));
    requester.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
    (ends, states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_behaves_as_the_policies_composed_by_hand() {
    use Act::*;
    let steps = [
        Request { answer: true },
        Request { answer: false },
        // The second time-out in a row opens the breaker; the next request is refused.
        Request { answer: false },
        Request { answer: true },
        WaitOpen,
        // The probe is answered: closed again.
        Request { answer: true },
        // Three at once, two fit the bulkhead; their two time-outs open the breaker.
        Burst(3),
        Request { answer: true },
    ];
    let sent = requests_sent(&steps, 2).await;
    let composed = requests_composed(&steps, 2);
    assert_eq!(sent, composed);
    use End::*;
    assert_eq!(
        sent.0,
        vec![
            Replied(1),
            TimedOut,
            TimedOut,
            Refused(ErrorKind::CircuitOpen),
            Replied(5),
            Sent,
            Sent,
            Refused(ErrorKind::Rejected),
            Refused(ErrorKind::CircuitOpen),
        ]
    );
}
