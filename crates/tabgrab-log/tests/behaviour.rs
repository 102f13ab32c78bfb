//! Unit-level behaviour of the log: tail following, time lookup, retention, lock, poisoning,
//! size limits, consumer offsets, close.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tabgrab_log::{Clock, Config, ErrorKind, FsyncPolicy, Log, Retention, SimStorage};

/// A clock the test moves by hand (ms since the epoch).
fn manual_clock(start_ms: u64) -> (Clock, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(start_ms));
    let n = now.clone();
    let clock =
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst)));
    (clock, now)
}

fn sim_config(sim: &SimStorage) -> Config {
    Config::new("/sim/log").storage(Arc::new(sim.clone()))
}

#[tokio::test]
async fn reader_follows_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(Config::new(dir.path())).unwrap();
    log.append(Bytes::from_static(b"zero")).await.unwrap();
    let mut reader = log.reader(0);
    assert_eq!(reader.next().await.unwrap().payload, "zero");
    let waiting = tokio::spawn(async move {
        let r = reader.next().await.unwrap();
        (r, reader.position())
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished(), "reader must wait for new records");
    log.append(Bytes::from_static(b"one")).await.unwrap();
    let (r, pos) = waiting.await.unwrap();
    assert_eq!((r.offset, &r.payload[..], pos), (1, &b"one"[..], 2));

    let mut reader = log.reader(0);
    let batch = reader.next_batch(10).await.unwrap();
    assert_eq!(batch.len(), 2);
    log.close().await.unwrap();
    assert_eq!(reader.next().await.unwrap_err().kind(), ErrorKind::Closed);
}

#[tokio::test]
async fn offset_at_time_finds_first_record_at_or_after() {
    let sim = SimStorage::new();
    let (clock, now) = manual_clock(1_000_000);
    let log = Log::open(sim_config(&sim).clock(clock).segment_bytes(512)).unwrap();
    for i in 0..100u64 {
        now.store(1_000_000 + i * 10, Ordering::SeqCst);
        log.append(Bytes::from(vec![b'x'; 40])).await.unwrap();
    }
    let at = |ms: u64| log.offset_at_time(UNIX_EPOCH + Duration::from_millis(ms));
    assert_eq!(at(0), 0);
    assert_eq!(at(1_000_000), 0);
    assert_eq!(at(1_000_001), 1);
    assert_eq!(at(1_000_500), 50);
    assert_eq!(at(1_000_990), 99);
    assert_eq!(at(1_000_991), 100);
    assert_eq!(log.offset_at_time(SystemTime::now()), 100);
    let r = log.read(at(1_000_333), 1).unwrap();
    assert_eq!(r[0].timestamp_ms, 1_000_340);
}

#[tokio::test]
async fn retention_by_size_deletes_oldest_sealed_segments() {
    let sim = SimStorage::new();
    let cfg = sim_config(&sim).segment_bytes(1000).retention(Retention {
        max_bytes: Some(3000),
        max_age: None,
    });
    let log = Log::open(cfg).unwrap();
    for _ in 0..200 {
        log.append(Bytes::from(vec![7u8; 76])).await.unwrap(); // 100-byte frames
    }
    // Retention ran on each roll: at most ~3000 bytes (+ the active segment) remain.
    let start = log.start_offset();
    assert!(start > 0, "retention should have moved the start");
    assert_eq!(start % 10, 0, "whole segments are deleted");
    assert!(log.end_offset() - start <= 40);
    assert_eq!(
        log.read(start - 1, 1).unwrap_err().kind(),
        ErrorKind::Truncated
    );
    assert_eq!(log.read(start, 1).unwrap()[0].offset, start);
    let mut reader = log.reader(0);
    assert_eq!(
        reader.next().await.unwrap_err().kind(),
        ErrorKind::Truncated
    );
    log.close().await.unwrap();
    let log = Log::open(sim_config(&sim)).unwrap();
    assert_eq!(log.start_offset(), start);
    assert_eq!(log.end_offset(), 200);
}

#[tokio::test]
async fn retention_by_age_uses_the_injected_clock_and_keeps_the_active_segment() {
    let sim = SimStorage::new();
    let (clock, now) = manual_clock(10_000_000);
    let cfg = sim_config(&sim)
        .segment_bytes(1000)
        .clock(clock)
        .retention(Retention {
            max_bytes: None,
            max_age: Some(Duration::from_secs(60)),
        });
    let log = Log::open(cfg).unwrap();
    for _ in 0..30 {
        log.append(Bytes::from(vec![1u8; 76])).await.unwrap();
    }
    assert_eq!(log.apply_retention().unwrap().removed_segments.len(), 0);
    now.fetch_add(61_000, Ordering::SeqCst);
    let report = log.apply_retention().unwrap();
    // 30 records of 100 bytes = 3 segments; the last one is active and kept, even if old.
    assert_eq!(report.removed_segments.len(), 2);
    assert_eq!(log.start_offset(), 20);
    assert_eq!(report.start_offset, 20);
    assert_eq!(log.read(20, 100).unwrap().len(), 10);
}

#[tokio::test]
async fn second_open_of_the_same_dir_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(Config::new(dir.path())).unwrap();
    let err = Log::open(Config::new(dir.path())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked);
    log.close().await.unwrap();
    let again = Log::open(Config::new(dir.path())).unwrap();
    drop(again);
    drop(log);
    Log::open(Config::new(dir.path())).unwrap();
}

#[tokio::test]
async fn fsync_failure_poisons_the_log_and_acks_nothing() {
    let sim = SimStorage::new();
    let log = Log::open(sim_config(&sim)).unwrap();
    log.append(Bytes::from_static(b"before")).await.unwrap();
    sim.fail_syncs(true);
    let err = log.append(Bytes::from_static(b"lost")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Poisoned);
    sim.fail_syncs(false);
    let err = log.append(Bytes::from_static(b"after")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Poisoned);
    assert_eq!(log.end_offset(), 1, "nothing unsynced becomes visible");
    assert_eq!(log.read(0, 10).unwrap().len(), 1);
    assert_eq!(log.flush().await.unwrap_err().kind(), ErrorKind::Poisoned);
    let mut reader = log.reader(1);
    assert_eq!(reader.next().await.unwrap_err().kind(), ErrorKind::Poisoned);
}

#[tokio::test]
async fn oversized_records_are_refused() {
    let sim = SimStorage::new();
    let log = Log::open(sim_config(&sim).max_record_bytes(100)).unwrap();
    let err = log.append(Bytes::from(vec![0u8; 101])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RecordTooLarge);
    let err = log
        .append_batch(vec![Bytes::from_static(b"ok"), Bytes::from(vec![0u8; 101])])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RecordTooLarge);
    assert_eq!(log.append(Bytes::from(vec![0u8; 100])).await.unwrap(), 0);
    assert!(err.to_string().contains("max_record_bytes"));
}

#[tokio::test]
async fn consumer_offsets_survive_reopen_and_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(Config::new(dir.path())).unwrap();
    assert_eq!(log.consumer_offset("billing").unwrap(), None);
    log.commit_consumer("billing", 41).unwrap();
    log.commit_consumer("billing", 42).unwrap();
    log.commit_consumer("ship.v2_x-1", 7).unwrap();
    for bad in ["", "..", "a/b", "white space", &"n".repeat(201)] {
        assert_eq!(
            log.commit_consumer(bad, 1).unwrap_err().kind(),
            ErrorKind::InvalidName
        );
        assert_eq!(
            log.consumer_offset(bad).unwrap_err().kind(),
            ErrorKind::InvalidName
        );
    }
    drop(log);
    let log = Log::open(Config::new(dir.path())).unwrap();
    assert_eq!(log.consumer_offset("billing").unwrap(), Some(42));
    assert_eq!(log.consumer_offset("ship.v2_x-1").unwrap(), Some(7));
}

#[tokio::test]
async fn closed_log_refuses_appends_but_serves_reads() {
    let sim = SimStorage::new();
    let log = Log::open(sim_config(&sim)).unwrap();
    let r = log
        .append_batch(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")])
        .await
        .unwrap();
    assert_eq!(r, 0..2);
    log.close().await.unwrap();
    log.close().await.unwrap();
    assert_eq!(
        log.append(Bytes::from_static(b"c"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Closed
    );
    assert_eq!(log.read(0, 10).unwrap().len(), 2);
}

#[tokio::test]
async fn interval_and_never_policies_ack_and_flush() {
    for policy in [
        FsyncPolicy::Interval(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        let sim = SimStorage::new();
        let log = Log::open(sim_config(&sim).fsync(policy)).unwrap();
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append(Bytes::from(vec![i])).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        log.flush().await.unwrap();
        assert_eq!(log.end_offset(), 20);
        sim.crash(None);
        let log = Log::open(sim_config(&sim)).unwrap();
        assert_eq!(
            log.end_offset(),
            20,
            "{policy:?}: flush made everything durable"
        );
    }
}

#[tokio::test]
async fn group_commit_shares_fsyncs() {
    let sim = SimStorage::new();
    let log = Log::open(sim_config(&sim)).unwrap();
    let before = sim.sync_count();
    let mut tasks = Vec::new();
    for i in 0..2000u32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(Bytes::from(i.to_string())).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let syncs = sim.sync_count() - before;
    assert!(syncs < 2000, "{syncs} syncs for 2000 concurrent appends");
}

#[test]
fn open_works_outside_a_runtime() {
    let sim = SimStorage::new();
    let log = Log::open(sim_config(&sim)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let off = rt.block_on(log.append(Bytes::from_static(b"x"))).unwrap();
    assert_eq!(off, 0);
}
