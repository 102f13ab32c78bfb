//! Capacity: a kitchen with few ovens under an offered load above what it can bake, and
//! the orders made per second under each style beside its theoretical ceiling
//! (ovens ÷ bake time).
//!
//! Messaging and events let the front desk *accept* faster than the kitchen bakes (the
//! orders wait in the log), but they do not make the kitchen faster: orders are made at
//! the kitchen's pace in every style. The verdict is derived: "not faster" when the
//! completed rate stays within 10% of the ceiling or below.

use serde::{Deserialize, Serialize};

use super::load::{Answer, End};
use super::trial::Trace;
use crate::run::Style;

/// The figures of one style.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityFigures {
    /// The style.
    pub style: Style,
    /// Ovens in the kitchen.
    pub ovens: u64,
    /// Bake time, in milliseconds.
    pub bake_ms: f64,
    /// Ovens ÷ bake time: the most orders per second the kitchen can make.
    pub ceiling_per_s: f64,
    /// Orders offered per second.
    pub offered_per_s: f64,
    /// Orders the front desk took per second while they were offered.
    pub accepted_per_s: f64,
    /// Orders made per second, from the first order to the last made.
    pub completed_per_s: f64,
    /// Orders made.
    pub completed: u64,
    /// Orders failed (refused or cancelled).
    pub failed: u64,
    /// Derived: completed_per_s > 1.1 × ceiling.
    pub faster_than_the_kitchen: bool,
}

/// The figures of a capacity trial.
pub(crate) fn figures(
    style: Style,
    ovens: u64,
    bake_ms: f64,
    offered_per_s: f64,
    trace: &Trace,
) -> CapacityFigures {
    let ceiling = if bake_ms > 0.0 {
        ovens as f64 * 1000.0 / bake_ms
    } else {
        f64::INFINITY
    };
    let last_sent = trace.posts.iter().map(|p| p.sent).max().unwrap_or(trace.t0);
    let offered_for = last_sent
        .saturating_duration_since(trace.t0)
        .as_secs_f64()
        .max(0.001);
    let accepted_in_time = trace
        .posts
        .iter()
        .filter(|p| {
            matches!(p.answer, Answer::Accepted(_) | Answer::Made) && p.answered <= last_sent
        })
        .count() as f64;
    let mut completed = 0;
    let mut failed = 0;
    let mut last_made = trace.t0;
    for end in &trace.ends {
        match *end {
            End::Made(at) => {
                completed += 1;
                last_made = last_made.max(at);
            }
            End::Failed(_) | End::Lost => failed += 1,
        }
    }
    let making = last_made
        .saturating_duration_since(trace.t0)
        .as_secs_f64()
        .max(0.001);
    let completed_per_s = completed as f64 / making;
    CapacityFigures {
        style,
        ovens,
        bake_ms,
        ceiling_per_s: ceiling,
        offered_per_s,
        accepted_per_s: accepted_in_time / offered_for,
        completed_per_s,
        completed,
        failed,
        faster_than_the_kitchen: completed_per_s > 1.1 * ceiling,
    }
}
