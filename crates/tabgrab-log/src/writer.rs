//! The writer thread: group commit, segment rolling, acknowledgement, poisoning.
//!
//! One std thread owns the active segment. Its loop:
//! 1. block for one request, then drain everything else already queued (up to
//!    [`MAX_BATCH_BYTES`] of frames): this is the *group*;
//! 2. assign offsets and one timestamp per append, encode every frame into one reusable buffer
//!    (no per-record syscalls or allocations), rolling to a new segment when the active one
//!    would pass `segment_bytes`;
//! 3. write the buffer with one positional write (plus one small index write if needed);
//! 4. make it durable per the policy (`EveryBatch`: one `fdatasync` now; `Interval`: when the
//!    interval has passed; `Never`: not at all), and only then publish the new high-water mark
//!    and complete the waiters of every record covered.
//!
//! Any failed write or sync *poisons* the log: the waiters not yet acknowledged get
//! `ErrorKind::Poisoned`, and no later append is acknowledged. After a failed `fsync` the
//! kernel may have dropped the dirty pages and cleared the error, so retrying the sync could
//! "succeed" without the data being durable (the PostgreSQL "fsyncgate" lesson); refusing
//! further writes and letting recovery decide at the next open is the safe answer.
//!
//! Sealing a segment always syncs it, whatever the policy, and creating the next segment
//! syncs the directory; so only the active segment can ever have an unsynced (torn) tail,
//! which is what lets recovery treat damage in sealed segments as data loss.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::config::{Clock, Config, FsyncPolicy};
use crate::error::{Error, ErrorKind};
use crate::frame;
use crate::log::{CLOSED, Core, POISONED, SegmentMeta};
use crate::segment::{self, IndexEntry};
use crate::storage::{DirLock, StorageFile};

/// Stop draining the queue once this many bytes of frames are buffered.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The payloads of one append request (no `Vec` for the common single record).
#[derive(Debug)]
pub(crate) enum Payloads {
    /// `Log::append`.
    One(Bytes),
    /// `Log::append_batch`.
    Many(Vec<Bytes>),
}

/// The answer to an append: its offsets once durable (or the error), and its payloads back.
///
/// The payloads go back so that the appending task frees their buffers, on the thread that
/// allocated them, and the writer frees none: with glibc's allocator a free from another
/// thread takes the allocating arena's lock, and with 1,024 appenders those frees and that
/// lock were the largest cost of the writer thread (`perf` of `pizzeria bench`: 11 % of all
/// samples, against 3 % for the `pwrite` of the frames).
#[derive(Debug)]
pub(crate) struct Acked {
    /// The offsets given, once durable, or why not.
    pub(crate) result: Result<Range<u64>, Error>,
    /// The payloads of the request, to be dropped by the appender.
    pub(crate) payloads: Payloads,
}

/// A message to the writer thread.
#[derive(Debug)]
pub(crate) enum Request {
    /// Append records; the reply carries their offsets once durable.
    Append {
        /// What to append.
        payloads: Payloads,
        /// Where to send the offsets (or the error), with the payloads.
        reply: oneshot::Sender<Acked>,
    },
    /// Sync now and acknowledge everything written.
    Flush(oneshot::Sender<Result<(), Error>>),
    /// Flush, release the directory lock, stop.
    Close(oneshot::Sender<Result<(), Error>>),
}

/// Where the writer starts, as left by recovery.
pub(crate) struct WriterInit {
    /// Base offset of the active segment.
    pub(crate) base: u64,
    /// The active segment handle.
    pub(crate) file: Arc<dyn StorageFile>,
    /// Valid bytes in the active segment.
    pub(crate) seg_pos: u64,
    /// The next offset to assign.
    pub(crate) next_offset: u64,
    /// Newest timestamp in the log (timestamps never go backwards).
    pub(crate) last_ts: u64,
    /// Position of the last index entry of the active segment.
    pub(crate) last_index_pos: Option<u64>,
    /// Size of the active index file.
    pub(crate) index_len: u64,
    /// Path of the active index file.
    pub(crate) index_path: std::path::PathBuf,
}

/// An append waiting for its acknowledgement.
struct Waiter {
    /// Where to send the result.
    reply: oneshot::Sender<Acked>,
    /// The offsets it was given.
    range: Range<u64>,
    /// Its payloads, already encoded into the buffer: they go back with the result.
    payloads: Payloads,
}

impl Waiter {
    /// Completes the append with `result`.
    fn answer(self, result: Result<Range<u64>, Error>) {
        let _ = self.reply.send(Acked {
            result,
            payloads: self.payloads,
        });
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    /// Shared state (segment list, high-water mark, status).
    core: Arc<Core>,
    /// The request queue.
    rx: Receiver<Request>,
    /// When to sync and acknowledge.
    policy: FsyncPolicy,
    /// Roll threshold.
    segment_bytes: u64,
    /// Timestamp source.
    clock: Clock,
    /// The directory lock; dropped when the writer stops so the directory can be reopened.
    dir_lock: Option<DirLock>,
    /// Base offset of the active segment (for logs).
    base: u64,
    /// The active segment.
    file: Arc<dyn StorageFile>,
    /// The active segment's index file (derived data: write failures are only logged).
    index_file: Option<Arc<dyn StorageFile>>,
    /// Bytes already written to the active segment; `buf` goes right after.
    seg_pos: u64,
    /// Bytes in the active index file.
    index_len: u64,
    /// Position of the last index entry, for the placement rule.
    last_index_pos: Option<u64>,
    /// The next offset to assign.
    next_offset: u64,
    /// Newest timestamp assigned (timestamps are made monotonic).
    last_ts: u64,
    /// Encoded frames not yet written (reused across batches).
    buf: Vec<u8>,
    /// Index entries for frames in `buf`.
    new_index: Vec<IndexEntry>,
    /// Appends written (or buffered) but not yet acknowledged.
    waiters: Vec<Waiter>,
    /// Whether the active segment has writes not yet synced.
    unsynced: bool,
    /// When the last sync happened (for `Interval`).
    last_sync: Instant,
    /// Set on the first failed write or sync; never cleared.
    poisoned: Option<String>,
}

impl Writer {
    pub(crate) fn new(
        core: Arc<Core>,
        rx: Receiver<Request>,
        config: &Config,
        init: WriterInit,
        dir_lock: DirLock,
    ) -> Result<Writer, Error> {
        let index_file = match core.storage.open(&init.index_path, true) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the active index; it will be rebuilt");
                None
            }
        };
        Ok(Writer {
            rx,
            policy: config.fsync,
            segment_bytes: config.segment_bytes.max(1),
            clock: config.clock.clone(),
            dir_lock: Some(dir_lock),
            base: init.base,
            file: init.file,
            index_file,
            seg_pos: init.seg_pos,
            index_len: init.index_len,
            last_index_pos: init.last_index_pos,
            next_offset: init.next_offset,
            last_ts: init.last_ts,
            buf: Vec::with_capacity(256 * 1024),
            new_index: Vec::new(),
            waiters: Vec::new(),
            unsynced: false,
            last_sync: Instant::now(),
            poisoned: None,
            core,
        })
    }

    /// The thread body.
    pub(crate) fn run(mut self) {
        loop {
            let first = match self.policy {
                FsyncPolicy::Interval(every) if !self.waiters.is_empty() => {
                    let due = self.last_sync + every;
                    let now = Instant::now();
                    if now >= due {
                        self.sync_and_ack();
                        continue;
                    }
                    match self.rx.recv_timeout(due - now) {
                        Ok(r) => r,
                        Err(RecvTimeoutError::Timeout) => {
                            self.sync_and_ack();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match self.rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            let mut flushes = Vec::new();
            let mut close = None;
            self.take(first, &mut flushes, &mut close);
            while close.is_none() && self.buf.len() < MAX_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(r) => self.take(r, &mut flushes, &mut close),
                    Err(_) => break,
                }
            }
            self.write_buffer();
            match self.policy {
                FsyncPolicy::EveryBatch => self.sync_and_ack(),
                FsyncPolicy::Never => self.ack_written(),
                FsyncPolicy::Interval(every) => {
                    if self.last_sync.elapsed() >= every {
                        self.sync_and_ack();
                    }
                }
            }
            if !flushes.is_empty() || close.is_some() {
                self.sync_and_ack();
                for f in flushes {
                    let _ = f.send(self.result());
                }
            }
            if let Some(reply) = close {
                let result = self.result();
                self.stop();
                let _ = reply.send(result);
                return;
            }
        }
        // Every handle is gone: persist what was written, then stop.
        self.write_buffer();
        self.sync_and_ack();
        self.stop();
    }

    fn result(&self) -> Result<(), Error> {
        match &self.poisoned {
            Some(why) => Err(Error::poisoned(why)),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        if self.poisoned.is_none() {
            self.core.status.store(CLOSED, Ordering::Release);
        }
        self.dir_lock = None;
        // Wake readers waiting for records so they can see the status.
        self.core.visible.send_modify(|_| {});
    }

    /// Handles one request: encodes appends into the buffer, collects flush/close.
    fn take(
        &mut self,
        req: Request,
        flushes: &mut Vec<oneshot::Sender<Result<(), Error>>>,
        close: &mut Option<oneshot::Sender<Result<(), Error>>>,
    ) {
        match req {
            Request::Append { payloads, reply } => {
                if let Some(why) = &self.poisoned {
                    let _ = reply.send(Acked {
                        result: Err(Error::poisoned(why)),
                        payloads,
                    });
                    return;
                }
                let ts = self.last_ts.max(self.clock.now_ms());
                self.last_ts = ts;
                let start = self.next_offset;
                let ok = match &payloads {
                    Payloads::One(p) => self.encode(p, ts),
                    Payloads::Many(ps) => ps.iter().all(|p| self.encode(p, ts)),
                };
                // Under `Interval` a waiter may wait a whole interval: its payloads are freed
                // now rather than held that long (at a high rate, a second of them is a lot).
                let payloads = match self.policy {
                    FsyncPolicy::Interval(_) => Payloads::Many(Vec::new()),
                    FsyncPolicy::EveryBatch | FsyncPolicy::Never => payloads,
                };
                let waiter = Waiter {
                    reply,
                    range: start..self.next_offset,
                    payloads,
                };
                if ok {
                    self.waiters.push(waiter);
                } else {
                    let why = self.poisoned.clone().unwrap_or_default();
                    waiter.answer(Err(Error::poisoned(&why)));
                }
            }
            Request::Flush(reply) => flushes.push(reply),
            Request::Close(reply) => *close = Some(reply),
        }
    }

    /// Encodes one frame into the buffer, rolling first if needed. False if poisoned.
    fn encode(&mut self, payload: &[u8], ts: u64) -> bool {
        let len = frame::frame_len(payload.len()) as u64;
        let cur = self.seg_pos + self.buf.len() as u64;
        if cur > 0 && cur + len > self.segment_bytes && !self.roll() {
            return false;
        }
        let pos = self.seg_pos + self.buf.len() as u64;
        if segment::wants_index_entry(self.last_index_pos, pos) {
            self.new_index.push(IndexEntry {
                offset: self.next_offset,
                pos,
                timestamp_ms: ts,
            });
            self.last_index_pos = Some(pos);
        }
        frame::encode_record(self.next_offset, ts, payload, &mut self.buf);
        self.next_offset += 1;
        true
    }

    /// Writes the buffer to the active segment and updates the shared segment state.
    fn write_buffer(&mut self) {
        if self.buf.is_empty() || self.poisoned.is_some() {
            return;
        }
        if let Err(e) = self.file.write_all_at(&self.buf, self.seg_pos) {
            self.poison(format!("writing segment {}: {e}", self.base));
            return;
        }
        if !self.new_index.is_empty() {
            let mut encoded = Vec::with_capacity(self.new_index.len() * segment::INDEX_ENTRY_LEN);
            segment::encode_index(&self.new_index, &mut encoded);
            if let Some(f) = &self.index_file {
                match f.write_all_at(&encoded, self.index_len) {
                    Ok(()) => self.index_len += encoded.len() as u64,
                    Err(e) => {
                        tracing::warn!(error = %e, "index write failed; rebuilt at next open");
                        self.index_file = None;
                    }
                }
            }
        }
        self.seg_pos += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced = true;
        let mut st = self.core.write_state();
        if let Some(seg) = st.segments.last_mut() {
            seg.size = self.seg_pos;
            seg.end = self.next_offset;
            seg.last_ts = Some(self.last_ts);
            seg.index.append(&mut self.new_index);
        }
    }

    /// Syncs the active segment (if needed) and acknowledges every written append.
    fn sync_and_ack(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        if self.unsynced {
            if let Err(e) = self.file.sync_data() {
                self.poison(format!("fsync of segment {} failed: {e}", self.base));
                return;
            }
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        self.ack_written();
    }

    /// Publishes the high-water mark and completes the waiters (everything is written).
    fn ack_written(&mut self) {
        if self.poisoned.is_some() || !self.buf.is_empty() {
            return;
        }
        let end = self.next_offset;
        self.core.visible.send_if_modified(|v| {
            let changed = *v != end;
            *v = end;
            changed
        });
        for w in self.waiters.drain(..) {
            let range = w.range.clone();
            w.answer(Ok(range));
        }
    }

    /// Refuses all further writes and fails every unacknowledged waiter.
    fn poison(&mut self, why: String) {
        tracing::error!(reason = %why, "tabgrab-log poisoned: refusing further writes");
        self.core.status.store(POISONED, Ordering::Release);
        self.buf.clear();
        self.new_index.clear();
        for w in self.waiters.drain(..) {
            w.answer(Err(Error::poisoned(&why)));
        }
        self.poisoned = Some(why);
        self.core.visible.send_modify(|_| {});
    }

    /// Seals the active segment (write + sync) and starts a new one. False if poisoned.
    fn roll(&mut self) -> bool {
        self.write_buffer();
        if self.poisoned.is_some() {
            return false;
        }
        if let Err(e) = self.file.sync_data() {
            self.poison(format!("fsync sealing segment {} failed: {e}", self.base));
            return false;
        }
        self.unsynced = false;
        let base = self.next_offset;
        let dir = self.core.dir.clone();
        let path = dir.join(segment::segment_file_name(base));
        let index_path = dir.join(segment::index_file_name(base));
        let storage = self.core.storage.clone();
        let created = storage.open(&path, true).and_then(|file| {
            let index = storage.open(&index_path, true)?;
            storage.sync_dir(&dir)?;
            Ok((file, index))
        });
        let (file, index) = match created {
            Ok(f) => f,
            Err(e) => {
                self.poison(format!("creating segment {base}: {e}"));
                return false;
            }
        };
        self.core.write_state().segments.push(SegmentMeta {
            base,
            path,
            index_path,
            file: file.clone(),
            index: Vec::new(),
            size: 0,
            end: base,
            last_ts: None,
            damage: Vec::new(),
        });
        tracing::debug!(base, "rolled to a new segment");
        self.base = base;
        self.file = file;
        self.index_file = Some(index);
        self.seg_pos = 0;
        self.index_len = 0;
        self.last_index_pos = None;
        if let Err(e) = self.core.apply_retention()
            && e.kind() != ErrorKind::Closed
        {
            tracing::warn!(error = %e, "retention after roll failed");
        }
        true
    }
}
