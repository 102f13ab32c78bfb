//! Configuration of a [`Log`](crate::Log): where it lives, how big segments get, when to fsync,
//! what to keep, and the two injection points tests need (storage and clock).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::storage::{FsStorage, Storage};

/// When the writer makes appended records durable, which is also when it acknowledges them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` once per group-committed batch; an append returns after its batch is synced.
    /// Survives power loss. The default.
    #[default]
    EveryBatch,
    /// `fdatasync` at most once per interval; appends return after the next interval sync.
    /// Survives power loss; trades latency for fewer syncs.
    Interval(Duration),
    /// Never sync (except when sealing a segment); appends return once written to the OS.
    /// Survives a process crash, not power loss: the unsynced tail may be lost (never torn).
    Never,
}

/// What to delete. Only whole sealed segments are deleted, never the active one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete the oldest sealed segments while the log is larger than this many bytes.
    pub max_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    pub max_age: Option<Duration>,
}

/// Where record timestamps (and "now" for age retention) come from. Cheap to clone.
///
/// Injectable so retention by age and `offset_at_time` can be tested without sleeping.
#[derive(Clone)]
pub struct Clock {
    /// The time source.
    now: Arc<dyn Fn() -> SystemTime + Send + Sync>,
}

impl Clock {
    /// The system wall clock.
    pub fn system() -> Clock {
        Clock::from_fn(SystemTime::now)
    }

    /// A clock reading `now` (e.g. a test clock backed by an atomic).
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Clock {
        Clock { now: Arc::new(now) }
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        (self.now)()
    }

    /// The current time in ms since the Unix epoch (0 before the epoch).
    pub fn now_ms(&self) -> u64 {
        system_time_ms(self.now())
    }
}

/// `t` in ms since the Unix epoch, saturating at 0 and `u64::MAX`.
pub(crate) fn system_time_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// Everything [`Log::open`](crate::Log::open) needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The log directory (segments, indexes, `LOCK`, `consumers/`).
    pub dir: PathBuf,
    /// Roll to a new segment when the active one would grow past this size (a single record
    /// larger than this still fits alone in a segment). Bounds what retention deletes at once.
    pub segment_bytes: u64,
    /// When appends become durable and are acknowledged.
    pub fsync: FsyncPolicy,
    /// What to delete, checked on every segment roll and by `apply_retention`.
    pub retention: Retention,
    /// Larger payloads are refused with `ErrorKind::RecordTooLarge`; bounds memory per record.
    pub max_record_bytes: u32,
    /// The file system; `SimStorage` (feature `sim`) in power-loss tests.
    pub storage: Arc<dyn Storage>,
    /// Source of record timestamps and of "now" for age retention.
    pub clock: Clock,
}

impl Config {
    /// Defaults: 64 MiB segments, fsync every batch, keep everything, 16 MiB max record.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            segment_bytes: 64 * 1024 * 1024,
            fsync: FsyncPolicy::EveryBatch,
            retention: Retention::default(),
            max_record_bytes: 16 * 1024 * 1024,
            storage: Arc::new(FsStorage),
            clock: Clock::system(),
        }
    }

    /// Sets [`Config::segment_bytes`].
    pub fn segment_bytes(mut self, bytes: u64) -> Config {
        self.segment_bytes = bytes;
        self
    }

    /// Sets [`Config::fsync`].
    pub fn fsync(mut self, policy: FsyncPolicy) -> Config {
        self.fsync = policy;
        self
    }

    /// Sets [`Config::retention`].
    pub fn retention(mut self, retention: Retention) -> Config {
        self.retention = retention;
        self
    }

    /// Sets [`Config::max_record_bytes`] (capped at the frame format's hard limit).
    pub fn max_record_bytes(mut self, bytes: u32) -> Config {
        self.max_record_bytes = bytes.min(crate::frame::MAX_FRAME_PAYLOAD);
        self
    }

    /// Sets [`Config::storage`].
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Config {
        self.storage = storage;
        self
    }

    /// Sets [`Config::clock`].
    pub fn clock(mut self, clock: Clock) -> Config {
        self.clock = clock;
        self
    }
}
