//! A handler's typed refusal of a command or query, carried back to the caller by every
//! transport (HTTP, gRPC, a reply message on a bus).
//!
//! A call or a request can fail in two very different ways: the *plumbing* failed (timeout,
//! recipient down, circuit open: an [`Error`] whose kind says which), or the
//! recipient understood the request and said no ("card declined", "out of truffles"). The
//! second is a business answer, never retried, and the caller branches on it. A `Rejection`
//! is that answer: a stable machine-readable `code` (`namespace.reason`, like
//! `payment.card-declined`), a human `message`, and optional structured `details` that the
//! caller can decode into its own type with [`Rejection::details_as`].
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tabgrab_core::Rejection;
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Missing { ingredients: Vec<String> }
//!
//! let no = Rejection::new("inventory.missing", "out of truffle")
//!     .with_details(&Missing { ingredients: vec!["truffle".into()] })?;
//! let wire = serde_json::to_string(&no)?;
//! let back: Rejection = serde_json::from_str(&wire)?;
//! assert_eq!(back.code, "inventory.missing");
//! assert_eq!(back.details_as::<Missing>()?, Some(Missing { ingredients: vec!["truffle".into()] }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Error, ErrorKind};

/// A typed "no" from a handler: the code to branch on, a message to show, optional details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// Stable, machine-readable reason, e.g. `payment.card-declined`. Callers match on it.
    pub code: String,
    /// What happened, in words a person can read; may be shown to an end user.
    pub message: String,
    /// Structured data about the refusal (what is missing, the limit exceeded), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Rejection {
    /// A rejection with a code and a message, without details.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Rejection {
        Rejection {
            code: code.into(),
            message: message.into(),
            details: None,
        }
    }

    /// Attaches structured details. Fails only if `details` cannot be serialised to JSON.
    pub fn with_details<T: Serialize>(mut self, details: &T) -> Result<Rejection, Error> {
        let value = serde_json::to_value(details).map_err(|e| {
            Error::new(
                ErrorKind::InvalidPayload,
                format!("the details of rejection {:?} do not serialise", self.code),
            )
            .with_source(e)
        })?;
        self.details = Some(value);
        Ok(self)
    }

    /// Decodes the details as `T`; `Ok(None)` when there are none, `InvalidPayload` when they
    /// do not have the shape of `T`.
    pub fn details_as<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        let Some(value) = &self.details else {
            return Ok(None);
        };
        T::deserialize(value).map(Some).map_err(|e| {
            Error::new(
                ErrorKind::InvalidPayload,
                format!(
                    "the details of rejection {:?} are not a {}",
                    self.code,
                    std::any::type_name::<T>()
                ),
            )
            .with_source(e)
        })
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Rejection {}
