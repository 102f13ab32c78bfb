//! `pizzeria bench`: the embedded backend's speed, side by side with the disk's own.
//!
//! Three figures, measured in one run on the same directory:
//! 1. **baselines**: the raw `fdatasync` rate and latency of this disk (append a small write,
//!    `fdatasync`, repeat): the ceiling of any durable, unbatched system here; and a bare
//!    group commit at the latency phase's rate (a thread that appends whatever arrived as one
//!    write of envelope-sized records and `fdatasync`s, in a loop, with no log, bus or
//!    runtime; measured right before the latency phase): the latency a durable write path
//!    can reach at that rate on this disk, since a write that arrives during a sync waits for
//!    it and then for its own;
//! 2. **durable publish throughput**: events/s through [`Publisher::publish`] with many
//!    concurrent publishers under the default fsync-every-batch policy: group commit turns one
//!    `fdatasync` into many acknowledged events;
//! 3. **publish-to-handler latency** at a fixed rate: p50/p99 from the moment an event is
//!    made to the moment a subscriber's handler runs, which includes the durability wait; it
//!    is judged against the disk's own p99 `fdatasync` and the bare group commit's p99. The
//!    publishers' own durable wait
//!    (call to return of `publish`) in the same phase shows how much of it the write path is.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Context, Publisher, Subscription};

/// Settings of a benchmark run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Scratch directory (a fresh sub-directory is made and removed).
    pub dir: PathBuf,
    /// How long each throughput phase runs.
    pub duration: Duration,
    /// Concurrent publishing tasks in the throughput phase.
    pub publishers: usize,
    /// Size of each event's payload in bytes.
    pub payload_bytes: usize,
    /// Events per second in the latency phase.
    pub rate: u64,
}

/// The figures of a benchmark run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// Raw fdatasync calls per second (one small write each).
    pub fdatasync_per_sec: f64,
    /// Raw fdatasync latency, median, microseconds.
    pub fdatasync_p50_us: u64,
    /// Raw fdatasync latency, 99th percentile, microseconds.
    pub fdatasync_p99_us: u64,
    /// Bare group commit at the latency phase's rate, from a record's arrival to the end of
    /// the `fdatasync` covering it: median, microseconds.
    pub group_commit_p50_us: u64,
    /// The same, 99th percentile, microseconds.
    pub group_commit_p99_us: u64,
    /// Size of one encoded envelope in the throughput phase, bytes.
    pub envelope_bytes: usize,
    /// Durable events per second through `Publisher::publish`.
    pub publish_per_sec: f64,
    /// Durable events per second through `Publisher::publish_batch` (batches of 100).
    pub publish_batch_per_sec: f64,
    /// Events acknowledged per fdatasync-equivalent: publish rate / raw fdatasync rate.
    pub group_commit_factor: f64,
    /// Fixed rate of the latency phase, events/s.
    pub latency_rate: u64,
    /// Durable publish latency in the latency phase (from the call to `publish` to its
    /// return: the durability wait), median, microseconds.
    pub publish_p50_us: u64,
    /// Durable publish latency in the latency phase, 99th percentile, microseconds.
    pub publish_p99_us: u64,
    /// Publish-to-handler latency, median, microseconds.
    pub e2e_p50_us: u64,
    /// Publish-to-handler latency, 99th percentile, microseconds.
    pub e2e_p99_us: u64,
    /// Publish-to-handler latency, maximum, microseconds.
    pub e2e_max_us: u64,
    /// Events delivered in the latency phase.
    pub e2e_events: u64,
}

#[derive(Serialize, Deserialize, Message)]
#[message(type = "pizzeria.bench.tick.v1", event)]
struct BenchEvent {
    n: u64,
    pad: String,
}

/// A boxed error for the CLI.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the three phases and returns the figures.
pub async fn run(config: &BenchConfig) -> Result<BenchReport, BoxError> {
    std::fs::create_dir_all(&config.dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("bench-")
        .tempdir_in(&config.dir)?;
    eprintln!(
        "baseline: raw fdatasync for {:?} ...",
        config.duration.min(Duration::from_secs(3))
    );
    let (fsync_rate, fsync_hist) =
        fdatasync_baseline(scratch.path(), config.duration.min(Duration::from_secs(3)))?;

    eprintln!(
        "durable publish with {} concurrent publishers for {:?} ...",
        config.publishers, config.duration
    );
    let bus = EmbeddedBus::open(scratch.path().join("bus"))?;
    let publisher = Publisher::new(&bus, "bench", "/pizzeria/bench")?;
    let pad = "x".repeat(config.payload_bytes.saturating_sub(20));
    let envelope_bytes = bus
        .codec()
        .encode(&publisher.envelope(
            &BenchEvent {
                n: 0,
                pad: pad.clone(),
            },
            "s0",
        )?)?
        .len();
    let publish_per_sec = publish_throughput(&publisher, config, &pad, 1).await?;
    eprintln!(
        "durable publish_batch (100 per batch) for {:?} ...",
        config.duration
    );
    let publish_batch_per_sec = publish_throughput(&publisher, config, &pad, 100).await?;

    // Right before the latency phase, at its rate: this disk's state now.
    eprintln!(
        "baseline: bare group commit of {}-byte records at {} records/s for {:?} ...",
        envelope_bytes + FRAME_HEADER_BYTES,
        config.rate,
        config.duration
    );
    let group_commit = {
        let (dir, rate, record) = (
            scratch.path().to_path_buf(),
            config.rate,
            envelope_bytes + FRAME_HEADER_BYTES,
        );
        let duration = config.duration;
        tokio::task::spawn_blocking(move || group_commit_baseline(&dir, rate, record, duration))
            .await??
    };
    eprintln!(
        "publish-to-handler latency at {} events/s for {:?} ...",
        config.rate, config.duration
    );
    let (e2e, acks, delivered) = e2e_latency(&bus, config, &pad).await?;
    bus.close().await?;

    Ok(BenchReport {
        fdatasync_per_sec: fsync_rate,
        fdatasync_p50_us: fsync_hist.value_at_quantile(0.5),
        fdatasync_p99_us: fsync_hist.value_at_quantile(0.99),
        group_commit_p50_us: group_commit.value_at_quantile(0.5),
        group_commit_p99_us: group_commit.value_at_quantile(0.99),
        envelope_bytes,
        publish_per_sec,
        publish_batch_per_sec,
        group_commit_factor: if fsync_rate > 0.0 {
            publish_per_sec / fsync_rate
        } else {
            0.0
        },
        latency_rate: config.rate,
        publish_p50_us: acks.value_at_quantile(0.5),
        publish_p99_us: acks.value_at_quantile(0.99),
        e2e_p50_us: e2e.value_at_quantile(0.5),
        e2e_p99_us: e2e.value_at_quantile(0.99),
        e2e_max_us: e2e.max(),
        e2e_events: delivered,
    })
}

fn histogram() -> Result<Histogram<u64>, BoxError> {
    Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?)
}

/// Appends 200 bytes and fdatasyncs, repeatedly: the disk's own durable-write figure.
fn fdatasync_baseline(dir: &Path, duration: Duration) -> Result<(f64, Histogram<u64>), BoxError> {
    let path = dir.join("fdatasync-baseline");
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut hist = histogram()?;
    let record = [7u8; 200];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        let t = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        hist.saturating_record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    Ok((rate, hist))
}

/// The log's frame header, written before each envelope (`tabgrab_log::frame::HEADER_LEN`).
const FRAME_HEADER_BYTES: usize = 24;

/// A bare group commit at `rate` records/s (arriving in bursts every millisecond, as in the
/// latency phase): one thread appends everything that arrived as one write and
/// `fdatasync`s, in a loop. Returns each record's time from arrival to its sync's end.
fn group_commit_baseline(
    dir: &Path,
    rate: u64,
    record_bytes: usize,
    duration: Duration,
) -> Result<Histogram<u64>, BoxError> {
    let path = dir.join("group-commit-baseline");
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let (arrive, arrivals) = std::sync::mpsc::channel::<Instant>();
    let per_tick = (rate / 1000).max(1);
    let producer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut tick = 0u64;
        while start.elapsed() < duration {
            tick += 1;
            let due = start + Duration::from_millis(tick);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let now = Instant::now();
            for _ in 0..per_tick {
                if arrive.send(now).is_err() {
                    return;
                }
            }
        }
    });
    let mut hist = histogram()?;
    let mut batch = Vec::new();
    let mut buf = Vec::new();
    while let Ok(first) = arrivals.recv() {
        batch.clear();
        batch.push(first);
        batch.extend(arrivals.try_iter());
        buf.clear();
        buf.resize(batch.len() * record_bytes, 7);
        file.write_all(&buf)?;
        file.sync_data()?;
        let done = Instant::now();
        for arrived in &batch {
            hist.saturating_record(
                u64::try_from((done - *arrived).as_micros()).unwrap_or(u64::MAX),
            );
        }
    }
    producer
        .join()
        .map_err(|_| "the group commit baseline's producer panicked")?;
    std::fs::remove_file(path)?;
    Ok(hist)
}

/// Many tasks publish as fast as acknowledgements come back; returns acknowledged events/s.
async fn publish_throughput(
    publisher: &Publisher,
    config: &BenchConfig,
    pad: &str,
    batch: usize,
) -> Result<f64, BoxError> {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for p in 0..config.publishers {
        let (publisher, stop, acked, pad) = (
            publisher.clone(),
            Arc::clone(&stop),
            Arc::clone(&acked),
            pad.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let subject = format!("s{p}");
                if batch == 1 {
                    publisher
                        .publish(
                            &BenchEvent {
                                n,
                                pad: pad.clone(),
                            },
                            subject,
                        )
                        .await?;
                } else {
                    let envelopes = (0..batch as u64)
                        .map(|i| {
                            publisher.envelope(
                                &BenchEvent {
                                    n: n + i,
                                    pad: pad.clone(),
                                },
                                subject.clone(),
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    publisher.publish_batch(&envelopes).await?;
                }
                n += batch as u64;
                acked.fetch_add(batch as u64, Ordering::Relaxed);
            }
            Ok::<(), tabgrab::Error>(())
        }));
    }
    tokio::time::sleep(config.duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(acked.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Publishes at a fixed rate while a subscriber measures time from event creation to handler;
/// returns that latency, the publishers' own (call to durable return) and the events
/// delivered.
async fn e2e_latency(
    bus: &EmbeddedBus,
    config: &BenchConfig,
    pad: &str,
) -> Result<(Histogram<u64>, Histogram<u64>, u64), BoxError> {
    let publisher = Publisher::new(bus, "latency", "/pizzeria/bench")?;
    let hist = Arc::new(std::sync::Mutex::new(histogram()?));
    let acks = Arc::new(std::sync::Mutex::new(histogram()?));
    let delivered = Arc::new(AtomicU64::new(0));
    let subscription = {
        let (hist, delivered) = (Arc::clone(&hist), Arc::clone(&delivered));
        Subscription::builder(bus, "latency", "bench")
            .handle(move |_e: BenchEvent, ctx: Context| {
                let (hist, delivered) = (Arc::clone(&hist), Arc::clone(&delivered));
                async move {
                    if let Some(made) = ctx.envelope().time {
                        let micros = (time::OffsetDateTime::now_utc() - made).whole_microseconds();
                        if let Ok(mut h) = hist.lock() {
                            h.saturating_record(u64::try_from(micros).unwrap_or(0));
                        }
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .start()?
    };
    // Publish in 1 ms ticks; each event is its own publish call, as independent producers do.
    let per_tick = (config.rate / 1000).max(1);
    let ticks = config.duration.as_millis() as u64;
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    for _ in 0..ticks {
        interval.tick().await;
        for _ in 0..per_tick {
            let (publisher, pad, acks) = (publisher.clone(), pad.to_owned(), Arc::clone(&acks));
            let n = sent;
            in_flight.spawn(async move {
                let called = Instant::now();
                let receipt = publisher
                    .publish(&BenchEvent { n, pad }, format!("s{}", n % 64))
                    .await?;
                if let Ok(mut h) = acks.lock() {
                    h.saturating_record(called.elapsed().as_micros() as u64);
                }
                Ok::<_, tabgrab::Error>(receipt)
            });
            sent += 1;
        }
        while let Some(done) = in_flight.try_join_next() {
            done??;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    subscription.shutdown().await?;
    let hist = hist
        .lock()
        .map_err(|_| "latency histogram lock poisoned")?
        .clone();
    let acks = acks
        .lock()
        .map_err(|_| "publish latency histogram lock poisoned")?
        .clone();
    Ok((hist, acks, delivered.load(Ordering::Relaxed)))
}

/// Writes the report as a table: tabgrab's figures beside the disk's own.
pub fn print(report: &BenchReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let r = report;
    writeln!(out, "embedded backend benchmark (fsync every batch)")?;
    writeln!(out, "{:<46} {:>14} {:>14}", "figure", "tabgrab", "raw disk")?;
    writeln!(
        out,
        "{:<46} {:>14.0} {:>14.0}",
        "durable writes/s (publish, concurrent)", r.publish_per_sec, r.fdatasync_per_sec
    )?;
    writeln!(
        out,
        "{:<46} {:>14.0} {:>14}",
        "durable writes/s (publish_batch of 100)", r.publish_batch_per_sec, ""
    )?;
    writeln!(
        out,
        "{:<46} {:>14} {:>14}",
        "envelope bytes per event", r.envelope_bytes, 200
    )?;
    writeln!(
        out,
        "{:<46} {:>14.0} {:>14}",
        "events per fdatasync (group commit)", r.group_commit_factor, 1
    )?;
    writeln!(
        out,
        "{:<46} {:>14} {:>14}",
        format!("p50 latency, us (e2e at {}/s vs fdatasync)", r.latency_rate),
        r.e2e_p50_us,
        r.fdatasync_p50_us
    )?;
    writeln!(
        out,
        "{:<46} {:>14} {:>14}",
        "p99 latency, us", r.e2e_p99_us, r.fdatasync_p99_us
    )?;
    writeln!(
        out,
        "{:<46} {:>14} {:>14}",
        "max latency, us", r.e2e_max_us, ""
    )?;
    writeln!(
        out,
        "{:<46} {:>14} {:>14}",
        format!("bare group commit at {}/s p50 / p99, us", r.latency_rate),
        "",
        format!("{} / {}", r.group_commit_p50_us, r.group_commit_p99_us)
    )?;
    writeln!(
        out,
        "{:<46} {:>14} {:>14}",
        "publish (durable wait) p50 / p99, us",
        format!("{} / {}", r.publish_p50_us, r.publish_p99_us),
        ""
    )?;
    let ratio = if r.fdatasync_p99_us > 0 {
        r.e2e_p99_us as f64 / r.fdatasync_p99_us as f64
    } else {
        0.0
    };
    let to_group_commit = if r.group_commit_p99_us > 0 {
        r.e2e_p99_us as f64 / r.group_commit_p99_us as f64
    } else {
        0.0
    };
    writeln!(
        out,
        "e2e p99 / fdatasync p99 = {ratio:.2} (aim: <= 2.0); e2e p99 / bare group commit p99 = \
         {to_group_commit:.2}; events delivered in latency phase: {}",
        r.e2e_events
    )?;
    Ok(())
}
