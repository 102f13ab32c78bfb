//! The gRPC transport: the generic envelope service `tabgrab.call.v1.Calls` in front of
//! [`Handlers`](crate::Handlers), and a tonic client transport for the client stack.
//!
//! Why one generic service for the toolkit: a handler is registered by message type at run
//! time, and a generic `Call(type, data, attributes)` method lets every handler be reached over
//! gRPC with no proto per message, while staying callable by any gRPC client (the proto is
//! `proto/tabgrab_call.proto`, shipped with the crate). Systems that want a typed contract for
//! strangers publish their own typed service beside it (the pizzeria's payment does), calling
//! the same handlers.
//!
//! The proto is compiled by protox (pure Rust) in `build.rs`: no `protoc` needed.
//!
//! The `attributes` map is decoded by [`Codec::decode_attributes`](tabgrab_core::Codec::decode_attributes)
//! under the attribute rules of every transport (names, values, their number), and the
//! attributes count with `data` against the size limit.
//!
//! Status codes: `INVALID_ARGUMENT` (a request that is not protobuf, a malformed, oversized
//! or non-JSON payload, a field the message type does not have, bad attributes, a value out
//! of the handler's bounds), `UNIMPLEMENTED` (unknown type), `ALREADY_EXISTS` (an idempotency
//! key used again with another payload), `DEADLINE_EXCEEDED`, `FAILED_PRECONDITION` (the
//! handler's typed refusal, its JSON in the status details), `RESOURCE_EXHAUSTED`
//! (overload), `UNAVAILABLE`, `INTERNAL` (handler failure).

mod client;
mod codec;
mod server;

pub use self::client::{GrpcTransport, GrpcTransportBuilder};
pub use self::codec::{ProtoCodec, ProtoDecoder};
pub use self::server::{CallsService, deadline_of, router, service_router, status_of};

/// The generated messages, server and client of `proto/tabgrab_call.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("tabgrab.call.v1");
}
