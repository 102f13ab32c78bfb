//! The request that flows through the client's policies to a transport, and the per-call
//! options.
//!
//! Every transport is a `tower::Service<Call, Response = Bytes, Error = CallError>`. A
//! [`Call`] is cheap to clone (the payload is shared), which is what lets a retry resend it.

use std::sync::Arc;
use std::time::Duration;

use tabgrab_core::Envelope;
use tokio::time::Instant;

/// The header (HTTP) and metadata key (gRPC) that carries an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The HTTP header that carries the caller's remaining budget in milliseconds.
///
/// Relative, like gRPC's `grpc-timeout`, and not an absolute instant: the two machines'
/// clocks need not agree.
pub const TIMEOUT_HEADER: &str = "tabgrab-timeout";

/// The CloudEvents extension attribute that carries the caller's remaining budget in
/// milliseconds in a structured-mode call over NATS (where the whole call is the event, with
/// no headers); the [`TIMEOUT_HEADER`] of the other transports.
pub const TIMEOUT_ATTRIBUTE: &str = "tabgrabtimeout";

/// The CloudEvents extension attribute that carries the idempotency key in a structured-mode
/// call over NATS; the [`IDEMPOTENCY_KEY`] header of the other transports.
pub const IDEMPOTENCY_ATTRIBUTE: &str = "idempotencykey";

/// Whether a request is a command or a query; selects the HTTP route and the retry rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// An intention; retried only with an idempotency key.
    Command,
    /// A request for information; idempotent, so always retryable.
    Query,
}

impl RequestKind {
    /// The HTTP path segment: `commands` or `queries`.
    pub fn path_segment(self) -> &'static str {
        match self {
            RequestKind::Command => "commands",
            RequestKind::Query => "queries",
        }
    }
}

/// One call on its way through the stack.
#[derive(Clone, Debug)]
pub struct Call {
    /// The service called, for error messages and metrics.
    pub service: Arc<str>,
    /// Command or query.
    pub kind: RequestKind,
    /// The message, with its CloudEvents attributes; `data` is the JSON payload. Shared, so
    /// that a retry's copy of a call costs a reference count.
    pub envelope: Arc<Envelope>,
    /// When the caller stops waiting; travels to the server as a relative timeout.
    pub deadline: Option<Instant>,
    /// The idempotency key of a command, which makes it safe to retry.
    pub idempotency_key: Option<String>,
}

impl Call {
    /// Whether sending this call twice is safe: queries always, commands with a key.
    pub fn is_idempotent(&self) -> bool {
        self.kind == RequestKind::Query || self.idempotency_key.is_some()
    }

    /// The time left before the deadline, `None` without one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Options of one call: its deadline and its idempotency key.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// The deadline; `None` uses the client's default timeout (and, inside a handler, the
    /// incoming call's deadline: see [`CallContext::options`](crate::CallContext::options)).
    pub deadline: Option<Instant>,
    /// An idempotency key: the recipient treats repeated commands with one key as one, so
    /// the client may retry the command.
    pub idempotency_key: Option<String>,
}

impl CallOptions {
    /// Options with a deadline `timeout` from now.
    pub fn timeout(timeout: Duration) -> CallOptions {
        CallOptions {
            deadline: Some(Instant::now() + timeout),
            idempotency_key: None,
        }
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> CallOptions {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the deadline.
    pub fn deadline(mut self, deadline: Instant) -> CallOptions {
        self.deadline = Some(deadline);
        self
    }
}
