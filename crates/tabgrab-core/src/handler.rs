//! What every handler returns when it does not answer: one [`HandlerError`] for event
//! handlers, responders, reply handlers and call handlers.
//!
//! A handler that fails says which of three things happened, and each kind of handler acts on
//! it by the same rule:
//!
//! | the handler says | event or reply handler | responder (request over a bus) | call handler |
//! |---|---|---|---|
//! | [`transient`](HandlerError::transient): a retry may succeed | retried with backoff, then dead-lettered (`max_deliveries`) | the request is redelivered and handled again | `handler` (500, `INTERNAL`), or the kind of a tabgrab error it carries |
//! | [`permanent`](HandlerError::permanent): no retry can help | dead-lettered at once | dead-lettered at once | the kind it carries, else `handler` |
//! | [`rejected`](HandlerError::rejected): a typed refusal ([`Rejection`]) | dead-lettered at once (reason `rejected`) | answered with the rejection | `remote` (422, `FAILED_PRECONDITION`) with the rejection |
//!
//! `?` converts any error: a [`Rejection`] becomes a refusal, a tabgrab [`Error`] of a
//! bad-input kind (`malformed`, `invalid_payload`, …) a permanent failure, and anything else
//! (an I/O error, a nested call's `CallError`, a tabgrab error of any other kind) a transient
//! one, so an outage is retried and never dead-lettered as if the message were wrong.

use std::error::Error as StdError;
use std::fmt;

use crate::{Error, ErrorKind, Rejection};

/// Any error a handler can carry.
type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A handler's failure: transient, permanent, or a typed refusal; see the
/// [module documentation](self) for what each kind of handler does with it.
pub struct HandlerError {
    failure: Failure,
}

enum Failure {
    /// A retry may succeed.
    Transient(BoxError),
    /// No retry can help. `reason` is the dead letter's when more precise than
    /// `permanent_error` (the kind of a bad input).
    Permanent {
        error: BoxError,
        reason: Option<&'static str>,
    },
    /// The handler understood the message and refuses it.
    Rejected(Rejection),
}

impl HandlerError {
    /// A failure worth retrying (a dependency is down, a lock is busy).
    pub fn transient(error: impl Into<BoxError>) -> HandlerError {
        HandlerError {
            failure: Failure::Transient(error.into()),
        }
    }

    /// A failure that no retry can fix (the message is invalid for this handler): dead-lettered
    /// at once.
    pub fn permanent(error: impl Into<BoxError>) -> HandlerError {
        HandlerError {
            failure: Failure::Permanent {
                error: error.into(),
                reason: None,
            },
        }
    }

    /// A typed refusal: a caller or requester gets it whole; an event handler's is
    /// dead-lettered with reason `rejected`.
    pub fn rejected(rejection: Rejection) -> HandlerError {
        HandlerError {
            failure: Failure::Rejected(rejection),
        }
    }

    /// The message is out of the domain's bounds (an amount, a count, a name not on the menu):
    /// bad input like a payload that does not decode. Permanent, of kind
    /// [`ErrorKind::InvalidPayload`] (a call answers 400, `INVALID_ARGUMENT`); `message` names
    /// the field and what is allowed.
    pub fn invalid(message: impl Into<String>) -> HandlerError {
        HandlerError::bad_input(Error::new(ErrorKind::InvalidPayload, message))
    }

    /// A message that does not decode as the handler's type, or breaks its rules: permanent,
    /// dead-lettered with the error's kind as reason (`malformed`, `invalid_payload`, …).
    pub fn bad_input(error: Error) -> HandlerError {
        let reason = Some(error.kind().as_str());
        HandlerError {
            failure: Failure::Permanent {
                error: Box::new(error),
                reason,
            },
        }
    }

    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.failure, Failure::Transient(_))
    }

    /// The refusal, for [`HandlerError::rejected`].
    pub fn rejection(&self) -> Option<&Rejection> {
        match &self.failure {
            Failure::Rejected(rejection) => Some(rejection),
            _ => None,
        }
    }

    /// The error it carries (`None` for a refusal), to inspect or downcast.
    pub fn error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match &self.failure {
            Failure::Transient(error) | Failure::Permanent { error, .. } => Some(error.as_ref()),
            Failure::Rejected(_) => None,
        }
    }

    /// The matchable kind: [`ErrorKind::Remote`] for a refusal, the kind of a tabgrab
    /// [`Error`] it carries, else [`ErrorKind::Handler`].
    pub fn kind(&self) -> ErrorKind {
        match &self.failure {
            Failure::Rejected(_) => ErrorKind::Remote,
            Failure::Transient(error) | Failure::Permanent { error, .. } => error
                .downcast_ref::<Error>()
                .map_or(ErrorKind::Handler, Error::kind),
        }
    }

    /// The reason a dead letter records: `rejected`, the kind of a bad input, or
    /// `permanent_error`; `transient` for a transient failure (which is dead-lettered only
    /// when its deliveries run out, under that reason instead).
    pub fn reason(&self) -> &'static str {
        match &self.failure {
            Failure::Transient(_) => "transient",
            Failure::Permanent { reason, .. } => reason.unwrap_or("permanent_error"),
            Failure::Rejected(_) => "rejected",
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Failure::Transient(error) => f.debug_tuple("Transient").field(error).finish(),
            Failure::Permanent { error, reason } => f
                .debug_struct("Permanent")
                .field("error", error)
                .field("reason", &reason.unwrap_or("permanent_error"))
                .finish(),
            Failure::Rejected(rejection) => f.debug_tuple("Rejected").field(rejection).finish(),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Failure::Transient(error) | Failure::Permanent { error, .. } => {
                fmt::Display::fmt(error, f)
            }
            Failure::Rejected(rejection) => write!(f, "rejected: {rejection}"),
        }
    }
}

/// `?` in a handler: a [`Rejection`] is a refusal, a tabgrab [`Error`] of a bad-input kind is
/// permanent, and any other error is transient.
impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> HandlerError {
        let error = error.into();
        let error = match error.downcast::<Rejection>() {
            Ok(rejection) => return HandlerError::rejected(*rejection),
            Err(error) => error,
        };
        match error.downcast::<Error>() {
            Ok(error) if error.kind().is_bad_input() => HandlerError::bad_input(*error),
            Ok(error) => HandlerError::transient(*error),
            Err(error) => HandlerError::transient(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question_mark(result: Result<(), impl Into<BoxError>>) -> HandlerError {
        let run = || -> Result<(), HandlerError> {
            result.map_err(Into::into)?;
            Ok(())
        };
        run().unwrap_err()
    }

    #[test]
    fn question_mark_sorts_errors_into_the_three_kinds() {
        let refused = question_mark(Err(Rejection::new("menu.unknown", "no such pizza")));
        assert_eq!(
            refused.rejection().map(|r| r.code.as_str()),
            Some("menu.unknown")
        );
        assert_eq!(refused.kind(), ErrorKind::Remote);
        assert_eq!(refused.reason(), "rejected");
        assert!(!refused.is_retryable());

        let bad = question_mark(Err(Error::new(
            ErrorKind::InvalidPayload,
            "cents: too many",
        )));
        assert!(!bad.is_retryable());
        assert_eq!(bad.kind(), ErrorKind::InvalidPayload);
        assert_eq!(bad.reason(), "invalid_payload");

        // An outage, even one a tabgrab error reports, is retried, never dead-lettered as if
        // the message were wrong.
        for kind in [
            ErrorKind::Unavailable,
            ErrorKind::CircuitOpen,
            ErrorKind::DeadlineExceeded,
            ErrorKind::Storage,
        ] {
            let down = question_mark(Err(Error::new(kind, "the bank is down")));
            assert!(down.is_retryable(), "{kind}");
            assert_eq!(down.kind(), kind);
        }
        let io = question_mark(Err(std::io::Error::other("disk")));
        assert!(io.is_retryable());
        assert_eq!(io.kind(), ErrorKind::Handler);
        assert_eq!(io.to_string(), "disk");

        let text = question_mark(Err("plain text"));
        assert!(text.is_retryable());
    }

    #[test]
    fn constructors_say_what_they_mean() {
        let permanent = HandlerError::permanent("wrong for this handler");
        assert!(!permanent.is_retryable());
        assert_eq!(permanent.reason(), "permanent_error");
        assert_eq!(permanent.kind(), ErrorKind::Handler);
        let invalid = HandlerError::invalid("cents: at most 10000");
        assert_eq!(invalid.kind(), ErrorKind::InvalidPayload);
        assert!(invalid.to_string().contains("cents"));
        let transient = HandlerError::transient(Error::new(ErrorKind::Malformed, "kept as said"));
        assert!(transient.is_retryable());
    }
}
