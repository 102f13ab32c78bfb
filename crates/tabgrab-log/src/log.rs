//! The [`Log`] handle: open/recover, append through the writer, read, retention, consumers.
//!
//! ## Shape
//!
//! `Log` is a cheap `Clone` handle over an `Arc`. Appends do not touch files: they send their
//! payloads over a channel to ONE writer thread (see [`crate::writer`]) and await a oneshot
//! reply. The writer group-commits: it drains everything queued, encodes all frames into one
//! buffer, writes it with one call, syncs once, then acknowledges every waiter. That is how
//! many concurrent appenders share one `fdatasync`.
//!
//! Readers never wait for the writer. The writer publishes the *high-water mark* (one past the
//! last acknowledged offset) through a `tokio::sync::watch` channel; reads are bounded by it,
//! so a reader sees only acknowledged records, and [`Reader`]s wait on it for new ones. Reads
//! use positional reads on the segment handles cached in the shared state, after a binary
//! search in the sparse index, holding the state lock only to find where to read.
//!
//! A dedicated std thread (not a tokio task) does the writing because its work is blocking
//! syscalls; this also lets `Log::open` work with or without a tokio runtime.
//!
//! The channel is unbounded on purpose: each appender has at most one append in flight (it
//! awaits the ack), so the queue is bounded by the number of concurrent appenders.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::Record;
use crate::config::{Clock, Config, FsyncPolicy, Retention, system_time_ms};
use crate::consumer;
use crate::error::{Damage, Error, ErrorKind};
use crate::frame::{self, FrameError, HEADER_LEN};
use crate::reader::Reader;
use crate::recovery::{RecoveryReport, Truncation};
use crate::segment::{self, IndexEntry};
use crate::storage::{self, Storage, StorageFile};
use crate::writer::{Acked, Payloads, Request, Writer};

/// Status values of [`Core::status`].
pub(crate) const OPEN: u8 = 0;
/// A write or sync failed: no further writes.
pub(crate) const POISONED: u8 = 1;
/// `close` was called: no further writes.
pub(crate) const CLOSED: u8 = 2;

/// Bytes read per positional read when scanning frames.
const READ_CHUNK: usize = 64 * 1024;

/// Name of the lock file in the log directory.
const LOCK_FILE: &str = "LOCK";

/// Name of the consumer offsets directory.
const CONSUMERS_DIR: &str = "consumers";

/// One segment as known in memory.
#[derive(Debug)]
pub(crate) struct SegmentMeta {
    /// Offset of its first record (also its name).
    pub(crate) base: u64,
    /// Its file path, for errors and deletion.
    pub(crate) path: PathBuf,
    /// Its index file path, for deletion.
    pub(crate) index_path: PathBuf,
    /// The cached open handle, used for positional reads (and writes, by the writer).
    pub(crate) file: Arc<dyn StorageFile>,
    /// The sparse index, authoritative in memory (the file is only a rebuildable copy).
    pub(crate) index: Vec<IndexEntry>,
    /// Bytes of valid frames written (may include not-yet-acknowledged ones).
    pub(crate) size: u64,
    /// One past the last offset written to it.
    pub(crate) end: u64,
    /// Timestamp of its newest record, for age retention and `offset_at_time`.
    pub(crate) last_ts: Option<u64>,
    /// Damaged ranges found by recovery; reads of these offsets fail with `Corrupt`.
    pub(crate) damage: Vec<Damage>,
}

/// The mutable shared state: the segment list.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Segments in offset order; never empty; the last one is active.
    pub(crate) segments: Vec<SegmentMeta>,
}

/// Everything the handle, the writer thread and readers share.
#[derive(Debug)]
pub(crate) struct Core {
    /// The log directory.
    pub(crate) dir: PathBuf,
    /// The file system.
    pub(crate) storage: Arc<dyn Storage>,
    /// Source of timestamps and "now".
    pub(crate) clock: Clock,
    /// What retention deletes.
    pub(crate) retention: Retention,
    /// The segment list.
    pub(crate) state: RwLock<State>,
    /// High-water mark: one past the last acknowledged offset. Readers wait on it.
    pub(crate) visible: watch::Sender<u64>,
    /// OPEN, POISONED or CLOSED; checked before queueing an append.
    pub(crate) status: AtomicU8,
    /// Serialises consumer commits (they share a temporary file name per consumer).
    consumer_lock: Mutex<()>,
    /// Serialises retention runs (writer on roll, and callers).
    retention_lock: Mutex<()>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Core {
    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn end_offset(&self) -> u64 {
        *self.visible.borrow()
    }

    pub(crate) fn start_offset(&self) -> u64 {
        self.read_state().segments.first().map_or(0, |s| s.base)
    }

    fn check_writable(&self) -> Result<(), Error> {
        match self.status.load(Ordering::Acquire) {
            OPEN => Ok(()),
            POISONED => Err(Error::poisoned(
                "an earlier write or fsync failed; the log refuses writes",
            )),
            _ => Err(Error::closed()),
        }
    }

    /// Reads up to `max` acknowledged records from `from`; see [`Log::read`].
    pub(crate) fn read(&self, from: u64, max: usize) -> Result<Vec<Record>, Error> {
        let visible = self.end_offset();
        let start = self.start_offset();
        if from < start {
            return Err(truncated(from, start));
        }
        let limit = visible.min(from.saturating_add(max as u64));
        let mut out = Vec::new();
        let mut next = from;
        while next < limit {
            let plan = match self.plan_read(next, limit) {
                Ok(plan) => plan,
                Err(e) if !out.is_empty() => {
                    tracing::debug!(error = %e, "short read before damage");
                    break;
                }
                Err(e) => return Err(e),
            };
            match read_frames(&plan, next, &mut out) {
                Ok(n) => next = n,
                Err(e) if !out.is_empty() => {
                    tracing::warn!(error = %e, "short read: damage found while reading");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Finds where offset `next` lives and how far this segment can be read (below `limit`).
    fn plan_read(&self, next: u64, limit: u64) -> Result<ReadPlan, Error> {
        let st = self.read_state();
        let start = st.segments.first().map_or(0, |s| s.base);
        if next < start {
            return Err(truncated(next, start));
        }
        let i = st
            .segments
            .partition_point(|s| s.base <= next)
            .saturating_sub(1);
        let seg = &st.segments[i];
        if let Some(d) = seg.damage.iter().find(|d| d.offsets.contains(&next)) {
            return Err(Error::corrupt(d.clone()));
        }
        let mut stop = limit.min(seg.end);
        for d in &seg.damage {
            if d.offsets.start > next && d.offsets.start < stop {
                stop = d.offsets.start;
            }
        }
        if stop <= next {
            return Err(Error::corrupt(Damage {
                segment: seg.path.clone(),
                offsets: next..next + 1,
                bytes: seg.size..seg.size,
                reason: "offset missing between segments".to_string(),
            }));
        }
        let k = seg.index.partition_point(|e| e.offset <= next);
        let (pos, offset) = match k.checked_sub(1).map(|k| seg.index[k]) {
            Some(e) => (e.pos, e.offset),
            None => (0, seg.base),
        };
        Ok(ReadPlan {
            file: seg.file.clone(),
            path: seg.path.clone(),
            pos,
            offset,
            stop,
            size: seg.size,
        })
    }

    /// Deletes old sealed segments per the retention settings.
    pub(crate) fn apply_retention(&self) -> Result<RetentionReport, Error> {
        let _serial = lock(&self.retention_lock);
        let now = self.clock.now_ms();
        let Retention { max_bytes, max_age } = self.retention;
        let removed: Vec<SegmentMeta> = {
            let mut st = self.write_state();
            let mut total: u64 = st.segments.iter().map(|s| s.size).sum();
            let mut removed = Vec::new();
            while st.segments.len() > 1 {
                let s = &st.segments[0];
                let too_big = max_bytes.is_some_and(|m| total > m);
                let too_old = max_age.is_some_and(|age| {
                    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                    s.last_ts.is_none_or(|ts| ts.saturating_add(age_ms) < now)
                });
                if !(too_big || too_old) {
                    break;
                }
                total -= s.size;
                removed.push(st.segments.remove(0));
            }
            removed
        };
        let mut report = RetentionReport {
            removed_segments: Vec::new(),
            bytes_freed: 0,
            start_offset: self.start_offset(),
        };
        if removed.is_empty() {
            return Ok(report);
        }
        for seg in &removed {
            self.storage
                .remove(&seg.path)
                .map_err(|e| Error::io(format!("removing {}", seg.path.display()), e))?;
            if let Err(e) = self.storage.remove(&seg.index_path) {
                tracing::debug!(error = %e, path = %seg.index_path.display(), "index removal");
            }
            report.removed_segments.push(seg.path.clone());
            report.bytes_freed += seg.size;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("syncing the log directory after retention", e))?;
        tracing::info!(
            removed = removed.len(),
            start_offset = report.start_offset,
            "retention removed segments"
        );
        Ok(report)
    }

    /// First offset whose timestamp is `>= t_ms`, or the end offset.
    fn offset_at_time(&self, t_ms: u64) -> u64 {
        let visible = self.end_offset();
        let mut off = {
            let st = self.read_state();
            let Some(seg) = st
                .segments
                .iter()
                .find(|s| s.last_ts.is_some_and(|ts| ts >= t_ms))
            else {
                return visible;
            };
            let k = seg.index.partition_point(|e| e.timestamp_ms < t_ms);
            match k.checked_sub(1) {
                Some(k) => seg.index[k].offset,
                None => seg.base,
            }
        };
        while off < visible {
            match self.read(off, 256) {
                Ok(records) if records.is_empty() => break,
                Ok(records) => {
                    for r in &records {
                        if r.timestamp_ms >= t_ms {
                            return r.offset;
                        }
                    }
                    off = records.last().map_or(off + 1, |r| r.offset + 1);
                }
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    off = e.damaged().map_or(off + 1, |d| d.offsets.end.max(off + 1));
                }
                Err(e) if e.kind() == ErrorKind::Truncated => off = self.start_offset(),
                Err(_) => break,
            }
        }
        visible
    }
}

fn truncated(offset: u64, start: u64) -> Error {
    Error::new(
        ErrorKind::Truncated,
        format!("offset {offset} was deleted by retention; the log starts at {start}"),
    )
}

/// Where and how far to read within one segment.
struct ReadPlan {
    /// The segment handle.
    file: Arc<dyn StorageFile>,
    /// The segment path, for damage reports.
    path: PathBuf,
    /// Byte position of a frame at or before the wanted offset (from the index).
    pos: u64,
    /// The offset of the frame at `pos`.
    offset: u64,
    /// Read offsets below this (end of segment, of visible data, or start of damage).
    stop: u64,
    /// Valid bytes in the segment (never read past).
    size: u64,
}

/// Reads frames from `plan.pos`, appending those at or after `from` to `out`; returns the next
/// offset to read.
fn read_frames(plan: &ReadPlan, from: u64, out: &mut Vec<Record>) -> Result<u64, Error> {
    let mut pos = plan.pos;
    let mut offset = plan.offset;
    let mut chunk = Bytes::new();
    let mut chunk_pos = pos;
    let damage = |offset: u64, pos: u64, reason: String| {
        Error::corrupt(Damage {
            segment: plan.path.clone(),
            offsets: offset..offset + 1,
            bytes: pos..plan.size,
            reason,
        })
    };
    while offset < plan.stop {
        let rel = usize::try_from(pos - chunk_pos).unwrap_or(usize::MAX);
        let avail = chunk.get(rel..).unwrap_or(&[]);
        match frame::decode_frame(avail) {
            Ok(f) => {
                if f.offset != offset {
                    return Err(damage(
                        offset,
                        pos,
                        format!("found offset {} where {offset} was expected", f.offset),
                    ));
                }
                let total = f.total_len();
                if offset >= from {
                    out.push(Record {
                        offset,
                        timestamp_ms: f.timestamp_ms,
                        payload: chunk.slice(rel + HEADER_LEN..rel + total),
                    });
                }
                pos += total as u64;
                offset += 1;
            }
            Err(FrameError::Incomplete { needed }) => {
                let have = avail.len();
                let left = plan.size.saturating_sub(pos);
                let want = (have + needed).max(READ_CHUNK) as u64;
                let want = usize::try_from(want.min(left)).unwrap_or(usize::MAX);
                if want < have + needed {
                    return Err(damage(
                        offset,
                        pos,
                        "frame runs past the segment end".into(),
                    ));
                }
                let mut buf = vec![0u8; want];
                let n = storage::read_full_at(plan.file.as_ref(), &mut buf, pos)
                    .map_err(|e| Error::io(format!("reading {}", plan.path.display()), e))?;
                if n < have + needed {
                    return Err(damage(offset, pos, "segment shorter than expected".into()));
                }
                buf.truncate(n);
                chunk = Bytes::from(buf);
                chunk_pos = pos;
            }
            Err(e) => return Err(damage(offset, pos, e.to_string())),
        }
    }
    Ok(offset)
}

/// What [`Log::apply_retention`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segment files deleted, oldest first.
    pub removed_segments: Vec<PathBuf>,
    /// Bytes of segment data deleted.
    pub bytes_freed: u64,
    /// The oldest retained offset afterwards.
    pub start_offset: u64,
}

/// The durable log. Cheap to clone; all clones share one writer.
///
/// ```no_run
/// # async fn demo() -> Result<(), tabgrab_log::Error> {
/// use tabgrab_log::{Config, Log};
/// let log = Log::open(Config::new("/tmp/my-log"))?;
/// let offset = log.append(bytes::Bytes::from_static(b"hello")).await?; // durable now
/// let records = log.read(offset, 10)?;
/// assert_eq!(records[0].payload, "hello");
/// log.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Log {
    /// The shared handle; the writer stops when the last clone is dropped.
    inner: Arc<Handle>,
}

/// What all clones of a `Log` share.
#[derive(Debug)]
struct Handle {
    /// State shared with the writer thread and readers.
    core: Arc<Core>,
    /// Queue to the writer; `None` only during drop (dropping it stops the writer).
    tx: Option<std::sync::mpsc::Sender<Request>>,
    /// The writer thread, joined on drop so the directory lock is released when drop returns.
    writer: Option<JoinHandle<()>>,
    /// What recovery found at open.
    report: RecoveryReport,
    /// Appends above this size are refused before reaching the writer.
    max_record_bytes: u32,
}

impl Drop for Handle {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("tabgrab-log writer thread panicked");
        }
    }
}

impl Log {
    /// Opens (or creates) the log in `config.dir`, running recovery first.
    ///
    /// Synchronous; works inside or outside a tokio runtime. Fails with
    /// [`ErrorKind::Locked`] if another `Log` holds the directory.
    pub fn open(config: Config) -> Result<Log, Error> {
        let storage = config.storage.clone();
        let dir = config.dir.clone();
        storage
            .create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let dir_lock = storage
            .try_lock(&dir.join(LOCK_FILE))
            .map_err(|e| Error::io(format!("locking {}", dir.display()), e))?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Locked,
                    format!("{} is locked by another log", dir.display()),
                )
            })?;
        let consumers = dir.join(CONSUMERS_DIR);
        storage
            .create_dir_all(&consumers)
            .map_err(|e| Error::io(format!("creating {}", consumers.display()), e))?;
        let (segments, report) = recover(storage.as_ref(), &dir, &consumers)?;
        let active = segments
            .last()
            .ok_or_else(|| Error::new(ErrorKind::Io, "no active segment after recovery"))?;
        let end = active.end;
        let writer_init = crate::writer::WriterInit {
            base: active.base,
            file: active.file.clone(),
            seg_pos: active.size,
            next_offset: active.end,
            last_ts: segments.iter().filter_map(|s| s.last_ts).max().unwrap_or(0),
            last_index_pos: active.index.last().map(|e| e.pos),
            index_len: (active.index.len() * segment::INDEX_ENTRY_LEN) as u64,
            index_path: active.index_path.clone(),
        };
        let (visible, _) = watch::channel(end);
        let core = Arc::new(Core {
            dir,
            storage,
            clock: config.clock.clone(),
            retention: config.retention,
            state: RwLock::new(State { segments }),
            visible,
            status: AtomicU8::new(OPEN),
            consumer_lock: Mutex::new(()),
            retention_lock: Mutex::new(()),
        });
        if let Err(e) = core.apply_retention() {
            tracing::warn!(error = %e, "retention at open failed");
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer::new(core.clone(), rx, &config, writer_init, dir_lock)?;
        let handle = std::thread::Builder::new()
            .name("tabgrab-log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::io("spawning the writer thread", e))?;
        let mut report = report;
        report.start_offset = core.start_offset();
        report.end_offset = end;
        if !report.is_clean() {
            tracing::warn!(?report, "tabgrab-log recovery found problems");
        }
        Ok(Log {
            inner: Arc::new(Handle {
                core,
                tx: Some(tx),
                writer: Some(handle),
                report,
                max_record_bytes: config.max_record_bytes,
            }),
        })
    }

    /// What recovery found and did at open.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    fn check_size(&self, len: usize) -> Result<(), Error> {
        if len > self.inner.max_record_bytes as usize {
            return Err(Error::new(
                ErrorKind::RecordTooLarge,
                format!(
                    "record of {len} bytes exceeds max_record_bytes ({})",
                    self.inner.max_record_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Sends `payloads` to the writer and waits for their offsets; the payloads come back
    /// with the answer and are freed here (see [`Acked`]).
    async fn append_request(&self, payloads: Payloads) -> Result<Range<u64>, Error> {
        let (reply, rx) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or_else(Error::closed)?;
        tx.send(Request::Append { payloads, reply })
            .map_err(|_| Error::closed())?;
        let Acked { result, payloads } = rx.await.map_err(|_| Error::closed())?;
        drop(payloads);
        result
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Request,
    ) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or_else(Error::closed)?;
        tx.send(make(reply)).map_err(|_| Error::closed())?;
        rx.await.map_err(|_| Error::closed())?
    }

    /// Appends one record; returns its offset once it is durable under the fsync policy.
    ///
    /// If this future is dropped before it completes, the record may or may not be written.
    pub async fn append(&self, payload: Bytes) -> Result<u64, Error> {
        self.check_size(payload.len())?;
        self.inner.core.check_writable()?;
        let range = self.append_request(Payloads::One(payload)).await?;
        Ok(range.start)
    }

    /// Appends records at contiguous offsets with one durability wait; returns their offsets.
    pub async fn append_batch(&self, payloads: Vec<Bytes>) -> Result<Range<u64>, Error> {
        for p in &payloads {
            self.check_size(p.len())?;
        }
        self.inner.core.check_writable()?;
        if payloads.is_empty() {
            let end = self.end_offset();
            return Ok(end..end);
        }
        self.append_request(Payloads::Many(payloads)).await
    }

    /// The oldest retained offset.
    pub fn start_offset(&self) -> u64 {
        self.inner.core.start_offset()
    }

    /// One past the last acknowledged (visible) record.
    pub fn end_offset(&self) -> u64 {
        self.inner.core.end_offset()
    }

    /// Reads up to `max_records` acknowledged records starting at `from`.
    ///
    /// Returns fewer (possibly none) at the end of the log or just before a damaged range.
    /// Errors: [`ErrorKind::Truncated`] below `start_offset`, [`ErrorKind::Corrupt`] when
    /// `from` is in a damaged range (see [`Error::damaged`]).
    pub fn read(&self, from: u64, max_records: usize) -> Result<Vec<Record>, Error> {
        self.inner.core.read(from, max_records)
    }

    /// A reader positioned at `from` that follows the tail.
    pub fn reader(&self, from: u64) -> Reader {
        Reader::new(self.inner.core.clone(), from)
    }

    /// The first offset whose timestamp is `>= t`, or `end_offset()` if there is none.
    pub fn offset_at_time(&self, t: SystemTime) -> u64 {
        self.inner.core.offset_at_time(system_time_ms(t))
    }

    fn consumer_path(&self, name: &str) -> Result<PathBuf, Error> {
        consumer::validate_name(name)?;
        Ok(self.inner.core.dir.join(CONSUMERS_DIR).join(name))
    }

    /// Stores a consumer's offset atomically and durably (tmp file, fsync, rename, fsync dir).
    pub fn commit_consumer(&self, name: &str, offset: u64) -> Result<(), Error> {
        let path = self.consumer_path(name)?;
        let core = &self.inner.core;
        let tmp = path.with_file_name(format!("{name}~tmp"));
        let io = |what: &str, p: &Path, e| Error::io(format!("{what} {}", p.display()), e);
        let _serial = lock(&core.consumer_lock);
        let file = core
            .storage
            .open(&tmp, true)
            .map_err(|e| io("creating", &tmp, e))?;
        file.set_len(0).map_err(|e| io("truncating", &tmp, e))?;
        file.write_all_at(&consumer::encode(offset), 0)
            .map_err(|e| io("writing", &tmp, e))?;
        file.sync_data().map_err(|e| io("syncing", &tmp, e))?;
        drop(file);
        core.storage
            .rename(&tmp, &path)
            .map_err(|e| io("renaming to", &path, e))?;
        let parent = storage::parent(&path);
        core.storage
            .sync_dir(&parent)
            .map_err(|e| io("syncing", &parent, e))
    }

    /// The last committed offset of a consumer, `None` if it never committed.
    pub fn consumer_offset(&self, name: &str) -> Result<Option<u64>, Error> {
        let path = self.consumer_path(name)?;
        let file = match self.inner.core.storage.open(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let bytes = storage::read_all(file.as_ref())
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        consumer::decode(&bytes).map(Some).ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("consumer offset file {} is damaged", path.display()),
            )
        })
    }

    /// Deletes whole sealed segments per `Config::retention` (also run on every segment roll).
    pub fn apply_retention(&self) -> Result<RetentionReport, Error> {
        self.inner.core.apply_retention()
    }

    /// Makes everything appended so far durable now and acknowledges it.
    pub async fn flush(&self) -> Result<(), Error> {
        self.request(Request::Flush).await
    }

    /// Flushes, stops the writer and releases the directory lock; later appends fail with
    /// [`ErrorKind::Closed`]. Reads keep working. Idempotent.
    pub async fn close(&self) -> Result<(), Error> {
        match self.request(Request::Close).await {
            Err(e) if e.kind() == ErrorKind::Closed => Ok(()),
            other => other,
        }
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.core.dir
    }
}

/// Scans all segments, cuts the active tail, records damage, rebuilds indexes.
fn recover(
    storage: &dyn Storage,
    dir: &Path,
    consumers: &Path,
) -> Result<(Vec<SegmentMeta>, RecoveryReport), Error> {
    let mut report = RecoveryReport::default();
    let io = |what: &str, p: &Path, e| Error::io(format!("{what} {}", p.display()), e);
    let names = storage.list(dir).map_err(|e| io("listing", dir, e))?;
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| segment::parse_file_name(n, ".log"))
        .collect();
    bases.sort_unstable();
    for name in &names {
        if let Some(b) = segment::parse_file_name(name, ".index")
            && bases.binary_search(&b).is_err()
        {
            let p = dir.join(name);
            storage.remove(&p).map_err(|e| io("removing", &p, e))?;
            report.removed_files.push(p);
        }
    }
    if let Ok(names) = storage.list(consumers) {
        for name in names.iter().filter(|n| n.ends_with("~tmp")) {
            let p = consumers.join(name);
            storage.remove(&p).map_err(|e| io("removing", &p, e))?;
            report.removed_files.push(p);
        }
    }
    if bases.is_empty() {
        let path = dir.join(segment::segment_file_name(0));
        storage
            .open(&path, true)
            .map_err(|e| io("creating", &path, e))?;
        let ipath = dir.join(segment::index_file_name(0));
        storage
            .open(&ipath, true)
            .map_err(|e| io("creating", &ipath, e))?;
        storage.sync_dir(dir).map_err(|e| io("syncing", dir, e))?;
        bases.push(0);
    }
    report.segments = bases.len();
    let mut segments = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        let path = dir.join(segment::segment_file_name(base));
        let index_path = dir.join(segment::index_file_name(base));
        let file = storage
            .open(&path, false)
            .map_err(|e| io("opening", &path, e))?;
        let data = storage::read_all(file.as_ref()).map_err(|e| io("reading", &path, e))?;
        let file_len = data.len() as u64;
        let scan = segment::scan(&data, base);
        drop(data);
        let damage_of = |d: segment::ScanDamage| Damage {
            segment: path.clone(),
            offsets: d.offsets,
            bytes: d.bytes,
            reason: d.reason,
        };
        let mut damage: Vec<Damage> = scan.damage.into_iter().map(damage_of).collect();
        match (scan.tail, next_base) {
            (Some((at, reason)), None) => {
                file.set_len(at).map_err(|e| io("truncating", &path, e))?;
                file.sync_data().map_err(|e| io("syncing", &path, e))?;
                tracing::warn!(segment = %path.display(), at, cut = file_len - at, %reason, "cut torn tail");
                report.truncated.push(Truncation {
                    segment: path.clone(),
                    at_byte: at,
                    bytes_cut: file_len - at,
                    reason,
                });
            }
            (Some((at, reason)), Some(next)) => damage.push(Damage {
                segment: path.clone(),
                offsets: scan.end_offset..next.max(scan.end_offset),
                bytes: at..file_len,
                reason: format!("{reason} in a sealed segment"),
            }),
            (None, Some(next)) if scan.end_offset != next => damage.push(Damage {
                segment: path.clone(),
                offsets: scan.end_offset.min(next)..next.max(scan.end_offset),
                bytes: file_len..file_len,
                reason: format!(
                    "sealed segment ends at offset {} but the next segment starts at {next}",
                    scan.end_offset
                ),
            }),
            _ => {}
        }
        let mut encoded = Vec::with_capacity(scan.index.len() * segment::INDEX_ENTRY_LEN);
        segment::encode_index(&scan.index, &mut encoded);
        let on_disk = storage
            .open(&index_path, false)
            .and_then(|f| storage::read_all(f.as_ref()))
            .ok();
        if on_disk.as_deref() != Some(&encoded[..]) {
            let f = storage
                .open(&index_path, true)
                .map_err(|e| io("creating", &index_path, e))?;
            f.set_len(0).map_err(|e| io("truncating", &index_path, e))?;
            f.write_all_at(&encoded, 0)
                .map_err(|e| io("writing", &index_path, e))?;
            tracing::info!(index = %index_path.display(), "rebuilt segment index");
            report.rebuilt_indexes.push(index_path.clone());
        }
        report.data_loss.extend(damage.iter().cloned());
        segments.push(SegmentMeta {
            base,
            path,
            index_path,
            file,
            index: scan.index,
            size: scan.valid_len,
            end: scan.end_offset,
            last_ts: scan.last_ts,
            damage,
        });
    }
    Ok((segments, report))
}

impl FsyncPolicy {
    /// Whether appends under this policy wait for a sync before being acknowledged.
    pub fn syncs(&self) -> bool {
        !matches!(self, FsyncPolicy::Never)
    }
}
