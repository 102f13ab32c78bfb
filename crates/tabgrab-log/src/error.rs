//! Errors of the log: one [`Error`] type with a [`kind`](Error::kind) to match on.
//!
//! Following the project's error shape (`Error { kind, source }`), callers match on
//! [`ErrorKind`], never on message strings. The `Display` text says what happened and what to
//! do about it. Corruption errors carry the exact damaged range ([`Damage`]) because "corruption
//! is loud" is one of the log's promises: a reader must be able to tell which offsets are lost
//! and decide to skip them explicitly.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// What kind of failure an [`Error`] is.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// An I/O operation failed (see the source error).
    Io,
    /// Stored data is damaged; [`Error::damaged`] gives the segment, offsets and bytes.
    Corrupt,
    /// The requested offset is below `start_offset`: retention deleted it.
    Truncated,
    /// The payload is larger than `Config::max_record_bytes`.
    RecordTooLarge,
    /// A consumer name is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    InvalidName,
    /// The log was closed; no more appends are accepted.
    Closed,
    /// A write or fsync failed earlier: the log refuses writes. Nothing unsynced was acked.
    Poisoned,
    /// Another process (or another `Log` in this process) holds the log directory.
    Locked,
}

/// A damaged range of the log, found by recovery or by a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file holding the damage, so an operator can inspect or restore it.
    pub segment: PathBuf,
    /// The offsets that cannot be read (may be empty when only stray bytes were found).
    pub offsets: Range<u64>,
    /// The byte range within the segment file that failed verification.
    pub bytes: Range<u64>,
    /// Why the bytes were rejected (checksum mismatch, bad length, offset out of sequence...).
    pub reason: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offsets {}..{} (bytes {}..{} of {}): {}",
            self.offsets.start,
            self.offsets.end,
            self.bytes.start,
            self.bytes.end,
            self.segment.display(),
            self.reason
        )
    }
}

/// The error type of every fallible log operation.
#[derive(Debug)]
pub struct Error {
    /// What to match on.
    kind: ErrorKind,
    /// What the log was doing, for the message.
    context: String,
    /// The damaged range, for [`ErrorKind::Corrupt`] errors about log data.
    damage: Option<Box<Damage>>,
    /// The underlying I/O error, if any.
    source: Option<std::io::Error>,
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The damaged range, for [`ErrorKind::Corrupt`] errors about log records.
    ///
    /// A reader can skip the damage explicitly with `reader.seek(damage.offsets.end)`.
    pub fn damaged(&self) -> Option<&Damage> {
        self.damage.as_deref()
    }

    pub(crate) fn new(kind: ErrorKind, context: impl Into<String>) -> Error {
        Error {
            kind,
            context: context.into(),
            damage: None,
            source: None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error {
            kind: ErrorKind::Io,
            context: context.into(),
            damage: None,
            source: Some(source),
        }
    }

    pub(crate) fn corrupt(damage: Damage) -> Error {
        Error {
            kind: ErrorKind::Corrupt,
            context: format!("damaged records at {damage}"),
            damage: Some(Box::new(damage)),
            source: None,
        }
    }

    pub(crate) fn closed() -> Error {
        Error::new(ErrorKind::Closed, "the log is closed")
    }

    pub(crate) fn poisoned(why: &str) -> Error {
        Error::new(ErrorKind::Poisoned, why.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let advice = match self.kind {
            ErrorKind::Io => "check the disk and the log directory permissions, then retry",
            ErrorKind::Corrupt => {
                "the listed offsets are lost; restore the segment from a replica/backup or \
                 seek past the range explicitly"
            }
            ErrorKind::Truncated => {
                "the offset was removed by retention; seek to start_offset() or keep more data"
            }
            ErrorKind::RecordTooLarge => "split the payload or raise Config::max_record_bytes",
            ErrorKind::InvalidName => {
                "use 1 to 200 characters from [A-Za-z0-9._-] (not '.' or '..')"
            }
            ErrorKind::Closed => "open the log again to write more",
            ErrorKind::Poisoned => {
                "the disk failed a write or fsync; unacknowledged appends may or may not be \
                 on disk: fix the disk, reopen the log (recovery decides) and retry"
            }
            ErrorKind::Locked => {
                "another process or Log handle uses this directory; close it or use another dir"
            }
        };
        write!(f, "tabgrab-log: {}", self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        write!(f, " ({advice})")
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
