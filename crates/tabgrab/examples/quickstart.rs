//! The three kinds in one program, on the embedded bus (no server): a call over HTTP, a
//! request answered over the bus, and an event. README.md shows this file.
//!
//! Run: `cargo run -p tabgrab --example quickstart`

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::call::{CallContext, Client, Handlers, http::HttpTransport};
use tabgrab::event::{Publisher, Subscription};
use tabgrab::messaging::{Outcome, Requester, Responder, SendOptions, SqliteStore};
use tokio::sync::mpsc;

/// A question with an answer: what does a pizza cost?
#[derive(Serialize, Deserialize, Message)]
#[message(type = "quickstart.menu.get-price.v1", query, response = u64)]
struct GetPrice {
    pizza: String,
}

/// A fact nobody answers: an order was accepted.
#[derive(Serialize, Deserialize, Message)]
#[message(type = "quickstart.order.accepted.v1", event)]
struct OrderAccepted {
    order_id: String,
}

/// The menu's prices, in cents.
fn price(pizza: &str) -> u64 {
    if pizza == "tartufo" { 1800 } else { 900 }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;

    // 1. A non-blocking call: the menu must be up, the caller awaits its answer.
    let menu =
        Handlers::new().handle(|q: GetPrice, _ctx: CallContext| async move { Ok(price(&q.pizza)) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = tabgrab::call::router(menu);
    tokio::spawn(tabgrab::call::serve(
        listener,
        router,
        std::future::pending(),
    ));
    let client = Client::builder(HttpTransport::new(url))
        .service_name("menu")
        .build();
    let cents = client
        .call(&GetPrice {
            pizza: "tartufo".into(),
        })
        .await?;
    println!("1. call: a tartufo costs {cents} cents");

    // 2. Request-response messaging: the request waits on the bus until the menu runs, and
    //    the reply finds the requester through its correlation store (it survives restarts).
    let bus = EmbeddedBus::open(dir.path().join("bus"))?;
    let responder = Responder::builder(&bus, "menu", "menu")
        .handle(|q: GetPrice, _ctx| async move { Ok(price(&q.pizza)) })
        .start()?;
    let (replied, mut replies) = mpsc::unbounded_channel();
    let store = SqliteStore::open(dir.path().join("correlation.db")).await?;
    let requester = Requester::builder(&bus, "front-desk")
        .store(store)
        .on_reply("menu", move |outcome: Outcome<GetPrice>, _ctx| {
            let replied = replied.clone();
            async move {
                let _ = replied.send(outcome);
                Ok(())
            }
        })
        .start()?;
    let options = SendOptions::default().timeout(Duration::from_secs(5));
    requester
        .send(
            &GetPrice {
                pizza: "margherita".into(),
            },
            options,
        )
        .await?;
    println!("2. messaging: the reply is {:?}", replies.recv().await);

    // 3. An event: published once it is durable; every consumer group gets it.
    let (baked, mut bakes) = mpsc::unbounded_channel();
    let kitchen = Subscription::builder(&bus, "orders", "kitchen")
        .handle(move |event: OrderAccepted, _ctx| {
            let baked = baked.clone();
            async move {
                let _ = baked.send(event.order_id);
                Ok(())
            }
        })
        .start()?;
    let publisher = Publisher::new(&bus, "orders", "/quickstart/front-desk")?;
    let order = OrderAccepted {
        order_id: "o-1".into(),
    };
    publisher.publish(&order, "o-1").await?;
    println!("3. event: the kitchen bakes {:?}", bakes.recv().await);

    kitchen.shutdown().await?;
    requester.shutdown().await?;
    responder.shutdown().await?;
    bus.close().await?;
    Ok(())
}
