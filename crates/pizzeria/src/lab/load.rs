//! The lab's customers: an open-loop load at a fixed rate, the same for every style.
//!
//! Open loop (a new order every 1/rate seconds, whatever the answers) and not a fixed number
//! of customers waiting for their answer: a closed loop would slow down with the restaurant
//! and hide exactly what the lab looks for (orders refused or piling up while a service is
//! down). Each order is the seeded customer of `pizzeria run` with a good card, so the
//! orders that fail are the ones the lab made fail.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use serde::Deserialize;
use uuid::Uuid;

use crate::error::{Error, ErrorKind};
use crate::run::customer;

/// How one `POST /orders` was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 202: taken; the order goes on behind the front desk (events, messaging).
    Accepted(Uuid),
    /// 201: made (calls: the customer waited for every service).
    Made,
    /// Refused (4xx, 5xx); `timeout` for 504.
    Refused {
        /// The front desk's deadline passed.
        timeout: bool,
    },
    /// No answer (connection refused, client timeout).
    Unanswered,
}

/// One order as the customer saw it.
#[derive(Clone, Debug)]
pub(crate) struct Post {
    /// When it was sent.
    pub(crate) sent: Instant,
    /// When it was answered.
    pub(crate) answered: Instant,
    /// How.
    pub(crate) answer: Answer,
    /// When the front desk's server received the order and when its handler answered, from
    /// the [`DESK_TIMING`] header (`None` if the answer had none, e.g. no answer at all).
    pub(crate) desk: Option<(Instant, Instant)>,
}

/// The response header in which the lab's front desk reports when it received an order and
/// when its handler answered, in nanoseconds since [`epoch`] (same process, same clock).
pub(crate) const DESK_TIMING: &str = "x-pizzeria-lab-desk";

/// The instant the desk timings count from: the first use in this process.
pub(crate) fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `router` with the [`DESK_TIMING`] header on every answer: the front desk's own work on
/// a request, from its arrival at the server to its handler's answer (the body already
/// produced; sending it is not counted).
pub(crate) fn timed(router: axum::Router) -> axum::Router {
    let since = |t: Instant| t.saturating_duration_since(epoch()).as_nanos();
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| async move {
            let received = Instant::now();
            let mut response = next.run(request).await;
            let answered = Instant::now();
            if let Ok(value) = axum::http::HeaderValue::from_str(&format!(
                "{} {}",
                since(received),
                since(answered)
            )) {
                response.headers_mut().insert(DESK_TIMING, value);
            }
            response
        },
    ))
}

/// Reads a [`DESK_TIMING`] header back into instants.
fn desk_timing(headers: &reqwest::header::HeaderMap) -> Option<(Instant, Instant)> {
    let value = headers.get(DESK_TIMING)?.to_str().ok()?;
    let (a, b) = value.split_once(' ')?;
    let at =
        |ns: &str| -> Option<Instant> { Some(epoch() + Duration::from_nanos(ns.parse().ok()?)) };
    Some((at(a)?, at(b)?))
}

#[derive(Deserialize)]
struct OrderId {
    order_id: Uuid,
}

/// Posts `count` orders to `url` at `rate` per second and returns how each was answered,
/// in the order they were sent.
pub(crate) async fn offer(
    url: &str,
    rate: f64,
    count: u64,
    seed: u64,
    timeout: Duration,
) -> Result<Vec<Post>, Error> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(timeout)
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot build the HTTP client").with_source(e))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let _ = epoch();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let order = customer(i, &mut rng, 0.0);
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let client = client.clone();
        let url = url.to_owned();
        tasks.spawn(async move {
            let sent = Instant::now();
            let (answer, desk) = match client.post(&url).json(&order).send().await {
                Err(_) => (Answer::Unanswered, None),
                Ok(response) => {
                    let desk = desk_timing(response.headers());
                    let answer = match response.status().as_u16() {
                        202 => match response.json::<OrderId>().await {
                            Ok(o) => Answer::Accepted(o.order_id),
                            Err(_) => Answer::Unanswered,
                        },
                        201 => Answer::Made,
                        504 => Answer::Refused { timeout: true },
                        _ => Answer::Refused { timeout: false },
                    };
                    (answer, desk)
                }
            };
            (
                i,
                Post {
                    sent,
                    answered: Instant::now(),
                    answer,
                    desk,
                },
            )
        });
    }
    let mut posts = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while let Some(done) = tasks.join_next().await {
        let done =
            done.map_err(|e| Error::new(ErrorKind::Io, "a customer's task failed").with_source(e))?;
        posts.push(done);
    }
    posts.sort_by_key(|(i, _)| *i);
    Ok(posts.into_iter().map(|(_, p)| p).collect())
}

/// The ids of the orders answered 202.
pub(crate) fn accepted_ids(posts: &[Post]) -> HashSet<Uuid> {
    posts
        .iter()
        .filter_map(|p| match p.answer {
            Answer::Accepted(id) => Some(id),
            _ => None,
        })
        .collect()
}

/// How each order ended, from the customer's answers and the front desk's ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Made (201, or accepted then delivered / confirmed), at this instant.
    Made(Instant),
    /// Failed (refused, or accepted then cancelled), at this instant.
    Failed(Instant),
    /// Accepted and never ended before the deadline: lost, as far as anyone can tell.
    Lost,
}

/// Joins the answers with the ends the front desk reported.
pub(crate) fn ends_of(posts: &[Post], ends: &HashMap<Uuid, (Instant, bool)>) -> Vec<End> {
    posts
        .iter()
        .map(|p| match &p.answer {
            Answer::Made => End::Made(p.answered),
            Answer::Refused { .. } | Answer::Unanswered => End::Failed(p.answered),
            Answer::Accepted(id) => match ends.get(id) {
                Some((at, true)) => End::Made(*at),
                Some((at, false)) => End::Failed(*at),
                None => End::Lost,
            },
        })
        .collect()
}
