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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tabgrab_log::{Config, FsyncPolicy, Log};

use crate::event::Group;
use crate::{Codec, Error, ErrorKind};

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
    /// Open topic logs by name, so every publisher and subscriber of a topic shares one writer.
    topics: Mutex<HashMap<String, Log>>,
    /// Running consumer groups by (topic, group), so that a second subscription of a group
    /// joins the first as a competing consumer.
    groups: Mutex<GroupTable>,
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
        validate_topic(topic)?;
        let mut topics = self
            .inner
            .topics
            .lock()
            .map_err(|_| Error::new(ErrorKind::Storage, "the topic table lock is poisoned"))?;
        if let Some(log) = topics.get(topic) {
            return Ok(log.clone());
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

    /// The table of running consumer groups.
    pub(crate) fn groups(&self) -> Result<MutexGuard<'_, GroupTable>, Error> {
        self.inner.groups.lock().map_err(|_| {
            Error::new(
                ErrorKind::Storage,
                "the consumer group table lock is poisoned",
            )
        })
    }

    /// Flushes and closes every open topic log. Publishing afterwards fails with `Closed`.
    pub async fn close(&self) -> Result<(), Error> {
        let logs: Vec<(String, Log)> = match self.inner.topics.lock() {
            Ok(mut topics) => topics.drain().collect(),
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

/// Running consumer groups by (topic, group).
pub(crate) type GroupTable = HashMap<(String, String), Weak<Group>>;

/// Topic names become directory names: keep them to a safe alphabet.
pub(crate) fn validate_topic(topic: &str) -> Result<(), Error> {
    let ok = !topic.is_empty()
        && topic.len() <= 200
        && !topic.starts_with('.')
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Malformed,
            format!(
                "topic name {topic:?} is invalid: use 1-200 of [A-Za-z0-9._-], not starting with '.'"
            ),
        ))
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
