//! Properties of the frame decoder: never panics on arbitrary bytes; encode/decode round-trip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tabgrab_log::{FrameError, decode_record, encode_record};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn decode_record_never_panics_on_arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_record(&buf);
    }

    #[test]
    fn decode_record_rejects_any_single_bit_flip(
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        offset in any::<u64>(), ts in any::<u64>(), bit in any::<usize>(),
    ) {
        let mut buf = Vec::new();
        encode_record(offset, ts, &payload, &mut buf);
        let bit = bit % (buf.len() * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode_record(&buf).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn encode_then_decode_round_trips(
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
        offset in any::<u64>(), ts in any::<u64>(),
        trailing in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut buf = Vec::new();
        encode_record(offset, ts, &payload, &mut buf);
        let len = buf.len();
        buf.extend_from_slice(&trailing);
        let (rec, used) = decode_record(&buf).unwrap();
        prop_assert_eq!(used, len);
        prop_assert_eq!(rec.offset, offset);
        prop_assert_eq!(rec.timestamp_ms, ts);
        prop_assert_eq!(&rec.payload[..], &payload[..]);
        let short = decode_record(&buf[..len - 1]);
        prop_assert!(
            matches!(short, Err(FrameError::Incomplete { .. })),
            "expected Incomplete, got {:?}",
            short
        );
    }
}
