//! Availability: a service is stopped for a while as customers keep ordering; what the
//! front desk accepts meanwhile, what completes after recovery, what fails, what is lost.
//!
//! Lost is derived, not reported by anyone: orders accepted minus orders that ended
//! (made or failed) once the restaurant was given time to drain. "Recipient must be up" is
//! derived too: yes when the outage made orders fail, lost any, or kept the front desk from
//! accepting what was offered during it.
//!
//! Recovery is the time from the restart until the backlog (orders accepted before the
//! restart) has been made and a new order has been made too: for calls, the first order
//! made after the restart; for the queued styles, the drain of what waited.
//!
//! What dominates the calls style's recovery is its circuit breaker, not the kitchen: the
//! breaker opened during the outage and re-opens on every failed probe, and after the
//! restart it refuses every call until its open period has run out. `breaker_wait_s`
//! measures that wait (from the restart to the breaker's first move out of `Open`, from its
//! recorded transitions), so the report can say how much of the recovery it was.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use tabgrab::call::breaker::CircuitState;

use super::load::{Answer, End};
use super::trial::Trace;
use crate::run::Style;

/// Counts in one 100 ms bucket of the trial.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket, in seconds from the first order.
    pub t_s: f64,
    /// Orders the front desk took (202, or 201 for calls).
    pub accepted: u64,
    /// Orders made (delivered, confirmed, or 201).
    pub completed: u64,
    /// Orders failed (refused, or cancelled).
    pub failed: u64,
}

/// The figures of one style with one service down.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AvailabilityFigures {
    /// The style.
    pub style: Style,
    /// The service taken down: kitchen or payment.
    pub down: String,
    /// When it was stopped, in seconds from the first order.
    pub outage_from_s: f64,
    /// How long it was down, in seconds (measured).
    pub outage_s: f64,
    /// Orders offered in all.
    pub offered: u64,
    /// Orders offered while it was down.
    pub offered_during_outage: u64,
    /// Of those, orders the front desk accepted (202 or 201).
    pub accepted_during_outage: u64,
    /// Orders accepted in all.
    pub accepted: u64,
    /// Orders made in all.
    pub completed: u64,
    /// Orders made after the restart that had been accepted before it.
    pub completed_after_recovery: u64,
    /// Orders failed in all.
    pub failed: u64,
    /// Orders failed while the service was down.
    pub failed_during_outage: u64,
    /// Accepted, never ended: accepted − completed − failed among the accepted.
    pub lost: u64,
    /// From restart to recovery (see the module docs), in seconds; none if it never did.
    pub recovery_s: Option<f64>,
    /// Calls: from the restart until the stopped service's circuit breaker let a call
    /// through again (0 if it was not open at the restart), in seconds; none for the other
    /// styles, or if it never did.
    #[serde(default)]
    pub breaker_wait_s: Option<f64>,
    /// Derived: the outage made orders fail or get lost, or kept them from being accepted.
    pub recipient_must_be_up: bool,
    /// 100 ms buckets, for the chart.
    pub series: Vec<Bucket>,
}

fn secs(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64()
}

/// The figures of a trial with an outage.
pub(crate) fn figures(style: Style, down: &str, trace: &Trace) -> AvailabilityFigures {
    let (stopped, restarted) = trace.outage.unwrap_or((trace.t0, trace.t0));
    let during = |t: Instant| t >= stopped && t < restarted;
    let mut f = AvailabilityFigures {
        style,
        down: down.to_owned(),
        outage_from_s: secs(trace.t0, stopped),
        outage_s: restarted.saturating_duration_since(stopped).as_secs_f64(),
        offered: trace.posts.len() as u64,
        offered_during_outage: 0,
        accepted_during_outage: 0,
        accepted: 0,
        completed: 0,
        completed_after_recovery: 0,
        failed: 0,
        failed_during_outage: 0,
        lost: 0,
        recovery_s: None,
        breaker_wait_s: None,
        recipient_must_be_up: false,
        series: Vec::new(),
    };
    let mut last_backlog: Option<Instant> = None;
    let mut first_new: Option<Instant> = None;
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut bumps = Vec::new();
    for (post, end) in trace.posts.iter().zip(&trace.ends) {
        if during(post.sent) {
            f.offered_during_outage += 1;
        }
        let accepted = matches!(post.answer, Answer::Accepted(_) | Answer::Made);
        if accepted {
            f.accepted += 1;
            bumps.push((post.answered, 0));
            if during(post.sent) {
                f.accepted_during_outage += 1;
            }
        }
        match *end {
            End::Made(at) => {
                f.completed += 1;
                bumps.push((at, 1));
                if at >= restarted {
                    if post.answered < restarted && matches!(post.answer, Answer::Accepted(_)) {
                        f.completed_after_recovery += 1;
                        last_backlog = Some(last_backlog.map_or(at, |l| l.max(at)));
                    }
                    first_new = Some(first_new.map_or(at, |l| l.min(at)));
                }
            }
            End::Failed(at) => {
                f.failed += 1;
                bumps.push((at, 2));
                if during(post.sent) || during(at) {
                    f.failed_during_outage += 1;
                }
            }
            End::Lost => f.lost += 1,
        }
    }
    for (at, kind) in bumps {
        let i = (secs(trace.t0, at) * 10.0) as usize;
        if buckets.len() <= i {
            buckets.resize_with(i + 1, Bucket::default);
        }
        match kind {
            0 => buckets[i].accepted += 1,
            1 => buckets[i].completed += 1,
            _ => buckets[i].failed += 1,
        }
    }
    for (i, b) in buckets.iter_mut().enumerate() {
        b.t_s = i as f64 / 10.0;
    }
    f.series = buckets;
    f.recovery_s = first_new.map(|first| {
        let done = last_backlog.map_or(first, |l| l.max(first));
        done.saturating_duration_since(restarted).as_secs_f64()
    });
    f.breaker_wait_s = breaker_wait(&trace.breaker, restarted);
    f.recipient_must_be_up =
        f.failed > 0 || f.lost > 0 || f.accepted_during_outage < f.offered_during_outage;
    f
}

/// From `restarted` until the breaker left `Open` (0 if it was not open then); `None` if
/// there are no transitions (not the calls style) or it stayed open.
fn breaker_wait(transitions: &[(Instant, CircuitState)], restarted: Instant) -> Option<f64> {
    if transitions.is_empty() {
        return None;
    }
    let at_restart = transitions
        .iter()
        .rev()
        .find(|(at, _)| *at <= restarted)
        .map_or(CircuitState::Closed, |(_, state)| *state);
    if at_restart != CircuitState::Open {
        return Some(0.0);
    }
    transitions
        .iter()
        .find(|(at, state)| *at > restarted && *state != CircuitState::Open)
        .map(|(at, _)| at.saturating_duration_since(restarted).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lab::load::Post;
    use crate::lab::restaurant::Counters;

    /// Ten orders 100 ms apart; the service is down from 300 to 600 ms; `answer` and `end`
    /// decide each order from its send time.
    fn trace(answer: impl Fn(Instant, bool) -> (Answer, End)) -> Trace {
        let t0 = Instant::now();
        let (down, up) = (
            t0 + Duration::from_millis(300),
            t0 + Duration::from_millis(600),
        );
        let mut posts = Vec::new();
        let mut ends = Vec::new();
        for i in 0..10 {
            let sent = t0 + Duration::from_millis(100 * i);
            let (answer, end) = answer(sent, sent >= down && sent < up);
            posts.push(Post {
                sent,
                answered: sent + Duration::from_millis(1),
                answer,
                desk: None,
            });
            ends.push(end);
        }
        Trace {
            t0,
            posts,
            ends,
            outage: Some((down, up)),
            counters: Counters::default(),
            breaker: Vec::new(),
        }
    }

    #[test]
    fn refusals_during_the_outage_mean_the_recipient_must_be_up() {
        let t = trace(|sent, down| {
            if down {
                (Answer::Refused { timeout: false }, End::Failed(sent))
            } else {
                (Answer::Made, End::Made(sent))
            }
        });
        let f = figures(Style::Calls, "kitchen", &t);
        assert_eq!((f.offered_during_outage, f.accepted_during_outage), (3, 0));
        assert_eq!((f.failed, f.lost), (3, 0));
        assert!(f.recipient_must_be_up);
        assert!(f.recovery_s.is_some());
    }

    #[test]
    fn orders_that_wait_and_are_made_after_the_restart_mean_it_need_not_be() {
        let t = trace(|sent, _| {
            let made = sent + Duration::from_millis(700);
            (Answer::Accepted(uuid::Uuid::now_v7()), End::Made(made))
        });
        let f = figures(Style::Events, "kitchen", &t);
        assert_eq!(f.accepted_during_outage, 3);
        assert_eq!((f.failed, f.lost), (0, 0));
        assert!(f.completed_after_recovery > 0);
        assert!(!f.recipient_must_be_up);
    }

    #[test]
    fn the_breaker_wait_runs_from_the_restart_to_its_first_move_out_of_open() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let restarted = at(600);
        let opened = vec![
            (at(310), CircuitState::Open),
            (at(500), CircuitState::HalfOpen),
            (at(505), CircuitState::Open),
            (at(1000), CircuitState::HalfOpen),
            (at(1010), CircuitState::Closed),
        ];
        let wait = breaker_wait(&opened, restarted).unwrap();
        assert!((wait - 0.4).abs() < 1e-6, "{wait}");
        let closed = vec![
            (at(310), CircuitState::Open),
            (at(550), CircuitState::Closed),
        ];
        assert_eq!(breaker_wait(&closed, restarted), Some(0.0));
        assert_eq!(breaker_wait(&[], restarted), None);
        assert_eq!(breaker_wait(&opened[..3], restarted), None);
    }

    #[test]
    fn an_accepted_order_that_never_ends_is_lost_and_decides_the_verdict() {
        let t = trace(|sent, down| {
            let end = if down { End::Lost } else { End::Made(sent) };
            (Answer::Accepted(uuid::Uuid::now_v7()), end)
        });
        let f = figures(Style::Messaging, "payment", &t);
        assert_eq!(f.lost, 3);
        assert!(f.recipient_must_be_up);
    }
}
