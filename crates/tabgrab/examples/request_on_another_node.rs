//! README.md's second example: send a request over the bus, and handle its reply on another
//! node of the same group (the first one stopped before the answer came).
//!
//! Run: `cargo run -p tabgrab --example request_on_another_node`

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::messaging::{Outcome, Requester, Responder, SendOptions, SqliteStore};
use tokio::sync::mpsc;

/// A question with an answer: what does a pizza cost, in cents?
#[derive(Serialize, Deserialize, Message)]
#[message(type = "readme.menu.get-price.v1", query, response = u64)]
struct GetPrice {
    pizza: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let bus = EmbeddedBus::open(dir.path().join("bus"))?;
    // The group's request state lives in a store every node of it shares.
    let store = SqliteStore::open(dir.path().join("requests.db")).await?;

    // Node 1 sends the request, then stops: the menu is not running yet.
    let node1 = Requester::builder(&bus, "front-desk")
        .store(store.clone())
        .route::<GetPrice>("menu")
        .start()?;
    let ask = GetPrice {
        pizza: "tartufo".into(),
    };
    node1
        .send(
            &ask,
            SendOptions::default().timeout(Duration::from_secs(30)),
        )
        .await?;
    node1.shutdown().await?;

    // The menu starts and answers the request that waited for it on the bus.
    let menu = Responder::builder(&bus, "menu", "menu")
        .handle(
            |q: GetPrice, _ctx| async move { Ok(if q.pizza == "tartufo" { 1800 } else { 900 }) },
        )
        .start()?;

    // Node 2 of the group gets the reply and handles it.
    let (replied, mut replies) = mpsc::unbounded_channel();
    let node2 = Requester::builder(&bus, "front-desk")
        .store(store)
        .on_reply_with(
            "menu",
            replied,
            |replied, outcome: Outcome<GetPrice>, _ctx| async move {
                replied.send(outcome)?;
                Ok(())
            },
        )
        .start()?;
    println!(
        "node 2 handles the reply: {:?}",
        replies.recv().await.ok_or("no reply")?
    );
    node2.shutdown().await?;
    menu.shutdown().await?;
    bus.close().await?;
    Ok(())
}
