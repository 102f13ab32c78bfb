//! Each remaining error kind, shown by the layer or side that produces it: `Rejected` from the
//! bulkhead (load shedding), `Timeout` from the attempt timeout (retried, then reported), and
//! `Protocol` for an answer that is not a response.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tabgrab_call::http::HttpTransport;
use tabgrab_call::retry::RetryConfig;
use tabgrab_call::{CallOptions, Client};
use tabgrab_core::ErrorKind;

use common::{Add, Probe, Server, Slow, eventually, handlers};

#[tokio::test]
async fn the_bulkhead_sheds_calls_beyond_its_cap_at_once() {
    let probe = Probe::default();
    let server = Server::start(handlers(&probe)).await;
    let client = Client::builder(HttpTransport::new(server.url()))
        .service_name("slow")
        .max_in_flight(2)
        .build();
    let (c1, c2) = (client.clone(), client.clone());
    let a = tokio::spawn(async move { c1.call(&Slow { ms: 500 }).await });
    let b = tokio::spawn(async move { c2.call(&Slow { ms: 500 }).await });
    assert!(eventually(Duration::from_secs(3), || probe.calls() == 2).await);
    let started = tokio::time::Instant::now();
    let shed = client.call(&Add { n: 1 }).await.unwrap_err();
    assert_eq!(shed.kind(), ErrorKind::Rejected, "{shed}");
    assert!(shed.to_string().contains("2 calls"), "{shed}");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "not shed at once"
    );
    assert_eq!(probe.calls(), 2, "the shed call never left");
    assert_eq!(a.await.unwrap().unwrap(), 500);
    assert_eq!(b.await.unwrap().unwrap(), 500);
    // Slots are given back: the next call passes.
    assert_eq!(client.call(&Add { n: 1 }).await.unwrap(), 2);
    server.stop().await;
}

#[tokio::test]
async fn a_slow_attempt_times_out_and_is_retried_within_the_deadline() {
    let probe = Probe::default();
    let server = Server::start(handlers(&probe)).await;
    let client = Client::builder(HttpTransport::new(server.url()))
        .service_name("slow")
        .attempt_timeout(Duration::from_millis(100))
        .retry(RetryConfig {
            max_attempts: 3,
            base: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        })
        .build();
    let err = client
        .call_with(
            &Slow { ms: 5_000 },
            CallOptions::timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("attempt timeout"), "{err}");
    assert_eq!(probe.calls(), 3, "three attempts");
    // Each attempt's server-side work was dropped when the client hung up.
    assert!(eventually(Duration::from_secs(3), || probe.cancelled() == 3).await);
    server.stop().await;
}

#[tokio::test]
async fn an_answer_that_is_not_a_response_is_a_protocol_error() {
    let app = axum::Router::new().route(
        "/queries/test.add.v1",
        axum::routing::post(|| async { "this is not JSON" }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tabgrab_call::serve(listener, app, async move {
        let _ = stopped.await;
    }));
    let client = Client::builder(HttpTransport::new(format!("http://{addr}")))
        .service_name("odd")
        .build();
    let err = client.call(&Add { n: 1 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("service odd"), "{err}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
