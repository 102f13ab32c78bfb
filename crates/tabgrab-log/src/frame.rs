//! Record framing: how one record is laid out in a segment file.
//!
//! Every record is written as a self-describing frame:
//!
//! ```text
//! 0      4        8          16            24
//! +------+--------+----------+-------------+------------------+
//! | crc  | len    | offset   | timestamp_ms| payload (len B)  |
//! | u32  | u32    | u64      | u64         |                  |
//! +------+--------+----------+-------------+------------------+
//! ```
//!
//! All integers are little-endian. `crc` is CRC32C over every byte after it (the rest of the
//! header and the payload), so a flipped length, offset, timestamp or payload bit is detected.
//!
//! Why each part exists:
//! - `len` lets a reader find the next frame without an external index.
//! - `offset` makes recovery able to verify that offsets are dense and to *resynchronise* after
//!   a damaged region: it can search forward for the next frame whose checksum holds and whose
//!   offset is plausible, and report exactly which offsets were lost.
//! - `timestamp_ms` serves time-based retention and `offset_at_time`.
//! - A zeroed region (a common result of a torn write on many filesystems) decodes as
//!   `crc = 0` over zero bytes, which never matches, so zeroes are detected as corruption.
//!
//! The decoder never panics and never allocates before the checksum is verified; that is what
//! the 10,000-case proptest over arbitrary bytes checks.
//!
//! The module is public for tools that read, check or repair segment files without opening a
//! [`Log`](crate::Log) (and for that proptest); a change to the layout is a breaking change of
//! this crate.

use bytes::Bytes;

use crate::Record;

/// Size in bytes of the fixed frame header (crc, len, offset, timestamp).
pub const HEADER_LEN: usize = 24;

/// Hard upper bound on a payload length the decoder accepts, independent of configuration.
///
/// Bounds the work a corrupt length field can cause; `Config::max_record_bytes` is always lower.
pub const MAX_FRAME_PAYLOAD: u32 = 1 << 30;

/// Why a byte slice is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The slice ends before the frame does (a torn write at the tail, or just a short buffer).
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// How many more bytes the frame needs, as far as the header tells.
        needed: usize,
    },
    /// The length field is beyond [`MAX_FRAME_PAYLOAD`]: the header is garbage.
    #[error("frame length {len} exceeds the hard limit of {MAX_FRAME_PAYLOAD} bytes")]
    BadLength {
        /// The length field as read.
        len: u32,
    },
    /// The stored checksum does not match the content (bit flip, zeroes, torn write).
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum stored in the frame.
        stored: u32,
        /// The checksum computed over the frame content.
        computed: u32,
    },
}

/// A verified frame header, as found by [`decode_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The record's offset.
    pub(crate) offset: u64,
    /// The record's timestamp in ms since the Unix epoch.
    pub(crate) timestamp_ms: u64,
    /// Payload length in bytes.
    pub(crate) len: u32,
}

impl Frame {
    /// Total frame size on disk.
    pub(crate) fn total_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// The frame size of a payload of `len` bytes.
pub(crate) fn frame_len(len: usize) -> usize {
    HEADER_LEN + len
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads an unverified header: `(crc, len, offset, timestamp)`, or `None` when too short.
pub(crate) fn peek_header(buf: &[u8]) -> Option<(u32, u32, u64, u64)> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    Some((
        u32_at(buf, 0),
        u32_at(buf, 4),
        u64_at(buf, 8),
        u64_at(buf, 16),
    ))
}

/// Decodes and verifies the frame at the start of `buf` without copying the payload.
pub(crate) fn decode_frame(buf: &[u8]) -> Result<Frame, FrameError> {
    let Some((stored, len, offset, timestamp_ms)) = peek_header(buf) else {
        return Err(FrameError::Incomplete {
            needed: HEADER_LEN - buf.len(),
        });
    };
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::BadLength { len });
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Err(FrameError::Incomplete {
            needed: total - buf.len(),
        });
    }
    let computed = crc32c::crc32c(&buf[4..total]);
    if computed != stored {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok(Frame {
        offset,
        timestamp_ms,
        len,
    })
}

/// Decodes one record from the start of `buf`.
///
/// Returns the record (payload copied) and the number of bytes the frame used. Never panics,
/// whatever the input.
///
/// ```
/// use bytes::Bytes;
/// let mut buf = Vec::new();
/// tabgrab_log::encode_record(7, 1_700_000_000_000, b"hello", &mut buf);
/// let (record, used) = tabgrab_log::decode_record(&buf).unwrap();
/// assert_eq!((record.offset, used), (7, buf.len()));
/// assert_eq!(record.payload, Bytes::from_static(b"hello"));
/// ```
pub fn decode_record(buf: &[u8]) -> Result<(Record, usize), FrameError> {
    let frame = decode_frame(buf)?;
    let total = frame.total_len();
    Ok((
        Record {
            offset: frame.offset,
            timestamp_ms: frame.timestamp_ms,
            payload: Bytes::copy_from_slice(&buf[HEADER_LEN..total]),
        },
        total,
    ))
}

/// Appends the frame of one record to `out` (the writer batches many frames in one buffer).
///
/// # Panics
///
/// Never for payloads up to [`MAX_FRAME_PAYLOAD`]; longer payloads are refused earlier by
/// `Log::append` (`ErrorKind::RecordTooLarge`), and here their length is saturated, which makes
/// the frame fail its checksum rather than lie.
pub fn encode_record(offset: u64, timestamp_ms: u64, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_bytes_are_a_checksum_error() {
        let zeros = [0u8; 64];
        assert!(matches!(
            decode_frame(&zeros),
            Err(FrameError::Checksum { .. })
        ));
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let mut buf = Vec::new();
        encode_record(3, 4, b"abcdef", &mut buf);
        for cut in 0..buf.len() {
            assert!(matches!(
                decode_frame(&buf[..cut]),
                Err(FrameError::Incomplete { .. })
            ));
        }
    }
}
