//! Corruption on real files, between runs: bit flips, truncation, zeroed chunks, lost or
//! damaged indexes. Torn tails of the active segment are cut and reported; everything else is
//! reported as data loss with its exact range and is never skipped silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tabgrab_log::{Config, ErrorKind, Log, decode_record};

/// A log of `n` records ("record-0000" padded to 60 bytes) written and closed.
async fn make_log(dir: &Path, n: u64, segment_bytes: u64) {
    let log = Log::open(Config::new(dir).segment_bytes(segment_bytes)).unwrap();
    for i in 0..n {
        log.append(value(i)).await.unwrap();
    }
    log.close().await.unwrap();
}

fn value(i: u64) -> Bytes {
    Bytes::from(format!("record-{i:04}-{}", "x".repeat(48)))
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// `(offset, byte range)` of every frame in a segment file.
fn frames(path: &Path) -> Vec<(u64, std::ops::Range<u64>)> {
    let data = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let (r, used) = decode_record(&data[pos..]).unwrap();
        out.push((r.offset, pos as u64..(pos + used) as u64));
        pos += used;
    }
    out
}

fn flip_bit(path: &Path, byte: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, byte).unwrap();
    b[0] ^= 0x04;
    f.write_all_at(&b, byte).unwrap();
}

fn assert_readable(log: &Log, offsets: std::ops::Range<u64>) {
    for o in offsets {
        let r = log.read(o, 1).unwrap();
        assert_eq!(r[0].offset, o);
        assert_eq!(r[0].payload, value(o));
    }
}

#[tokio::test]
async fn bit_flip_in_a_sealed_segment_is_reported_as_data_loss_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 100, 1024).await;
    let segs = segments(dir.path());
    assert!(segs.len() > 4);
    let victim = &segs[2];
    let (offset, bytes) = frames(victim)[3].clone();
    flip_bit(victim, bytes.start + 40);

    let log = Log::open(Config::new(dir.path()).segment_bytes(1024)).unwrap();
    let report = log.recovery_report().clone();
    assert!(report.truncated.is_empty(), "{report:?}");
    assert_eq!(report.data_loss.len(), 1, "{report:?}");
    let d = &report.data_loss[0];
    assert_eq!(
        (&d.segment, d.offsets.clone(), d.bytes.clone()),
        (victim, offset..offset + 1, bytes)
    );

    let err = log.read(offset, 10).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(err.damaged().unwrap().offsets, offset..offset + 1);
    assert!(err.to_string().contains(&format!("offsets {offset}..")));
    // A read that reaches the damage stops short of it, never skips it.
    let before = log.read(offset - 2, 10).unwrap();
    assert_eq!(before.len(), 2);
    assert_readable(&log, 0..offset);
    assert_readable(&log, offset + 1..100);
    // A reader stops at the damage and can seek past it explicitly.
    let mut reader = log.reader(offset - 1);
    assert_eq!(reader.next().await.unwrap().offset, offset - 1);
    let err = reader.next().await.unwrap_err();
    reader.seek(err.damaged().unwrap().offsets.end);
    assert_eq!(reader.next().await.unwrap().offset, offset + 1);
    assert_eq!(log.end_offset(), 100);
    assert_eq!(log.append(Bytes::from_static(b"more")).await.unwrap(), 100);
}

#[tokio::test]
async fn damage_in_the_active_segment_followed_by_valid_records_is_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 40, 1 << 20).await;
    let seg = &segments(dir.path())[0];
    let (offset, bytes) = frames(seg)[20].clone();
    flip_bit(seg, bytes.start + 2);
    let log = Log::open(Config::new(dir.path())).unwrap();
    let report = log.recovery_report();
    assert!(report.truncated.is_empty());
    assert_eq!(report.data_loss[0].offsets, 20..21);
    assert_eq!(offset, 20);
    assert_eq!(log.end_offset(), 40);
    assert_eq!(log.read(20, 1).unwrap_err().kind(), ErrorKind::Corrupt);
    assert_readable(&log, 21..40);
}

#[tokio::test]
async fn torn_tails_of_the_active_segment_are_cut_and_reported() {
    enum Damage {
        FlipLast,
        Truncate5,
        ZeroLast4k,
    }
    for damage in [Damage::FlipLast, Damage::Truncate5, Damage::ZeroLast4k] {
        let dir = tempfile::tempdir().unwrap();
        make_log(dir.path(), 200, 1 << 20).await;
        let seg = segments(dir.path())[0].clone();
        let all = frames(&seg);
        let len = std::fs::metadata(&seg).unwrap().len();
        assert!(len > 8192);
        let first_bad = match damage {
            Damage::FlipLast => {
                flip_bit(&seg, all[199].1.start + 30);
                199
            }
            Damage::Truncate5 => {
                OpenOptions::new()
                    .write(true)
                    .open(&seg)
                    .unwrap()
                    .set_len(len - 5)
                    .unwrap();
                199
            }
            Damage::ZeroLast4k => {
                let f = OpenOptions::new().write(true).open(&seg).unwrap();
                f.write_all_at(&[0u8; 4096], len - 4096).unwrap();
                all.iter().position(|(_, r)| r.end > len - 4096).unwrap() as u64
            }
        };
        let damaged_len = std::fs::metadata(&seg).unwrap().len();
        let log = Log::open(Config::new(dir.path())).unwrap();
        let report = log.recovery_report();
        assert!(report.data_loss.is_empty(), "{report:?}");
        assert_eq!(report.truncated.len(), 1);
        let t = &report.truncated[0];
        assert_eq!(t.segment, seg);
        assert_eq!(t.at_byte, all[first_bad as usize].1.start);
        assert_eq!(t.bytes_cut, damaged_len - t.at_byte);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), t.at_byte);
        assert_eq!(log.end_offset(), first_bad);
        assert_readable(&log, 0..first_bad);
        // The log keeps working at the cut.
        assert_eq!(log.append(value(first_bad)).await.unwrap(), first_bad);
        log.close().await.unwrap();
        let log = Log::open(Config::new(dir.path())).unwrap();
        assert!(
            log.recovery_report().is_clean(),
            "{:?}",
            log.recovery_report()
        );
        assert_readable(&log, 0..first_bad + 1);
    }
}

#[tokio::test]
async fn sealed_segment_truncated_at_a_frame_boundary_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 60, 1024).await;
    let seg = segments(dir.path())[1].clone();
    let f = frames(&seg);
    let (last_offset, last) = f.last().unwrap().clone();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(last.start)
        .unwrap();
    let log = Log::open(Config::new(dir.path()).segment_bytes(1024)).unwrap();
    let d = &log.recovery_report().data_loss;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].offsets, last_offset..last_offset + 1);
    assert_eq!(
        log.read(last_offset, 1).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    assert_readable(&log, 0..last_offset);
    assert_readable(&log, last_offset + 1..60);
}

#[tokio::test]
async fn deleted_or_damaged_indexes_are_rebuilt_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 300, 8192).await;
    let idx: Vec<PathBuf> = segments(dir.path())
        .iter()
        .map(|p| p.with_extension("index"))
        .collect();
    let log = Log::open(Config::new(dir.path())).unwrap();
    assert!(
        log.recovery_report().is_clean(),
        "{:?}",
        log.recovery_report()
    );
    drop(log);
    std::fs::remove_file(&idx[0]).unwrap();
    std::fs::write(&idx[1], b"garbage").unwrap();
    let log = Log::open(Config::new(dir.path())).unwrap();
    let rebuilt = &log.recovery_report().rebuilt_indexes;
    assert_eq!(rebuilt, &idx[..2]);
    assert!(idx[0].exists());
    assert_readable(&log, 0..300);
    assert_eq!(log.offset_at_time(std::time::UNIX_EPOCH), 0);
    drop(log);
    let log = Log::open(Config::new(dir.path())).unwrap();
    assert!(log.recovery_report().is_clean());
}
