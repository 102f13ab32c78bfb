//! The embedded backend: topics are durable logs (`tabgrab-log`) in one directory, in-process.
//!
//! This is the default for `cargo run`, tests and single-binary deployments: no server, and
//! still nothing acknowledged is lost, because a publish returns only after the log made the
//! event durable (group commit: many publishes share one `fdatasync`).
//!
//! Layout: `<dir>/topics/<topic>/` holds one log per topic; consumer groups keep their offsets
//! inside the topic's log (`consumers/<group>`); dead letters of a topic go to the topic
//! `<topic>.dead-letters`. The directory is locked by the process that opened it: the embedded
//! backend serves one process; several processes need a real engine (NATS, RabbitMQ).
//!
//! It is a [`Backend`] like the brokers: a subscription takes its deliveries and settles them
//! through the same contract, and the group's offset is kept here (module `group`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use tabgrab_log::{Config, FsyncPolicy, Log};

use super::{Backend, Capabilities, Deliveries, EngineReport, Published, SubscribeRequest};
use crate::{Codec, Envelope, Error, ErrorKind, Topic};

mod group;

use group::LogGroup;

/// The largest record a listing of a topic reads back: dead letters written by older
/// versions carried originals of up to 32 MiB, and they stay readable.
const READ_ALL_MAX: usize = 32 * 1024 * 1024;

/// Settings of an embedded bus.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Where the topics live.
    pub dir: PathBuf,
    /// When appends become durable; [`FsyncPolicy::EveryBatch`] (the default) is the only one
    /// under which an acknowledged publish survives a power loss.
    pub fsync: FsyncPolicy,
    /// Size at which a topic's log rolls to a new segment (retention deletes whole segments).
    pub segment_bytes: u64,
    /// Size limit and encoding of envelopes.
    pub codec: Codec,
}

impl EmbeddedConfig {
    /// Defaults for `dir`: fsync every batch, 64 MiB segments, 1 MiB envelopes.
    pub fn new(dir: impl Into<PathBuf>) -> EmbeddedConfig {
        EmbeddedConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::EveryBatch,
            segment_bytes: 64 * 1024 * 1024,
            codec: Codec::default(),
        }
    }
}

/// A cheap-to-clone handle on an embedded bus directory.
#[derive(Clone)]
pub struct EmbeddedBus {
    /// Shared state: config and the open topic logs.
    inner: Arc<Inner>,
}

struct Inner {
    /// The settings the bus was opened with.
    config: EmbeddedConfig,
    /// Set by [`EmbeddedBus::close`]: no topic opens again through this handle.
    closed: std::sync::atomic::AtomicBool,
    /// Open topic logs by name, so every publisher and subscriber of a topic shares one writer.
    topics: Mutex<HashMap<String, Log>>,
    /// Consumer groups by (topic, group), so that a second subscription of a group joins the
    /// first as a competing consumer; kept while the bus is open (a stopped group resumes
    /// where it stopped).
    groups: Mutex<HashMap<(String, String), Arc<LogGroup>>>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus")
            .field("dir", &self.inner.config.dir)
            .finish()
    }
}

impl EmbeddedBus {
    /// Opens (creating if needed) a bus in `dir` with default settings.
    pub fn open(dir: impl Into<PathBuf>) -> Result<EmbeddedBus, Error> {
        EmbeddedBus::open_with(EmbeddedConfig::new(dir))
    }

    /// Opens a bus with explicit settings.
    pub fn open_with(config: EmbeddedConfig) -> Result<EmbeddedBus, Error> {
        std::fs::create_dir_all(config.dir.join("topics")).map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("cannot create the bus directory {}", config.dir.display()),
            )
            .with_source(e)
        })?;
        Ok(EmbeddedBus {
            inner: Arc::new(Inner {
                config,
                closed: std::sync::atomic::AtomicBool::new(false),
                topics: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The bus directory.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// The envelope codec (size limit) every publisher and subscriber of this bus uses.
    pub fn codec(&self) -> Codec {
        self.inner.config.codec
    }

    /// The log of `topic`, opened on first use. Recovery findings are logged as warnings, and
    /// data loss as errors, so that damage is never silent.
    pub fn topic(&self, topic: &str) -> Result<Log, Error> {
        let mut topics = self
            .inner
            .topics
            .lock()
            .map_err(|_| Error::new(ErrorKind::Storage, "the topic table lock is poisoned"))?;
        // Every name in the table passed `Topic::new` when it was opened: only a new one is
        // checked (a publish looks its topic up every time).
        if let Some(log) = topics.get(topic) {
            return Ok(log.clone());
        }
        Topic::new(topic)?;
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Closed,
                format!("topic {topic}: the bus {} is closed", self.dir().display()),
            ));
        }
        let mut config = Config::new(self.inner.config.dir.join("topics").join(topic));
        config.fsync = self.inner.config.fsync;
        config.segment_bytes = self.inner.config.segment_bytes;
        let log = Log::open(config).map_err(|e| storage(topic, "open", e))?;
        let report = log.recovery_report();
        for cut in &report.truncated {
            tracing::warn!(
                topic,
                ?cut,
                "recovery cut a torn tail (unacknowledged writes)"
            );
        }
        for loss in &report.data_loss {
            tracing::error!(
                topic,
                ?loss,
                "DATA LOSS: a damaged record range was found on open"
            );
        }
        topics.insert(topic.to_owned(), log.clone());
        Ok(log)
    }

    /// The consumer group `group` of `topic`, opened on first use.
    fn group(&self, topic: &str, group: &str) -> Result<Arc<LogGroup>, Error> {
        let mut groups = self.inner.groups.lock().map_err(|_| {
            Error::new(
                ErrorKind::Storage,
                "the consumer group table lock is poisoned",
            )
        })?;
        let key = (topic.to_owned(), group.to_owned());
        if let Some(g) = groups.get(&key) {
            return Ok(Arc::clone(g));
        }
        let g = LogGroup::open(topic, group, self.topic(topic)?, self.codec())?;
        groups.insert(key, Arc::clone(&g));
        Ok(g)
    }

    /// The running group `group` of `topic`, if this process has one.
    fn live_group(&self, topic: &str, group: &str) -> Option<Arc<LogGroup>> {
        let groups = self.inner.groups.lock().ok()?;
        groups.get(&(topic.to_owned(), group.to_owned())).cloned()
    }

    /// Appends `bytes` to `topic` durably.
    async fn append(&self, topic: &str, bytes: Bytes) -> Result<Published, Error> {
        let position = self
            .topic(topic)?
            .append(bytes)
            .await
            .map_err(|e| storage(topic, "append", e))?;
        Ok(Published {
            position,
            duplicate: false,
        })
    }

    /// Whether `topic` was ever written (asking creates nothing).
    fn exists(&self, topic: &str) -> Result<bool, Error> {
        Ok(self.dir().join("topics").join(topic).is_dir())
    }

    /// The end offset of `topic`: how many records it has had (0 for a topic never written).
    pub fn end_offset(&self, topic: &str) -> Result<u64, Error> {
        if !self.exists(topic)? {
            return Ok(0);
        }
        Ok(self.topic(topic)?.end_offset())
    }

    /// Every record of `topic`, decoded, oldest first; nothing is created for a topic never
    /// written.
    pub(crate) fn read_all_now(&self, topic: &str) -> Result<Vec<Envelope>, Error> {
        if !self.exists(topic)? {
            return Ok(Vec::new());
        }
        let log = self.topic(topic)?;
        let codec = Codec::with_max_size(self.codec().max_size().max(READ_ALL_MAX));
        let mut envelopes = Vec::new();
        let mut from = log.start_offset();
        loop {
            let records = log
                .read(from, 1024)
                .map_err(|e| storage(topic, "read", e))?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for record in records {
                envelopes.push(codec.decode(&record.payload)?);
            }
        }
        Ok(envelopes)
    }

    /// Flushes and closes every open topic log. Publishing afterwards fails with `Closed`.
    pub async fn close(&self) -> Result<(), Error> {
        let logs: Vec<(String, Log)> = match self.inner.topics.lock() {
            Ok(mut topics) => {
                self.inner
                    .closed
                    .store(true, std::sync::atomic::Ordering::Release);
                topics.drain().collect()
            }
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Storage,
                    "the topic table lock is poisoned",
                ));
            }
        };
        for (name, log) in logs {
            log.close().await.map_err(|e| storage(&name, "close", e))?;
        }
        Ok(())
    }
}

/// Wraps a log error as a storage error naming the topic and the operation.
pub(crate) fn storage(topic: &str, operation: &str, error: tabgrab_log::Error) -> Error {
    let kind = if error.kind() == tabgrab_log::ErrorKind::Closed {
        ErrorKind::Closed
    } else {
        ErrorKind::Storage
    };
    Error::new(kind, format!("topic {topic}: {operation} failed")).with_source(error)
}

impl Backend for EmbeddedBus {
    fn name(&self) -> &'static str {
        "embedded"
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
            dedup_window: None,
            group_wide_order: true,
            multi_process: false,
            broker_max_deliveries: false,
            captures_terminations: false,
            reply_queues: false,
        }
    }

    fn codec(&self) -> Codec {
        self.inner.config.codec
    }

    fn publish<'a>(
        &'a self,
        topic: &'a Topic,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        let encoded = self.codec().encode(envelope);
        Box::pin(async move { self.append(topic, encoded?).await })
    }

    /// The log stores the codec's encoding: the bytes are appended as they are, after the
    /// checks [`Codec::encode`] makes (attributes, this bus's size limit).
    fn publish_encoded<'a>(
        &'a self,
        topic: &'a Topic,
        envelope: &'a Envelope,
        encoded: Bytes,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        let checked = self.codec().check_encoded(envelope, &encoded);
        Box::pin(async move {
            checked?;
            self.append(topic, encoded).await
        })
    }

    fn publish_batch<'a>(
        &'a self,
        topic: &'a Topic,
        envelopes: &'a [Envelope],
    ) -> BoxFuture<'a, Result<Vec<Published>, Error>> {
        Box::pin(async move {
            let log = self.topic(topic)?;
            let codec = self.codec();
            // One buffer for the whole batch, and a slice of it per record: one allocation
            // (and one free) per batch, not one per envelope.
            let mut buffer =
                Vec::with_capacity(envelopes.iter().map(Codec::size_hint).sum::<usize>());
            let ranges = envelopes
                .iter()
                .map(|e| codec.encode_into(e, &mut buffer))
                .collect::<Result<Vec<_>, Error>>()?;
            let buffer = Bytes::from(buffer);
            let encoded = ranges.into_iter().map(|r| buffer.slice(r)).collect();
            let offsets = log
                .append_batch(encoded)
                .await
                .map_err(|e| storage(topic, "publish", e))?;
            Ok(offsets
                .map(|position| Published {
                    position,
                    duplicate: false,
                })
                .collect())
        })
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a Topic,
        _subject: Option<&'a str>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<Published, Error>> {
        Box::pin(self.append(topic, payload))
    }

    /// Joins the group at once (before the future is polled): a subscription that starts
    /// from the latest event sees everything published after `start()` returned.
    fn subscribe(
        self: Arc<Self>,
        request: SubscribeRequest,
    ) -> BoxFuture<'static, Result<Deliveries, Error>> {
        let joined = self
            .group(&request.topic, &request.group)
            .and_then(|group| {
                group.join(request.start, request.commit_interval, request.stop.clone())
            });
        Box::pin(std::future::ready(joined))
    }

    fn read_all<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Vec<Envelope>, Error>> {
        Box::pin(std::future::ready(self.read_all_now(topic)))
    }

    /// Commits every group's watermark: a stopping member's settlements are then on disk.
    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let groups: Vec<Arc<LogGroup>> = match self.inner.groups.lock() {
                Ok(groups) => groups.values().cloned().collect(),
                Err(_) => Vec::new(),
            };
            for group in groups {
                group.commit().await;
            }
            Ok(())
        })
    }

    fn original_location(&self, topic: &Topic, position: u64) -> String {
        format!(
            "the embedded log {}, topic {topic}, offset {position} (until retention deletes its segment)",
            self.dir().display()
        )
    }

    fn live_lag(&self, topic: &Topic, group: &str) -> Option<u64> {
        self.live_group(topic, group).map(|g| g.lag())
    }

    /// A group running in this process: the end of the log minus its watermark; otherwise
    /// the distance from its committed offset.
    fn group_lag<'a>(
        &'a self,
        topic: &'a Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        let lag = || -> Result<Option<u64>, Error> {
            if let Some(live) = self.live_group(topic, group) {
                return Ok(Some(live.lag()));
            }
            let log = self.topic(topic)?;
            let committed = log
                .consumer_offset(group)
                .map_err(|e| storage(topic, "read group offset", e))?;
            Ok(committed.map(|offset| log.end_offset().saturating_sub(offset)))
        };
        Box::pin(std::future::ready(lag()))
    }

    fn group_members<'a>(
        &'a self,
        topic: &'a Topic,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        let members = self
            .live_group(topic, group)
            .map_or(0, |live| live.members() as u64);
        Box::pin(std::future::ready(Ok(Some(members))))
    }

    fn topic_end<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<Option<u64>, Error>> {
        // Asking creates nothing: a topic never written has had 0 records.
        Box::pin(std::future::ready(self.end_offset(topic).map(Some)))
    }

    /// Deletes nothing: remove the bus directory instead.
    fn delete_topic<'a>(&'a self, _topic: &'a Topic) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn report(&self) -> BoxFuture<'_, Result<EngineReport, Error>> {
        Box::pin(std::future::ready(Ok(EngineReport {
            engine: "embedded".into(),
            server_version: None,
            details: vec![
                format!("directory {}", self.dir().display()),
                "an acknowledged publish is fsynced (group commit)".into(),
                "one process".into(),
            ],
        })))
    }
}
