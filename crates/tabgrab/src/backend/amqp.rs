//! The RabbitMQ backend (AMQP 0-9-1, lapin): a topic exchange per topic, one durable quorum
//! queue per consumer group, publisher confirms, manual acks, and CloudEvents in AMQP
//! properties and headers.
//!
//! # Naming
//! Topic `orders` is the durable topic exchange `tabgrab.orders`; an envelope about subject
//! `o-1` is published with routing key `o-1` (`.`, `*`, `#` and whitespace become `_`). Group
//! `kitchen` is the quorum queue `tabgrab.orders.kitchen`, bound with `#`. Dead letters of
//! `orders` go to the topic `orders.dead-letters`, whose exchange feeds the queue
//! `tabgrab.orders.dead-letters.archive` (listed by `Bus::dead_letters`; a classic queue, so
//! that listing it, which gives every message back, never reaches a delivery limit).
//!
//! # What is promised, and what RabbitMQ cannot give
//! - **Publish** returns after the broker's confirm (publisher confirms), with delivery mode 2
//!   (persistent) into quorum queues (replicated, fsynced before the confirm). It is
//!   published `mandatory`: RabbitMQ keeps a message only in the queues that exist when it
//!   arrives, so a publish to a topic that has no consumer group yet is *refused* with
//!   `Unavailable` instead of vanishing ([`Capabilities::keeps_events_without_groups`] is
//!   false). Start subscriptions (or responders) before publishing.
//! - **No de-duplication** of a retried publish (`dedup_window` is `None`; an inbox does it),
//!   and **no replay** (a queue forgets what was acknowledged): a start position other than
//!   `Committed` or `Latest` is refused with `Unsupported`-style `Malformed` errors from
//!   `Subscription::ready`.
//! - **Delivery limit and dead letters**: the subscription dead-letters (with the reason) after
//!   `max_deliveries` failed attempts, and a delivery whose `x-delivery-count` already exceeds
//!   its `max_redeliveries` (its consumers crashed on it) without running it. Each queue also
//!   has an explicit `x-delivery-limit` (50; RabbitMQ 3.10 has no default) and the dead-letter
//!   exchange `tabgrab.broker-dead-letters`, so that a message is never redelivered forever
//!   even without tabgrab.
//! - **Request-response** speaks the AMQP RPC convention, so that a plain AMQP client (pika,
//!   amqplib) can be either end ([`Capabilities::reply_queues`] is true). A requester's
//!   `replyto` is the queue its group consumes replies from,
//!   `/queues/tabgrab.replies.<group>.<group>` (a durable quorum queue, so replies survive a
//!   requester restart); it travels as the `ce-replyto` header and, without the `/queues/`
//!   prefix, as the AMQP `reply_to` property, and the request id as both `ce-correlationid`
//!   and `correlation_id`. A reply to a queue address is put into that queue through the
//!   default exchange
//!   ([`Backend::publish_to_queue`], mandatory and confirmed), with `correlation_id` set.
//!   RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`) works too; a reply there is sent
//!   without `mandatory`, which RabbitMQ would answer with a return although it delivered it,
//!   so a reply to a direct reply-to client that has gone is lost (as direct reply-to is).
//!
//! # Content modes
//! Envelopes published to a topic are in the bus's [`ContentMode`] (`?wire=structured|binary`
//! on the URL): structured by default, the event as one JSON body with `content_type`
//! `application/cloudevents+json`; binary, the attributes as `ce-*` headers and the data as
//! the body. Either way `message_id`, `type`, `correlation_id`, `reply_to` and `timestamp`
//! are set too. A reply to a queue (the AMQP RPC convention) is always binary, so that a
//! plain AMQP requester reads the answer as the body. Both modes are read.
//!
//! # Messages without CloudEvents headers
//! A message with no `ce-*` header at all (a plain AMQP client's) is read from its AMQP
//! properties, through the same CloudEvents decoding as every other message: `message_id`
//! is the id (else `correlation_id`), `type` the type (else, on a requester's reply queue,
//! the type of a plain reply), `app_id` the source (else `/amqp`), `correlation_id` the
//! correlation id, `reply_to` the reply address as `/queues/<reply_to>`, `content_type` the
//! data content type. What is still missing (no id, no type) makes it bad input, dead-lettered
//! with the attribute it lacks. A message with some `ce-*` headers is a CloudEvent and is
//! read from its headers alone.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use super::material;
use super::{
    Acker, Backend, Capabilities, Deliveries, Delivery, EngineReport, Published, ReplyAddress,
    SubscribeRequest,
};
use crate::event::StartFrom;
use crate::{Codec, Envelope, Error, ErrorKind, SecretUrl, Topic};
use tabgrab_core::wire::{self, ContentMode};

/// The explicit broker-side delivery limit of every group queue.
const DELIVERY_LIMIT: i32 = 50;

/// Where RabbitMQ puts messages past the delivery limit.
const BROKER_DLX: &str = "tabgrab.broker-dead-letters";

fn unavailable(what: String, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Unavailable, what).with_source(e)
}

/// The exchange of a topic.
pub fn exchange_name(topic: &str) -> String {
    format!("tabgrab.{topic}")
}

/// The queue that keeps a dead-letter topic's messages: `tabgrab.<topic>.archive`.
const ARCHIVE_SUFFIX: &str = ".archive";

/// The queue of a consumer group.
pub fn queue_name(topic: &str, group: &str) -> String {
    format!("tabgrab.{topic}.{group}")
}

/// An envelope as a persistent AMQP message in `mode`, with the AMQP properties a broker and
/// other clients read (`message_id`, `type`, `content_type`, `correlation_id`, `reply_to`,
/// `timestamp`). Binary: the CloudEvents attributes as `ce-*` headers, the data as the body.
/// Structured: no headers, `content_type` `application/cloudevents+json`, the codec's
/// encoding as the body (`encoded` when the caller has it, as an outbox stores it).
pub fn encode(
    codec: &Codec,
    envelope: &Envelope,
    mode: ContentMode,
    encoded: Option<&Bytes>,
) -> Result<(BasicProperties, Bytes), Error> {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(envelope.id.as_str().into())
        .with_type(envelope.ty.as_str().into());
    let body = match mode {
        ContentMode::Binary => {
            let headers = binary_headers(codec, envelope)?;
            properties = properties.with_headers(headers);
            if let Some(ct) = &envelope.datacontenttype {
                properties = properties.with_content_type(ct.as_str().into());
            }
            envelope.data.clone()
        }
        ContentMode::Structured => {
            properties = properties.with_content_type(wire::STRUCTURED_JSON.into());
            match encoded {
                Some(encoded) => {
                    codec.check_encoded(envelope, encoded)?;
                    encoded.clone()
                }
                None => codec.encode(envelope)?,
            }
        }
    };
    if let Some(c) = &envelope.correlationid {
        properties = properties.with_correlation_id(c.as_str().into());
    }
    if let Some(r) = &envelope.replyto {
        // A queue address is a queue name to a plain AMQP client.
        let r = r.strip_prefix(ReplyAddress::QUEUE_PREFIX).unwrap_or(r);
        properties = properties.with_reply_to(r.into());
    }
    if let Some(t) = envelope.time {
        properties = properties.with_timestamp(u64::try_from(t.unix_timestamp()).unwrap_or(0));
    }
    Ok((properties, body))
}

/// The `ce-*` headers of binary mode (`content-type` is the AMQP property): the shared fast
/// path when every attribute is plain header text, else the codec's percent-encoded pairs.
fn binary_headers(codec: &Codec, envelope: &Envelope) -> Result<FieldTable, Error> {
    let mut headers = FieldTable::default();
    let mut bufs = [[0u8; wire::RFC3339_MAX]; 2];
    if let Some(pairs) = wire::plain_headers(codec, envelope, &mut bufs) {
        for (name, value) in pairs {
            let name = match name {
                wire::Name::Known("content-type") => continue,
                wire::Name::Known(name) => ShortString::from(name),
                wire::Name::Extension(attribute) => format!("ce-{attribute}").into(),
            };
            headers.insert(name, AMQPValue::LongString(value.into()));
        }
        return Ok(headers);
    }
    let (pairs, _) = codec.encode_binary(envelope)?;
    for (name, value) in pairs {
        if name != "content-type" {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
    }
    Ok(headers)
}

/// tabgrab's settings in an AMQP URL's query (`wire=`, `tls_ca=`, `tls_cert=`, `tls_key=`),
/// taken out; the rest are lapin's (`heartbeat`, `frame_max`, …).
struct UrlSettings {
    /// The URL for lapin.
    url: String,
    content_mode: ContentMode,
    /// A CA certificate (PEM file) to trust for `amqps://`, besides the public roots.
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM file) and its key (PEM file, PKCS#8, PKCS#1 or SEC1) for
    /// mutual TLS.
    client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// How long a publish waits for the broker's confirm (`confirm_timeout_ms=`).
    confirm_timeout: Duration,
}

/// How long a publish waits for the broker's confirm by default. A broker that stops
/// confirming without closing the connection (a memory or disk alarm blocks publishers; a
/// network path that drops packets until the heartbeat notices) would otherwise hold the
/// publisher, and an outbox relay with its database rows, for as long as that lasts.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

fn settings_of(url: &str) -> Result<UrlSettings, Error> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(UrlSettings {
            url: url.to_owned(),
            content_mode: ContentMode::default(),
            tls_ca: None,
            client_cert: None,
            confirm_timeout: CONFIRM_TIMEOUT,
        });
    };
    let mut confirm_timeout = CONFIRM_TIMEOUT;
    let mut mode = ContentMode::default();
    let mut tls_ca = None;
    let (mut tls_cert, mut tls_key) = (None, None);
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("wire", value)) => {
                mode = ContentMode::parse(value).map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!("amqp URL {}: {}", SecretUrl::new(url), e.message()),
                    )
                })?;
            }
            Some(("tls_ca", value)) => tls_ca = Some(std::path::PathBuf::from(value)),
            Some(("tls_cert", value)) => tls_cert = Some(std::path::PathBuf::from(value)),
            Some(("tls_key", value)) => tls_key = Some(std::path::PathBuf::from(value)),
            Some(("confirm_timeout_ms", value)) => {
                let ms = value
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Malformed,
                            format!(
                                "amqp URL {}: confirm_timeout_ms must be a number of milliseconds \
                             above 0",
                                SecretUrl::new(url)
                            ),
                        )
                    })?;
                confirm_timeout = Duration::from_millis(ms);
            }
            _ => rest.push(pair),
        }
    }
    let tls_settings = [
        ("tls_ca", tls_ca.is_some()),
        ("tls_cert", tls_cert.is_some()),
        ("tls_key", tls_key.is_some()),
    ];
    if let Some((name, _)) = tls_settings.iter().find(|(_, set)| *set)
        && !base.starts_with("amqps://")
    {
        return Err(Error::new(
            ErrorKind::Malformed,
            format!(
                "amqp URL {}: {name} is for amqps:// URLs (TLS); this one is plain text",
                SecretUrl::new(url)
            ),
        ));
    }
    let client_cert = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "amqp URL {}: a client certificate needs both tls_cert and tls_key",
                    SecretUrl::new(url)
                ),
            ));
        }
    };
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok(UrlSettings {
        url,
        content_mode: mode,
        tls_ca,
        client_cert,
        confirm_timeout,
    })
}

/// Why a connection failed, as a typed error: a refused login is `Unauthenticated`, a client
/// key that is not the client certificate's is `Malformed`, a TLS
/// handshake that failed says why (untrusted or expired certificate, client certificate
/// refused), anything else is `Unavailable`. The URL's password is scrubbed from all of it.
fn connect_error(url: &SecretUrl, e: &lapin::Error) -> Error {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind()
        && amqp.get_id() == 403
    {
        return Error::new(
            ErrorKind::Unauthenticated,
            format!(
                "amqp: RabbitMQ at {url} refused the login (authentication failed): check \
                 the user and password, and that the user may use the vhost"
            ),
        )
        .with_source(url.scrub(e));
    }
    let text = e.to_string();
    if text.contains("KeyMismatch") {
        return Error::new(
            ErrorKind::Malformed,
            format!(
                "amqp URL {url}: the client key (tls_key) is not the key of the client \
                 certificate (tls_cert)"
            ),
        )
        .with_source(url.scrub(e));
    }
    if let Some(why) = super::tls::failure(&text) {
        return unavailable(
            format!("amqp: the TLS handshake with {url} failed: {why}"),
            url.scrub(e),
        );
    }
    unavailable(
        format!(
            "amqp: cannot connect to {url}; is RabbitMQ running, and are the user, password \
             and vhost right?"
        ),
        url.scrub(e),
    )
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Where [`AmqpBus::send`] publishes: a topic's exchange, or a queue through the default
/// exchange (for error messages).
#[derive(Clone, Copy)]
enum Target<'a> {
    Topic(&'a str),
    /// A queue, and whether the publish is mandatory (returned if the queue is missing).
    Queue(&'a str, bool),
}

/// The prefix of RabbitMQ's direct reply-to addresses (`amq.rabbitmq.reply-to.<token>`).
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Topic(topic) => write!(f, "topic {topic}"),
            Target::Queue(queue, _) => write!(f, "queue {queue}"),
        }
    }
}

fn routing_key(subject: Option<&str>) -> String {
    match subject {
        None | Some("") => "_".to_owned(),
        Some(s) => s
            .chars()
            .take(200)
            .map(|c| {
                if c == '.' || c == '*' || c == '#' || c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect(),
    }
}

/// A connection to RabbitMQ; cheap to clone.
#[derive(Clone)]
pub struct AmqpBus {
    /// The connection.
    connection: Arc<Connection>,
    /// The publishing channel, in confirm mode.
    publisher: Channel,
    /// The URL (shown redacted: it carries credentials).
    url: SecretUrl,
    /// The envelope size limit.
    codec: Codec,
    /// How envelopes are published to topics (`?wire=structured|binary`); both are read.
    content_mode: ContentMode,
    /// How long a publish waits for the broker's confirm (`?confirm_timeout_ms=`).
    confirm_timeout: Duration,
    /// Exchanges known to exist.
    exchanges: Arc<Mutex<HashSet<String>>>,
    /// Queues this bus declared, by topic, so that `delete_topic` removes them.
    queues: Arc<Mutex<Vec<(String, String)>>>,
    /// Serialises queue declarations and remembers the declared ones: RabbitMQ 3.10 answers
    /// two concurrent declarations of one quorum queue (or a use right after a concurrent
    /// declaration) with INTERNAL_ERROR, which closes the whole connection.
    declared: Arc<tokio::sync::Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBus").field("url", &self.url).finish()
    }
}

impl AmqpBus {
    /// The messages ready in the queue of group `group` of `topic` and its consumers, or
    /// `None` when the queue does not exist.
    async fn group_queue_counts(
        &self,
        topic: &Topic,
        group: &str,
    ) -> Result<Option<(u64, u64)>, Error> {
        // A passive declare of a missing queue closes its channel: a channel of its own.
        let channel = self.channel().await?;
        let queue = queue_name(topic, group);
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let counts = channel
            .queue_declare(queue.as_str().into(), options, FieldTable::default())
            .await
            .ok()
            .map(|q| (u64::from(q.message_count()), u64::from(q.consumer_count())));
        let _ = channel.close(200, "".into()).await;
        Ok(counts)
    }

    /// Connects to `url` (`amqp://user:pass@host:port/vhost`, or `amqps://…` for TLS, with
    /// `?tls_ca=<pem file>` to trust a CA besides the public roots, and
    /// `tls_cert=<pem file>&tls_key=<pem file>` to present a client certificate: mutual TLS,
    /// both or neither; each a path, or `env:NAME` for an environment variable holding the
    /// PEM text). A refused login is `Unauthenticated`; a failed TLS handshake is
    /// `Unavailable` and says why; either comes within 10 s, without retries.
    /// A publish the broker does not confirm within 30 s (`?confirm_timeout_ms=` to change
    /// it) fails with `Timeout`, not a wait as long as the broker's stall.
    /// `?wire=structured|binary` chooses how envelopes are published (the URL's other
    /// settings are lapin's: `heartbeat`, `frame_max`, …).
    pub async fn connect(url: &str) -> Result<AmqpBus, Error> {
        let UrlSettings {
            url,
            content_mode,
            tls_ca,
            client_cert,
            confirm_timeout,
        } = settings_of(url)?;
        let url = url.as_str();
        let shown_url = SecretUrl::new(url);
        let where_ = format!("amqp URL {shown_url}");
        let read = |what: &str, path: &std::path::Path| material::read(what, path, &where_);
        // A file that is not what its setting names is refused here, by its path: lapin's
        // own parse errors could quote a line of it, and a key's lines are secret.
        let not_pem = |what: &str, path: &std::path::Path, expected: &str| {
            Error::new(
                ErrorKind::Malformed,
                format!(
                    "amqp URL {shown_url}: the {what} {} is not PEM text holding {expected}",
                    material::shown(path)
                ),
            )
        };
        let cert_chain = match &tls_ca {
            Some(path) => {
                let pem = read("CA certificate (tls_ca)", path)?;
                if !contains(&pem, b"-----BEGIN CERTIFICATE-----") {
                    return Err(not_pem("CA certificate (tls_ca)", path, "a certificate"));
                }
                Some(String::from_utf8_lossy(&pem).into_owned())
            }
            None => None,
        };
        let identity = match &client_cert {
            Some((cert_path, key_path)) => {
                let pem = read("client certificate (tls_cert)", cert_path)?;
                if !contains(&pem, b"-----BEGIN CERTIFICATE-----") {
                    return Err(not_pem(
                        "client certificate (tls_cert)",
                        cert_path,
                        "a certificate",
                    ));
                }
                let key = read("client key (tls_key)", key_path)?;
                if !contains(&key, b"PRIVATE KEY-----") {
                    return Err(not_pem("client key (tls_key)", key_path, "a private key"));
                }
                Some(lapin::tcp::OwnedIdentity::PKCS8 { pem, key })
            }
            None => None,
        };
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| unavailable(format!("amqp {shown_url}: no runtime"), e))?;
        let connection = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect_with_config(
                shown_url.expose(),
                ConnectionProperties::default(),
                lapin::tcp::OwnedTLSConfig {
                    identity,
                    cert_chain,
                },
                runtime,
            ),
        )
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("amqp: connecting to {shown_url} took more than 10 s"),
            )
        })?
        .map_err(|e| connect_error(&shown_url, &e))?;
        let publisher = connection
            .create_channel()
            .await
            .map_err(|e| unavailable(format!("amqp {shown_url}: cannot open a channel"), e))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable(format!("amqp {shown_url}: publisher confirms refused"), e))?;
        let bus = AmqpBus {
            connection: Arc::new(connection),
            publisher,
            url: shown_url,
            codec: Codec::default(),
            content_mode,
            confirm_timeout,
            exchanges: Arc::new(Mutex::new(HashSet::new())),
            queues: Arc::new(Mutex::new(Vec::new())),
            declared: Arc::new(tokio::sync::Mutex::new(HashSet::new())),
        };
        bus.declare_exchange(BROKER_DLX, ExchangeKind::Fanout)
            .await?;
        let channel = bus.channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(BROKER_DLX.into(), durable_queue(), args)
            .await
            .map_err(|e| {
                unavailable(format!("amqp {}: cannot declare {BROKER_DLX}", bus.url), e)
            })?;
        channel
            .queue_bind(
                BROKER_DLX.into(),
                BROKER_DLX.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(format!("amqp {}: cannot bind {BROKER_DLX}", bus.url), e))?;
        let _ = channel.close(200, "".into()).await;
        Ok(bus)
    }

    async fn channel(&self) -> Result<Channel, Error> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| unavailable(format!("amqp {}: cannot open a channel", self.url), e))
    }

    async fn declare_exchange(&self, name: &str, kind: ExchangeKind) -> Result<(), Error> {
        if self
            .exchanges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
        {
            return Ok(());
        }
        // Boxed: it runs once per exchange, and inline its future would make every publish's
        // future larger than the allocator's small sizes.
        Box::pin(self.publisher.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .map_err(|e| {
            unavailable(
                format!("amqp {}: cannot declare the exchange {name}", self.url),
                e,
            )
        })?;
        self.exchanges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned());
        Ok(())
    }

    /// Declares a group's quorum queue (delivery limit, dead-letter exchange) and binds it.
    async fn declare_queue(
        &self,
        channel: &Channel,
        topic: &str,
        queue: &str,
    ) -> Result<(), Error> {
        let mut declared = self.declared.lock().await;
        if declared.contains(queue) {
            return Ok(());
        }
        let mut args = FieldTable::default();
        if crate::topic::is_dead_letters(topic) && queue.ends_with(ARCHIVE_SUFFIX) {
            // The dead-letter archive is read by listing it (get, then give everything back):
            // a quorum queue counts each give-back as a delivery and, at its delivery limit,
            // would drop the dead letters after some fifty listings. A durable classic queue
            // has no delivery limit; its persistent messages are on disk before the confirm.
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("classic".into()),
            );
        } else {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(DELIVERY_LIMIT),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(BROKER_DLX.into()),
            );
        }
        channel
            .queue_declare(queue.into(), durable_queue(), args)
            .await
            .map_err(|e| {
                unavailable(
                    format!("amqp {}: cannot declare the queue {queue}", self.url),
                    e,
                )
            })?;
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((topic.to_owned(), queue.to_owned()));
        channel
            .queue_bind(
                queue.into(),
                exchange_name(topic).into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                unavailable(
                    format!("amqp {}: cannot bind the queue {queue}", self.url),
                    e,
                )
            })?;
        declared.insert(queue.to_owned());
        Ok(())
    }

    async fn publish_inner(
        &self,
        topic: &str,
        envelope: &Envelope,
        encoded: Option<&Bytes>,
    ) -> Result<Published, Error> {
        let exchange = exchange_name(topic);
        self.declare_exchange(&exchange, ExchangeKind::Topic)
            .await?;
        if crate::topic::is_dead_letters(topic) {
            // Dead letters are kept whether or not anyone listens.
            let archive = format!("{exchange}{ARCHIVE_SUFFIX}");
            if !self
                .exchanges
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&archive)
            {
                // Boxed, once per topic: see `declare_exchange`.
                Box::pin(async {
                    let channel = self.channel().await?;
                    self.declare_queue(&channel, topic, &archive).await?;
                    let _ = channel.close(200, "".into()).await;
                    Ok::<(), Error>(())
                })
                .await?;
                self.exchanges
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(archive);
            }
        }
        let (properties, body) = encode(&self.codec, envelope, self.content_mode, encoded)?;
        let routing = routing_key(envelope.subject.as_deref());
        self.send(
            Target::Topic(topic),
            exchange,
            routing,
            &body,
            properties,
            || format!("{} {}", envelope.ty, envelope.id),
        )
        .await
    }

    async fn publish_to_queue_inner(
        &self,
        queue: &str,
        envelope: &Envelope,
    ) -> Result<Published, Error> {
        // Checked as a reply address is: a queue name, not one that could do harm.
        ReplyAddress::parse(&format!("{}{queue}", ReplyAddress::QUEUE_PREFIX))?;
        // Always binary: a reply to a queue follows the AMQP RPC convention, whose body a
        // plain AMQP requester reads as the answer itself.
        let (properties, body) = encode(&self.codec, envelope, ContentMode::Binary, None)?;
        // RabbitMQ returns a mandatory message to a direct reply-to address as unroutable even
        // when it delivered it (3.10 does): such a reply is sent without `mandatory`. Direct
        // reply-to keeps nothing anyway: a reply to a client that has gone is lost there.
        let mandatory = !queue.starts_with(DIRECT_REPLY_TO);
        self.send(
            Target::Queue(queue, mandatory),
            String::new(),
            queue.to_owned(),
            &body,
            properties,
            || format!("{} {}", envelope.ty, envelope.id),
        )
        .await
    }

    /// Publishes `body` with `properties` to `exchange` (of `target`), mandatory and
    /// confirmed; `what` names the message in errors.
    async fn send(
        &self,
        target: Target<'_>,
        exchange: String,
        routing: String,
        body: &[u8],
        properties: BasicProperties,
        what: impl Fn() -> String,
    ) -> Result<Published, Error> {
        let fail = |how: &str, e: lapin::Error| {
            unavailable(
                format!(
                    "amqp {}: publish of {} to {target} {how}; publish it again",
                    self.url,
                    what()
                ),
                e,
            )
        };
        // Boxed: lapin's publish future alone is about 1 KiB (see `declare_exchange`).
        let publish = self.publisher.basic_publish(
            exchange.into(),
            routing.into(),
            BasicPublishOptions {
                mandatory: !matches!(target, Target::Queue(_, false)),
                ..Default::default()
            },
            body,
            properties,
        );
        let confirmed = async {
            Box::pin(publish)
                .await
                .map_err(|e| fail("failed", e))?
                .await
                .map_err(|e| fail("was not confirmed", e))
        };
        let confirm = tokio::time::timeout(self.confirm_timeout, confirmed)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "amqp {}: RabbitMQ did not confirm the {} to {target} within {} ms (is \
                         it blocked by a memory or disk alarm, or is the network path down?); \
                         it may or may not be stored: publish it again (an inbox absorbs a \
                         second copy)",
                        self.url,
                        what(),
                        self.confirm_timeout.as_millis()
                    ),
                )
            })??;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Published {
                position: 0,
                duplicate: false,
            }),
            Confirmation::Ack(Some(_)) => Err(Error::new(
                ErrorKind::Unavailable,
                match target {
                    Target::Topic(topic) => format!(
                        "amqp {}: topic {topic} has no consumer group yet, so RabbitMQ would drop the {}; \
                         start a subscription (or responder) on it first",
                        self.url,
                        what()
                    ),
                    Target::Queue(queue, _) => format!(
                        "amqp {}: there is no queue {queue} (has its client gone?), so RabbitMQ would \
                         drop the {}",
                        self.url,
                        what()
                    ),
                },
            )),
            Confirmation::Nack(_) => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "amqp {}: RabbitMQ refused the {} to {target} (nack); publish it again",
                    self.url,
                    what()
                ),
            )),
        }
    }

    async fn publish_raw_inner(
        &self,
        topic: &str,
        subject: Option<&str>,
        body: Bytes,
    ) -> Result<Published, Error> {
        let exchange = exchange_name(topic);
        self.declare_exchange(&exchange, ExchangeKind::Topic)
            .await?;
        let properties = BasicProperties::default().with_delivery_mode(2);
        self.send(
            Target::Topic(topic),
            exchange,
            routing_key(subject),
            &body,
            properties,
            || format!("a raw message of {} bytes", body.len()),
        )
        .await
    }

    async fn subscribe_inner(&self, request: SubscribeRequest) -> Result<Deliveries, Error> {
        if !matches!(request.start, StartFrom::Committed | StartFrom::Latest) {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "amqp: group {} of topic {}: RabbitMQ queues cannot replay ({:?}); \
                     use StartFrom::Committed, or NATS / the embedded bus for replay",
                    request.group, request.topic, request.start
                ),
            ));
        }
        self.declare_exchange(&exchange_name(&request.topic), ExchangeKind::Topic)
            .await?;
        let channel = self.channel().await?;
        let queue = queue_name(&request.topic, &request.group);
        if request.rejoin {
            // The broker ended the consumer, perhaps because the queue was deleted: declare
            // it again rather than trust that it exists.
            self.declared.lock().await.remove(&queue);
        }
        self.declare_queue(&channel, &request.topic, &queue).await?;
        if request.start == StartFrom::Latest {
            let _ = channel
                .queue_purge(queue.as_str().into(), Default::default())
                .await;
        }
        let prefetch = u16::try_from(request.max_in_flight.clamp(1, 1000)).unwrap_or(1000);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| unavailable(format!("amqp {}: basic.qos on {queue}", self.url), e))?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                unavailable(format!("amqp {}: cannot consume from {queue}", self.url), e)
            })?;
        let codec = self.codec;
        let url = self.url.clone();
        let generation = SUBSCRIPTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The channel lives as long as the stream: closing it gives unacked messages back,
        // including what the broker had sent but the member had not read when it stopped;
        // so on stop the stream ends at once.
        let keep = Arc::new(channel);
        let untyped_as = request.untyped_as.clone();
        Ok(consumer
            .take_until(request.stop.clone().cancelled_owned())
            .map(move |item| {
                let _keep = &keep;
                match item {
                    Ok(d) => Ok(delivery(codec, generation, d, untyped_as.as_deref())),
                    Err(e) => Err(unavailable(format!("amqp {url}: consuming failed"), e)),
                }
            })
            .boxed())
    }

    async fn read_all_inner(&self, topic: &str) -> Result<Vec<Envelope>, Error> {
        let exchange = exchange_name(topic);
        let queue = format!("{exchange}{ARCHIVE_SUFFIX}");
        let channel = self.channel().await?;
        // Declared (empty) rather than probed: a basic.get on a missing queue makes the
        // broker close the channel, and racing that close with the next channel on the same
        // connection can fail the whole connection.
        self.declare_exchange(&exchange, ExchangeKind::Topic)
            .await?;
        self.declare_queue(&channel, topic, &queue).await?;
        let mut envelopes = Vec::new();
        loop {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await;
            let message = match got {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    // Deleted elsewhere since this connection declared it: declare it again
                    // next time.
                    self.declared.lock().await.remove(&queue);
                    return Err(unavailable(
                        format!("amqp {}: cannot read the queue {queue}", self.url),
                        e,
                    ));
                }
            };
            let d = message.delivery;
            envelopes.push(decode(
                self.codec,
                &d.properties,
                Bytes::from(d.data),
                None,
            )?);
        }
        // Closing the channel gives every message back: listing removes nothing.
        let _ = channel.close(200, "".into()).await;
        Ok(envelopes)
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Reads a CloudEvent: structured (the `content_type` is a CloudEvents media type) from the
/// body; binary from AMQP headers (`ce-*`) and properties. A message with no `ce-*`
/// header (a plain AMQP client's) gets its attributes from its AMQP properties, as the
/// module docs list, with `untyped_as` as its type when it has no `type` property; they are
/// handed to the codec as the headers they stand for, so there is one decoding.
fn decode(
    codec: Codec,
    properties: &BasicProperties,
    body: Bytes,
    untyped_as: Option<&str>,
) -> Result<Envelope, Error> {
    let content_type = properties.content_type().as_ref().map(ShortString::as_str);
    if content_type.is_some_and(wire::is_cloudevents_media_type) {
        return codec.decode_shared(&body);
    }
    if let Some(headers) = properties.headers() {
        // What tabgrab sends in binary mode: the shared fast path, without owned copies.
        let pairs = headers
            .into_iter()
            .filter_map(|(name, value)| {
                let value = match value {
                    AMQPValue::LongString(s) => s.as_bytes(),
                    AMQPValue::ShortString(s) => s.as_str().as_bytes(),
                    _ => return None,
                };
                Some((name.as_str(), value))
            })
            .chain(content_type.map(|ct| ("content-type", ct.as_bytes())));
        if let Some(envelope) = wire::fast_envelope(&codec, pairs, &body) {
            return Ok(envelope);
        }
    }
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(headers) = properties.headers() {
        for (name, value) in headers {
            let bytes = match value {
                AMQPValue::LongString(s) => s.as_bytes().to_vec(),
                AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
                _ => continue,
            };
            pairs.push((name.as_str().to_owned(), bytes));
        }
    }
    let cloud_event = pairs.iter().any(|(name, _)| {
        name.as_bytes()
            .get(..3)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"ce-"))
    });
    if !cloud_event {
        fn property(p: &Option<ShortString>) -> Option<&str> {
            p.as_ref().map(ShortString::as_str)
        }
        let correlation_id = property(properties.correlation_id());
        let reply_to = property(properties.reply_to())
            .map(|queue| format!("{}{queue}", ReplyAddress::QUEUE_PREFIX));
        let attributes = [
            ("ce-specversion", Some(tabgrab_core::envelope::SPEC_VERSION)),
            (
                "ce-id",
                property(properties.message_id()).or(correlation_id),
            ),
            ("ce-type", property(properties.kind()).or(untyped_as)),
            ("ce-source", property(properties.app_id()).or(Some("/amqp"))),
            ("ce-correlationid", correlation_id),
            ("ce-replyto", reply_to.as_deref()),
        ];
        for (name, value) in attributes {
            if let Some(value) = value {
                // The codec reads header values percent-encoded: a literal `%` is `%25`.
                pairs.push((name.to_owned(), value.replace('%', "%25").into_bytes()));
            }
        }
    }
    if let Some(ct) = properties.content_type() {
        pairs.push(("content-type".into(), ct.as_str().as_bytes().to_vec()));
    }
    codec.decode_binary(pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())), body)
}

/// Subscriptions made in this process, so that each has positions of its own.
static SUBSCRIPTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A delivery's position: its delivery tag, which counts from 1 on every channel, under the
/// subscription's number. A group that joins again after the broker ended its consumer gets
/// a new channel while deliveries of the old one may still be held; by tag alone a new
/// delivery could take the place of a held one, be acknowledged by its job and never run.
fn position(generation: u64, delivery_tag: u64) -> u64 {
    (generation << 40) | (delivery_tag & ((1 << 40) - 1))
}

fn delivery(
    codec: Codec,
    generation: u64,
    d: lapin::message::Delivery,
    untyped_as: Option<&str>,
) -> Delivery {
    let count = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| {
            h.inner()
                .get(&ShortString::from("x-delivery-count"))
                .cloned()
        })
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongUInt(n) => Some(n),
            AMQPValue::ShortInt(n) => u32::try_from(n).ok(),
            _ => None,
        })
        .unwrap_or(u32::from(d.redelivered));
    let data = Bytes::from(d.data);
    let envelope = decode(codec, &d.properties, data.clone(), untyped_as);
    Delivery {
        envelope,
        raw: data,
        position: position(generation, d.delivery_tag),
        attempt: count.saturating_add(1),
        pending: 0,
        acker: Box::new(AmqpAcker(d.acker)),
    }
}

/// Settles an AMQP delivery.
struct AmqpAcker(lapin::Acker);

impl AmqpAcker {
    fn done(&self) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            self.0
                .ack(BasicAckOptions::default())
                .await
                .map(|_| ())
                .map_err(|e| unavailable("amqp: ack failed".into(), e))
        }
        .boxed()
    }
}

impl Acker for AmqpAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.done()
    }
    fn nack(&self, _delay: Duration) -> BoxFuture<'_, Result<(), Error>> {
        // RabbitMQ has no delayed requeue: back to the queue at once.
        async move {
            self.0
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| unavailable("amqp: nack failed".into(), e))
        }
        .boxed()
    }
    fn term(&self) -> BoxFuture<'_, Result<(), Error>> {
        // The subscription stored the dead letter itself; rejecting would dead-letter twice.
        self.done()
    }
    fn reject(&self) -> BoxFuture<'_, Result<(), Error>> {
        // The dead letter keeps only an excerpt: the queue's dead-letter exchange keeps the
        // whole message, with RabbitMQ's `x-death` header naming the queue it came from.
        async move {
            self.0
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map(|_| ())
                .map_err(|e| unavailable("amqp: reject failed".into(), e))
        }
        .boxed()
    }
    fn progress(&self) -> BoxFuture<'_, Result<(), Error>> {
        // RabbitMQ has no ack wait to extend (only its consumer_timeout, 30 min by default).
        async { Ok(()) }.boxed()
    }
}

impl Backend for AmqpBus {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn connected(&self) -> Result<(), String> {
        let status = self.connection.status();
        if status.connected() {
            Ok(())
        } else {
            Err(format!(
                "not connected to RabbitMQ at {} (the connection {})",
                self.url,
                if status.errored() {
                    "failed"
                } else {
                    "is closed"
                }
            ))
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            replay_from_time: false,
            replay_from_offset: false,
            replay_from_beginning: false,
            dedup_window: None,
            group_wide_order: false,
            multi_process: true,
            // The quorum queue's `x-delivery-limit` dead-letters to the broker's own exchange
            // (`tabgrab.broker-dead-letters`), not to the topic's dead letters.
            broker_max_deliveries: false,
            captures_terminations: false,
            keeps_events_without_groups: false,
            reply_queues: true,
        }
    }

    fn codec(&self) -> Codec {
        self.codec
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        self.publish_inner(topic, envelope, None).boxed()
    }

    /// In structured mode the stored bytes are the body as they are (encoded once, at
    /// staging).
    fn publish_encoded<'a>(
        &'a self,
        topic: &'a Topic,
        envelope: &'a Envelope,
        encoded: Bytes,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        Box::pin(async move { self.publish_inner(topic, envelope, Some(&encoded)).await })
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a Topic,
        subject: Option<&'a str>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        self.publish_raw_inner(topic, subject, payload).boxed()
    }

    fn publish_to_queue<'a>(
        &'a self,
        queue: &'a str,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        self.publish_to_queue_inner(queue, envelope).boxed()
    }

    fn group_queue(&self, topic: &Topic, group: &str) -> Option<String> {
        Some(queue_name(topic, group))
    }

    fn subscribe(
        self: Arc<Self>,
        request: SubscribeRequest,
    ) -> BoxFuture<'static, Result<Deliveries, Error>> {
        async move { self.subscribe_inner(request).await }.boxed()
    }

    fn read_all<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Vec<Envelope>, Error>> {
        self.read_all_inner(topic).boxed()
    }

    fn original_location(&self, topic: &Topic, position: u64) -> String {
        let _ = position;
        format!(
            "RabbitMQ queue {BROKER_DLX} (rejected there by the group; its x-death header names \
             the queue of topic {topic})"
        )
    }

    fn group_lag<'a>(
        &'a self,
        topic: &'a Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        async move { Ok(self.group_queue_counts(topic, group).await?.map(|c| c.0)) }.boxed()
    }

    fn group_members<'a>(
        &'a self,
        topic: &'a Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        async move { Ok(self.group_queue_counts(topic, group).await?.map(|c| c.1)) }.boxed()
    }

    fn delete_topic<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let channel = self.channel().await?;
            let exchange = exchange_name(topic);
            let queues: Vec<String> = {
                let mut all = self
                    .queues
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (mine, rest): (Vec<_>, Vec<_>) =
                    all.drain(..).partition(|(t, _)| t == topic.as_str());
                *all = rest;
                mine.into_iter().map(|(_, q)| q).collect()
            };
            for queue in queues {
                self.declared.lock().await.remove(&queue);
                let _ = channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await;
            }
            self.exchanges
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&exchange);
            let _ = channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await;
            let _ = channel.close(200, "".into()).await;
            Ok(())
        }
        .boxed()
    }

    fn report(&self) -> BoxFuture<'_, Result<EngineReport, Error>> {
        async move {
            Ok(EngineReport {
                engine: "amqp".into(),
                server_version: None,
                details: vec![
                    format!("RabbitMQ at {}", self.url),
                    "groups: durable quorum queues (replicated, fsynced before the publisher confirm)"
                        .into(),
                    format!("x-delivery-limit {DELIVERY_LIMIT}, dead-letter exchange {BROKER_DLX}"),
                    "no de-duplication, no replay; a publish to a topic with no group is refused".into(),
                ],
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::position;

    /// The same delivery tag on two channels (two subscriptions) is two positions; one
    /// subscription's tags keep their order.
    #[test]
    fn positions_of_two_subscriptions_never_meet() {
        assert_ne!(position(1, 1), position(2, 1));
        assert!(position(1, 1) < position(1, 2));
        assert!(position(1, (1 << 40) - 1) < position(2, 1));
    }
}
