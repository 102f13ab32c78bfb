//! The same handlers answer over HTTP and gRPC through the client stack; refusals come back
//! typed; the deadline travels to the server, which cancels the handler past it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tabgrab_call::grpc::GrpcTransport;
use tabgrab_call::http::HttpTransport;
use tabgrab_call::{CallOptions, Client};
use tabgrab_core::ErrorKind;

use common::{Add, Charge, Charged, Probe, Server, Slow, eventually, handlers};

fn clients(server: &Server) -> Vec<(&'static str, Client)> {
    vec![
        (
            "http",
            Client::builder(HttpTransport::new(server.url()))
                .service_name("test")
                .build(),
        ),
        (
            "grpc",
            Client::builder(GrpcTransport::new(server.url()).unwrap())
                .service_name("test")
                .build(),
        ),
    ]
}

#[tokio::test]
async fn answers_and_refusals_over_both_transports() {
    let probe = Probe::default();
    let server = Server::start(handlers(&probe)).await;
    for (name, client) in clients(&server) {
        assert_eq!(client.call(&Add { n: 41 }).await.unwrap(), 42, "{name}");
        assert_eq!(
            client.call(&Charge { amount: 5 }).await.unwrap(),
            Charged { amount: 5 },
            "{name}"
        );
        let refused = client.call(&Charge { amount: 0 }).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Remote, "{name}: {refused}");
        let rejection = refused.rejection().expect("the rejection travels back");
        assert_eq!(rejection.code, "test.zero", "{name}");
        assert_eq!(rejection.message, "nothing to charge", "{name}");
        assert!(refused.to_string().contains("test.charge.v1"), "{refused}");
        assert!(refused.to_string().contains("service test"), "{refused}");
    }
    // Three calls per transport reached the handlers, and no more (a refusal is not retried).
    assert_eq!(probe.calls(), 6);
    server.stop().await;
}

#[tokio::test]
async fn the_deadline_travels_and_the_server_cancels_the_handler() {
    for transport in ["http", "grpc"] {
        let probe = Probe::default();
        let server = Server::start(handlers(&probe)).await;
        let client = clients(&server)
            .into_iter()
            .find(|(n, _)| *n == transport)
            .unwrap()
            .1;
        let started = tokio::time::Instant::now();
        let err = client
            .call_with(
                &Slow { ms: 10_000 },
                CallOptions::timeout(Duration::from_millis(200)),
            )
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            err.kind(),
            ErrorKind::DeadlineExceeded,
            "{transport}: {err}"
        );
        assert!(
            took < Duration::from_millis(700),
            "{transport}: took {took:?}"
        );
        // The server saw the same budget and dropped the handler's future.
        assert!(
            eventually(Duration::from_secs(3), || probe.cancelled() == 1).await,
            "{transport}: handler not cancelled"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_stranger_can_post_plain_json() {
    let probe = Probe::default();
    let server = Server::start(handlers(&probe)).await;
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("{}/queries/test.add.v1", server.url()))
        .header("content-type", "application/json")
        .body("{\"n\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "2");
    server.stop().await;
}
