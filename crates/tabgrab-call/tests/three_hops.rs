//! A deadline over three hops (front desk → payment → a slow fraud check): the edge gets
//! `DeadlineExceeded` within its deadline plus a small slack, and the leaf's work is cancelled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabgrab_call::grpc::GrpcTransport;
use tabgrab_call::http::HttpTransport;
use tabgrab_call::{CallContext, CallOptions, Client, HandlerError, Handlers};
use tabgrab_core::{ErrorKind, Message};

use common::{Server, eventually};

#[derive(Serialize, Deserialize, Message)]
#[message(type = "test.place-order.v1", query, response = String)]
struct PlaceOrder;

#[derive(Serialize, Deserialize, Message)]
#[message(type = "test.pay.v1", query, response = String)]
struct Pay;

#[derive(Serialize, Deserialize, Message)]
#[message(type = "test.fraud-check.v1", query, response = String)]
struct FraudCheck;

struct Dropped(Arc<AtomicU64>, bool);
impl Drop for Dropped {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn the_edge_deadline_stops_all_three_hops() {
    // Leaf: the fraud check takes 30 s; we record if its work is dropped.
    let cancelled = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let (c, s) = (Arc::clone(&cancelled), Arc::clone(&started));
    let fraud = Server::start(
        Handlers::new().handle(move |_: FraudCheck, _ctx: CallContext| {
            let (c, s) = (Arc::clone(&c), Arc::clone(&s));
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                let mut guard = Dropped(c, false);
                tokio::time::sleep(Duration::from_secs(30)).await;
                guard.1 = true;
                Ok::<_, HandlerError>("clean".to_owned())
            }
        }),
    )
    .await;

    // Middle: payment calls the fraud check over gRPC with the incoming deadline.
    let to_fraud = Client::builder(GrpcTransport::new(fraud.url()).unwrap())
        .service_name("fraud")
        .default_timeout(Duration::from_secs(60))
        .build();
    let payment = Server::start(Handlers::new().handle(move |_: Pay, ctx: CallContext| {
        let to_fraud = to_fraud.clone();
        async move {
            assert!(ctx.deadline().is_some(), "payment got no deadline");
            let verdict = to_fraud.call_with(&FraudCheck, ctx.options()).await?;
            Ok::<_, HandlerError>(verdict)
        }
    }))
    .await;

    // Front desk: calls payment over HTTP with the incoming deadline.
    let to_payment = Client::builder(HttpTransport::new(payment.url()))
        .service_name("payment")
        .default_timeout(Duration::from_secs(60))
        .build();
    let front = Server::start(
        Handlers::new().handle(move |_: PlaceOrder, ctx: CallContext| {
            let to_payment = to_payment.clone();
            async move { Ok::<_, HandlerError>(to_payment.call_with(&Pay, ctx.options()).await?) }
        }),
    )
    .await;

    let edge = Client::builder(HttpTransport::new(front.url()))
        .service_name("front-desk")
        .build();
    let deadline = Duration::from_millis(400);
    let t0 = tokio::time::Instant::now();
    let err = edge
        .call_with(&PlaceOrder, CallOptions::timeout(deadline))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(
        took < deadline + Duration::from_millis(150),
        "took {took:?}"
    );
    assert_eq!(started.load(Ordering::SeqCst), 1, "the leaf was reached");
    assert!(
        eventually(Duration::from_secs(3), || cancelled.load(Ordering::SeqCst)
            == 1)
        .await,
        "the leaf's work was not cancelled"
    );
    front.stop().await;
    payment.stop().await;
    fraud.stop().await;
}
