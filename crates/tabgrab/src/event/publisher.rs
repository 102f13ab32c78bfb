//! Publishing events durably.

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::embedded::storage;
use crate::backend::{Backend, Bus, Engine};
use crate::{Codec, Envelope, Error, Event};

/// Where a publisher writes.
#[derive(Clone)]
enum Target {
    /// The topic's durable log (embedded).
    Log(tabgrab_log::Log),
    /// A broker.
    Broker(Arc<dyn Backend>),
}

/// Publishes events to one topic. Cheap to clone; on the embedded bus clones share the
/// topic's log writer, so concurrent publishes are committed together (one fsync for many
/// events).
#[derive(Clone)]
pub struct Publisher {
    /// Where events go.
    target: Target,
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
    /// The offset of the event in the topic (JetStream: the stream sequence).
    pub offset: u64,
    /// The engine recognised the id as already published (a retried publish): no second
    /// event was made. Always `false` on engines without de-duplication.
    pub duplicate: bool,
}

impl Publisher {
    /// A publisher to `topic` on `bus`, stamping `source` on the events it makes.
    /// `bus` is a [`Bus`] or an `&EmbeddedBus`.
    pub fn new(bus: impl Into<Bus>, topic: &str, source: &str) -> Result<Publisher, Error> {
        let bus = bus.into();
        crate::backend::embedded::validate_topic(topic)?;
        let target = match &bus.engine {
            Engine::Embedded(bus) => Target::Log(bus.topic(topic)?),
            Engine::Broker(b) => Target::Broker(Arc::clone(b)),
        };
        Ok(Publisher {
            target,
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
    /// A publish that failed may be repeated with the same envelope: on engines with
    /// de-duplication it is then not a second event.
    pub async fn publish_envelope(&self, envelope: &Envelope) -> Result<Receipt, Error> {
        match &self.target {
            Target::Log(log) => {
                let bytes = self.codec.encode(envelope)?;
                let offset = log
                    .append(bytes)
                    .await
                    .map_err(|e| storage(&self.topic, "publish", e))?;
                Ok(Receipt {
                    id: envelope.id.clone(),
                    offset,
                    duplicate: false,
                })
            }
            Target::Broker(b) => {
                let published = b.publish(&self.topic, envelope).await?;
                Ok(Receipt {
                    id: envelope.id.clone(),
                    offset: published.position,
                    duplicate: published.duplicate,
                })
            }
        }
    }

    /// Publishes several envelopes with one durability wait; all or none are acknowledged.
    /// On a broker the envelopes are published concurrently, each acknowledged separately: a
    /// failure leaves the others published (repeat the batch; ids de-duplicate it).
    pub async fn publish_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Receipt>, Error> {
        let log = match &self.target {
            Target::Log(log) => log,
            Target::Broker(_) => {
                return futures::future::try_join_all(
                    envelopes.iter().map(|e| self.publish_envelope(e)),
                )
                .await;
            }
        };
        let encoded = envelopes
            .iter()
            .map(|e| self.codec.encode(e))
            .collect::<Result<Vec<Bytes>, Error>>()?;
        let offsets = log
            .append_batch(encoded)
            .await
            .map_err(|e| storage(&self.topic, "publish", e))?;
        Ok(envelopes
            .iter()
            .zip(offsets)
            .map(|(e, offset)| Receipt {
                id: e.id.clone(),
                offset,
                duplicate: false,
            })
            .collect())
    }
}
