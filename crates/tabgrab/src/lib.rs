//! tabgrab: one toolkit for the three kinds of asynchronous communication between services.
//!
//! | kind | module | caller blocked | recipient must be up | response expected |
//! |---|---|---|---|---|
//! | non-blocking call (HTTP, gRPC) | [`call`] | no | yes | yes |
//! | request-response messaging | [`messaging`] | no | no | yes |
//! | events | [`event`] | no | no | no |
//!
//! All three share one message model (re-exported from `tabgrab-core`: `#[derive(Message)]`,
//! [`Request`], [`Event`], [`Envelope`], one [`HandlerError`]) and one set of reliability rules. The default backend,
//! [`backend::embedded`], needs no server: events live in a durable on-disk log
//! (`tabgrab-log`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), tabgrab::Error> {
//! use serde::{Deserialize, Serialize};
//! use tabgrab::backend::embedded::EmbeddedBus;
//! use tabgrab::event::{Publisher, Subscription};
//! use tabgrab::Message;
//!
//! #[derive(Serialize, Deserialize, Message)]
//! #[message(type = "pizzeria.order.accepted.v1", event)]
//! struct OrderAccepted { order_id: String }
//!
//! let bus = EmbeddedBus::open("./data")?;
//! let subscription = Subscription::builder(&bus, "orders", "kitchen")
//!     .handle(|event: OrderAccepted, _ctx| async move {
//!         println!("bake {}", event.order_id);
//!         Ok(())
//!     })
//!     .start()?;
//! Publisher::new(&bus, "orders", "/pizzeria/front-desk")?
//!     .publish(&OrderAccepted { order_id: "o-1".into() }, "o-1")
//!     .await?;
//! subscription.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # One shape for every kind
//!
//! - A message type is one derive: `#[derive(Message)]` with
//!   `#[message(type = "..", event | command | query, response = T)]`.
//! - A handler is `Fn(message, context) -> Future<Output = Result<T, HandlerError>>` for an
//!   event, a request over the bus, a reply and a call; `handle_with(state, ..)` (and
//!   `on_reply_with`) also hands it a clone of the service's state. Its context tells the
//!   message's `envelope()`, its `principal()`, the time `remaining()` before the sender's
//!   deadline, the `attempt()`, and on the bus `shutdown_requested()` (see
//!   [`event::handler`](crate::event::Context)).
//! - Asking and waiting gives `Result<Response, _>` whose error kind says how it ended: a
//!   refusal is `Remote` with the [`Rejection`], a missed deadline `DeadlineExceeded`
//!   (`Client::call` and `Requester::request` alike).
//! - `build()` makes a value (a call client, a transport); `start()` starts something that
//!   runs on the tokio runtime (a subscription, responder, requester, relay), which ends with
//!   `shutdown().await -> Result<(), Error>` (it stops taking work, finishes what it holds and
//!   says whether that went well; it takes `self`, or `&self` on a handle that clones, the
//!   requester). What is opened or connected (a bus, a correlation store, a log) ends with
//!   `close().await -> Result<(), Error>`.

pub mod backend;
#[cfg(feature = "console")]
pub mod console;
#[cfg(feature = "call")]
pub use tabgrab_call as call;
/// The circuit breaker (from `tabgrab-resilience`, the same one the call client uses): give
/// one to a consumer with [`event::SubscriptionBuilder::breaker`].
pub use tabgrab_resilience::breaker;
pub mod event;
pub mod inbox;
pub mod messaging;
pub mod outbox;
pub mod retry;
pub mod sql;
pub mod telemetry;
pub mod topic;

pub use inbox::Inbox;
pub use outbox::{Outbox, Relay};
pub use tabgrab_core::{
    Codec, Command, Envelope, Error, ErrorKind, Event, HandlerError, Message, MessageType,
    Principal, Query, Registry, Rejection, Request, SecretUrl, codec, envelope, message, principal,
    rejection, secret, wire,
};
pub use topic::Topic;
