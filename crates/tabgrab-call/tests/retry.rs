//! Against a server that always fails: attempts never exceed the cap, no attempt is sent after
//! the deadline, the budget bounds the total, and commands without an idempotency key are
//! sent once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabgrab_call::breaker::BreakerConfig;
use tabgrab_call::http::HttpTransport;
use tabgrab_call::retry::{RetryBudget, RetryConfig};
use tabgrab_call::{CallContext, CallOptions, Client, HandlerError, Handlers};
use tabgrab_core::{Error, ErrorKind, Message};
use tokio::time::Instant;

use common::Server;

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.fail.v1", query, response = ())]
struct Fail {
    id: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.fail-command.v1", command, response = ())]
struct FailCommand {
    id: u64,
}

/// Arrival times of attempts, per request id.
type Arrivals = Arc<Mutex<HashMap<u64, Vec<Instant>>>>;

async fn failing_server() -> (Server, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let (a1, a2) = (Arc::clone(&arrivals), Arc::clone(&arrivals));
    let handlers = Handlers::new()
        .handle(move |q: Fail, _ctx: CallContext| {
            a1.lock()
                .unwrap()
                .entry(q.id)
                .or_default()
                .push(Instant::now());
            async move {
                Err::<(), _>(HandlerError::from(Error::new(
                    ErrorKind::Storage,
                    "disk on fire",
                )))
            }
        })
        .handle(move |c: FailCommand, _ctx: CallContext| {
            a2.lock()
                .unwrap()
                .entry(c.id)
                .or_default()
                .push(Instant::now());
            async move {
                Err::<(), _>(HandlerError::from(Error::new(
                    ErrorKind::Storage,
                    "disk on fire",
                )))
            }
        });
    (Server::start(handlers).await, arrivals)
}

fn client(server: &Server, retry: RetryConfig, budget: Arc<RetryBudget>) -> Client {
    Client::builder(HttpTransport::new(server.url()))
        .service_name("failing")
        .retry(retry)
        .retry_budget(budget)
        // Keep the breaker out of the way: these tests are about retries.
        .breaker(BreakerConfig {
            consecutive_failures: None,
            minimum_calls: usize::MAX,
            ..BreakerConfig::default()
        })
        .build()
}

fn generous() -> Arc<RetryBudget> {
    Arc::new(RetryBudget::new(Duration::from_secs(10), 10_000, 1000.0))
}

#[tokio::test]
async fn attempts_per_request_never_exceed_the_cap() {
    let (server, arrivals) = failing_server().await;
    let retry = RetryConfig {
        max_attempts: 3,
        base: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };
    let client = client(&server, retry, generous());
    for id in 0..20 {
        let err = client.call(&Fail { id }).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Handler, "{err}");
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }
    let arrivals = arrivals.lock().unwrap().clone();
    for id in 0..20 {
        assert_eq!(arrivals[&id].len(), 3, "request {id}");
    }
    server.stop().await;
}

#[tokio::test]
async fn no_attempt_is_sent_after_the_deadline() {
    let (server, arrivals) = failing_server().await;
    let retry = RetryConfig {
        max_attempts: 50,
        base: Duration::from_millis(20),
        max_backoff: Duration::from_millis(80),
    };
    // Record when each attempt leaves the client, per call (the envelope id).
    let sent: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let record = Arc::clone(&sent);
    let transport = tower::ServiceBuilder::new()
        .map_request(move |call: tabgrab_call::Call| {
            record
                .lock()
                .unwrap()
                .entry(call.envelope.id.clone())
                .or_default()
                .push(Instant::now());
            call
        })
        .service(HttpTransport::new(server.url()));
    let client = Client::builder(transport)
        .service_name("failing")
        .retry(retry)
        .retry_budget(generous())
        .breaker(BreakerConfig {
            consecutive_failures: None,
            minimum_calls: usize::MAX,
            ..BreakerConfig::default()
        })
        .build();
    let mut deadlines = HashMap::new();
    for id in 0..10 {
        let deadline = Instant::now() + Duration::from_millis(150);
        deadlines.insert(id, deadline);
        let err = client
            .call_with(&Fail { id }, CallOptions::default().deadline(deadline))
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Handler | ErrorKind::DeadlineExceeded),
            "{err}"
        );
        assert!(
            Instant::now() < deadline + Duration::from_millis(100),
            "ended late"
        );
    }
    let arrivals = arrivals.lock().unwrap().clone();
    for id in deadlines.keys() {
        let n = arrivals[id].len();
        assert!((1..50).contains(&n), "request {id}: {n} attempts");
    }
    // Every attempt left before its call's deadline (calls were sequential, so the k-th
    // envelope seen is the k-th call).
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 10);
    let all_sends: usize = sent.values().map(Vec::len).sum();
    let all_arrivals: usize = arrivals.values().map(Vec::len).sum();
    assert!(all_arrivals <= all_sends);
    let mut by_start: Vec<&Vec<Instant>> = sent.values().collect();
    by_start.sort_by_key(|times| times[0]);
    for (id, times) in by_start.into_iter().enumerate() {
        let deadline = deadlines[&(id as u64)];
        for t in times {
            assert!(
                *t < deadline,
                "request {id}: an attempt was sent after the deadline"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_budget_bounds_total_attempts() {
    let (server, arrivals) = failing_server().await;
    let retry = RetryConfig {
        max_attempts: 5,
        base: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };
    // Retries up to 10 % of requests, no floor.
    let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 0.1));
    let client = client(&server, retry, Arc::clone(&budget));
    let requests = 200u64;
    for id in 0..requests {
        let _ = client.call(&Fail { id }).await.unwrap_err();
    }
    let total: usize = arrivals.lock().unwrap().values().map(Vec::len).sum();
    let retries = total as u64 - requests;
    // Without the budget there would be 4 retries per request (800).
    assert!(
        retries <= requests / 10 + 1,
        "{retries} retries for {requests} requests"
    );
    assert!(retries > 0, "the budget allows some retries");
    assert_eq!(retries, budget.granted());
    assert!(budget.refused() > 0);
    server.stop().await;
}

#[tokio::test]
async fn commands_are_retried_only_with_an_idempotency_key() {
    let (server, arrivals) = failing_server().await;
    let retry = RetryConfig {
        max_attempts: 3,
        base: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };
    let client = client(&server, retry, generous());
    let _ = client.call(&FailCommand { id: 1 }).await.unwrap_err();
    let _ = client
        .call_with(
            &FailCommand { id: 2 },
            CallOptions::default().idempotency_key("order-2"),
        )
        .await
        .unwrap_err();
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals[&1].len(), 1, "no key: sent once");
    assert_eq!(arrivals[&2].len(), 3, "with a key: retried up to the cap");
    server.stop().await;
}
