//! Publishing events durably.

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{Backend, Bus, Published};
use crate::telemetry::{Labels, names};
use crate::{Envelope, Error, Event, Topic};
use tabgrab_core::telemetry::trace::{Kind, Parent, Span, Start, Value};

/// Publishes events to one topic. Cheap to clone; on the embedded bus clones share the
/// topic's log writer, so concurrent publishes are committed together (one fsync for many
/// events).
#[derive(Clone)]
pub struct Publisher {
    /// Where events go.
    backend: Arc<dyn Backend>,
    /// The topic name, for error messages.
    topic: Topic,
    /// The CloudEvents `source` of every event this publisher makes.
    source: Arc<str>,
    /// Metrics of successful publishes (failures' are taken when they happen).
    metrics: Arc<PublishMetrics>,
    /// On whose behalf this publisher's events are sent, if it says.
    principal: Option<crate::Principal>,
}

/// A publisher's metric handles.
struct PublishMetrics {
    /// The engine as `messaging.system` names it.
    system: &'static str,
    labels: Labels,
    sent: metrics::Counter,
    duration: metrics::Histogram,
}

impl PublishMetrics {
    fn new(backend: &dyn Backend, topic: &Topic) -> PublishMetrics {
        let system = names::messaging_system(backend.name());
        let labels: Labels = vec![
            (names::SYSTEM, system.to_owned()),
            (names::DESTINATION, topic.to_string()),
        ];
        PublishMetrics {
            system,
            sent: metrics::counter!(names::SENT, &labels),
            duration: metrics::histogram!(names::OPERATION_DURATION, &labels),
            labels,
        }
    }

    /// Counts `count` messages published in one operation that started at `started`.
    fn record<T>(&self, started: std::time::Instant, count: usize, result: &Result<T, Error>) {
        let took = started.elapsed();
        match result {
            Ok(_) => {
                self.sent.increment(count as u64);
                self.duration.record(took);
            }
            Err(e) => {
                let mut labels = self.labels.clone();
                labels.push((names::ERROR_TYPE, e.kind().as_str().to_owned()));
                metrics::counter!(names::SENT, &labels).increment(count as u64);
                metrics::histogram!(names::OPERATION_DURATION, &labels).record(took);
            }
        }
    }
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
        let topic = Topic::new(topic)?;
        Ok(Publisher {
            metrics: Arc::new(PublishMetrics::new(bus.backend().as_ref(), &topic)),
            backend: Arc::clone(bus.backend()),
            topic,
            source: source.into(),
            principal: None,
        })
    }

    /// Every event this publisher makes carries `principal` (its `principal` attribute, see
    /// [`crate::principal`]), also when it is caused by an event or call of another
    /// principal. Without it, an event [`publish_caused`](Self::publish_caused) by another
    /// carries its cause's principal, and others carry none.
    pub fn as_principal(mut self, principal: crate::Principal) -> Publisher {
        self.principal = Some(principal);
        self
    }

    /// A new envelope of this publisher's source and principal.
    fn make<M: crate::Message>(&self, message: &M) -> Result<Envelope, Error> {
        let mut envelope = Envelope::new(&*self.source, message)?;
        if let Some(principal) = &self.principal {
            envelope.set_principal(Some(principal));
        }
        Ok(envelope)
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
        Ok(self.make(event)?.with_subject(subject))
    }

    /// Makes an envelope for any message (requests and replies of request-response
    /// messaging travel through publishers too).
    pub(crate) fn envelope_of<M: crate::Message>(&self, message: &M) -> Result<Envelope, Error> {
        self.make(message)
    }

    /// Publishes `event` about `subject`; returns once the event is durable.
    pub async fn publish<E: Event>(
        &self,
        event: &E,
        subject: impl Into<String>,
    ) -> Result<Receipt, Error> {
        let span = self.publish_span();
        let envelope = span.in_scope(|| self.envelope(event, subject))?;
        span.set("messaging.message.id", envelope.id.as_str());
        span.instrument(self.publish_envelope(&envelope)).await
    }

    /// The span of one publish (OpenTelemetry messaging conventions); the envelope made in it
    /// carries its context.
    fn publish_span(&self) -> Span {
        Span::start(Start {
            kind: Kind::Producer,
            parent: Parent::Current,
            name: ("send", &self.topic),
            attributes: &[
                ("messaging.system", Value::Str(self.metrics.system)),
                ("messaging.destination.name", Value::Str(&self.topic)),
                ("messaging.operation.type", Value::Str("send")),
            ],
        })
    }

    /// Publishes `event` as an effect of `cause`: same subject, causation and correlation set,
    /// and the cause's principal unless this publisher has its own.
    pub async fn publish_caused<E: Event>(
        &self,
        event: &E,
        cause: &Envelope,
    ) -> Result<Receipt, Error> {
        let span = self.publish_span();
        let mut envelope = span.in_scope(|| self.make(event))?.caused_by(cause);
        envelope.subject.clone_from(&cause.subject);
        span.set("messaging.message.id", envelope.id.as_str());
        span.instrument(self.publish_envelope(&envelope)).await
    }

    /// Publishes a prepared envelope; returns once it is durable.
    /// A publish that failed may be repeated with the same envelope: on engines with
    /// de-duplication it is then not a second event.
    pub async fn publish_envelope(&self, envelope: &Envelope) -> Result<Receipt, Error> {
        let started = std::time::Instant::now();
        let published = self.backend.publish(&self.topic, envelope).await;
        self.metrics.record(started, 1, &published);
        let published: Published = published?;
        Ok(Receipt {
            id: envelope.id.clone(),
            offset: published.position,
            duplicate: published.duplicate,
        })
    }

    /// The engine, as `messaging.system` names it.
    pub(crate) fn system(&self) -> &'static str {
        self.metrics.system
    }

    /// Publishes `envelope` whose codec encoding is `encoded` (an outbox row): see
    /// [`Backend::publish_encoded`].
    pub(crate) async fn publish_encoded(
        &self,
        envelope: &Envelope,
        encoded: Bytes,
    ) -> Result<Receipt, Error> {
        let started = std::time::Instant::now();
        let published = self
            .backend
            .publish_encoded(&self.topic, envelope, encoded)
            .await;
        self.metrics.record(started, 1, &published);
        let published = published?;
        Ok(Receipt {
            id: envelope.id.clone(),
            offset: published.position,
            duplicate: published.duplicate,
        })
    }

    /// Publishes several envelopes. On the embedded bus they are made durable together (one
    /// durability wait), all or none; on a broker they are published concurrently, each
    /// acknowledged separately: a failure leaves the others published (repeat the batch; ids
    /// de-duplicate it where the engine can).
    pub async fn publish_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Receipt>, Error> {
        let started = std::time::Instant::now();
        let published = self.backend.publish_batch(&self.topic, envelopes).await;
        self.metrics.record(started, envelopes.len(), &published);
        let published = published?;
        Ok(envelopes
            .iter()
            .zip(published)
            .map(|(e, p)| Receipt {
                id: e.id.clone(),
                offset: p.position,
                duplicate: p.duplicate,
            })
            .collect())
    }
}
