//! Events: publish a fact, and let every interested consumer group react to it.
//!
//! Events are the most decoupled kind of communication: the publisher expects no answer and
//! needs no recipient to be up. What tabgrab guarantees:
//!
//! - [`Publisher::publish`] returns only once the bus has durably accepted the event;
//! - a [`Subscription`] belongs to a consumer group: every group sees every event, and
//!   subscriptions of the same group in one process share the work (competing consumers);
//! - delivery is at least once: the group's offset moves past an event only after its handler
//!   returned `Ok`; a crash redelivers whatever was not acknowledged;
//! - a failing handler is retried with exponential backoff and full jitter, and after
//!   `max_deliveries` the event goes to the topic's dead letters with the reason, the number of
//!   attempts, the last error and its source offset ([`DeadLetter`]), to be listed, redriven
//!   or purged ([`DeadLetters`]);
//! - order is kept per `subject`; different subjects are handled in parallel, and a subject
//!   that is retrying never blocks the others;
//! - input that cannot be decoded (malformed, too large, unknown type, unsupported version)
//!   goes straight to dead letters with its typed reason; nothing is dropped silently;
//! - a group can replay from the beginning, an offset or a point in time;
//! - [`Subscription::shutdown`] stops reading, lets running handlers finish and commits.

mod dead_letter;
mod dead_letters;
mod handler;
mod publisher;
mod subscription;

pub use dead_letter::{
    DEAD_LETTER_TYPE, DeadLetter, ORIGINAL_EXCERPT, ORIGINAL_KEPT_WHOLE, dead_letter_topic,
    read_dead_letters,
};
pub(crate) use dead_letters::open_letters;
pub use dead_letters::{
    DeadLetters, Filter, KeptLetter, REDRIVEN_FROM, Redriven, SETTLED_TYPE, Settlement,
};
pub use handler::{Context, HandlerError};
pub use publisher::{Publisher, Receipt};
pub(crate) use subscription::{Admission, ErasedHandler};
pub use subscription::{StartFrom, Subscription, SubscriptionBuilder, SubscriptionStats};
