//! The small, stable core of tabgrab: the message model every kind of communication shares.
//!
//! Everything else in the workspace depends on this crate and it depends on nothing of the
//! workspace, so it changes rarely. It holds:
//!
//! - [`attribute`]: the rules every CloudEvents attribute follows on every transport;
//! - [`message`]: the `Message`, `Request`, `Command`, `Query` and `Event` traits,
//!   `#[derive(Message)]` and versioned type names;
//! - [`envelope`]: the one CloudEvents 1.0 envelope, its JSON structured mode and its binary
//!   (`ce-*` header) mode;
//! - [`codec`]: size limits and typed decoding of envelopes and registered message types;
//! - [`error`]: `Error { kind, .. }` with a `#[non_exhaustive]` [`ErrorKind`];
//! - [`handler`]: [`HandlerError`], what every handler (event, responder, reply, call) returns
//!   when it does not answer: transient, permanent or a typed refusal;
//! - [`principal`]: who sent a message or a call, how it travels and the one admission rule;
//! - [`rejection`]: a handler's typed refusal, carried back to the caller by every transport;
//! - [`secret`]: [`SecretUrl`], how every URL that may carry credentials is shown redacted;
//! - [`wire`]: the CloudEvents binary-mode binding every transport (HTTP, NATS, AMQP) uses;
//! - [`telemetry`]: the names of every metric the workspace records.

// `#[derive(Message)]` names this crate `::tabgrab_core` in its expansion: the unit tests
// derive messages too.
#[cfg(test)]
extern crate self as tabgrab_core;

pub mod attribute;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod handler;
pub mod message;
pub mod principal;
pub mod rejection;
pub mod secret;
pub mod telemetry;
pub mod wire;

pub use codec::{Codec, DEFAULT_MAX_SIZE, Registry};
pub use envelope::Envelope;
pub use error::{Error, ErrorKind};
pub use handler::HandlerError;
pub use message::{Command, Event, Message, MessageType, Query, Request};
pub use principal::Principal;
pub use rejection::Rejection;
pub use secret::SecretUrl;
