//! The public tower layers, composed by hand with `ServiceBuilder` over a real transport, keep
//! the rules the fused `Client` runs: a stack of another shape (another transport, extra
//! layers) gets the same bulkhead, deadline, retry-with-budget and breaker behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tabgrab_call::breaker::{BreakerConfig, BreakerHandle, BreakerLayer, CircuitState};
use tabgrab_call::deadline::DeadlineLayer;
use tabgrab_call::http::HttpTransport;
use tabgrab_call::limit::LimitLayer;
use tabgrab_call::retry::{RetryBudget, RetryConfig, RetryPolicy};
use tabgrab_call::{Call, CallError, RequestKind};
use tabgrab_core::{Envelope, ErrorKind, Message};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt as _};

use common::{Add, Probe, Server, handlers};

type Stack = BoxCloneSyncService<Call, Bytes, CallError>;

/// bulkhead → deadline → retry (with budget) → breaker → HTTP transport, as the client's
/// module doc lists them.
fn stack(base: String, breaker: &BreakerHandle, max_attempts: u32) -> Stack {
    let policy = RetryPolicy::new(
        RetryConfig {
            max_attempts,
            base: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        Arc::new(RetryBudget::new(Duration::from_secs(10), 100, 1.0)),
    );
    let service = ServiceBuilder::new()
        .layer(LimitLayer::new(16))
        .layer(DeadlineLayer::new(Duration::from_secs(2)))
        .layer(tower::retry::RetryLayer::new(policy))
        .layer(BreakerLayer::new(breaker.clone()))
        .service(HttpTransport::new(base));
    BoxCloneSyncService::new(service)
}

fn add(n: u64) -> Call {
    Call {
        service: Arc::from("adder"),
        kind: RequestKind::Query,
        envelope: Arc::new(Envelope::new("/test/layers", &Add { n }).unwrap()),
        deadline: None,
        idempotency_key: None,
    }
}

#[tokio::test]
async fn a_hand_built_stack_answers_calls() {
    let probe = Probe::default();
    let server = Server::start(handlers(&probe)).await;
    let breaker = BreakerHandle::new(BreakerConfig::default());
    let stack = stack(server.url(), &breaker, 3);
    let bytes = stack.clone().oneshot(add(41)).await.unwrap();
    let answer: u64 = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer, 42);
    assert_eq!(probe.calls(), 1);
    assert_eq!(breaker.state(), CircuitState::Closed);
    server.stop().await;
}

#[tokio::test]
async fn a_hand_built_stack_retries_then_opens_its_breaker_on_a_recipient_down() {
    // A port with nobody listening: every attempt fails with Unavailable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let breaker = BreakerHandle::new(BreakerConfig {
        window: 10,
        minimum_calls: 100,
        failure_rate: 1.0,
        consecutive_failures: Some(4),
        open_for: Duration::from_secs(60),
        probes: 1,
    });
    let stack = stack(base, &breaker, 2);

    // Two calls of two attempts each: four failures in a row open the breaker.
    for _ in 0..2 {
        let err = stack.clone().oneshot(add(1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.to_string().contains(Add::TYPE), "{err}");
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    let err = stack.clone().oneshot(add(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen, "{err}");
}
