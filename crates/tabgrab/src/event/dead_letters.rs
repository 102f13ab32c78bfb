//! Operating on a topic's dead letters: list them with a filter, show one, send one again
//! (redrive) or drop it (purge), on every engine, through [`DeadLetters`].
//!
//! # Settled, not deleted
//! Dead letters are records of the topic `<topic>.dead-letters`, which tabgrab only ever
//! appends to: the embedded log cannot delete a record, and one mechanism serves the three
//! engines. A redrive or a purge therefore appends a *settlement* (type [`SETTLED_TYPE`],
//! naming the dead letter's id and what was done). A dead letter with a settlement is no
//! longer listed ([`DeadLetters::list`], [`Bus::dead_letters`]); the history stays readable on
//! the topic itself.
//!
//! # Redrive, safe under a crash
//! 1. The original is published again to its topic, with **its own id**, and with the
//!    extension attribute [`REDRIVEN_FROM`] set to the dead letter's id;
//! 2. only once the bus acknowledged that publish is the settlement appended.
//!
//! A process killed between 1 and 2 leaves the dead letter listed, and redriving it again
//! publishes the same event (same id, same `redrivenfrom`) once more. JetStream recognises
//! that pair within its duplicate window; elsewhere a consumer's inbox does (the id is the
//! original's). So a redrive loses nothing and, for groups with an inbox, applies nothing
//! twice. Every group of the topic receives a redriven event, not only the one that gave up on
//! it: a group without an inbox handles it again.
//!
//! Only an original the dead letter keeps whole and that decodes as an envelope can be
//! redriven: a larger one's dead letter says where the engine keeps it
//! ([`DeadLetter::original_kept_at`]), and bytes that are not an envelope would be
//! dead-lettered again by every group (purge them).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::dead_letter::DEAD_LETTER_TYPE;
use super::{DeadLetter, Publisher};
use crate::backend::Bus;
use crate::{Envelope, Error, ErrorKind, Message, Topic};

/// The CloudEvents type of a settlement: a dead letter was redriven or purged.
pub const SETTLED_TYPE: &str = "tabgrab.dead-letter.settled.v1";

/// The CloudEvents extension attribute a redriven event carries: the id of the dead letter it
/// was sent again from. (CloudEvents attribute names are lower-case letters and digits only,
/// hence no dash.)
pub const REDRIVEN_FROM: &str = "redrivenfrom";

/// The source of settlements and redriven publishes' metrics.
const SOURCE: &str = "/tabgrab/dead-letters";

/// What was done with a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settlement {
    /// Its original was published again to its topic.
    Redriven,
    /// It was dropped.
    Purged,
}

/// The record appended when a dead letter is settled.
#[derive(Debug, Serialize, Deserialize)]
struct Settled {
    /// The dead letter's id.
    dead_letter: String,
    /// What was done.
    action: Settlement,
}

impl Message for Settled {
    const TYPE: &'static str = SETTLED_TYPE;
}

/// A dead letter that is still open, with the id that names it for [`DeadLetters::redrive`]
/// and [`DeadLetters::purge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptLetter {
    /// The dead letter's own id (its record's envelope id, not the event's).
    pub id: String,
    /// When the group gave up on the event.
    pub recorded_at: Option<OffsetDateTime>,
    /// The dead letter.
    pub letter: DeadLetter,
}

/// Which dead letters to list or act on; every field set must match (`None` matches all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The consumer group that gave up.
    pub group: Option<String>,
    /// The reason, as [`DeadLetter::reason`] names it (`permanent_error`, `max_deliveries`,
    /// `malformed`, …).
    pub reason: Option<String>,
    /// The event's type.
    pub message_type: Option<String>,
    /// The event's subject.
    pub subject: Option<String>,
    /// Recorded at or after this moment.
    pub since: Option<OffsetDateTime>,
    /// Recorded before this moment.
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    /// Whether `kept` matches.
    pub fn matches(&self, kept: &KeptLetter) -> bool {
        let letter = &kept.letter;
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        same(&self.group, Some(&letter.group))
            && same(&self.reason, Some(&letter.reason))
            && same(&self.message_type, letter.message_type.as_deref())
            && same(&self.subject, letter.subject.as_deref())
            && self
                .since
                .is_none_or(|since| kept.recorded_at.is_some_and(|at| at >= since))
            && self
                .until
                .is_none_or(|until| kept.recorded_at.is_some_and(|at| at < until))
    }
}

/// What a redrive published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redriven {
    /// The event's id (the original's).
    pub event_id: String,
    /// The topic it was published to.
    pub topic: String,
    /// Whether the engine recognised it as published already (a redrive repeated after a
    /// crash, within JetStream's duplicate window).
    pub duplicate: bool,
}

/// The open dead letters among the records of a dead-letter topic, oldest first: dead letters
/// without a settlement. Records of other types are not dead letters and are passed over; a
/// record that claims to be a dead letter or a settlement but does not decode as one (anyone
/// who can publish to the topic can put it there) is passed over with a warning, so that it
/// cannot stop the listing of the others.
pub(crate) fn open_letters(records: &[Envelope]) -> Result<Vec<KeptLetter>, Error> {
    let skip = |e: &Envelope, error: &Error| {
        tracing::warn!(id = %e.id, ty = %e.ty, error = %error, "a record of a dead-letter topic does not decode; passed over");
    };
    let settled: HashSet<String> = records
        .iter()
        .filter(|e| e.ty == SETTLED_TYPE)
        .filter_map(|e| match e.decode::<Settled>() {
            Ok(s) => Some(s.dead_letter),
            Err(error) => {
                skip(e, &error);
                None
            }
        })
        .collect();
    Ok(records
        .iter()
        .filter(|e| e.ty == DEAD_LETTER_TYPE && !settled.contains(&e.id))
        .filter_map(|e| match e.decode::<DeadLetter>() {
            Ok(letter) => Some(KeptLetter {
                id: e.id.clone(),
                recorded_at: e.time,
                letter,
            }),
            Err(error) => {
                skip(e, &error);
                None
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A damaged settlement or dead letter (anyone on the bus can publish one) is passed
    /// over; the others are still listed, and a settlement hides exactly its dead letter.
    #[test]
    fn damaged_records_do_not_stop_the_listing() {
        let letter = |n: u64| {
            DeadLetter::new("orders", "billing", n, b"{}", None)
                .because("malformed", "not JSON".into(), 0)
                .envelope()
                .unwrap()
        };
        let (first, second) = (letter(1), letter(2));
        let settled = Envelope::new(
            SOURCE,
            &Settled {
                dead_letter: first.id.clone(),
                action: Settlement::Purged,
            },
        )
        .unwrap();
        let records = vec![
            first,
            Envelope::raw("/x", SETTLED_TYPE, Bytes::from_static(b"[1,2")),
            Envelope::raw("/x", DEAD_LETTER_TYPE, Bytes::from_static(b"{\"no\":1}")),
            Envelope::raw("/x", "someone.else.v1", Bytes::from_static(b"{}")),
            second.clone(),
            settled,
        ];
        let open = open_letters(&records).unwrap();
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0].id, second.id);
        assert_eq!(open[0].letter.offset, 2);
    }
}

/// The dead letters of one topic, to list, inspect, redrive and purge.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    bus: Bus,
    /// The topic whose events they are.
    topic: Topic,
}

impl DeadLetters {
    /// The dead letters of `topic` on `bus`.
    pub fn new(bus: &Bus, topic: &str) -> Result<DeadLetters, Error> {
        Ok(DeadLetters {
            bus: bus.clone(),
            topic: Topic::new(topic)?,
        })
    }

    /// The open dead letters that match `filter`, oldest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<KeptLetter>, Error> {
        let records = self
            .bus
            .backend()
            .read_all(&self.topic.dead_letters())
            .await?;
        let mut open = open_letters(&records)?;
        open.retain(|k| filter.matches(k));
        Ok(open)
    }

    /// The open dead letter `id`; a `NotFound` error when there is none (never recorded, or
    /// redriven or purged already).
    pub async fn get(&self, id: &str) -> Result<KeptLetter, Error> {
        self.list(&Filter::default())
            .await?
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| self.not_found(id))
    }

    /// Publishes the original of dead letter `id` again to its topic and then settles it (see
    /// the module docs for why that is safe under a crash).
    pub async fn redrive(&self, id: &str) -> Result<Redriven, Error> {
        let kept = self.get(id).await?;
        self.redrive_letter(&kept).await
    }

    /// [`redrive`](Self::redrive) of a dead letter already listed (a bulk redrive lists once).
    pub async fn redrive_letter(&self, kept: &KeptLetter) -> Result<Redriven, Error> {
        let mut envelope = self.redrivable(kept)?;
        envelope
            .extensions
            .insert(REDRIVEN_FROM.to_owned(), kept.id.clone());
        let receipt = Publisher::new(&self.bus, self.topic.as_str(), SOURCE)?
            .publish_envelope(&envelope)
            .await?;
        self.settle(kept, Settlement::Redriven).await?;
        Ok(Redriven {
            event_id: receipt.id,
            topic: self.topic.as_str().to_owned(),
            duplicate: receipt.duplicate,
        })
    }

    /// Publishes the original of `kept` again to **the group that gave up on it only**, where
    /// the engine can address one group (a queue per group: RabbitMQ,
    /// [`Capabilities::reply_queues`](crate::backend::Capabilities::reply_queues)), then
    /// settles it as [`redrive_letter`](Self::redrive_letter) does. The topic's other groups
    /// do not see the event again. Refused with `Conflict` where the engine cannot (the
    /// embedded log and NATS deliver a topic's records to every group): redrive to the topic
    /// instead.
    pub async fn redrive_to_group(&self, kept: &KeptLetter) -> Result<Redriven, Error> {
        let group = &kept.letter.group;
        let Some(queue) = self.bus.backend().group_queue(&self.topic, group) else {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "the {} bus cannot deliver to group {group} alone: redrive dead letter {} \
                     to topic {} (every group receives it; an inbox makes it harmless to those \
                     that had it)",
                    self.bus.name(),
                    kept.id,
                    self.topic
                ),
            ));
        };
        let mut envelope = self.redrivable(kept)?;
        envelope
            .extensions
            .insert(REDRIVEN_FROM.to_owned(), kept.id.clone());
        let receipt = self
            .bus
            .backend()
            .publish_to_queue(&queue, &envelope)
            .await?;
        self.settle(kept, Settlement::Redriven).await?;
        Ok(Redriven {
            event_id: envelope.id,
            topic: self.topic.as_str().to_owned(),
            duplicate: receipt.duplicate,
        })
    }

    /// The event a redrive of `kept` would publish (without its `redrivenfrom`), or why it
    /// cannot be redriven.
    pub fn redrivable_event(&self, kept: &KeptLetter) -> Result<Envelope, Error> {
        self.redrivable(kept)
    }

    /// Why dead letter `kept` cannot be redriven, if it cannot (what a dry run reports).
    pub fn check_redrivable(&self, kept: &KeptLetter) -> Result<(), Error> {
        self.redrivable(kept).map(|_| ())
    }

    /// Drops dead letter `id`: it is no longer listed.
    pub async fn purge(&self, id: &str) -> Result<(), Error> {
        let kept = self.get(id).await?;
        self.purge_letter(&kept).await
    }

    /// [`purge`](Self::purge) of a dead letter already listed.
    pub async fn purge_letter(&self, kept: &KeptLetter) -> Result<(), Error> {
        self.settle(kept, Settlement::Purged).await
    }

    /// The original of `kept` as the envelope to publish again.
    fn redrivable(&self, kept: &KeptLetter) -> Result<Envelope, Error> {
        let letter = &kept.letter;
        if letter.topic != self.topic.as_str() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "dead letter {} is of topic {}, not {}",
                    kept.id, letter.topic, self.topic
                ),
            ));
        }
        let original = letter.original()?;
        self.bus.codec().decode(&original).map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "dead letter {} (reason {}) keeps bytes that are not an envelope this bus \
                     reads ({e}); every group would dead-letter them again: purge it",
                    kept.id, letter.reason
                ),
            )
        })
    }

    /// Appends the settlement of `kept`.
    async fn settle(&self, kept: &KeptLetter, action: Settlement) -> Result<(), Error> {
        let mut record = Envelope::new(
            SOURCE,
            &Settled {
                dead_letter: kept.id.clone(),
                action,
            },
        )?;
        record.subject.clone_from(&kept.letter.subject);
        self.bus
            .backend()
            .publish(&self.topic.dead_letters(), &record)
            .await?;
        Ok(())
    }

    fn not_found(&self, id: &str) -> Error {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "topic {} has no open dead letter {id} (never recorded, or redriven or purged \
                 already)",
                self.topic
            ),
        )
    }
}
