//! Typed messages: commands, queries and events, each with a stable, versioned type name.
//!
//! A **command** is an intention ("charge this card") answered by a confirmation or an error;
//! a **query** asks for information and is answered by it; an **event** is a fact that happened
//! and is answered by nobody. Commands and queries implement [`Request`], which names the
//! response type; events do not, so code that waits for the answer to an event does not compile:
//!
//! ```compile_fail
//! use serde::{Deserialize, Serialize};
//! use tabgrab_core::{Event, Message, Request};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderAccepted { order_id: String }
//! impl Message for OrderAccepted { const TYPE: &'static str = "pizzeria.order.accepted.v1"; }
//! impl Event for OrderAccepted {}
//!
//! fn response_of<R: Request>(_request: R) -> Option<R::Response> { None }
//! let _ = response_of(OrderAccepted { order_id: "o-1".into() }); // an event has no response
//! ```
//!
//! Type names are `namespace.noun.verb.vN`: dot-separated lowercase segments, the last one the
//! major version. A reader that knows `v1` can read any `v1` message (additive changes only) and
//! must refuse `v2` with [`ErrorKind::UnsupportedVersion`](crate::ErrorKind) instead of guessing.

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, ErrorKind};

/// A message that can travel in an envelope: serialisable, with a stable versioned type name.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type name, e.g. `pizzeria.order.accepted.v1`. It is the CloudEvents `type`.
    const TYPE: &'static str;
}

/// A fact that happened. Published, never answered.
pub trait Event: Message {}

/// An intention addressed to one handler, answered by a confirmation or an error.
pub trait Command: Message {
    /// The confirmation type.
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// A request for information, answered by the information.
pub trait Query: Message {
    /// The information returned.
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// A message that expects a response: every command and every query, never an event.
pub trait Request: Message {
    /// The response type.
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Whether this is a command (`true`) or a query (`false`). Queries are idempotent by
    /// nature and may be retried; commands only with an idempotency key.
    const IS_COMMAND: bool;
}

/// Declares that a [`Command`] or [`Query`] type is a [`Request`].
///
/// Rust cannot express "every Command or every Query" as two blanket impls, so message types
/// opt in with this macro:
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tabgrab_core::{Command, Message, Request, request};
///
/// #[derive(Serialize, Deserialize)]
/// struct ChargeCard { order_id: String, cents: u64 }
/// #[derive(Serialize, Deserialize)]
/// struct Charged { payment_id: String }
/// impl Message for ChargeCard { const TYPE: &'static str = "pizzeria.payment.charge-card.v1"; }
/// impl Command for ChargeCard { type Response = Charged; }
/// request!(command ChargeCard);
/// assert!(<ChargeCard as Request>::IS_COMMAND);
/// ```
#[macro_export]
macro_rules! request {
    (command $ty:ty) => {
        impl $crate::Request for $ty {
            type Response = <$ty as $crate::Command>::Response;
            const IS_COMMAND: bool = true;
        }
    };
    (query $ty:ty) => {
        impl $crate::Request for $ty {
            type Response = <$ty as $crate::Query>::Response;
            const IS_COMMAND: bool = false;
        }
    };
}

/// A parsed type name: the base (`pizzeria.order.accepted`) and the major version (`1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageType {
    /// Everything before the version segment; identifies the message across versions.
    base: String,
    /// The major version; readers refuse versions they do not know.
    version: u32,
}

/// Longest type name accepted; CloudEvents puts no limit, we keep names headers-friendly.
const MAX_TYPE_LEN: usize = 200;

impl MessageType {
    /// Parses `a.b.c.vN`. Errors are [`ErrorKind::Malformed`] and say what the form is.
    pub fn parse(name: &str) -> Result<MessageType, Error> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::Malformed,
                format!(
                    "message type {name:?} {why}; expected dot-separated lowercase segments \
                     ending in a version, like \"pizzeria.order.accepted.v1\""
                ),
            )
        };
        if name.is_empty() || name.len() > MAX_TYPE_LEN {
            return Err(bad("is empty or longer than 200 bytes"));
        }
        let Some((base, version)) = name.rsplit_once('.') else {
            return Err(bad("has no version segment"));
        };
        let version = version
            .strip_prefix('v')
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| bad("does not end in a version segment vN"))?;
        if version == 0 {
            return Err(bad("has version v0; versions start at v1"));
        }
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        };
        if !base.split('.').all(segment_ok) {
            return Err(bad("has an empty or non-lowercase segment"));
        }
        Ok(MessageType {
            base: base.to_owned(),
            version,
        })
    }

    /// The name without its version, e.g. `pizzeria.order.accepted`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The major version.
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.v{}", self.base, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versioned_names() {
        let t = MessageType::parse("pizzeria.order.accepted.v12").unwrap();
        assert_eq!(t.base(), "pizzeria.order.accepted");
        assert_eq!(t.version(), 12);
        assert_eq!(t.to_string(), "pizzeria.order.accepted.v12");
    }

    #[test]
    fn refuses_names_without_a_proper_version() {
        for bad in [
            "",
            "pizzeria",
            "pizzeria.order",
            "pizzeria.order.v",
            "pizzeria.order.v0",
            "pizzeria.order.vx",
            "Pizzeria.order.v1",
            "pizzeria..order.v1",
            ".v1",
        ] {
            let err = MessageType::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Malformed, "{bad:?}");
        }
    }
}
