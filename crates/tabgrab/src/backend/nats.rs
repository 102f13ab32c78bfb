//! The NATS backend: events on JetStream (one stream per topic, a durable pull consumer per
//! consumer group), envelopes in CloudEvents binary mode (attributes as `ce-*` headers).
//!
//! # Naming
//! A topic is one subject token: dots become `~` (`orders.dead-letters` is
//! `orders~dead-letters`), so that no topic's subjects overlap another's. The topic `orders`
//! is the stream `TABGRAB_orders` with the subjects `tabgrab.orders.>`; an envelope about
//! subject `o-1` is published on `tabgrab.orders.o-1` (the subject sanitised to one token:
//! `.`, `*`, `>` and whitespace become `_`), so tools can filter by subject. The real
//! subject is always the `ce-subject` header. A consumer group is the durable consumer of
//! the group's name (dots as `~`).
//!
//! # What is promised, honestly
//! - **Publish** returns after JetStream's acknowledgement, with `Nats-Msg-Id` set to the
//!   envelope id: within the stream's duplicate window (2 minutes) a retried publish is
//!   recognised and is not a second event ([`Published::duplicate`]). A publish that times out
//!   is retried here with the same id, so it is safe. An acknowledgement means the stream's
//!   replicas *have* the message, not that it is on disk: nats-server syncs its files every
//!   two minutes by default, and only `sync_interval: always` (nats-server 2.10+) makes an
//!   acknowledged publish survive a power loss (see README and BENCHMARKS.md).
//! - **Consumer groups**: explicit acks, `max_deliver` unlimited at the server and counted by
//!   the subscription instead, which dead-letters (to the topic `<topic>.dead-letters`, a
//!   stream too) any delivery past `max_deliveries`, also one that crashed its consumer every
//!   time. JetStream has no dead-letter stream of its own.
//! - **Order** per subject holds within one subscription (its lanes); two subscriptions of
//!   one group (two processes) pull from one consumer and may handle events of the same
//!   subject concurrently ([`Capabilities::group_wide_order`] is false).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};

use super::{
    Acker, Backend, Capabilities, Deliveries, Delivery, EngineReport, Published, SubscribeRequest,
    embedded::validate_topic,
};
use crate::event::StartFrom;
use crate::{Codec, Envelope, Error, ErrorKind};

/// How long JetStream remembers message ids for de-duplication.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Attempts of one publish (same `Nats-Msg-Id`) when the acknowledgement does not come.
const PUBLISH_ATTEMPTS: u32 = 3;

/// Settings of streams this backend creates.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// Stream replicas (1 on a single server; 3 on a cluster for fault tolerance).
    pub replicas: usize,
    /// The envelope size limit.
    pub codec: Codec,
    /// Largest number of unacknowledged deliveries per consumer group.
    pub max_ack_pending: i64,
    /// Overrides every subscription's ack wait (how soon a crashed consumer's deliveries go
    /// to another member); `None`: each subscription's own (30 s by default).
    pub ack_wait: Option<Duration>,
}

impl NatsConfig {
    /// Reads settings from a URL's query (`replicas`, `ack_wait_ms`); returns the URL without
    /// its query.
    pub fn from_url(url: &str) -> Result<(String, NatsConfig), Error> {
        let mut config = NatsConfig::default();
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), config));
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = value.parse::<u64>().map_err(|_| {
                Error::new(
                    ErrorKind::Malformed,
                    format!("nats URL {url}: {key}={value:?} is not a number"),
                )
            });
            match key {
                "replicas" => config.replicas = usize::try_from(number?).unwrap_or(1).max(1),
                "ack_wait_ms" => config.ack_wait = Some(Duration::from_millis(number?.max(300))),
                _ => {
                    return Err(Error::new(
                        ErrorKind::Malformed,
                        format!(
                            "nats URL {url}: unknown setting {key:?}; known: replicas, ack_wait_ms"
                        ),
                    ));
                }
            }
        }
        Ok((base.to_owned(), config))
    }
}

impl Default for NatsConfig {
    fn default() -> NatsConfig {
        NatsConfig {
            replicas: 1,
            codec: Codec::default(),
            max_ack_pending: 10_000,
            ack_wait: None,
        }
    }
}

/// A connection to NATS with JetStream; cheap to clone.
#[derive(Clone)]
pub struct NatsBus {
    /// The core connection (reconnects by itself).
    client: async_nats::Client,
    /// JetStream over it.
    js: jetstream::Context,
    /// The server URL, for error messages.
    url: Arc<str>,
    /// Stream settings.
    config: NatsConfig,
    /// Streams known to exist with the right subjects, so publish checks once.
    streams: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus").field("url", &self.url).finish()
    }
}

/// The subject token of a topic.
pub fn topic_token(topic: &str) -> String {
    topic.replace('.', "~")
}

/// The stream that holds `topic`.
pub fn stream_name(topic: &str) -> String {
    format!("TABGRAB_{}", topic_token(topic))
}

/// The subject an envelope about `subject` is published on in `topic`.
pub fn nats_subject(topic: &str, subject: Option<&str>) -> String {
    let token: String = match subject {
        None | Some("") => "_".to_owned(),
        Some(s) => s
            .chars()
            .take(128)
            .map(|c| {
                if c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect(),
    };
    format!("tabgrab.{}.{token}", topic_token(topic))
}

fn unavailable(what: String, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Unavailable, what).with_source(e)
}

impl NatsBus {
    /// Connects to `url` (`nats://host:port`) with default settings.
    /// Settings may follow in the query: `?replicas=3&ack_wait_ms=2000`.
    pub async fn connect(url: &str) -> Result<NatsBus, Error> {
        let (url, config) = NatsConfig::from_url(url)?;
        NatsBus::connect_with(&url, config).await
    }

    /// Connects with explicit settings. The connection reconnects by itself when the server
    /// restarts; publishes and subscriptions resume.
    pub async fn connect_with(url: &str, config: NatsConfig) -> Result<NatsBus, Error> {
        let client = async_nats::ConnectOptions::new()
            .name("tabgrab")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| {
                unavailable(
                    format!(
                        "nats: cannot connect to {url}; is nats-server running there (with -js)?"
                    ),
                    e,
                )
            })?;
        let js = jetstream::new(client.clone());
        Ok(NatsBus {
            client,
            js,
            url: url.into(),
            config,
            streams: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// The core NATS client (request-reply, raw access).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates the stream of `topic` if it does not exist, or checks that the existing one
    /// holds the topic's subjects.
    pub async fn ensure_stream(&self, topic: &str) -> Result<stream::Stream, Error> {
        validate_topic(topic)?;
        let name = stream_name(topic);
        let subjects = format!("tabgrab.{}.>", topic_token(topic));
        let stream = self
            .js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subjects.clone()],
                storage: stream::StorageType::File,
                num_replicas: self.config.replicas,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                unavailable(
                    format!(
                        "nats {}: cannot create or read the stream {name} of topic {topic}",
                        self.url
                    ),
                    e,
                )
            })?;
        let existing = &stream.cached_info().config.subjects;
        if !existing.contains(&subjects) {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "nats: stream {name} exists with subjects {existing:?}, not {subjects}; \
                     delete it or use another topic name"
                ),
            ));
        }
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_owned());
        Ok(stream)
    }

    fn stream_known(&self, topic: &str) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(topic)
    }

    /// The headers and body of an envelope in CloudEvents binary mode, with `Nats-Msg-Id`.
    fn encode(&self, envelope: &Envelope) -> Result<(async_nats::HeaderMap, Bytes), Error> {
        let (pairs, body) = self.config.codec.encode_binary(envelope)?;
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(name, value);
        }
        headers.insert("Nats-Msg-Id", envelope.id.as_str());
        Ok((headers, body))
    }

    async fn publish_inner(&self, topic: &str, envelope: &Envelope) -> Result<Published, Error> {
        if !self.stream_known(topic) {
            self.ensure_stream(topic).await?;
        }
        let subject = nats_subject(topic, envelope.subject.as_deref());
        let (headers, body) = self.encode(envelope)?;
        let mut attempt = 1;
        loop {
            let result = match self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(ack) => {
                    return Ok(Published {
                        position: ack.sequence,
                        duplicate: ack.duplicate,
                    });
                }
                Err(e) => {
                    let kind = e.kind();
                    let retry = matches!(
                        kind,
                        jetstream::context::PublishErrorKind::TimedOut
                            | jetstream::context::PublishErrorKind::BrokenPipe
                    );
                    if retry && attempt < PUBLISH_ATTEMPTS {
                        attempt += 1;
                        continue;
                    }
                    let error_kind = match kind {
                        jetstream::context::PublishErrorKind::TimedOut => ErrorKind::Timeout,
                        jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                            ErrorKind::TooLarge
                        }
                        _ => ErrorKind::Unavailable,
                    };
                    return Err(Error::new(
                        error_kind,
                        format!(
                            "nats {}: publish of {} {} to topic {topic} (subject {subject}) was not \
                             acknowledged after {attempt} attempts; it may or may not be stored: \
                             publish the same envelope again (its id de-duplicates it)",
                            self.url, envelope.ty, envelope.id
                        ),
                    )
                    .with_source(e));
                }
            }
        }
    }

    async fn subscribe_inner(&self, request: SubscribeRequest) -> Result<Deliveries, Error> {
        let stream = self.ensure_stream(&request.topic).await?;
        validate_topic(&request.group)?;
        let name = topic_token(&request.group);
        let deliver_policy = match request.start {
            StartFrom::Committed | StartFrom::Beginning => consumer::DeliverPolicy::All,
            StartFrom::Offset(o) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: o.max(1),
            },
            StartFrom::Time(t) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from(t),
            },
            StartFrom::Latest => consumer::DeliverPolicy::New,
        };
        if request.start != StartFrom::Committed {
            // A new start position is a new consumer: the old one (and its acks) goes.
            let _ = stream.delete_consumer(&name).await;
        }
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait(request.ack_wait),
            max_deliver: -1,
            filter_subject: format!("tabgrab.{}.>", topic_token(&request.topic)),
            max_ack_pending: self.config.max_ack_pending,
            ..Default::default()
        };
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| {
                unavailable(
                    format!(
                        "nats {}: cannot create the consumer {name} (group {}) on the stream of topic {}",
                        self.url, request.group, request.topic
                    ),
                    e,
                )
            })?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(request.max_in_flight.clamp(1, 256))
            .messages()
            .await
            .map_err(|e| {
                unavailable(
                    format!(
                        "nats {}: cannot pull from the consumer {name} of topic {}",
                        self.url, request.topic
                    ),
                    e,
                )
            })?;
        let codec = self.config.codec;
        let topic = request.topic.clone();
        Ok(messages
            .map(move |item| match item {
                Ok(message) => Ok(delivery(codec, message)),
                Err(e) => Err(unavailable(
                    format!("nats: pulling from topic {topic} failed"),
                    e,
                )),
            })
            .boxed())
    }

    async fn read_all_inner(&self, topic: &str) -> Result<Vec<Envelope>, Error> {
        let mut stream = match self.js.get_stream(stream_name(topic)).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => {
                return Err(unavailable(
                    format!("nats {}: cannot read the stream of topic {topic}", self.url),
                    e,
                ));
            }
        };
        let state = stream
            .info()
            .await
            .map_err(|e| unavailable(format!("nats: stream info of topic {topic}"), e))?
            .state
            .clone();
        let mut envelopes = Vec::new();
        if state.messages == 0 {
            return Ok(envelopes);
        }
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue; // deleted
            };
            let envelope = decode(self.config.codec, Some(&message.headers), message.payload)?;
            envelopes.push(envelope);
        }
        Ok(envelopes)
    }

    async fn report_inner(&self) -> Result<EngineReport, Error> {
        let info = self.client.server_info();
        // The account's figures are informative only: async-nats cannot decode the account
        // info of some servers (Debian's nats-server 2.9 answers in a shape it rejects), and
        // that must not make the report fail.
        let account = match self.js.query_account().await {
            Ok(account) => format!(
                "account: {} streams, {} consumers",
                account.streams, account.consumers
            ),
            Err(e) => format!("account: not readable ({e})"),
        };
        Ok(EngineReport {
            engine: "nats".into(),
            server_version: Some(info.version.clone()),
            details: vec![
                format!("server {} at {}", info.server_name, self.url),
                format!(
                    "streams: file storage, {} replica(s), duplicate window {} s",
                    self.config.replicas,
                    DUPLICATE_WINDOW.as_secs()
                ),
                account,
                "an acknowledged publish is on disk only if the server runs with sync_interval: always \
                 (the default fsyncs every 2 minutes)"
                    .into(),
            ],
        })
    }
}

/// Decodes a CloudEvents binary-mode message.
fn decode(
    codec: Codec,
    headers: Option<&async_nats::HeaderMap>,
    payload: Bytes,
) -> Result<Envelope, Error> {
    let pairs: Vec<(&str, &[u8])> = headers
        .map(|h| {
            h.iter()
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |v| (name.as_ref(), v.as_str().as_bytes()))
                })
                .collect()
        })
        .unwrap_or_default();
    codec.decode_binary(pairs, payload)
}

fn delivery(codec: Codec, message: jetstream::Message) -> Delivery {
    let (position, attempt, pending) = match message.info() {
        Ok(info) => (
            info.stream_sequence,
            u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            info.pending,
        ),
        Err(_) => (0, 1, 0),
    };
    let (message, acker) = message.split();
    let envelope = decode(codec, message.headers.as_ref(), message.payload.clone());
    Delivery {
        envelope,
        raw: message.payload,
        position,
        attempt,
        pending,
        acker: Box::new(NatsAcker(acker)),
    }
}

/// Settles a JetStream delivery.
struct NatsAcker(jetstream::message::Acker);

impl NatsAcker {
    fn send(&self, kind: AckKind) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            self.0
                .ack_with(kind)
                .await
                .map_err(|e| Error::new(ErrorKind::Unavailable, format!("nats: ack failed: {e}")))
        }
        .boxed()
    }
}

impl Acker for NatsAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.send(AckKind::Ack)
    }
    fn nack(&self, delay: Duration) -> BoxFuture<'_, Result<(), Error>> {
        self.send(AckKind::Nak((!delay.is_zero()).then_some(delay)))
    }
    fn term(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.send(AckKind::Term)
    }
    fn progress(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.send(AckKind::Progress)
    }
}

impl Backend for NatsBus {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            replay_from_time: true,
            replay_from_offset: true,
            replay_from_beginning: true,
            keeps_events_without_groups: true,
            dedup_window: Some(DUPLICATE_WINDOW),
            group_wide_order: false,
            multi_process: true,
        }
    }

    fn codec(&self) -> Codec {
        self.config.codec
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        self.publish_inner(topic, envelope).boxed()
    }

    fn ack_wait(&self, requested: Duration) -> Duration {
        self.config.ack_wait.unwrap_or(requested)
    }

    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<Deliveries, Error>> {
        self.subscribe_inner(request).boxed()
    }

    fn read_all<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<Vec<Envelope>, Error>> {
        self.read_all_inner(topic).boxed()
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            self.streams
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(topic);
            match self.js.delete_stream(stream_name(topic)).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("not found") => Ok(()),
                Err(e) => Err(unavailable(
                    format!(
                        "nats {}: cannot delete the stream of topic {topic}",
                        self.url
                    ),
                    e,
                )),
            }
        }
        .boxed()
    }

    fn report(&self) -> BoxFuture<'_, Result<EngineReport, Error>> {
        self.report_inner().boxed()
    }
}
