//! Errors of the message model, shaped as `Error { kind, .. }` like async-nats.
//!
//! Callers match on [`ErrorKind`] (it is `#[non_exhaustive]`, so new kinds are not breaking);
//! the `Display` text names the message type involved and what to do about it. Whether an error
//! is worth retrying is a property of its kind ([`ErrorKind::is_retryable`]): bad input never is.

use std::fmt;

use crate::Rejection;

/// What went wrong, as a stable, matchable value.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The bytes are not a valid envelope (not JSON, wrong attribute types, bad header value).
    Malformed,
    /// The envelope is larger than the configured maximum size.
    TooLarge,
    /// The message type is not registered with the codec.
    UnknownType,
    /// The message type is known, but in another major version (or the CloudEvents
    /// `specversion` is not 1.0).
    UnsupportedVersion,
    /// A required CloudEvents attribute is absent.
    MissingAttribute,
    /// The envelope holds another message type than the one asked for.
    TypeMismatch,
    /// The payload does not decode as the message type it claims to be.
    InvalidPayload,
    /// A handler returned an error.
    Handler,
    /// The storage under a backend failed (disk, database).
    Storage,
    /// The component was shut down.
    Closed,
    /// A single attempt took longer than its timeout (the overall deadline may still allow
    /// another attempt).
    Timeout,
    /// The request's deadline passed: the caller's whole budget is spent, nobody should work
    /// on it any more.
    DeadlineExceeded,
    /// The circuit breaker in front of the recipient is open: the call was not sent.
    CircuitOpen,
    /// The recipient or a local limit refused the request for overload (bulkhead full, load
    /// shed, HTTP 429/503 with overload, gRPC `ResourceExhausted`).
    Rejected,
    /// The recipient could not be reached (connection refused, reset, DNS).
    Unavailable,
    /// The recipient's handler refused the request with a typed [`Rejection`],
    /// carried back across the wire.
    Remote,
    /// The recipient answered something that is not a valid response (wrong status, bad body).
    Protocol,
    /// The request reuses an identity with other content than at its first use: an
    /// idempotency key sent again with a different payload. Never retryable: the caller
    /// must send the same content again, or use a new key.
    Conflict,
    /// The payload's media type is not one the recipient reads (tabgrab's handlers read
    /// JSON).
    UnsupportedMediaType,
    /// Stored data was damaged and cannot be read back (a log range that fails its
    /// checksums): the range is dead-lettered explicitly, never skipped in silence.
    DataLoss,
    /// What was asked for does not exist (a dead letter redriven or purged already, an
    /// unknown id).
    NotFound,
    /// The caller did not prove who it is (no credentials, or wrong ones): HTTP 401, gRPC
    /// `UNAUTHENTICATED`. Never retryable: the same credentials fail the same way.
    Unauthenticated,
    /// The caller is known and may not do this (an authorization rule refused the message
    /// type): HTTP 403, gRPC `PERMISSION_DENIED`. Never retryable.
    PermissionDenied,
}

impl ErrorKind {
    /// Whether retrying the same operation may succeed. Bad input is never retryable.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Handler
                | ErrorKind::Storage
                | ErrorKind::Timeout
                | ErrorKind::Rejected
                | ErrorKind::Unavailable
        )
    }

    /// Whether the message itself is wrong (it does not decode, is too large, names a type or
    /// version nobody reads, lacks an attribute, or breaks the handler's bounds): handling or
    /// publishing it again cannot succeed, so it is dead-lettered at once.
    pub fn is_bad_input(self) -> bool {
        matches!(
            self,
            ErrorKind::Malformed
                | ErrorKind::TooLarge
                | ErrorKind::UnknownType
                | ErrorKind::UnsupportedVersion
                | ErrorKind::MissingAttribute
                | ErrorKind::TypeMismatch
                | ErrorKind::InvalidPayload
        )
    }

    /// A short stable name, used in dead letters and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Malformed => "malformed",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::UnknownType => "unknown_type",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::MissingAttribute => "missing_attribute",
            ErrorKind::TypeMismatch => "type_mismatch",
            ErrorKind::InvalidPayload => "invalid_payload",
            ErrorKind::Handler => "handler",
            ErrorKind::Storage => "storage",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Remote => "remote",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Conflict => "conflict",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::DataLoss => "data_loss",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the message model: a kind, a human message, and an optional source.
#[derive(Debug)]
pub struct Error {
    /// The matchable kind.
    kind: ErrorKind,
    /// What happened, naming the message type where one is known, and what to do.
    message: String,
    /// The underlying error, kept for `source()` chains.
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// The handler's typed refusal, for [`ErrorKind::Remote`].
    rejection: Option<Box<Rejection>>,
}

impl Error {
    /// A new error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
            rejection: None,
        }
    }

    /// An [`ErrorKind::Remote`] error: the handler of a `ty` request refused it, and its typed
    /// refusal is kept whole ([`Error::rejection`]). What a requester gets for a rejected
    /// request, as a caller gets `CallError` of the same kind for a rejected call.
    pub fn rejected(ty: &str, rejection: Rejection) -> Error {
        let mut error = Error::new(
            ErrorKind::Remote,
            format!("the handler of {ty} refused it: {rejection}"),
        );
        error.rejection = Some(Box::new(rejection));
        error
    }

    /// The handler's typed refusal, when the kind is [`ErrorKind::Remote`].
    pub fn rejection(&self) -> Option<&Rejection> {
        self.rejection.as_deref()
    }

    /// The refusal, taken out of the error.
    pub fn into_rejection(self) -> Option<Rejection> {
        self.rejection.map(|r| *r)
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }

    /// The matchable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human message, without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
