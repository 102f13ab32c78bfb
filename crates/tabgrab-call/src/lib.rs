//! Calls: commands and queries over HTTP and gRPC, non-blocking, behind one resilience stack.
//!
//! When a service needs an answer, it calls: the response is handled where the request was
//! sent, and nothing stands between the two services. A call here never holds an OS thread
//! while it waits (it is a future on tokio), and a failing or slow recipient cannot take the
//! caller down: every call has a deadline that travels to the server, retries are bounded by a
//! cap, the deadline and a budget, a circuit breaker stops calling a recipient that fails, and a
//! bulkhead sheds calls beyond a cap.
//!
//! - The server side: [`Handlers`] holds typed handlers keyed by message type; [`router`]
//!   serves them over HTTP ([`http::router`]) and gRPC ([`grpc::router`]) on one port with
//!   [`serve`].
//!   The same handlers answer over core NATS ([`nats::serve`]: a queue group per service).
//! - The client side: [`Client`] runs the resilience policies of `tabgrab-resilience` over a
//!   transport ([`http::HttpTransport`], [`grpc::GrpcTransport`], [`nats::NatsTransport`]);
//!   see [`client`] for their order.
//! - Errors: [`CallError`], whose [`kind`](CallError::kind) says which layer or side stopped the
//!   call, and whose [`rejection`](CallError::rejection) is the handler's typed refusal.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use serde::{Deserialize, Serialize};
//! use tabgrab_call::{CallContext, Client, HandlerError, Handlers, http::HttpTransport};
//! use tabgrab_core::{Message, Rejection};
//!
//! #[derive(Serialize, Deserialize, Message)]
//! #[message(type = "demo.price.v1", query, response = u64)]
//! struct Price { pizza: String }
//!
//! let handlers = Handlers::new().handle(|q: Price, _ctx: CallContext| async move {
//!     match q.pizza.as_str() {
//!         "margherita" => Ok(900),
//!         _ => Err(HandlerError::from(Rejection::new("menu.unknown", "not on the menu"))),
//!     }
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(tabgrab_call::serve(listener, tabgrab_call::router(handlers), std::future::pending()));
//!
//! let client = Client::builder(HttpTransport::new(format!("http://{addr}")))
//!     .service_name("menu")
//!     .build();
//! let cents = client.call(&Price { pizza: "margherita".into() }).await?;
//! assert_eq!(cents, 900);
//! # Ok(()) }
//! ```

pub mod auth;
pub mod breaker;
pub mod call;
pub mod client;
mod deadline;
pub mod error;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod handler;
#[cfg(feature = "http")]
pub mod http;
pub mod idempotency;
mod limit;
#[cfg(feature = "nats")]
pub mod nats;
pub mod retry;
pub mod server;
pub mod tls;

pub use auth::{Authenticator, BearerTokens, ClientCertificates, Principal};
pub use call::{Call, CallOptions, IDEMPOTENCY_KEY, RequestKind, TIMEOUT_HEADER};
pub use client::{Client, ClientBuilder};
pub use error::CallError;
pub use handler::{CallContext, HandlerError, Handlers, ServeError};
pub use idempotency::IdempotencyConfig;
pub use server::{ServeConfig, serve, serve_tls, serve_with};
pub use tls::{ClientTls, PeerCertificate, ServerTls};

/// Every transport's routes for `handlers`, on one router: HTTP (`/commands/…`, `/queries/…`)
/// and gRPC (`/tabgrab.call.v1.Calls/Call`), per the enabled features.
pub fn router(handlers: Handlers) -> axum::Router {
    let router = axum::Router::new();
    #[cfg(feature = "http")]
    let router = router.merge(http::router(handlers.clone()));
    #[cfg(feature = "grpc")]
    let router = router.merge(grpc::router(handlers.clone()));
    let _ = handlers;
    router
}
