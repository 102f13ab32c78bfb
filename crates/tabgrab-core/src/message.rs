//! Typed messages: commands, queries and events, each with a stable, versioned type name.
//!
//! A **command** is an intention ("charge this card") answered by a confirmation or an error;
//! a **query** asks for information and is answered by it; an **event** is a fact that happened
//! and is answered by nobody. Commands and queries implement [`Request`], the one trait that
//! names the response type; events do not, so code that waits for the answer to an event does
//! not compile.
//!
//! One derive declares a message type, its kind and its response:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tabgrab_core::{Message, Request};
//!
//! #[derive(Serialize, Deserialize, Message)]
//! #[message(type = "pizzeria.payment.charge-card.v1", command, response = Charged)]
//! struct ChargeCard { order_id: String, cents: u64 }
//!
//! #[derive(Serialize, Deserialize, Message)]
//! #[message(type = "pizzeria.payment.charged.v1")]
//! struct Charged { payment_id: String }
//!
//! #[derive(Serialize, Deserialize, Message)]
//! #[message(type = "pizzeria.order.accepted.v1", event)]
//! struct OrderAccepted { order_id: String }
//!
//! assert_eq!(<ChargeCard as Message>::TYPE, "pizzeria.payment.charge-card.v1");
//! assert!(<ChargeCard as Request>::IS_COMMAND);
//! ```
//!
//! `#[message(..)]` takes `type = ".."` (required), one kind (`event`, `command` or `query`;
//! none for a plain payload), `response = Type` for a command or a query, and
//! `crate = "path"` when tabgrab is reached by another path than the dependency's name. The
//! traits can also be implemented by hand: [`Message`], then [`Event`], or [`Request`] and
//! [`Command`] or [`Query`].
//!
//! An event has no response:
//!
//! ```compile_fail
//! use serde::{Deserialize, Serialize};
//! use tabgrab_core::{Message, Request};
//!
//! #[derive(Serialize, Deserialize, Message)]
//! #[message(type = "pizzeria.order.accepted.v1", event)]
//! struct OrderAccepted { order_id: String }
//!
//! fn response_of<R: Request>(_request: R) -> Option<R::Response> { None }
//! let _ = response_of(OrderAccepted { order_id: "o-1".into() }); // an event has no response
//! ```
//!
//! Type names are `namespace.noun.verb.vN`: dot-separated lowercase segments, the last one the
//! major version. A reader that knows `v1` can read any `v1` message (additive changes only) and
//! must refuse `v2` with [`ErrorKind::UnsupportedVersion`](crate::ErrorKind) instead of guessing.
//! The derive checks the name when the crate compiles:
//!
//! ```compile_fail
//! use serde::{Deserialize, Serialize};
//! use tabgrab_core::Message;
//!
//! #[derive(Serialize, Deserialize, Message)]
//! #[message(type = "Pizzeria.order.accepted")] // upper case, and no version
//! struct OrderAccepted { order_id: String }
//! ```

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, ErrorKind};

/// Declares a message type: `#[derive(Message)]` with `#[message(type = "..", ..)]`; see the
/// [module documentation](self).
pub use tabgrab_derive::Message;

/// A message that can travel in an envelope: serialisable, with a stable versioned type name.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type name, e.g. `pizzeria.order.accepted.v1`. It is the CloudEvents `type`.
    const TYPE: &'static str;
}

/// A fact that happened. Published, never answered.
pub trait Event: Message {}

/// A message that expects a response: every command and every query, never an event. The one
/// trait that names the response.
pub trait Request: Message {
    /// The response type.
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Whether this is a command (`true`) or a query (`false`). Queries are idempotent by
    /// nature and may be retried; commands only with an idempotency key. The derive keeps it
    /// in step with the [`Command`] or [`Query`] marker.
    const IS_COMMAND: bool;
}

/// An intention addressed to one handler, answered by a confirmation or an error
/// ([`Request::IS_COMMAND`] is `true`).
pub trait Command: Request {}

/// A request for information, answered by the information ([`Request::IS_COMMAND`] is
/// `false`).
pub trait Query: Request {}

/// The rule a type name breaks.
#[derive(Clone, Copy)]
enum NameError {
    Length,
    NoVersion,
    BadVersion,
    VersionZero,
    BadSegment,
}

impl NameError {
    /// What is wrong, after "message type "x" ".
    const fn why(self) -> &'static str {
        match self {
            NameError::Length => "is empty or longer than 200 bytes",
            NameError::NoVersion => "has no version segment",
            NameError::BadVersion => "does not end in a version segment vN",
            NameError::VersionZero => "has version v0; versions start at v1",
            NameError::BadSegment => "has an empty or non-lowercase segment",
        }
    }
}

/// A type name's rules, usable in `const` context: for a valid name, the index of the dot
/// before its version segment and the version; else the rule it breaks. The one check of
/// [`MessageType::parse`] and of `#[derive(Message)]`.
const fn split_type_name(name: &str) -> Result<(usize, u32), NameError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_TYPE_LEN {
        return Err(NameError::Length);
    }
    // The last segment: the version.
    let mut dot = bytes.len();
    while dot > 0 && bytes[dot - 1] != b'.' {
        dot -= 1;
    }
    if dot == 0 {
        return Err(NameError::NoVersion);
    }
    let version = dot; // first byte after the last dot
    if version + 1 >= bytes.len() || bytes[version] != b'v' {
        return Err(NameError::BadVersion);
    }
    let mut i = version + 1;
    let mut value: u64 = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !b.is_ascii_digit() {
            return Err(NameError::BadVersion);
        }
        value = value * 10 + (b - b'0') as u64;
        if value > u32::MAX as u64 {
            return Err(NameError::BadVersion);
        }
        i += 1;
    }
    if value == 0 {
        return Err(NameError::VersionZero);
    }
    // Every segment before it: non-empty, lowercase letters, digits, `-` and `_`.
    let base_end = dot - 1;
    let mut i = 0;
    let mut segment_len = 0;
    while i <= base_end {
        if i == base_end || bytes[i] == b'.' {
            if segment_len == 0 {
                return Err(NameError::BadSegment);
            }
            segment_len = 0;
        } else {
            let b = bytes[i];
            if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
                return Err(NameError::BadSegment);
            }
            segment_len += 1;
        }
        i += 1;
    }
    // At most u32::MAX: checked digit by digit above.
    Ok((base_end, value as u32))
}

/// Fails compilation when `name` is not a message type name: what `#[derive(Message)]` calls
/// in a `const` item. Not for other use.
#[doc(hidden)]
pub const fn assert_type_name(name: &str) {
    // A `const` panic cannot format: one whole sentence per rule.
    let Err(error) = split_type_name(name) else {
        return;
    };
    match error {
        NameError::Length => panic!(
            "#[message(type = ..)] is empty or longer than 200 bytes; expected dot-separated \
             lowercase segments ending in a version, like \"pizzeria.order.accepted.v1\""
        ),
        NameError::NoVersion => panic!(
            "#[message(type = ..)] has no version segment; expected dot-separated lowercase \
             segments ending in a version, like \"pizzeria.order.accepted.v1\""
        ),
        NameError::BadVersion => panic!(
            "#[message(type = ..)] does not end in a version segment vN; expected \
             dot-separated lowercase segments ending in a version, like \
             \"pizzeria.order.accepted.v1\""
        ),
        NameError::VersionZero => panic!(
            "#[message(type = ..)] has version v0; versions start at v1, like \
             \"pizzeria.order.accepted.v1\""
        ),
        NameError::BadSegment => panic!(
            "#[message(type = ..)] has an empty or non-lowercase segment; expected \
             dot-separated lowercase segments (a-z, 0-9, `-`, `_`) ending in a version, like \
             \"pizzeria.order.accepted.v1\""
        ),
    }
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
        let (dot, version) = split_type_name(name).map_err(|e| {
            Error::new(
                ErrorKind::Malformed,
                format!(
                    "message type {name:?} {}; expected dot-separated lowercase segments \
                     ending in a version, like \"pizzeria.order.accepted.v1\"",
                    e.why()
                ),
            )
        })?;
        Ok(MessageType {
            base: name[..dot].to_owned(),
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
