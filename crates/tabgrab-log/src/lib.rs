//! `tabgrab-log`: the embedded, durable, append-only log of tabgrab.
//!
//! Records (opaque `Bytes` payloads) get dense `u64` offsets starting at 0 and a millisecond
//! timestamp. They are stored in segment files of checksummed frames, written by one writer
//! thread that *group-commits*: concurrent appends share one write and one `fdatasync`, and
//! each append returns only once its record is durable under the [`FsyncPolicy`]. Readers see
//! acknowledged records only.
//!
//! What the log promises and how it keeps it:
//! - **No acknowledged record lost**: acks happen after the sync that covers the record
//!   (`EveryBatch`, `Interval`); a failed sync poisons the log instead of acking.
//! - **No torn or invented data**: every frame carries a CRC32C and its own offset; recovery
//!   cuts a torn tail of the active segment and never serves a frame that fails verification.
//! - **Corruption is loud**: damage that is not a torn tail is reported with its segment,
//!   offset range and byte range ([`RecoveryReport::data_loss`], [`ErrorKind::Corrupt`]);
//!   reads never skip it silently.
//!
//! Module map (one concept each): [`frame`] (record encoding), `segment` (files, index, the
//! verifying scan), `recovery` (what open does), `writer` (group commit), `log` (the handle),
//! `reader` (tail following), `consumer` (named offsets), [`storage`] (the file-system seam),
//! `sim` (the power-loss double, feature `sim`), `config`, `error`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tabgrab_log::Error> {
//! use tabgrab_log::{Config, FsyncPolicy, Log};
//! let log = Log::open(Config::new("/var/lib/app/log").fsync(FsyncPolicy::EveryBatch))?;
//! let range = log.append_batch(vec!["a".into(), "b".into()]).await?;
//! let mut reader = log.reader(range.start);
//! let first = reader.next().await?;
//! log.commit_consumer("worker", first.offset + 1)?;
//! # Ok(()) }
//! ```

mod config;
mod consumer;
mod error;
pub mod frame;
mod log;
mod reader;
mod recovery;
mod segment;
#[cfg(any(test, feature = "sim"))]
mod sim;
pub mod storage;
mod writer;

use bytes::Bytes;

pub use config::{Clock, Config, FsyncPolicy, Retention};
pub use error::{Damage, Error, ErrorKind};
pub use frame::{FrameError, decode_record, encode_record};
pub use log::{Log, RetentionReport};
pub use reader::Reader;
pub use recovery::{RecoveryReport, Truncation};
#[cfg(any(test, feature = "sim"))]
pub use sim::SimStorage;
pub use storage::{FsStorage, Storage, StorageFile};

/// One record as read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its position in the log (dense, from 0).
    pub offset: u64,
    /// When the writer appended it, in ms since the Unix epoch (never decreasing with offset).
    pub timestamp_ms: u64,
    /// The bytes appended (a cheap slice of the read buffer).
    pub payload: Bytes,
}
