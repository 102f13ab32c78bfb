//! The pizzeria: tabgrab's reference system, a restaurant whose order flow is built in each
//! kind of asynchronous communication, to show and measure what each does to a system.
//!
//! In the **event-driven** style the front desk publishes `OrderAccepted`
//! and answers the customer at once; payment, inventory, the kitchen and delivery react to
//! the events they care about, and failures are events too, compensated by reactions
//! (a declined card cancels the order and puts its ingredients back; missing ingredients
//! cancel it and refund the payment). The **messaging** style ([`messaging`]) sends the
//! [`commands`] as request messages with persisted correlation; the **call** style
//! ([`calls`]) calls the services over HTTP and gRPC and answers when they have.
//!
//! | module | concept |
//! |---|---|
//! | [`menu`] | the pizzas, their prices and ingredients |
//! | [`order`] | what a customer asks for, and its validation |
//! | [`messages`] | the events, with versioned names, and their registry |
//! | [`commands`] | the commands of the call and messaging styles, with their answers |
//! | [`backoffice`] | payment, inventory, the kitchen and delivery answering those commands, durable in a store: the one back office of both styles |
//! | [`services`] | front desk, payment, inventory, kitchen, delivery: consumer groups; payment's and inventory's durable store (inbox, effects, outbox) |
//! | [`messaging`] | the request-response messaging style: front desk as requester, services as responders |
//! | [`calls`] | the same restaurant in the call style: handlers over HTTP and gRPC, a front desk that calls them |
//! | [`http`] | the front desk's HTTP API |
//! | [`run`] | the restaurant under simulated load, and its summary |
//! | [`orders`] | every order's fate, read back from the front desk's durable view |
//! | [`lab`] | what is measured, out of the restaurant's way: the comparison table of the three kinds (blocking, availability, response expected, capacity) and `pizzeria bench` ([`lab::bench`]) |
//! | [`namespace`] | topics prefixed per run, so runs share a broker without mixing, and are deleted after |
//! | [`cli`] | the `pizzeria` command line |
//!
//! ```no_run
//! # async fn demo() -> Result<(), pizzeria::Error> {
//! use pizzeria::run::{RunConfig, run};
//!
//! let summary = run(RunConfig::new(1_000, "./pizzeria-data")).await?;
//! println!("{}", summary.render());
//! # Ok(()) }
//! ```

pub mod backoffice;
pub mod calls;
pub mod cli;
pub mod commands;
pub mod console;
pub mod dead_letters;
pub mod error;
pub mod http;
pub mod lab;
pub mod menu;
pub mod messages;
pub mod messaging;
pub mod namespace;
pub mod order;
pub mod orders;
pub mod run;
pub mod service;
pub mod services;
pub mod telemetry;

pub use error::{Error, ErrorKind};
