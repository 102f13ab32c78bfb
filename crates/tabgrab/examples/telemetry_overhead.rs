//! What telemetry costs: events and calls with no recorder and no tracer (what a user who
//! installs none gets), with the Prometheus recorder installed and scraped every second, with
//! metrics and traces exported over OTLP at the default sampling
//! (`tabgrab::telemetry::DEFAULT_RATIO` of new traces kept), and with every trace kept.
//!
//! ```sh
//! cargo run --release -p tabgrab --example telemetry_overhead [-- ROUNDS EVENTS SECONDS]
//! ```
//!
//! A recorder is process-wide and cannot be taken out again, so each measurement runs in a
//! child process of this example, the four modes in turn, `ROUNDS` times (default 3):
//!
//! - events: 256 concurrent publishers publish `EVENTS` (default 100,000) 200-byte events to
//!   the embedded bus (each publish awaits its durable write), one subscription handles them;
//!   events/s from the first publish to the last handled;
//! - calls: 64 concurrent callers call a tiny query over HTTP on loopback through tabgrab's
//!   `Client` for `SECONDS` (default 5); calls/s.
//!
//! With metrics, a task renders `/metrics`' text every second, as a Prometheus scrape would;
//! with traces, spans go over OTLP/gRPC to a receiver in this process that decodes and counts
//! them, and metrics are exported over OTLP too (at the end of the run; `NO_OTLP_METRICS=1`
//! leaves that export out). Besides throughput, each child reports its CPU time (user and
//! system, all threads) per event or call: the events part runs 256 publishers against one
//! subscription, whose throughput swings by a fifth from run to run as the subscription keeps
//! up with the log's tail or falls behind it and reads the file, while the CPU time per event
//! says more steadily what the telemetry itself costs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::call::{CallContext, Client, HandlerError, Handlers, http::HttpTransport};
use tabgrab::event::{Publisher, Subscription};

#[derive(Serialize, Deserialize, Message)]
#[message(type = "bench.tick.v1", event)]
struct Tick {
    n: u64,
    pad: String,
}

#[derive(Serialize, Deserialize, Message)]
#[message(type = "bench.echo.v1", query, response = u64)]
struct Echo {
    n: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..]);
        return;
    }
    let rounds: u32 = args.first().map_or(3, |a| a.parse().unwrap());
    let events: u64 = args.get(1).map_or(100_000, |a| a.parse().unwrap());
    let seconds: u64 = args.get(2).map_or(5, |a| a.parse().unwrap());
    println!(
        "telemetry overhead: {rounds} rounds, {events} events, {seconds} s of calls per round; \
         load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let receiver = Receiver::start();
    println!(
        "| part | round | off | metrics | metrics / off | metrics + traces (default sampling) \
         | / off | metrics + every trace | / off |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut cpu_rows = Vec::new();
    for part in ["events", "calls"] {
        let mut sums = [0.0; 4];
        let mut cpu = [0.0; 4];
        for round in 1..=rounds {
            let mut figures = [0.0; 4];
            for (i, mode) in ["off", "metrics", "traces", "all-traces"]
                .into_iter()
                .enumerate()
            {
                let out = Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--child",
                        mode,
                        part,
                        &events.to_string(),
                        &seconds.to_string(),
                    ])
                    .arg(&receiver.url)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{part} {mode}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let stdout = String::from_utf8_lossy(&out.stdout);
                let mut numbers = stdout.split_whitespace().map(|n| n.parse::<f64>().unwrap());
                figures[i] = numbers.next().unwrap();
                cpu[i] += numbers.next().unwrap();
                sums[i] += figures[i];
            }
            println!(
                "| {part}/s | {round} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} |",
                figures[0],
                figures[1],
                figures[1] / figures[0],
                figures[2],
                figures[2] / figures[0],
                figures[3],
                figures[3] / figures[0]
            );
        }
        let n = f64::from(rounds);
        println!(
            "| {part}/s | mean | {:.0} | {:.0} | **{:.2}** | {:.0} | **{:.2}** | {:.0} | **{:.2}** |",
            sums[0] / n,
            sums[1] / n,
            sums[1] / sums[0],
            sums[2] / n,
            sums[2] / sums[0],
            sums[3] / n,
            sums[3] / sums[0]
        );
        cpu_rows.push(format!(
            "| {part} | {:.1} | {:.1} | {:.1} | {:.1} |",
            cpu[0] / n,
            cpu[1] / n,
            cpu[2] / n,
            cpu[3] / n
        ));
    }
    println!();
    println!(
        "CPU time per event or call (µs, user and system, all threads of the measuring process; \
         mean of the rounds):"
    );
    println!(
        "| part | off | metrics | metrics + traces (default sampling) | metrics + every trace |"
    );
    println!("|---|---|---|---|---|");
    for row in cpu_rows {
        println!("{row}");
    }
    println!(
        "spans received over OTLP: {}",
        receiver.spans.load(Ordering::Relaxed)
    );
}

/// An OTLP/gRPC trace receiver that counts spans and keeps nothing, on a thread of its own.
struct Receiver {
    url: String,
    spans: Arc<AtomicU64>,
}

impl Receiver {
    fn start() -> Receiver {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let spans = Arc::new(AtomicU64::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counter = Counter(Arc::clone(&spans));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(counter))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
                    .unwrap();
            });
        });
        Receiver { url, spans }
    }
}

struct Counter(Arc<AtomicU64>);

type ExportRequest = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
type ExportResponse = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Counter
{
    async fn export(
        &self,
        request: tonic::Request<ExportRequest>,
    ) -> Result<tonic::Response<ExportResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportResponse::default()))
    }
}

/// One measurement; prints its figure on stdout.
fn child(args: &[String]) {
    let mode = args[0].as_str();
    let part = args[1].as_str();
    let events: u64 = args[2].parse().unwrap();
    let seconds: u64 = args[3].parse().unwrap();
    let receiver = args[4].as_str();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let otel = runtime.block_on(async {
        let scraping = (mode != "off").then(|| {
            let metrics = tabgrab::telemetry::Prometheus::install().unwrap();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    std::hint::black_box(metrics.render());
                }
            })
        });
        let otel = mode.ends_with("traces").then(|| {
            use tracing_subscriber::layer::SubscriberExt as _;
            use tracing_subscriber::util::SubscriberInitExt as _;
            let mut otel =
                tabgrab::telemetry::Otel::builder(receiver).service("telemetry-overhead");
            if mode == "all-traces" {
                otel = otel.sampling(1.0);
            }
            if std::env::var_os("NO_OTLP_METRICS").is_some() {
                otel = otel.metrics(None);
            }
            let otel = otel.install().unwrap();
            tracing_subscriber::registry()
                .with(tracing_subscriber::Layer::with_filter(
                    otel.layer(),
                    tabgrab::telemetry::Otel::filter(&[]),
                ))
                .init();
            otel
        });
        let cpu = cpu_seconds();
        let (figure, units) = match part {
            "events" => (events_per_s(events).await, events as f64),
            "calls" => calls_per_s(Duration::from_secs(seconds)).await,
            other => panic!("unknown part {other}"),
        };
        let cpu_us = (cpu_seconds() - cpu) * 1e6 / units;
        if let Some(task) = scraping {
            task.abort();
        }
        println!("{figure:.1} {cpu_us:.2}");
        otel
    });
    if let Some(otel) = otel {
        otel.shutdown().unwrap();
    }
}

async fn events_per_s(events: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (count, all) = (Arc::clone(&handled), Arc::clone(&done));
    let subscription = Subscription::builder(&bus, "ticks", "bench")
        .concurrency(64)
        .handle(move |_t: Tick, _ctx| {
            if count.fetch_add(1, Ordering::Relaxed) + 1 == events {
                all.notify_one();
            }
            async { Ok(()) }
        })
        .start()
        .unwrap();
    let publisher = Publisher::new(&bus, "ticks", "/bench").unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let publishers: Vec<_> = (0..256)
        .map(|_| {
            let (publisher, next) = (publisher.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= events {
                        return;
                    }
                    let tick = Tick {
                        n,
                        pad: "x".repeat(200),
                    };
                    publisher
                        .publish(&tick, format!("s-{}", n % 1024))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    done.notified().await;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    subscription.shutdown().await.unwrap();
    bus.close().await.unwrap();
    rate
}

/// The process's CPU time so far (user and system, all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command (which may hold spaces): utime and stime are the 12th and
    // 13th, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Calls per second, and the number of calls.
async fn calls_per_s(duration: Duration) -> (f64, f64) {
    let handlers = Handlers::new()
        .handle(|q: Echo, _ctx: CallContext| async move { Ok::<_, HandlerError>(q.n) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tabgrab::call::serve(
        listener,
        tabgrab::call::router(handlers),
        std::future::pending(),
    ));
    let client = Client::builder(HttpTransport::new(url))
        .service_name("echo")
        .build();
    // Warm the connection pool.
    for n in 0..64 {
        client.call(&Echo { n }).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let (client, stop, calls) = (client.clone(), Arc::clone(&stop), Arc::clone(&calls));
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(client.call(&Echo { n }).await.unwrap(), n);
                    n += 1;
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    let calls = calls.load(Ordering::Relaxed) as f64;
    (calls / started.elapsed().as_secs_f64(), calls)
}
