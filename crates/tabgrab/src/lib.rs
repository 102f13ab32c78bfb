//! tabgrab: one toolkit for the three kinds of asynchronous communication between services.
//!
//! | kind | module | caller blocked | recipient must be up | response expected |
//! |---|---|---|---|---|
//! | non-blocking call (HTTP, gRPC) | [`call`] | no | yes | yes |
//! | request-response messaging | [`messaging`] | no | no | yes |
//! | events | [`event`] | no | no | no |
//!
//! All three share one message model (re-exported from `tabgrab-core`: [`Command`], [`Query`],
//! [`Event`], [`Envelope`]) and one set of reliability rules. The default backend,
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
