//! Publishing events durably.

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::embedded::{EmbeddedBus, storage};
use crate::{Codec, Envelope, Error, Event};

/// Publishes events to one topic. Cheap to clone; clones share the topic's log writer, so
/// concurrent publishes are committed together (one fsync for many events).
#[derive(Clone)]
pub struct Publisher {
    /// The topic's durable log.
    log: tabgrab_log::Log,
    /// The topic name, for error messages.
    topic: Arc<str>,
    /// The CloudEvents `source` of every event this publisher makes.
    source: Arc<str>,
    /// Size limit and encoding.
    codec: Codec,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What a successful publish returns: the event's id and its durable position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The envelope id.
    pub id: String,
    /// The offset of the event in the topic.
    pub offset: u64,
}

impl Publisher {
    /// A publisher to `topic` on `bus`, stamping `source` on the events it makes.
    pub fn new(bus: &EmbeddedBus, topic: &str, source: &str) -> Result<Publisher, Error> {
        Ok(Publisher {
            log: bus.topic(topic)?,
            topic: topic.into(),
            source: source.into(),
            codec: bus.codec(),
        })
    }

    /// The topic this publisher writes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Makes the envelope for `event` about `subject` (not yet published).
    pub fn envelope<E: Event>(
        &self,
        event: &E,
        subject: impl Into<String>,
    ) -> Result<Envelope, Error> {
        Ok(Envelope::new(&*self.source, event)?.with_subject(subject))
    }

    /// Makes an envelope for any message (requests and replies of request-response
    /// messaging travel through publishers too).
    pub(crate) fn envelope_of<M: crate::Message>(&self, message: &M) -> Result<Envelope, Error> {
        Envelope::new(&*self.source, message)
    }

    /// Publishes `event` about `subject`; returns once the event is durable.
    pub async fn publish<E: Event>(
        &self,
        event: &E,
        subject: impl Into<String>,
    ) -> Result<Receipt, Error> {
        let envelope = self.envelope(event, subject)?;
        self.publish_envelope(&envelope).await
    }

    /// Publishes `event` as an effect of `cause`: same subject, causation and correlation set.
    pub async fn publish_caused<E: Event>(
        &self,
        event: &E,
        cause: &Envelope,
    ) -> Result<Receipt, Error> {
        let mut envelope = Envelope::new(&*self.source, event)?.caused_by(cause);
        envelope.subject.clone_from(&cause.subject);
        self.publish_envelope(&envelope).await
    }

    /// Publishes a prepared envelope; returns once it is durable.
    pub async fn publish_envelope(&self, envelope: &Envelope) -> Result<Receipt, Error> {
        let bytes = self.codec.encode(envelope)?;
        let offset = self
            .log
            .append(bytes)
            .await
            .map_err(|e| storage(&self.topic, "publish", e))?;
        Ok(Receipt {
            id: envelope.id.clone(),
            offset,
        })
    }

    /// Publishes several envelopes with one durability wait; all or none are acknowledged.
    pub async fn publish_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Receipt>, Error> {
        let encoded = envelopes
            .iter()
            .map(|e| self.codec.encode(e))
            .collect::<Result<Vec<Bytes>, Error>>()?;
        let offsets = self
            .log
            .append_batch(encoded)
            .await
            .map_err(|e| storage(&self.topic, "publish", e))?;
        Ok(envelopes
            .iter()
            .zip(offsets)
            .map(|(e, offset)| Receipt {
                id: e.id.clone(),
                offset,
            })
            .collect())
    }
}
