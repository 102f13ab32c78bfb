//! README.md's third example: a call over HTTP with a deadline, and a circuit breaker that
//! opens when the recipient is down.
//!
//! Run: `cargo run -p tabgrab --example call_with_deadline`

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::breaker::BreakerConfig;
use tabgrab::call::{CallOptions, Client, Handlers, http::HttpTransport};
use tokio::sync::oneshot;

/// A question with an answer: what does a pizza cost, in cents? A calzone takes a while.
#[derive(Serialize, Deserialize, Message)]
#[message(type = "readme.menu.get-price.v1", query, response = u64)]
struct GetPrice {
    pizza: String,
}

fn price_of(pizza: &str) -> GetPrice {
    GetPrice {
        pizza: pizza.into(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let menu = Handlers::new().handle(|q: GetPrice, _ctx| async move {
        if q.pizza == "calzone" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok(900)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let router = tabgrab::call::router(menu);
    let server = tokio::spawn(tabgrab::call::serve(listener, router, async {
        let _ = stopped.await;
    }));
    let breaker = BreakerConfig {
        consecutive_failures: Some(3),
        ..BreakerConfig::default()
    };
    let client = Client::builder(HttpTransport::new(url))
        .service_name("menu")
        .breaker(breaker)
        .build();
    // The deadline travels to the server, which drops the work once it has passed.
    let in_time = || CallOptions::timeout(Duration::from_millis(200));
    let cents = client.call_with(&price_of("margherita"), in_time()).await?;
    println!("1. a margherita costs {cents} cents");
    let late = client.call_with(&price_of("calzone"), in_time()).await;
    println!(
        "2. a calzone: {}",
        late.err().ok_or("answered in time")?.kind()
    );

    // The menu goes down: calls fail, and once the breaker opens they fail at once.
    let _ = stop.send(());
    server.await??;
    let mut failed = None;
    for _ in 0..5 {
        failed = client.call(&price_of("margherita")).await.err();
    }
    println!(
        "3. the menu is down: {}",
        failed.ok_or("the menu answered")?.kind()
    );
    Ok(())
}
