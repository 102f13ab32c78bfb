//! The principal an authenticated call proved travels on to the events its handler publishes,
//! where a consumer can require it; a principal a caller merely claims does not.
//!
//! The principal on bus messages on every engine (both content modes), consumers'
//! dead-letters and responders' rejections are the conformance scenario
//! `principals_travel_and_are_required`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::call::auth::BearerTokens;
use tabgrab::call::{CallContext, HandlerError, Handlers};
use tabgrab::event::{Context, DeadLetters, Filter, Publisher, Subscription};
use tower::ServiceExt as _;

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "principals.order.place.v1", command, response = ())]
struct PlaceOrder {
    order: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "principals.order.placed.v1", event)]
struct OrderPlaced {
    order: String,
}

/// Handlers whose command publishes `OrderPlaced` as its effect.
fn front_desk(publisher: Publisher) -> Handlers {
    Handlers::new().handle(move |cmd: PlaceOrder, ctx: CallContext| {
        let publisher = publisher.clone();
        async move {
            let event = OrderPlaced { order: cmd.order };
            publisher
                .publish_caused(&event, ctx.envelope())
                .await
                .map_err(HandlerError::from)?;
            Ok::<(), HandlerError>(())
        }
    })
}

/// A CloudEvents binary-mode command, claiming to come from `claimed`, with `token` if any.
fn command(order: &str, claimed: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::post(format!("/commands/{}", PlaceOrder::TYPE))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", uuid::Uuid::now_v7().to_string())
        .header("ce-source", "/test")
        .header("ce-type", PlaceOrder::TYPE)
        .header("ce-principal", claimed);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request
        .body(Body::from(format!("{{\"order\":\"{order}\"}}")))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_proven_principal_reaches_the_bus_and_a_claimed_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::from(EmbeddedBus::open(dir.path()).unwrap());
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let record = Arc::clone(&seen);
    let kitchen = Subscription::builder(&bus, "orders", "kitchen")
        .authorize(|principal, _ty| principal.name() == "web")
        .handle(move |e: OrderPlaced, ctx: Context| {
            let who = ctx.principal().unwrap().name().to_owned();
            record.lock().unwrap().push((e.order, who));
            futures::future::ready(Ok(()))
        })
        .start()
        .unwrap();
    kitchen.ready().await.unwrap();
    let publisher = Publisher::new(&bus, "orders", "/front-desk").unwrap();

    // A server that authenticates: the token proves `web`, whatever the caller claims.
    let authenticated = tabgrab::call::router(
        front_desk(publisher.clone()).authenticate(BearerTokens::new().token("t-web", "web")),
    );
    let answer = authenticated
        .clone()
        .oneshot(command("proven", "admin", Some("t-web")))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let refused = authenticated
        .oneshot(command("no-token", "web", None))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    // A server that authenticates nobody: the caller's claim is removed, not believed.
    let open = tabgrab::call::router(front_desk(publisher));
    let answer = open.oneshot(command("claimed", "web", None)).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);

    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen.lock().unwrap().len() == 1 && kitchen.stats().dead_lettered == 1) {
        assert!(
            Instant::now() < deadline,
            "the kitchen did not settle both events"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [("proven".to_owned(), "web".to_owned())]
    );
    let letters = DeadLetters::new(&bus, "orders").unwrap();
    let [kept] = <[_; 1]>::try_from(letters.list(&Filter::default()).await.unwrap()).unwrap();
    assert_eq!(kept.letter.reason, "unauthenticated");
    let original = tabgrab::Codec::default()
        .decode(&kept.letter.original().unwrap())
        .unwrap();
    assert_eq!(original.principal(), None, "the claim did not travel");
    assert_eq!(
        original.decode::<OrderPlaced>().unwrap().order,
        "claimed",
        "{original:?}"
    );
    kitchen.shutdown().await.unwrap();
}
