//! One trial: a restaurant of one style under the lab's load, with an optional outage of
//! one service, until every accepted order has ended or a deadline passed.
//!
//! Every scenario but blocking is a trial with other settings, so all styles meet the same
//! load and the same fault schedule.

use std::path::Path;
use std::time::{Duration, Instant};

use tabgrab::call::breaker::CircuitState;

use super::load::{self, End, Post};
use super::restaurant::{Counters, Down, Kit, Restaurant};
use crate::error::{Error, ErrorKind};
use crate::run::Style;

/// A service taken down during a trial.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outage {
    /// Which one.
    pub(crate) service: Down,
    /// From the first order to the stop.
    pub(crate) after: Duration,
    /// How long it stays down.
    pub(crate) length: Duration,
}

/// What a trial does.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// How the restaurant is equipped.
    pub(crate) kit: Kit,
    /// Orders per second.
    pub(crate) rate: f64,
    /// Orders in all.
    pub(crate) orders: u64,
    /// The customers' seed.
    pub(crate) seed: u64,
    /// The outage, if any.
    pub(crate) outage: Option<Outage>,
    /// How long to wait for accepted orders to end after the last answer.
    pub(crate) drain: Duration,
    /// The broker URL with this trial's namespace, or `None` for an embedded bus in the
    /// trial's directory.
    pub(crate) bus: Option<String>,
}

/// What a trial saw.
#[derive(Debug)]
pub(crate) struct Trace {
    /// When the first order was sent.
    pub(crate) t0: Instant,
    /// Each order as the customer saw it.
    pub(crate) posts: Vec<Post>,
    /// How each order ended (same order as `posts`).
    pub(crate) ends: Vec<End>,
    /// When the service was stopped and started again.
    pub(crate) outage: Option<(Instant, Instant)>,
    /// The restaurant's counters at the end.
    pub(crate) counters: Counters,
    /// Calls: the transitions of the stopped service's circuit breaker (empty otherwise).
    pub(crate) breaker: Vec<(Instant, CircuitState)>,
}

/// Runs one trial in `dir` (a fresh directory). The restaurant is closed (on a broker: its
/// namespace deleted) whether the trial succeeded or not.
pub(crate) async fn run(style: Style, plan: &Plan, dir: &Path) -> Result<Trace, Error> {
    let mut restaurant = Restaurant::open(style, &plan.kit, dir, plan.bus.as_deref()).await?;
    let traced = trace(&mut restaurant, plan).await;
    let closed = restaurant.close().await;
    let trace = traced?;
    closed?;
    Ok(trace)
}

async fn trace(restaurant: &mut Restaurant, plan: &Plan) -> Result<Trace, Error> {
    let url = restaurant.orders_url.clone();
    let (rate, orders, seed) = (plan.rate, plan.orders, plan.seed);
    // The customers' own timeout: longer than any outage, so a refusal is the front desk's.
    let client_timeout = plan.kit.order_timeout + Duration::from_secs(5);
    let t0 = Instant::now();
    let customers =
        tokio::spawn(async move { load::offer(&url, rate, orders, seed, client_timeout).await });
    let mut outage = None;
    if let Some(o) = plan.outage {
        tokio::time::sleep_until((t0 + o.after).into()).await;
        restaurant.stop(o.service).await?;
        let stopped = Instant::now();
        tokio::time::sleep_until((stopped + o.length).into()).await;
        restaurant.restart(o.service).await?;
        outage = Some((stopped, Instant::now()));
    }
    let posts = customers
        .await
        .map_err(|e| Error::new(ErrorKind::Io, "the customers' task failed").with_source(e))??;
    let accepted = load::accepted_ids(&posts);
    let ends = restaurant
        .ends(&accepted, Instant::now() + plan.drain)
        .await;
    restaurant.settle(Duration::from_secs(10)).await;
    let counters = restaurant.counters()?;
    let breaker = plan
        .outage
        .map(|o| restaurant.breaker_transitions(o.service))
        .unwrap_or_default();
    Ok(Trace {
        t0,
        ends: load::ends_of(&posts, &ends),
        posts,
        outage,
        counters,
        breaker,
    })
}
