//! Topic names, validated once.
//!
//! A topic name becomes a directory (the embedded log), part of a subject and a stream name
//! (NATS) and an exchange name (RabbitMQ), so it keeps to an alphabet every engine accepts:
//! 1 to 200 of `[A-Za-z0-9._-]`, not starting with `.`. A [`Topic`] is checked when it is
//! made, where a name enters the toolkit (a publisher, a subscription, a requester's route, an
//! outbox row); the engines take a `&Topic` and check nothing again. Names the toolkit derives
//! from a topic (its dead letters, a namespace's prefix) are checked when they are derived.
//!
//! ```
//! use tabgrab::Topic;
//!
//! let topic = Topic::new("kitchen")?;
//! assert_eq!(topic.as_str(), "kitchen");
//! assert_eq!(topic.dead_letters().as_str(), "kitchen.dead-letters");
//! assert!(Topic::new("../etc").is_err());
//! assert!(Topic::new("").is_err());
//! # Ok::<(), tabgrab::Error>(())
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use crate::{Error, ErrorKind};

/// The longest topic name a user may give.
const MAX_LEN: usize = 200;
/// The suffix of a topic's dead-letter topic.
const DEAD_LETTERS: &str = ".dead-letters";

/// A valid topic name; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Checks `name` (see the module docs); `Malformed` says what is wrong.
    pub fn new(name: &str) -> Result<Topic, Error> {
        check(name, "topic name")?;
        Ok(Topic(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic that holds this topic's dead letters (`<topic>.dead-letters`; derived names
    /// may exceed the length a user may give).
    pub fn dead_letters(&self) -> Topic {
        Topic(Arc::from(dead_letters_of(&self.0)))
    }

    /// This topic in a namespace: `<prefix><topic>`, where `prefix` keeps to the same
    /// alphabet (a namespace and a `.`). Fails only for a prefix outside it.
    pub fn prefixed(&self, prefix: &str) -> Result<Topic, Error> {
        if !prefix.bytes().all(allowed) {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!("topic prefix {prefix:?}: use [A-Za-z0-9._-]"),
            ));
        }
        if prefix.starts_with('.') {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!("topic prefix {prefix:?} must not start with '.'"),
            ));
        }
        Ok(Topic(Arc::from(format!("{prefix}{}", self.0))))
    }
}

/// The name of `topic`'s dead-letter topic: the one place the suffix is added.
pub(crate) fn dead_letters_of(topic: &str) -> String {
    format!("{topic}{DEAD_LETTERS}")
}

/// Whether `topic` is a dead-letter topic.
#[cfg(feature = "amqp")]
pub(crate) fn is_dead_letters(topic: &str) -> bool {
    topic.ends_with(DEAD_LETTERS)
}

/// Checks a consumer group's name: the same rule as a topic's (a group's name becomes part of
/// a consumer, queue or file name), with an error that names it a group.
pub(crate) fn check_group(group: &str) -> Result<(), Error> {
    check(group, "consumer group")
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn check(name: &str, what: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LEN
        && !name.starts_with('.')
        && name.bytes().all(allowed);
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Malformed,
            format!(
                "{what} {name:?} is invalid: use 1-{MAX_LEN} of [A-Za-z0-9._-], not starting with '.'"
            ),
        ))
    }
}

impl Deref for Topic {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for Topic {
    type Err = Error;
    fn from_str(name: &str) -> Result<Topic, Error> {
        Topic::new(name)
    }
}

impl TryFrom<&str> for Topic {
    type Error = Error;
    fn try_from(name: &str) -> Result<Topic, Error> {
        Topic::new(name)
    }
}

impl TryFrom<String> for Topic {
    type Error = Error;
    fn try_from(name: String) -> Result<Topic, Error> {
        check(&name, "topic name")?;
        Ok(Topic(Arc::from(name)))
    }
}

impl TryFrom<&String> for Topic {
    type Error = Error;
    fn try_from(name: &String) -> Result<Topic, Error> {
        Topic::new(name)
    }
}

impl TryFrom<&Topic> for Topic {
    type Error = Error;
    fn try_from(topic: &Topic) -> Result<Topic, Error> {
        Ok(topic.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_alphabet_are_refused_with_the_rule() {
        for bad in ["", ".hidden", "a/b", "a b", "ü", &"x".repeat(201)] {
            let err = Topic::new(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::Malformed);
            assert!(err.to_string().contains("[A-Za-z0-9._-]"), "{err}");
        }
        for good in ["a", "kitchen.v1", "A-b_c.9", &"x".repeat(200)] {
            assert_eq!(Topic::new(good).expect(good).as_str(), good);
        }
        let group = check_group("a b").expect_err("a group");
        assert!(
            group.to_string().contains("consumer group \"a b\""),
            "{group}"
        );
    }

    #[test]
    fn derived_names_keep_the_alphabet() {
        let topic = Topic::new("kitchen").unwrap();
        assert_eq!(topic.prefixed("lab-1.").unwrap().as_str(), "lab-1.kitchen");
        assert!(topic.prefixed("a/b.").is_err());
        assert!(topic.prefixed(".x.").is_err());
        let long = Topic::new(&"x".repeat(200)).unwrap();
        assert_eq!(long.dead_letters().len(), 200 + DEAD_LETTERS.len());
    }
}
