//! The live flow: `GET /flow`, server-sent events, one a second, each a JSON array with, per
//! topic, how many messages were published (the end of its log or stream) and how many per
//! second, and per group its lag and how many messages it settled per second.
//!
//! A group's settled count is the topic's end minus the group's lag, so its throughput needs
//! both: where the engine does not count a topic (RabbitMQ), only the lag is shown. Rates
//! come from two samples a second apart taken by the one stream that sends them, so every
//! open page costs one round of queries a second (five groups: six on NATS).
//!
//! A stream ends when the console's stop token is cancelled ([`Console::stop_streams_on`]),
//! so that a graceful shutdown of the server does not wait for open pages.
//!
//! [`Console::stop_streams_on`]: super::Console::stop_streams_on

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::StreamExt as _;
use serde::Serialize;

use super::Console;

/// Time between two events of a stream.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);

/// One topic in an event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct TopicFlow {
    pub(crate) topic: String,
    /// Messages published to the topic so far, if the engine counts them.
    pub(crate) published: Option<u64>,
    /// Published per second since the last sample.
    pub(crate) per_second: Option<f64>,
    pub(crate) groups: Vec<GroupFlow>,
}

/// One group in an event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct GroupFlow {
    pub(crate) group: String,
    /// Messages not settled yet, if the engine can say.
    pub(crate) lag: Option<u64>,
    /// Messages settled per second since the last sample.
    pub(crate) per_second: Option<f64>,
}

/// What one sample read: per topic its end and its groups' lags.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    at: Instant,
    topics: Vec<(Option<u64>, Vec<Option<u64>>)>,
}

/// Reads every shown topic's end and its groups' lag (an engine error shows as unknown).
pub(crate) async fn sample(console: &Console) -> Sample {
    let mut topics = Vec::with_capacity(console.topics.len());
    for (topic, groups) in &console.topics {
        let end = console.bus.topic_end(topic).await.ok().flatten();
        let mut lags = Vec::with_capacity(groups.len());
        for group in groups {
            lags.push(console.bus.lag(topic, group).await.ok().flatten());
        }
        topics.push((end, lags));
    }
    Sample {
        at: Instant::now(),
        topics,
    }
}

/// The flow between `before` (if any) and `now`: counts from `now`, rates from the two.
pub(crate) fn flow(console: &Console, before: Option<&Sample>, now: &Sample) -> Vec<TopicFlow> {
    let seconds = before.map(|b| now.at.duration_since(b.at).as_secs_f64());
    let rate = |from: Option<u64>, to: Option<u64>| -> Option<f64> {
        let s = seconds.filter(|s| *s > 0.0)?;
        // A lag may grow by what a member holds in flight: a settled count never goes back.
        Some(to?.saturating_sub(from?) as f64 / s)
    };
    let settled = |end: Option<u64>, lag: Option<u64>| Some(end?.saturating_sub(lag?));
    console
        .topics
        .iter()
        .enumerate()
        .map(|(t, (topic, groups))| {
            let (end, lags) = &now.topics[t];
            let old = before.map(|b| &b.topics[t]);
            TopicFlow {
                topic: topic.clone(),
                published: *end,
                per_second: rate(old.and_then(|o| o.0), *end),
                groups: groups
                    .iter()
                    .enumerate()
                    .map(|(g, group)| GroupFlow {
                        group: group.clone(),
                        lag: lags[g],
                        per_second: rate(
                            old.and_then(|o| settled(o.0, o.1[g])),
                            settled(*end, lags[g]),
                        ),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// `GET /flow`.
pub(crate) async fn stream(State(console): State<Arc<Console>>) -> impl IntoResponse {
    let stop = console.stop.clone();
    let events = futures::stream::unfold(
        (console, None::<Sample>, true),
        |(console, before, first)| async move {
            if !first {
                tokio::time::sleep(PERIOD).await;
            }
            let now = sample(&console).await;
            let flow = flow(&console, before.as_ref(), &now);
            let data = serde_json::to_string(&flow).unwrap_or_else(|_| "[]".to_owned());
            Some((
                Ok::<_, Infallible>(Event::default().data(data)),
                (console, Some(now), false),
            ))
        },
    )
    .take_until(stop.cancelled_owned());
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::EmbeddedBus;

    #[test]
    fn rates_come_from_two_samples_and_a_settled_count_never_goes_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bus = EmbeddedBus::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let console = Console::new(&(&bus).into()).topic("orders", &["a", "b"]);
        let t0 = Instant::now();
        let before = Sample {
            at: t0,
            topics: vec![(Some(100), vec![Some(10), Some(0)])],
        };
        let now = Sample {
            at: t0 + Duration::from_secs(2),
            topics: vec![(Some(140), vec![Some(60), None])],
        };
        let first = flow(&console, None, &before);
        assert_eq!(first[0].published, Some(100));
        assert_eq!(first[0].per_second, None);
        let second = flow(&console, Some(&before), &now);
        assert_eq!(second[0].per_second, Some(20.0));
        // a: settled 90, then 80 (its lag grew by more than was published): 0 a second.
        assert_eq!(second[0].groups[0].per_second, Some(0.0));
        assert_eq!(second[0].groups[0].lag, Some(60));
        // b: its lag is unknown now: no rate.
        assert_eq!(second[0].groups[1].per_second, None);
    }
}
