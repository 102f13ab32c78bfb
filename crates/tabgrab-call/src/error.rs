//! The error of a call: which layer or which side stopped it, for which service and message.
//!
//! A call can end without an answer for very different reasons, and the caller must react
//! differently to each: retry later (`Unavailable`, `Rejected`), stop and report (`Remote`,
//! the handler said no), give up because the budget is spent (`DeadlineExceeded`), or not even
//! try (`CircuitOpen`). So [`CallError::kind`] is the shared
//! [`ErrorKind`] of the message model, the text always names the
//! service and the message type, and a handler's typed refusal is kept whole in
//! [`CallError::rejection`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tabgrab_core::{ErrorKind, Rejection};

/// Why a call did not produce a response.
#[derive(Clone, Debug)]
pub struct CallError {
    /// The matchable kind.
    kind: ErrorKind,
    /// The service called (the client's `service_name`), so logs say who failed.
    service: Arc<str>,
    /// The message type sent.
    ty: Arc<str>,
    /// What happened and what to do, in words.
    message: String,
    /// The handler's typed refusal, for [`ErrorKind::Remote`].
    rejection: Option<Rejection>,
    /// The underlying error (hyper, tonic), shared so the error stays `Clone` for retries.
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl CallError {
    /// An error of `kind` for a call of `ty` to `service`.
    pub fn new(
        kind: ErrorKind,
        service: impl Into<Arc<str>>,
        ty: impl Into<Arc<str>>,
        message: impl Into<String>,
    ) -> CallError {
        CallError {
            kind,
            service: service.into(),
            ty: ty.into(),
            message: message.into(),
            rejection: None,
            source: None,
        }
    }

    /// A [`ErrorKind::Remote`] error carrying the handler's refusal.
    pub fn remote(
        service: impl Into<Arc<str>>,
        ty: impl Into<Arc<str>>,
        rejection: Rejection,
    ) -> CallError {
        let message = format!("the handler refused it: {rejection}");
        let mut error = CallError::new(ErrorKind::Remote, service, ty, message);
        error.rejection = Some(rejection);
        error
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The matchable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The handler's typed refusal, when the kind is [`ErrorKind::Remote`].
    pub fn rejection(&self) -> Option<&Rejection> {
        self.rejection.as_ref()
    }

    /// The service called.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The message type sent.
    pub fn message_type(&self) -> &str {
        &self.ty
    }

    /// What happened, without the kind, service and type prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether another attempt may succeed (the kind's rule).
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: call of {} to service {}: {}",
            self.kind, self.ty, self.service, self.message
        )?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if let Some(rejection) = &self.rejection {
            return Some(rejection);
        }
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<CallError> for tabgrab_core::Error {
    fn from(e: CallError) -> tabgrab_core::Error {
        match e.rejection {
            Some(rejection) => tabgrab_core::Error::rejected(&e.ty, rejection),
            None => tabgrab_core::Error::new(e.kind, e.to_string()),
        }
    }
}

/// The JSON body of an error answer (HTTP and NATS): the kind, the message and the
/// handler's refusal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error kind's stable name ([`ErrorKind::as_str`]).
    pub kind: String,
    /// What happened, naming the message type.
    pub error: String,
    /// The handler's refusal, for kind `remote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<Rejection>,
}

/// An error kind from its stable name.
pub(crate) fn kind_from_str(name: &str) -> Option<ErrorKind> {
    const ALL: [ErrorKind; 21] = [
        ErrorKind::Malformed,
        ErrorKind::TooLarge,
        ErrorKind::UnknownType,
        ErrorKind::UnsupportedVersion,
        ErrorKind::MissingAttribute,
        ErrorKind::TypeMismatch,
        ErrorKind::InvalidPayload,
        ErrorKind::Handler,
        ErrorKind::Storage,
        ErrorKind::Closed,
        ErrorKind::Timeout,
        ErrorKind::DeadlineExceeded,
        ErrorKind::CircuitOpen,
        ErrorKind::Rejected,
        ErrorKind::Unavailable,
        ErrorKind::Remote,
        ErrorKind::Protocol,
        ErrorKind::Conflict,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::Unauthenticated,
        ErrorKind::PermissionDenied,
    ];
    ALL.into_iter().find(|k| k.as_str() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_service_type_and_keeps_the_rejection() {
        let e = CallError::remote(
            "payment",
            "pizzeria.payment.charge-card.v1",
            Rejection::new("payment.card-declined", "card ending in 0000 refused"),
        );
        assert_eq!(e.kind(), ErrorKind::Remote);
        assert_eq!(
            e.rejection().map(|r| r.code.as_str()),
            Some("payment.card-declined")
        );
        let text = e.to_string();
        assert!(text.contains("payment"), "{text}");
        assert!(text.contains("pizzeria.payment.charge-card.v1"), "{text}");
        assert!(!e.is_retryable());
    }
}
