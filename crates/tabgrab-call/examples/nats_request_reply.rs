//! A call over core NATS: a menu service in a queue group of two, and a client that asks it
//! for prices through the usual stack (deadline, retries, breaker), gets a typed refusal for
//! a pizza that is not on the menu, and a fast `Unavailable` from a service nobody runs.
//!
//! Run: `cargo run -p tabgrab-call --example nats_request_reply [-- nats://127.0.0.1:4222]`
//! (needs a nats-server; plain core NATS, no JetStream).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabgrab_call::nats::{self, NatsTransport};
use tabgrab_call::{CallContext, CallOptions, Client, HandlerError, Handlers};
use tabgrab_core::{Message, Rejection};

#[derive(Serialize, Deserialize, Message)]
#[message(type = "demo.menu.get-price.v1", query, response = u64)]
struct GetPrice {
    pizza: String,
}

fn menu(instance: &'static str) -> Handlers {
    Handlers::new().handle(move |q: GetPrice, _ctx: CallContext| async move {
        println!("  (answered by menu instance {instance})");
        match q.pizza.as_str() {
            "margherita" => Ok(900),
            "diavola" => Ok(1100),
            other => Err(HandlerError::from(Rejection::new(
                "menu.unknown",
                format!("{other} is not on the menu"),
            ))),
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let service = format!("menu-{}", std::process::id());
    // Two instances of the menu service: one queue group, NATS gives each call to one.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for instance in ["a", "b"] {
        let connection = async_nats::connect(&url).await?;
        let listener = nats::listen(&connection, &service).await?;
        let mut stopped = stopped.clone();
        servers.push(tokio::spawn(nats::serve(
            listener,
            menu(instance),
            async move {
                let _ = stopped.changed().await;
            },
        )));
    }

    let connection = async_nats::connect(&url).await?;
    let client = Client::builder(NatsTransport::new(connection.clone(), &service))
        .service_name("menu")
        .default_timeout(Duration::from_secs(2))
        .build();
    for pizza in ["margherita", "diavola", "margherita"] {
        let cents = client
            .call(&GetPrice {
                pizza: pizza.into(),
            })
            .await?;
        println!("{pizza}: {cents} cents");
    }
    match client
        .call(&GetPrice {
            pizza: "hawaii".into(),
        })
        .await
    {
        Err(e) => println!(
            "hawaii: refused, {:?} ({})",
            e.rejection().map(|r| r.code.as_str()),
            e.kind()
        ),
        Ok(cents) => println!("hawaii: {cents}?"),
    }

    // Nobody serves `kitchen`: NATS says so at once, no waiting for the deadline.
    let kitchen = Client::builder(NatsTransport::new(connection, "kitchen-nobody-runs"))
        .service_name("kitchen")
        .build();
    let started = std::time::Instant::now();
    let err = kitchen
        .call_with(
            &GetPrice {
                pizza: "margherita".into(),
            },
            CallOptions::timeout(Duration::from_secs(5)),
        )
        .await
        .err();
    println!(
        "kitchen: {} after {:?} (the deadline was 5 s)",
        err.map_or_else(|| "answered?".to_owned(), |e| e.kind().to_string()),
        started.elapsed()
    );

    let _ = stop.send(true);
    for server in servers {
        server.await??;
    }
    Ok(())
}
