//! The rules every CloudEvents attribute follows, on every transport: a name of lowercase
//! letters and digits, a value without control characters, and a bounded number of them.
//!
//! Why one place: attributes arrive as HTTP headers, NATS headers, AMQP properties, a gRPC map
//! and JSON members, and each transport's parser lets through something the others refuse (a
//! gRPC map takes any string as a name, a NATS header value takes a carriage return that an
//! HTTP header cannot carry). A value with CR or LF that is accepted on one transport and
//! relayed onto another becomes a header injection there; fifty thousand tiny attributes
//! that no size check counts are a memory attack. So every decoder routes each attribute
//! through [`check_name`] and [`check_value`], and every server checks the whole envelope
//! with [`Codec::check_envelope`](crate::Codec::check_envelope) before a handler sees it.
//!
//! The rules are CloudEvents 1.0's: names "MUST consist of lower-case letters ('a' to 'z')
//! or digits ('0' to '9')"; string values exclude the control characters U+0000–U+001F and
//! U+007F–U+009F and the Unicode noncharacters. The limits on length and count are tabgrab's:
//! the specification asks names to stay within 20 characters and sets no count.

use crate::{Error, ErrorKind};

/// Most attributes one envelope may carry, the required ones included. CloudEvents defines
/// ten and tabgrab uses five extensions; the rest is room for a relay's extensions.
pub const MAX_ATTRIBUTES: usize = 64;

/// The longest attribute name accepted (the specification recommends at most 20).
pub const MAX_NAME_LEN: usize = 64;

/// The attribute names tabgrab gives a meaning of their own (and `data`), which an
/// extension cannot take. (`dataschema` is kept as an extension: tabgrab relays it.)
pub const RESERVED: [&str; 13] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "datacontenttype",
    "correlationid",
    "causationid",
    "traceparent",
    "replyto",
    "deadline",
    "data",
];

/// Refuses a name that is not a valid attribute name ([`ErrorKind::Malformed`]).
///
/// ```
/// use tabgrab_core::attribute::check_name;
/// assert!(check_name("tenant").is_ok());
/// assert!(check_name("my_tenant").is_err());
/// ```
pub fn check_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        return Ok(());
    }
    let shown: String = name.chars().take(MAX_NAME_LEN).collect();
    Err(Error::new(
        ErrorKind::Malformed,
        format!(
            "{shown:?} is not a valid CloudEvents attribute name: 1 to {MAX_NAME_LEN} \
             lowercase letters and digits"
        ),
    ))
}

/// Refuses a value with a control character or a noncharacter ([`ErrorKind::Malformed`]),
/// naming the attribute.
///
/// ```
/// use tabgrab_core::attribute::check_value;
/// assert!(check_value("subject", "order 42").is_ok());
/// assert!(check_value("subject", "42\r\nx-admin: 1").is_err());
/// ```
pub fn check_value(name: &str, value: &str) -> Result<(), Error> {
    // The common case, printable ASCII, without an early exit so that it compiles to a few
    // vector instructions (every attribute of every message is checked).
    if value
        .bytes()
        .fold(true, |printable, b| printable & (0x20..0x7f).contains(&b))
    {
        return Ok(());
    }
    let bad = if value.is_ascii() {
        value.bytes().position(|b| b < 0x20 || b == 0x7f)
    } else {
        value
            .char_indices()
            .find(|&(_, c)| is_disallowed(c))
            .map(|(i, _)| i)
    };
    match bad {
        None => Ok(()),
        Some(at) => {
            let c = value[at..].chars().next().unwrap_or_default();
            Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "attribute {name} holds the character U+{:04X} at byte {at}; attribute \
                     values must not contain control characters (CR, LF, NUL, …) or \
                     noncharacters",
                    u32::from(c)
                ),
            ))
        }
    }
}

/// Control characters (C0, DEL, C1) and noncharacters.
fn is_disallowed(c: char) -> bool {
    let u = u32::from(c);
    c.is_control() || (0xFDD0..=0xFDEF).contains(&u) || (u & 0xFFFE) == 0xFFFE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_letters_and_digits() {
        for good in ["tenant", "x1", "traceparent", &"a".repeat(MAX_NAME_LEN)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Tenant",
            "my_ext",
            "my-ext",
            "ext ",
            "é",
            &"a".repeat(MAX_NAME_LEN + 1),
        ] {
            assert_eq!(
                check_name(bad).unwrap_err().kind(),
                ErrorKind::Malformed,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn values_hold_no_control_characters_nor_noncharacters() {
        for good in [
            "",
            "/pizzeria/front-desk",
            "a b\"c%",
            "Zürich",
            "日本",
            "😀",
        ] {
            assert!(check_value("subject", good).is_ok(), "{good:?}");
        }
        for bad in [
            "a\r\nx-injected: 1",
            "a\nb",
            "nul\0",
            "tab\t",
            "del\x7f",
            "c1\u{85}",
            "\u{FDD0}",
            "\u{FFFE}",
            "\u{10FFFF}",
        ] {
            let e = check_value("subject", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Malformed, "{bad:?}");
            assert!(e.message().contains("subject"), "{}", e.message());
        }
    }
}
