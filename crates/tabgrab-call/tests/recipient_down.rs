//! A recipient that is down: calls fail fast with `Unavailable`, then `CircuitOpen` once the
//! breaker opens, and nothing reaches the recipient while it is open; when it is back,
//! half-open probes close the breaker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tabgrab_call::breaker::{BreakerConfig, CircuitState};
use tabgrab_call::grpc::GrpcTransport;
use tabgrab_call::http::HttpTransport;
use tabgrab_call::retry::RetryConfig;
use tabgrab_call::{Call, CallError, Client};
use tabgrab_core::ErrorKind;
use tower::Service;

use common::{Add, Probe, Server, handlers};

async fn scenario<T>(name: &str, make: impl Fn(String) -> T)
where
    T: Service<Call, Response = bytes::Bytes, Error = CallError> + Clone + Send + Sync + 'static,
    T::Future: Send + 'static,
{
    // A port that nobody listens on (yet).
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let open_for = Duration::from_millis(300);
    let client = Client::builder(make(format!("http://{addr}")))
        .service_name("adder")
        .retry(RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        })
        .breaker(BreakerConfig {
            window: 10,
            minimum_calls: 5,
            failure_rate: 0.5,
            consecutive_failures: Some(3),
            open_for,
            probes: 2,
        })
        .build();
    let mut changes = client.breaker().subscribe();

    // Down: refused connections, reported fast as Unavailable.
    for i in 0..3 {
        let started = tokio::time::Instant::now();
        let err = client.call(&Add { n: i }).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{name}: {err}");
        assert!(err.to_string().contains("adder"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{name}: not fast"
        );
    }
    assert_eq!(client.breaker().state(), CircuitState::Open, "{name}");
    assert!(changes.has_changed().unwrap());
    assert_eq!(*changes.borrow_and_update(), CircuitState::Open);

    // Back up, but the breaker is open: nothing reaches it.
    let probe = Probe::default();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let server = Server::on(listener, handlers(&probe));
    for i in 0..5 {
        let err = client.call(&Add { n: i }).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CircuitOpen, "{name}: {err}");
        assert!(err.to_string().contains("adder"), "{err}");
    }
    assert_eq!(
        probe.calls(),
        0,
        "{name}: a call reached the recipient while open"
    );

    // After the open duration, two probes succeed and close it.
    tokio::time::sleep(open_for).await;
    assert_eq!(client.call(&Add { n: 1 }).await.unwrap(), 2);
    assert_eq!(client.breaker().state(), CircuitState::HalfOpen, "{name}");
    assert_eq!(client.call(&Add { n: 2 }).await.unwrap(), 3);
    assert_eq!(client.breaker().state(), CircuitState::Closed, "{name}");
    assert_eq!(*changes.borrow_and_update(), CircuitState::Closed);
    assert_eq!(probe.calls(), 2);
    server.stop().await;
}

#[tokio::test]
async fn http_recipient_down_then_back() {
    scenario("http", HttpTransport::new).await;
}

#[tokio::test]
async fn grpc_recipient_down_then_back() {
    scenario("grpc", |url| GrpcTransport::new(url).unwrap()).await;
}
