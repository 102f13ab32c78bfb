//! Recovery: what `Log::open` does before accepting writes, and the report it leaves.
//!
//! Open takes the directory lock, then scans *every* segment with [`crate::segment::scan`]:
//! - The active (last) segment may end in a torn write: an incomplete frame, a checksum
//!   mismatch or zeroes with no valid frame after them. That tail was never acknowledged under
//!   `EveryBatch`/`Interval` (acks wait for the sync, and the sync covers everything before), so
//!   it is cut (`set_len` + sync) and reported as a [`Truncation`].
//! - Damage followed by valid frames (anywhere), a bad tail in a *sealed* segment, or a sealed
//!   segment ending before the next segment's base offset is not a torn write: it is reported as
//!   [`Damage`] in [`RecoveryReport::data_loss`] and kept in memory, so reading those offsets
//!   fails with `ErrorKind::Corrupt` instead of silently skipping them.
//! - Each segment's sparse index is compared with the one the scan rebuilt, and rewritten if it
//!   differs or is missing ([`RecoveryReport::rebuilt_indexes`]).
//!
//! Cost: every byte of the log is read and checksummed once per open. At the default 64 MiB
//! segments and the sizes this project keeps, that is well under a second per GB on a local
//! disk; the scan holds one segment in memory at a time.

use std::path::PathBuf;

use crate::error::Damage;

/// A torn tail cut from the active segment at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// The segment that was cut.
    pub segment: PathBuf,
    /// The new length of the segment (where the bad tail started).
    pub at_byte: u64,
    /// How many bytes were cut.
    pub bytes_cut: u64,
    /// Why the tail was rejected (first bad frame).
    pub reason: String,
}

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Torn tails cut from the active segment (never acknowledged data under a syncing policy).
    pub truncated: Vec<Truncation>,
    /// Damaged ranges kept and reported: reads of these offsets fail with `Corrupt`.
    pub data_loss: Vec<Damage>,
    /// Index files that were missing or wrong and were rewritten.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Stray files removed (index files without a segment, temporary consumer files).
    pub removed_files: Vec<PathBuf>,
    /// Number of segments found.
    pub segments: usize,
    /// The oldest retained offset after recovery.
    pub start_offset: u64,
    /// One past the last record after recovery.
    pub end_offset: u64,
}

impl RecoveryReport {
    /// True when recovery found nothing to cut, lose or rebuild.
    pub fn is_clean(&self) -> bool {
        self.truncated.is_empty() && self.data_loss.is_empty() && self.rebuilt_indexes.is_empty()
    }
}
