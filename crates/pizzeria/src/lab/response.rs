//! Response expected: per order, the response messages, the correlation records, the
//! timeouts, and how long the front desk's work for the order stays open.
//!
//! "Work open" is what the front desk must hold on to for an order, measured inside the
//! front desk, from the moment its HTTP server received the order (the lab's front desk
//! stamps each answer, see `load::DESK_TIMING`):
//!
//! | style | until |
//! |---|---|
//! | calls | its handler answered: it waited for payment, inventory and the kitchen |
//! | events | its handler answered: `OrderAccepted` was published and acknowledged by the bus |
//! | messaging | the last reply was handled (the order confirmed): the requests stay pending, in the correlation store, until then |
//!
//! The customer's own round trip of `POST /orders` (connection, request, response on the
//! wire) is reported beside it as `post_round_trip`, since that is what a client waits,
//! but it is not the front desk's work. Response messages are counted on the bus (records on
//! reply topics on the embedded log, acknowledged publishes to reply topics on a broker) or,
//! for calls, as the HTTP responses the services sent the front desk. The verdict "response
//! expected" is yes when an order caused any response or any correlation record.

use serde::{Deserialize, Serialize};

use super::load::{Answer, End};
use super::trial::Trace;
use crate::run::Style;

/// Percentiles of a duration, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Longest.
    pub max_ms: f64,
}

impl Spread {
    /// The spread of `samples` (sorted here).
    pub fn of(samples: &mut [f64]) -> Spread {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() - 1) as f64 * q).round() as usize;
            samples[i.min(samples.len() - 1)]
        };
        Spread {
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// The figures of one style.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseFigures {
    /// The style.
    pub style: Style,
    /// Orders sent.
    pub orders: u64,
    /// Orders made.
    pub completed: u64,
    /// Response messages (or HTTP responses, for calls) per order.
    pub responses_per_order: f64,
    /// Correlation records written per order.
    pub correlation_records_per_order: f64,
    /// Timeouts that fired, in all.
    pub timeouts: u64,
    /// Messages put on the bus per order (0 for calls).
    pub bus_messages_per_order: f64,
    /// How long the front desk's work for an order stays open.
    pub work_open: Spread,
    /// The customer's `POST /orders` round trip (for comparison; not the front desk's work).
    #[serde(default)]
    pub post_round_trip: Spread,
    /// Every order's work-open time, in milliseconds, for the chart.
    pub work_open_ms: Vec<f64>,
    /// Derived: any response or correlation record per order.
    pub response_expected: bool,
}

/// The figures of a trial without an outage.
pub(crate) fn figures(style: Style, trace: &Trace) -> ResponseFigures {
    let orders = trace.posts.len() as u64;
    let per = |n: u64| {
        if orders == 0 {
            0.0
        } else {
            n as f64 / orders as f64
        }
    };
    let ms = |from: std::time::Instant, to: std::time::Instant| {
        to.saturating_duration_since(from).as_secs_f64() * 1000.0
    };
    let mut open = Vec::new();
    let mut round_trip = Vec::new();
    let mut completed = 0;
    let mut timeouts = trace.counters.timeouts;
    for (post, end) in trace.posts.iter().zip(&trace.ends) {
        if matches!(end, End::Made(_)) {
            completed += 1;
        }
        if matches!(post.answer, Answer::Refused { timeout: true }) {
            timeouts += 1;
        }
        round_trip.push(ms(post.sent, post.answered));
        let Some((received, answered)) = post.desk else {
            continue;
        };
        let until = match (style, end) {
            (Style::Messaging, End::Made(at)) => Some(*at),
            (Style::Messaging, _) => None,
            _ => Some(answered),
        };
        if let Some(until) = until {
            open.push(ms(received, until));
        }
    }
    let c = trace.counters;
    let mut sorted = open.clone();
    ResponseFigures {
        style,
        orders,
        completed,
        responses_per_order: per(c.responses),
        correlation_records_per_order: per(c.correlation_records),
        timeouts,
        bus_messages_per_order: per(c.bus_messages),
        work_open: Spread::of(&mut sorted),
        post_round_trip: Spread::of(&mut round_trip),
        work_open_ms: open,
        response_expected: c.responses > 0 || c.correlation_records > 0,
    }
}
