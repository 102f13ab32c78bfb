//! The price of persisted correlation: request-response round trips over the embedded bus with
//! the SQLite correlation store, and with the in-memory store (no persistence), side by side
//! in one run.
//!
//! A round trip is `Requester::request(..).await`: insert the pending request, publish it
//! durably, the responder handles it and publishes the reply durably, the requester's group
//! claims the pending request, hands over the outcome and marks it finished. Both stores pay
//! for the two durable log appends; only SQLite pays for three synchronous (`synchronous =
//! FULL`) database writes.
//!
//! Run: `cargo run --release -p tabgrab --example request_reply_overhead [-- REQUESTS CONCURRENCY...]`
//! (defaults: 3000 requests at concurrency 1, 16 and 64). With `TABGRAB_BENCH_PG_URL` set
//! (e.g. `postgres://postgres@127.0.0.1:5432/test`) a PostgreSQL store row is added per level
//! (a fresh table, dropped afterwards).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::messaging::{
    CorrelationStore, MemoryStore, Requester, Responder, SendOptions, SqliteStore,
};

#[derive(Serialize, Deserialize, Message)]
#[message(type = "bench.ping.send.v1", query, response = u64)]
struct Ping {
    n: u64,
}

/// One measured configuration.
struct Figures {
    per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn measure(
    store: Arc<dyn CorrelationStore>,
    dir: &std::path::Path,
    requests: u64,
    concurrency: usize,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let bus = EmbeddedBus::open(dir.join("bus"))?;
    let responder = Responder::builder(&bus, "ping", "ping")
        .concurrency(256)
        .handle(|p: Ping, _ctx| async move { Ok(p.n) })
        .start()?;
    let requester = Requester::builder(&bus, "bench")
        .shared_store(store)
        .route::<Ping>("ping")
        .concurrency(256)
        .start()?;
    // Warm up (opens files, fills caches).
    for n in 0..20 {
        requester
            .request(&Ping { n }, SendOptions::default())
            .await?;
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    let mut runs = futures::stream::iter(0..requests)
        .map(|n| {
            let requester = requester.clone();
            async move {
                let t = Instant::now();
                let outcome = requester
                    .request(
                        &Ping { n },
                        SendOptions::default().timeout(Duration::from_secs(60)),
                    )
                    .await;
                (t.elapsed(), outcome.map(|answer| answer == n))
            }
        })
        .buffer_unordered(concurrency);
    while let Some((elapsed, ok)) = runs.next().await {
        if !ok? {
            return Err("a round trip came back with the wrong answer".into());
        }
        histogram.saturating_record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }
    let wall = started.elapsed().as_secs_f64();
    requester.shutdown().await?;
    responder.shutdown().await?;
    bus.close().await?;
    Ok(Figures {
        per_s: requests as f64 / wall,
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| "usage: request_reply_overhead [REQUESTS [CONCURRENCY...]]")?;
    let requests = args.first().copied().unwrap_or(3000);
    let levels: Vec<usize> = if args.len() > 1 {
        args[1..].iter().map(|&c| c as usize).collect()
    } else {
        vec![1, 16, 64]
    };
    println!("request-response round trips on the embedded backend, {requests} per run");
    println!(
        "{:>11} | {:>22} | {:>22} | {:>14}",
        "concurrency", "sqlite store rt/s p50/p99", "memory store rt/s p50/p99", "sqlite/memory"
    );
    let levels_again = levels.clone();
    for concurrency in levels {
        let dir = tempfile::tempdir()?;
        let sqlite: Arc<dyn CorrelationStore> =
            Arc::new(SqliteStore::open(dir.path().join("correlation.db")).await?);
        let s = measure(sqlite, &dir.path().join("s"), requests, concurrency).await?;
        let dir = tempfile::tempdir()?;
        let m = measure(
            Arc::new(MemoryStore::new()),
            dir.path(),
            requests,
            concurrency,
        )
        .await?;
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "{concurrency:>11} | {:>7.0} {:>6.2} {:>7.2} | {:>7.0} {:>6.2} {:>7.2} | {:>5.2}x rt/s, {:>4.1}x p50",
            s.per_s,
            ms(s.p50_us),
            ms(s.p99_us),
            m.per_s,
            ms(m.p50_us),
            ms(m.p99_us),
            s.per_s / m.per_s,
            s.p50_us as f64 / m.p50_us.max(1) as f64,
        );
    }
    println!("(rt/s: round trips per second; p50/p99 in ms)");
    if let Ok(url) = std::env::var("TABGRAB_BENCH_PG_URL") {
        postgres_rows(&url, requests, &levels_again).await?;
    }
    Ok(())
}

/// The PostgreSQL store at each concurrency level (one table per level, dropped afterwards).
async fn postgres_rows(
    url: &str,
    requests: u64,
    levels: &[usize],
) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{:>11} | {:>22}",
        "concurrency", "postgres store rt/s p50/p99"
    );
    for &concurrency in levels {
        let table = format!("bench_corr_{}", uuid::Uuid::now_v7().simple());
        let store = tabgrab::messaging::PostgresStore::connect_table(url, &table).await?;
        let dir = tempfile::tempdir()?;
        let figures = measure(Arc::new(store.clone()), dir.path(), requests, concurrency).await;
        store.drop_table(&table).await?;
        let f = figures?;
        println!(
            "{concurrency:>11} | {:>7.0} {:>6.2} {:>7.2}",
            f.per_s,
            f.p50_us as f64 / 1000.0,
            f.p99_us as f64 / 1000.0
        );
    }
    Ok(())
}
