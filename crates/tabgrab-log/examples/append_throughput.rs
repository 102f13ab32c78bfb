//! Measures durable appends/s: N concurrent appenders, 200-byte records, `EveryBatch`.
//!
//! `cargo run --release -p tabgrab-log --example append_throughput -- [appenders] [seconds] [dir]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tabgrab_log::{Config, Log};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let appenders: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = args.get(3).map_or(tmp.path().to_path_buf(), Into::into);
    let log = Log::open(Config::new(&dir)).unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (log, count) = (log.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let payload = Bytes::from(vec![b'x'; 200]);
            while Instant::now() < deadline {
                log.append(payload.clone()).await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = count.load(Ordering::Relaxed);
    let el = start.elapsed().as_secs_f64();
    println!(
        "{appenders} appenders, EveryBatch: {n} durable appends in {el:.2}s = {:.0}/s",
        n as f64 / el
    );
    log.close().await.unwrap();
}
