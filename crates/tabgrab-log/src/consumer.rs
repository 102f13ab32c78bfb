//! Consumer offsets: a named, durable bookmark per consumer in `dir/consumers/<name>`.
//!
//! Each file holds 12 bytes: the offset (u64 LE) and a CRC32C of it, so a damaged file is
//! reported as `Corrupt` rather than read as a wrong position. Commits are atomic and durable:
//! write `<name>~tmp`, fsync it, rename over `<name>`, fsync the directory. `~` is not allowed
//! in names, so a temporary file can never collide with a consumer.

use crate::error::{Error, ErrorKind};

/// Longest accepted consumer name.
pub(crate) const MAX_NAME_LEN: usize = 200;

/// Checks a consumer name: 1..=200 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidName,
            format!("invalid consumer name {name:?}"),
        ))
    }
}

/// The 12-byte file content for `offset`.
pub(crate) fn encode(offset: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32c::crc32c(&out[..8]);
    out[8..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The offset in a consumer file, or `None` if the content is damaged.
pub(crate) fn decode(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 12 {
        return None;
    }
    let mut off = [0u8; 8];
    off.copy_from_slice(&bytes[..8]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[8..]);
    (crc32c::crc32c(&off) == u32::from_le_bytes(crc)).then(|| u64::from_le_bytes(off))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("orders-v1.worker_2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(201), "a~tmp"] {
            assert_eq!(
                validate_name(bad).map_err(|e| e.kind()),
                Err(ErrorKind::InvalidName)
            );
        }
        assert!(validate_name(&"x".repeat(200)).is_ok());
    }

    #[test]
    fn content_round_trip_and_damage() {
        let mut b = encode(42);
        assert_eq!(decode(&b), Some(42));
        b[0] ^= 1;
        assert_eq!(decode(&b), None);
    }
}
