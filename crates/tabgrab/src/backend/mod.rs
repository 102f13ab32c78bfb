//! Backends carry envelopes between services, selected by one URL ([`Bus::connect`]):
//!
//! | URL | backend | feature |
//! |---|---|---|
//! | `embedded:///path` | [`embedded`]: an on-disk log in this process, no server | always |
//! | `nats://host:port[?replicas=3&ack_wait_ms=2000]` | [`nats`]: JetStream for events, one stream per topic | `nats` |
//! | `amqp://user:pass@host:port/vhost` | [`amqp`]: RabbitMQ, a topic exchange per topic, a quorum queue per group | `amqp` |
//!
//! # The contract
//! Application code (publishers, subscriptions, requesters, responders) holds a [`Bus`] and
//! never names an engine, so moving from one machine to a cluster is a change of URL.
//!
//! A broker ([`Backend`]) provides four primitives: a durable publish of an [`Envelope`] to a
//! topic, de-duplicated by the envelope id where the engine can ([`Published::duplicate`]); a
//! consumer-group subscription that delivers envelopes one by one, each acknowledged
//! ([`Acker::ack`]), given back for redelivery ([`Acker::nack`]) or given up on
//! ([`Acker::term`]), and redelivered by the broker when a consumer dies with it unacknowledged;
//! start positions for replay; and a listing of dead letters. Everything above that (decoding,
//! bad-input dead letters, per-subject lanes, retries with backoff, dead letters after
//! `max_deliveries`) is the same code for every engine: `event::Subscription`.
//!
//! The embedded log is a `Backend` like the brokers: it hands out deliveries and keeps each
//! group's offset (watermark commits, replay by offset or time) where a broker keeps the
//! acknowledgement state. A [`Bus`] is one type over any backend, nothing above this module
//! names an engine, and the conformance suite (`tests/conformance/`) runs the same scenarios
//! against each through this contract.
//!
//! # Differences are flags, not surprises
//! What an engine cannot give is a [`Capabilities`] flag, and the conformance suite tests the
//! flag both ways: for example the embedded log does not de-duplicate a publish retried with
//! the same envelope id (`dedup_window` is `None`; inboxes do that), while JetStream does within
//! its duplicate window.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::event::{DeadLetter, StartFrom};
use crate::{Codec, Envelope, Error, ErrorKind, Topic};

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod embedded;
#[cfg(any(feature = "nats", feature = "amqp"))]
mod material;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(any(feature = "nats", feature = "amqp"))]
mod tls;

use embedded::EmbeddedBus;

/// What an engine promises; differences between engines are these flags, each tested by the
/// conformance suite.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// A group can start from a point in time ([`StartFrom::Time`]).
    pub replay_from_time: bool,
    /// A group can start from a position ([`StartFrom::Offset`]).
    pub replay_from_offset: bool,
    /// A group can start again from the oldest retained event ([`StartFrom::Beginning`]).
    pub replay_from_beginning: bool,
    /// Events published while a topic has no consumer group are kept for groups that start
    /// later. When `false` (RabbitMQ: a message goes only to the queues that exist) such a
    /// publish fails with `Unavailable` rather than vanish.
    pub keeps_events_without_groups: bool,
    /// A publish retried with the same envelope id within this window is not a second event.
    /// `None`: no de-duplication at publish (use an inbox).
    pub dedup_window: Option<Duration>,
    /// Order per subject holds across the several subscriptions (members) of one group, not
    /// only within one subscription. Within one subscription it always holds.
    pub group_wide_order: bool,
    /// Several processes may share the bus (the embedded log is locked by one process).
    pub multi_process: bool,
    /// The broker itself counts the deliveries of a message, stops redelivering it after the
    /// subscription's `max_redeliveries`, and tabgrab captures the broker's notice of that
    /// into the dead letters (JetStream's `MAX_DELIVERIES` advisory, kept in a stream until a
    /// member handles it): a message that crashes every consumer is dead-lettered even when no
    /// consumer survives to see it. The broker does not know why the consumers failed, so
    /// such a dead letter has reason `max_deliveries`, the broker's delivery count as its
    /// attempts, and an error that says the last error is unknown. When `false`, the next
    /// consumer that receives the message after `max_redeliveries` dead-letters it (it must be
    /// delivered once more). Failures a consumer sees (a handler's error, bad input) are
    /// dead-lettered by the consumer on every engine, with the last error.
    pub broker_max_deliveries: bool,
    /// A message that another client of a group gave up on (JetStream `+TERM <reason>`, e.g.
    /// a worker written without tabgrab) is captured into the dead letters with the reason
    /// it gave (reason `terminated`). nats-server 2.10+ only: 2.9 publishes the
    /// `MSG_TERMINATED` advisory without a reason and treats `+TERM <reason>` as no
    /// acknowledgement at all.
    pub captures_terminations: bool,
    /// A reply can go straight to a named queue ([`ReplyAddress::Queue`], written
    /// `/queues/<name>`) through [`Backend::publish_to_queue`]: how a client that knows
    /// nothing of topics (a plain AMQP client's `reply_to`, an exclusive queue or
    /// `amq.rabbitmq.reply-to`) gets its answer, and where a requester's own replies arrive
    /// ([`Backend::group_queue`]). When `false` a request whose reply address is a queue is
    /// refused as malformed and dead-lettered.
    pub reply_queues: bool,
}

/// Where a reply goes: the `replyto` of a request.
///
/// A topic name (`replies.front-desk`) is published to like any topic; `/queues/<name>` names
/// a broker queue the reply is put into directly (the engine's default exchange on RabbitMQ),
/// on engines whose [`Capabilities::reply_queues`] says so. A topic name never starts with
/// `/`, so the two cannot be confused.
///
/// ```
/// use tabgrab::backend::ReplyAddress;
///
/// let queue = ReplyAddress::parse("/queues/amq.gen-x1")?;
/// assert_eq!(queue, ReplyAddress::Queue("amq.gen-x1".into()));
/// assert_eq!(queue.to_string(), "/queues/amq.gen-x1");
/// assert_eq!(ReplyAddress::parse("replies.front")?, ReplyAddress::Topic("replies.front".into()));
/// assert!(ReplyAddress::parse("/queues/").is_err());
/// # Ok::<(), tabgrab::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyAddress {
    /// A topic: the reply is published to it.
    Topic(String),
    /// A broker queue, by name: the reply is put into it.
    Queue(String),
}

impl ReplyAddress {
    /// The prefix of a queue address.
    pub const QUEUE_PREFIX: &'static str = "/queues/";

    /// Reads a `replyto`: `/queues/<name>` (1 to 255 bytes, no control characters: an AMQP
    /// queue name) or a valid topic name; anything else is `Malformed`.
    pub fn parse(address: &str) -> Result<ReplyAddress, Error> {
        match address.strip_prefix(Self::QUEUE_PREFIX) {
            Some(queue) => {
                let ok =
                    !queue.is_empty() && queue.len() <= 255 && !queue.chars().any(char::is_control);
                if ok {
                    Ok(ReplyAddress::Queue(queue.to_owned()))
                } else {
                    Err(Error::new(
                        ErrorKind::Malformed,
                        format!(
                            "reply address {address:?}: a queue name is 1 to 255 bytes without control characters"
                        ),
                    ))
                }
            }
            None => {
                Topic::new(address)?;
                Ok(ReplyAddress::Topic(address.to_owned()))
            }
        }
    }
}

impl std::fmt::Display for ReplyAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyAddress::Topic(topic) => f.write_str(topic),
            ReplyAddress::Queue(queue) => write!(f, "{}{queue}", Self::QUEUE_PREFIX),
        }
    }
}

/// The durable position of a published envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The offset (embedded) or stream sequence (JetStream) of the envelope.
    pub position: u64,
    /// The engine recognised the envelope id as already published: no second event was made.
    pub duplicate: bool,
}

/// Settles one delivery. Exactly one of `ack`, `nack` or `term` should be called; a delivery
/// that is never settled is redelivered by the broker after its ack wait.
pub trait Acker: Send + Sync {
    /// Done: never deliver it again to this group.
    fn ack(&self) -> BoxFuture<'_, Result<(), Error>>;
    /// Not done: deliver it again, to any member of the group, after `delay`.
    fn nack(&self, delay: Duration) -> BoxFuture<'_, Result<(), Error>>;
    /// Given up (it was dead-lettered): never deliver it again.
    fn term(&self) -> BoxFuture<'_, Result<(), Error>>;
    /// Given up, and the dead letter keeps only an excerpt of the message: never deliver it
    /// again, and keep the whole message where [`Backend::original_location`] says. By
    /// default the same as [`Acker::term`], for an engine that keeps a message at its
    /// position after it is settled (JetStream's streams); RabbitMQ rejects it to the queue's
    /// dead-letter exchange instead.
    fn reject(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.term()
    }
    /// Still working on it: restart the ack-wait timer.
    fn progress(&self) -> BoxFuture<'_, Result<(), Error>>;
}

/// One delivery of an envelope to a member of a consumer group.
pub struct Delivery {
    /// The envelope, or why it could not be decoded (it then goes to dead letters).
    pub envelope: Result<Envelope, Error>,
    /// The payload bytes as received, kept byte for byte in a dead letter.
    pub raw: Bytes,
    /// The envelope's position in its topic (JetStream: the stream sequence; RabbitMQ: the
    /// subscription's number and the delivery tag). Unique among the group's held deliveries.
    pub position: u64,
    /// How many times the broker has delivered it (1 the first time).
    pub attempt: u32,
    /// How many envelopes of the topic wait for this group beyond this one (for `lag`).
    pub pending: u64,
    /// Settles the delivery.
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("position", &self.position)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// The deliveries of a subscription; the stream ends when the broker ends it (the
/// subscription then subscribes again).
pub type Deliveries = BoxStream<'static, Result<Delivery, Error>>;

/// What a subscription asks of a broker.
#[derive(Clone, Debug)]
pub struct SubscribeRequest {
    /// The topic.
    pub topic: Topic,
    /// The consumer group: a durable consumer shared by every member (a name checked by the
    /// subscription, with the rule of topic names).
    pub group: String,
    /// Where the group starts; anything but `Committed` resets the group's position.
    pub start: StartFrom,
    /// How long the broker waits for a settlement before redelivering (the subscription
    /// reports progress on held deliveries well within it).
    pub ack_wait: Duration,
    /// How many deliveries may be outstanding for this member.
    pub max_in_flight: usize,
    /// Deliveries of one message before it is dead-lettered unrun (the subscription's
    /// `max_redeliveries`, a guard against crash loops); a broker that counts deliveries
    /// itself ([`Capabilities::broker_max_deliveries`]) stops redelivering there.
    pub max_redeliveries: u32,
    /// The group joins again after the broker ended its subscription: what the backend
    /// remembers about the group's broker objects (a declared queue) may be stale.
    pub rejoin: bool,
    /// Cancelled when the member stops: the backend stops asking for more, and its stream
    /// yields what is already on its way to this member, then ends (the subscription gives
    /// all of it back at once), instead of leaving it to the broker's ack wait.
    pub stop: tokio_util::sync::CancellationToken,
    /// How often an engine that keeps the group's position itself (the embedded log) commits
    /// it; brokers keep it on every settlement and ignore this.
    pub commit_interval: Duration,
    /// The type of a delivery that names none, for an engine that reads messages of clients
    /// that send no CloudEvents attributes (RabbitMQ: a plain AMQP reply carries only its
    /// `correlation_id`). `None`: such a message is bad input (missing `type`).
    pub untyped_as: Option<String>,
}

/// What an engine reports about itself at start-up: what an acknowledged publish means there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineReport {
    /// `embedded`, `nats`.
    pub engine: String,
    /// The server's version, if there is a server.
    pub server_version: Option<String>,
    /// Free-form lines: storage, replicas, fsync policy.
    pub details: Vec<String>,
}

impl std::fmt::Display for EngineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.engine)?;
        if let Some(v) = &self.server_version {
            write!(f, " (server {v})")?;
        }
        for line in &self.details {
            write!(f, "; {line}")?;
        }
        Ok(())
    }
}

/// A message broker behind a [`Bus`]: the primitives every engine provides.
///
/// Object-safe with boxed futures, so a `Bus` holds any engine as `Arc<dyn Backend>`.
pub trait Backend: Send + Sync + 'static {
    /// The engine's name (`nats`), for errors and reports.
    fn name(&self) -> &'static str;
    /// The backend as `Any`, so that [`Bus::as_embedded`] can hand out the concrete engine.
    fn as_any(&self) -> &dyn std::any::Any;
    /// What the engine promises.
    fn capabilities(&self) -> Capabilities;
    /// Whether the engine is reachable now, and if not why (for readiness checks; cheap, no
    /// round trip: the client's own view of its connection). The embedded log always is.
    fn connected(&self) -> Result<(), String> {
        Ok(())
    }
    /// The envelope size limit.
    fn codec(&self) -> Codec;
    /// Publishes `envelope` to `topic` durably; de-duplicated by the envelope id where
    /// `capabilities().dedup_window` says so. Returns once the engine acknowledged it.
    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Published, Error>>;
    /// Publishes several envelopes to `topic`. By default concurrently, each acknowledged on
    /// its own (a failure leaves the others published; repeat the batch, ids de-duplicate
    /// it where the engine can); the embedded log makes them durable together, all or none.
    fn publish_batch<'a>(
        &'a self,
        topic: &'a Topic,
        envelopes: &'a [Envelope],
    ) -> BoxFuture<'a, Result<Vec<Published>, Error>> {
        Box::pin(futures::future::try_join_all(
            envelopes.iter().map(|e| self.publish(topic, e)),
        ))
    }

    /// Publishes `envelope`, of which `encoded` is the codec's encoding ([`Codec::encode`],
    /// as an outbox stores it). An engine that sends or stores that form (the embedded log;
    /// NATS and RabbitMQ in structured mode) writes the bytes as they are, after
    /// [`Codec::check_encoded`], so the envelope is not encoded a second time; otherwise the
    /// envelope is published in the engine's binding (the default).
    fn publish_encoded<'a>(
        &'a self,
        topic: &'a Topic,
        envelope: &'a Envelope,
        encoded: Bytes,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        let _ = encoded;
        self.publish(topic, envelope)
    }

    /// Publishes `payload` to `topic` as it is, with no envelope attributes, about `subject`
    /// where the engine routes by subject: for tools and tests that put foreign or damaged
    /// messages on a topic. Subscriptions dead-letter what does not decode.
    fn publish_raw<'a>(
        &'a self,
        topic: &'a Topic,
        subject: Option<&'a str>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<Published, Error>>;
    /// The ack wait a subscription asking for `requested` gets (a backend may be configured
    /// to override it, e.g. `?ack_wait_ms=` in a NATS URL); the subscription reports progress
    /// well within it.
    fn ack_wait(&self, requested: Duration) -> Duration {
        requested
    }
    /// Joins `request.group` on `request.topic` (creating the group if needed). An engine
    /// that can join without a round trip (the embedded log) joins before the future is
    /// polled, so that a group starting from the latest event misses nothing published after
    /// the subscription started.
    fn subscribe(
        self: Arc<Self>,
        request: SubscribeRequest,
    ) -> BoxFuture<'static, Result<Deliveries, Error>>;
    /// Every envelope of `topic` from the beginning, oldest first (dead-letter listings).
    fn read_all<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Vec<Envelope>, Error>>;
    /// Waits until what this client has sent (settlements above all) has reached the
    /// broker: a stopping member calls it last, so that a process that exits right after
    /// its subscriptions stopped does not take queued acknowledgements with it.
    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    /// Where the engine keeps the whole message at `position` of `topic` once a group has
    /// given up on it with [`Acker::reject`], in words for a dead letter whose original is
    /// only an excerpt.
    fn original_location(&self, topic: &Topic, position: u64) -> String {
        format!("{} topic {topic} at position {position}", self.name())
    }
    /// How many messages of `topic` the group `group` has not settled yet, or `None` when the
    /// group does not exist or the engine cannot say. A group whose lag stays above zero while
    /// its members run is stuck. The embedded log and NATS count what waits and what is in
    /// flight; RabbitMQ's protocol tells only what waits in the queue, so there a member that
    /// holds deliveries unacknowledged does not show (see [`Bus::lag`]).
    fn group_lag<'a>(
        &'a self,
        topic: &'a Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        let _ = (topic, group);
        Box::pin(async { Ok(None) })
    }
    /// How many members the group `group` of `topic` has now, or `None` when the engine
    /// cannot say: the embedded bus counts the subscriptions of this process (the only one
    /// that can open its log), RabbitMQ the consumers of the group's queue; NATS pull
    /// consumers do not register their members, so there it is `None`.
    fn group_members<'a>(
        &'a self,
        topic: &'a Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        let _ = (topic, group);
        Box::pin(async { Ok(None) })
    }
    /// How many messages have been published to `topic` since it began (the end of its log,
    /// the last sequence of its stream), or `None` when the topic does not exist yet or the
    /// engine cannot say (RabbitMQ's exchanges count nothing). With [`Backend::group_lag`] it
    /// gives what a group has settled, so a console can show each one's throughput.
    fn topic_end<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        let _ = topic;
        Box::pin(async { Ok(None) })
    }
    /// The lag of a group that runs in this process, when the engine knows it without asking
    /// a server (the embedded log: the end of the log minus the group's watermark); `None`
    /// otherwise, and a subscription then counts what the broker last said is pending.
    fn live_lag(&self, topic: &Topic, group: &str) -> Option<u64> {
        let _ = (topic, group);
        None
    }
    /// Puts `envelope` straight into the broker queue `queue` (a [`ReplyAddress::Queue`]):
    /// durably, confirmed, and refused with `Unavailable` when the queue does not exist. Only
    /// where [`Capabilities::reply_queues`] says so; by default refused as `Malformed`.
    fn publish_to_queue<'a>(
        &'a self,
        queue: &'a str,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        let _ = envelope;
        let error = Error::new(
            ErrorKind::Malformed,
            format!(
                "reply address {}{queue}: the {} bus cannot put a message into a named queue \
                 (Capabilities::reply_queues is false); reply to a topic instead",
                ReplyAddress::QUEUE_PREFIX,
                self.name()
            ),
        );
        Box::pin(async move { Err(error) })
    }
    /// The queue that the group `group` of `topic` consumes from, where the engine has one
    /// that a client can address by name ([`Capabilities::reply_queues`]): a requester
    /// gives it as its reply address, so that a plain client's reply reaches the group.
    /// `None` by default.
    fn group_queue(&self, topic: &Topic, group: &str) -> Option<String> {
        let _ = (topic, group);
        None
    }
    /// Deletes a topic and its groups (tests clean up with it).
    fn delete_topic<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<(), Error>>;
    /// What an acknowledged publish means on this engine, read from the server.
    fn report(&self) -> BoxFuture<'_, Result<EngineReport, Error>>;
}

/// A cheap-to-clone handle on a bus: the embedded log or a broker, chosen by URL.
///
/// Every publisher, subscription, requester and responder takes `&Bus` (an `&EmbeddedBus`
/// converts into one), so the same code runs on every engine.
#[derive(Clone)]
pub struct Bus {
    /// The engine.
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("engine", &self.name()).finish()
    }
}

impl Bus {
    /// Connects to the bus at `url`: `embedded:///path` (or a plain path), `nats://host:port`
    /// (or `tls://host:port`; TLS and credentials in the query: see
    /// [`NatsSecurity`](nats::NatsSecurity)), `amqp://user:pass@host:port/vhost`.
    pub async fn connect(url: &str) -> Result<Bus, Error> {
        if let Some(path) = url.strip_prefix("embedded://") {
            return Ok(Bus::from(EmbeddedBus::open(path)?));
        }
        if url.starts_with("nats://") || url.starts_with("tls://") {
            #[cfg(feature = "nats")]
            {
                let bus = nats::NatsBus::connect(url).await?;
                return Ok(Bus::from_backend(Arc::new(bus)));
            }
            #[cfg(not(feature = "nats"))]
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{}: this build has no NATS backend; enable tabgrab's `nats` feature",
                    crate::SecretUrl::new(url)
                ),
            ));
        }
        if url.starts_with("amqp://") || url.starts_with("amqps://") {
            #[cfg(feature = "amqp")]
            {
                let bus = amqp::AmqpBus::connect(url).await?;
                return Ok(Bus::from_backend(Arc::new(bus)));
            }
            #[cfg(not(feature = "amqp"))]
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{}: this build has no RabbitMQ backend; enable tabgrab's `amqp` feature",
                    crate::SecretUrl::new(url)
                ),
            ));
        }
        if url.contains("://") {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "bus URL {:?}: unknown scheme; use embedded:///path, nats://host:port or amqp://user:pass@host:port/vhost",
                    crate::SecretUrl::new(url).redacted()
                ),
            ));
        }
        Ok(Bus::from(EmbeddedBus::open(url)?))
    }

    /// A bus over any backend.
    pub fn from_backend(backend: Arc<dyn Backend>) -> Bus {
        Bus { backend }
    }

    /// The engine's name: `embedded`, `nats`, `amqp`.
    pub fn name(&self) -> &'static str {
        self.backend.name()
    }

    /// The embedded bus, if this is one.
    pub fn as_embedded(&self) -> Option<&EmbeddedBus> {
        self.backend.as_any().downcast_ref::<EmbeddedBus>()
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Whether the engine is reachable now, and if not why (see [`Backend::connected`]).
    pub fn connected(&self) -> Result<(), String> {
        self.backend.connected()
    }

    /// What the engine promises.
    pub fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// The envelope codec (size limit).
    pub fn codec(&self) -> Codec {
        self.backend.codec()
    }

    /// What an acknowledged publish means on this engine (log it at start-up).
    pub async fn report(&self) -> Result<EngineReport, Error> {
        self.backend.report().await
    }

    /// Publishes `payload` to `topic` as it is, not as an envelope (see
    /// [`Backend::publish_raw`]): how a test or a tool puts a foreign or damaged message on
    /// a topic. Subscriptions dead-letter what does not decode.
    pub async fn publish_raw(
        &self,
        topic: &str,
        subject: Option<&str>,
        payload: Bytes,
    ) -> Result<Published, Error> {
        self.backend
            .publish_raw(&Topic::new(topic)?, subject, payload)
            .await
    }

    /// Where the engine keeps the whole message at `position` of `topic` after a group gave
    /// up on it (see [`DeadLetter::original_kept_at`]).
    pub fn original_location(&self, topic: &Topic, position: u64) -> String {
        self.backend.original_location(topic, position)
    }

    /// How many messages of `topic` the consumer group `group` has not settled yet, or `None`
    /// when there is no such group (or the engine cannot say). On the embedded bus it is the
    /// distance from the group's watermark to the end of the log (from its committed offset,
    /// committed every second and on shutdown, when the group does not run in this process);
    /// on NATS the consumer's pending and unacknowledged messages; on RabbitMQ the messages
    /// ready in the group's queue (those a member holds unacknowledged are not counted until
    /// it gives them back).
    pub async fn lag(&self, topic: &str, group: &str) -> Result<Option<u64>, Error> {
        self.backend.group_lag(&Topic::new(topic)?, group).await
    }

    /// How many members the group `group` of `topic` has now, where the engine can say (see
    /// [`Backend::group_members`]).
    pub async fn members(&self, topic: &str, group: &str) -> Result<Option<u64>, Error> {
        self.backend.group_members(&Topic::new(topic)?, group).await
    }

    /// How many messages have been published to `topic` so far, where the engine counts them
    /// (the embedded log, NATS); `None` on RabbitMQ or before the topic exists.
    pub async fn topic_end(&self, topic: &str) -> Result<Option<u64>, Error> {
        self.backend.topic_end(&Topic::new(topic)?).await
    }

    /// Every open dead letter of `topic` (not redriven or purged), oldest first; to filter,
    /// redrive or purge them, see [`DeadLetters`](crate::event::DeadLetters).
    pub async fn dead_letters(&self, topic: &str) -> Result<Vec<DeadLetter>, Error> {
        let records = self
            .backend
            .read_all(&Topic::new(topic)?.dead_letters())
            .await?;
        Ok(crate::event::open_letters(&records)?
            .into_iter()
            .map(|k| k.letter)
            .collect())
    }

    /// Deletes a topic with its groups and dead letters (brokers only; the embedded bus
    /// deletes nothing: remove its directory). Tests clean up with it.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), Error> {
        let topic = Topic::new(topic)?;
        self.backend.delete_topic(&topic).await?;
        self.backend.delete_topic(&topic.dead_letters()).await
    }
}

impl From<EmbeddedBus> for Bus {
    fn from(bus: EmbeddedBus) -> Bus {
        Bus::from_backend(Arc::new(bus))
    }
}

impl From<&EmbeddedBus> for Bus {
    fn from(bus: &EmbeddedBus) -> Bus {
        Bus::from(bus.clone())
    }
}

impl From<&mut EmbeddedBus> for Bus {
    fn from(bus: &mut EmbeddedBus) -> Bus {
        Bus::from(bus.clone())
    }
}

impl From<&Bus> for Bus {
    fn from(bus: &Bus) -> Bus {
        bus.clone()
    }
}
