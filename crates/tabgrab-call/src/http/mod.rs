//! The HTTP transport: an axum router in front of [`Handlers`](crate::Handlers), and a hyper
//! client transport for the client stack.
//!
//! Routing: `POST /commands/{type}` and `POST /queries/{type}`, the type being the message's
//! versioned name (`/commands/pizzeria.payment.charge-card.v1`). Why the type in the path and
//! not one endpoint: logs, proxies and metrics see what was called, a query can be told from a
//! command without reading the body, and `curl` needs nothing else. The body is the message's
//! JSON; CloudEvents attributes travel in binary mode (`ce-*` headers). A plain JSON POST
//! without `ce-*` headers is accepted too (the server makes the envelope), so any HTTP client
//! can call.
//!
//! Content types: `application/json` or any `+json` type (the message's JSON; binary mode or
//! plain), `application/cloudevents+json` (structured mode: the body is the whole CloudEvent,
//! its `data` the message), or none (taken as JSON, as an envelope without
//! `datacontenttype` is). Anything else, batches included, is refused with 415 before the
//! body is read. The JSON must be the message and nothing more: a field the message type does
//! not have is refused (400), on every transport alike (see [`Handlers`](crate::Handlers)).
//! Attribute headers follow the rules of [`tabgrab_core::attribute`], as on every transport.
//!
//! The caller's remaining budget travels in the `tabgrab-timeout` header (milliseconds,
//! relative, like `grpc-timeout`); an idempotency key in `idempotency-key`.
//!
//! Answers: `200` with the response's JSON; otherwise a JSON body
//! `{"kind": "...", "error": "...", "rejection": {...}}` with the status:
//!
//! | kind | status |
//! |---|---|
//! | `invalid_payload`, `malformed`, `missing_attribute`, `type_mismatch` (bad JSON, an unknown field, a value out of the domain's bounds, a bad `ce-*` header or idempotency key) | 400 |
//! | `unauthenticated` (no credentials or wrong ones, when the handlers authenticate) | 401 |
//! | `permission_denied` (an authorization rule refused the type) | 403 |
//! | `unknown_type` | 404 |
//! | `conflict` (an idempotency key used again with another payload) | 409 |
//! | `too_large` (the body, or the attributes and body together) | 413 |
//! | `unsupported_media_type` | 415 |
//! | `remote` (the handler's rejection, in `rejection`) | 422 |
//! | `rejected` (overload) | 429 |
//! | `handler` | 500 |
//! | `unavailable` (a dependency of the handler) | 503 |
//! | `deadline_exceeded` | 504 |

mod client;
mod server;

pub use self::client::{HttpTransport, HttpTransportBuilder};
pub use self::server::router;

pub use crate::error::ErrorBody;
pub(crate) use crate::error::kind_from_str;
use tabgrab_core::ErrorKind;

/// The status of an error kind.
pub(crate) fn status_of(kind: ErrorKind) -> http::StatusCode {
    use http::StatusCode as S;
    match kind {
        ErrorKind::InvalidPayload
        | ErrorKind::Malformed
        | ErrorKind::MissingAttribute
        | ErrorKind::UnsupportedVersion
        | ErrorKind::TypeMismatch => S::BAD_REQUEST,
        ErrorKind::UnknownType => S::NOT_FOUND,
        ErrorKind::Unauthenticated => S::UNAUTHORIZED,
        ErrorKind::PermissionDenied => S::FORBIDDEN,
        ErrorKind::TooLarge => S::PAYLOAD_TOO_LARGE,
        ErrorKind::Remote => S::UNPROCESSABLE_ENTITY,
        ErrorKind::Conflict => S::CONFLICT,
        ErrorKind::UnsupportedMediaType => S::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Rejected | ErrorKind::CircuitOpen => S::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => S::SERVICE_UNAVAILABLE,
        ErrorKind::DeadlineExceeded | ErrorKind::Timeout => S::GATEWAY_TIMEOUT,
        _ => S::INTERNAL_SERVER_ERROR,
    }
}
