//! What the tabgrab call stack costs, beside raw hyper and raw tonic against the same server,
//! and what 100,000 calls in flight cost on one thread.
//!
//! ```sh
//! cargo run --release -p tabgrab-call --example call_overhead [-- SECONDS CONCURRENCY IN_FLIGHT]
//! ```
//!
//! Part 1 and 2: a server (tabgrab's router: HTTP and gRPC on one port) answers a tiny query
//! at once, in this process. C callers loop for S seconds: raw hyper (a pooled
//! `hyper_util` client posting the same request) vs tabgrab's `Client` over `HttpTransport`;
//! then raw tonic (the generated `CallsClient`) vs tabgrab's `Client` over `GrpcTransport`.
//! Each pair runs twice, alternating, and the figures are the mean of both rounds.
//!
//! Part 3: a server in a child process answers after 1 s; a client process, on a
//! current-thread runtime, makes N calls at once through tabgrab's client, over gRPC and over
//! HTTP/2 (one connection each, the calls multiplexed as streams: N HTTP/1.1 calls would need
//! N sockets, beyond `ulimit -n`), and reports wall time, its peak RSS (`VmHWM`) and its OS
//! threads (`Threads` in /proc/self/status). Optional 4th argument: `grpc` or `http2` only.
//! Beside each, the same N calls with the raw client (raw tonic; raw hyper over HTTP/2).
//!
//! `--decompose [SECONDS] [CONCURRENCY]`: parts 1 and 2 with a third contender, the tabgrab
//! transport alone (no layers), to tell the transport's cost from the layers'.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use serde::{Deserialize, Serialize};
use tabgrab_call::grpc::GrpcTransport;
use tabgrab_call::grpc::proto::CallRequest;
use tabgrab_call::grpc::proto::calls_client::CallsClient;
use tabgrab_call::http::HttpTransport;
use tabgrab_call::{CallContext, Client, HandlerError, Handlers, ServeConfig};
use tabgrab_core::Message;

#[derive(Serialize, Deserialize, Message)]
#[message(type = "bench.echo.v1", query, response = u64)]
struct Echo {
    n: u64,
}

#[derive(Serialize, Deserialize, Message)]
#[message(type = "bench.sleep.v1", query, response = u64)]
struct Sleep {
    ms: u64,
}

fn handlers() -> Handlers {
    Handlers::new()
        .handle(|e: Echo, _ctx: CallContext| async move { Ok::<_, HandlerError>(e.n) })
        .handle(|s: Sleep, _ctx: CallContext| async move {
            tokio::time::sleep(Duration::from_millis(s.ms)).await;
            Ok::<_, HandlerError>(s.ms)
        })
}

struct Figures {
    calls_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// Runs `concurrency` loops of `call` for `seconds`.
async fn measure<F, Fut>(seconds: u64, concurrency: usize, call: F) -> Figures
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let call = call.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            let mut i = worker as u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if call(i).await {
                    h.saturating_record(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                i += concurrency as u64;
            }
            (h, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.unwrap();
        all.add(&h).unwrap();
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Figures {
        calls_per_s: all.len() as f64 / elapsed,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        errors,
    }
}

fn mean(a: &Figures, b: &Figures) -> Figures {
    Figures {
        calls_per_s: (a.calls_per_s + b.calls_per_s) / 2.0,
        p50_us: (a.p50_us + b.p50_us) / 2,
        p99_us: (a.p99_us + b.p99_us) / 2,
        errors: a.errors + b.errors,
    }
}

fn row(name: &str, f: &Figures, baseline: Option<&Figures>) {
    let ratio = baseline
        .map(|b| format!("{:.2}", f.calls_per_s / b.calls_per_s))
        .unwrap_or_else(|| "1.00".into());
    println!(
        "  {name:<28} {:>10.0} calls/s  p50 {:>6} µs  p99 {:>6} µs  errors {:>3}  ratio {ratio}",
        f.calls_per_s, f.p50_us, f.p99_us, f.errors
    );
}

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--slow-server") {
        slow_server();
        return;
    }
    if args.get(1).map(String::as_str) == Some("--in-flight") {
        let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
        match args.get(3).map(String::as_str) {
            Some("grpc-raw") => in_flight_raw_tonic(n),
            Some("http2-raw") => in_flight_raw_hyper(n),
            other => in_flight_child(n, other == Some("grpc")),
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("--decompose") {
        let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
        let concurrency: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(decompose(seconds, concurrency));
        return;
    }
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let concurrency: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let in_flight: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    println!(
        "call_overhead: {} cores, {seconds} s per round, {concurrency} callers, {in_flight} in flight",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(overhead(seconds, concurrency));
    drop(runtime);
    let which = args.get(4).map(String::as_str).unwrap_or("both");
    if which != "grpc" {
        in_flight_scenario(in_flight, false);
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--in-flight", &in_flight.to_string(), "http2-raw"])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
    if which != "http2" {
        in_flight_scenario(in_flight, true);
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--in-flight", &in_flight.to_string(), "grpc-raw"])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
}

/// Starts the slow server child; its base URL and the child (stopped when its stdin closes).
fn start_slow_server() -> (String, std::process::Child) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--slow-server")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (format!("http://{}", line.trim()), child)
}

/// The baseline of part 3: the same N calls with the generated tonic client, no tabgrab
/// layers.
fn in_flight_raw_tonic(n: usize) {
    let (base, mut child) = start_slow_server();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (wall, ok, errors, first_error) = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(base)
            .unwrap()
            .initial_connection_window_size(1 << 30)
            .connect()
            .await
            .unwrap();
        let client = CallsClient::new(channel);
        let request = || CallRequest {
            r#type: Sleep::TYPE.to_owned(),
            data: Bytes::from_static(b"{\"ms\":1000}"),
            attributes: Default::default(),
        };
        client
            .clone()
            .call(CallRequest {
                data: Bytes::from_static(b"{\"ms\":0}"),
                ..request()
            })
            .await
            .unwrap();
        let started = Instant::now();
        let mut calls: futures::stream::FuturesUnordered<_> = (0..n)
            .map(|_| {
                let mut client = client.clone();
                let request = request();
                async move { client.call(request).await }
            })
            .collect();
        let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
        while let Some(result) = calls.next().await {
            match result {
                Ok(_) => ok += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(format!("{e:?}"));
                }
            }
        }
        (started.elapsed(), ok, errors, first_error)
    });
    let threads = proc_status("Threads:");
    let hwm = proc_status("VmHWM:");
    drop(runtime);
    drop(child.stdin.take());
    let _ = child.wait();
    println!(
        "{n} calls in flight at once, server answers after 1 s, current-thread runtime, raw tonic client (baseline):"
    );
    println!(
        "  wall time {:.2} s, ok {ok}, errors {errors}, peak RSS {hwm}, OS threads {threads}",
        wall.as_secs_f64()
    );
    if let Some(e) = first_error {
        println!("  first error: {e}");
    }
}

/// The HTTP/2 baseline of part 3: the same N calls with a raw `hyper_util` pooled client
/// (HTTP/2 prior knowledge, the same 1 GiB window) posting the bare JSON body, no tabgrab
/// layers or headers.
fn in_flight_raw_hyper(n: usize) {
    let (base, mut child) = start_slow_server();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (wall, ok, errors, first_error) = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .http2_initial_connection_window_size(1 << 30)
                .build_http::<Full<Bytes>>();
        let uri: http::Uri = format!("{base}/queries/{}", Sleep::TYPE).parse().unwrap();
        let call = |body: &'static [u8]| {
            let client = client.clone();
            let request = http::Request::post(uri.clone())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(body)))
                .unwrap();
            async move {
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let ok = response.status() == 200;
                let body = response.into_body().collect().await;
                match (ok, body) {
                    (true, Ok(_)) => Ok(()),
                    (_, body) => Err(format!("{body:?}")),
                }
            }
        };
        call(b"{\"ms\":0}").await.unwrap();
        let started = Instant::now();
        let mut calls: futures::stream::FuturesUnordered<_> =
            (0..n).map(|_| call(b"{\"ms\":1000}")).collect();
        let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
        while let Some(result) = calls.next().await {
            match result {
                Ok(()) => ok += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        (started.elapsed(), ok, errors, first_error)
    });
    let threads = proc_status("Threads:");
    let hwm = proc_status("VmHWM:");
    drop(runtime);
    drop(child.stdin.take());
    let _ = child.wait();
    println!(
        "{n} calls in flight at once, server answers after 1 s, current-thread runtime, raw hyper HTTP/2 client (baseline):"
    );
    println!(
        "  wall time {:.2} s, ok {ok}, errors {errors}, peak RSS {hwm}, OS threads {threads}",
        wall.as_secs_f64()
    );
    if let Some(e) = first_error {
        println!("  first error: {e}");
    }
}

/// `--decompose [SECONDS] [CONCURRENCY]`: where the stack's overhead goes. Per transport,
/// alternating in one run: the raw client, the tabgrab transport alone (a `Call` made by hand
/// with a deadline, sent with `oneshot`: envelope, headers, deadline header, no layers), and
/// the whole `Client`.
async fn decompose(seconds: u64, concurrency: usize) {
    use tower::ServiceExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tabgrab_call::serve(
        listener,
        tabgrab_call::router(handlers()),
        std::future::pending(),
    ));
    let base = format!("http://{addr}");
    let service: Arc<str> = Arc::from("bench");
    let call_of = move |i: u64| tabgrab_call::Call {
        service: Arc::clone(&service),
        kind: tabgrab_call::RequestKind::Query,
        envelope: Arc::new(tabgrab_core::Envelope::new("/tabgrab/client", &Echo { n: i }).unwrap()),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(5)),
        idempotency_key: None,
    };

    let raw = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http::<Full<Bytes>>();
    let uri: http::Uri = format!("{base}/queries/bench.echo.v1").parse().unwrap();
    let raw_call = move |i: u64| {
        let raw = raw.clone();
        let uri = uri.clone();
        async move {
            let request = http::Request::post(uri)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!("{{\"n\":{i}}}"))))
                .unwrap();
            match raw.request(request).await {
                Ok(r) if r.status() == 200 => r.into_body().collect().await.is_ok(),
                _ => false,
            }
        }
    };
    let transport = HttpTransport::builder(base.clone())
        .pool_max_idle_per_host(concurrency)
        .build();
    let stack = Client::builder(transport.clone())
        .service_name("bench")
        .build();
    let call = call_of.clone();
    let transport_call = move |i: u64| {
        let transport = transport.clone();
        let call = call(i);
        async move { transport.oneshot(call).await.is_ok() }
    };
    let stack_call = move |i: u64| {
        let stack = stack.clone();
        async move { stack.call(&Echo { n: i }).await.is_ok_and(|n| n == i) }
    };
    let mut figures = [vec![], vec![], vec![]];
    for _ in 0..2 {
        figures[0].push(measure(seconds, concurrency, raw_call.clone()).await);
        figures[1].push(measure(seconds, concurrency, transport_call.clone()).await);
        figures[2].push(measure(seconds, concurrency, stack_call.clone()).await);
    }
    let [raw_f, transport_f, stack_f] = figures.map(|f| mean(&f[0], &f[1]));
    println!("HTTP/1.1 decomposition, {concurrency} callers:");
    row("raw hyper client", &raw_f, None);
    row("HttpTransport alone", &transport_f, Some(&raw_f));
    row("Client (all layers)", &stack_f, Some(&raw_f));

    let tonic_client = CallsClient::connect(base.clone()).await.unwrap();
    let raw_call = move |i: u64| {
        let mut client = tonic_client.clone();
        async move {
            let request = CallRequest {
                r#type: Echo::TYPE.to_owned(),
                data: Bytes::from(format!("{{\"n\":{i}}}")),
                attributes: Default::default(),
            };
            client.call(request).await.is_ok()
        }
    };
    let transport = GrpcTransport::new(base.clone()).unwrap();
    let stack = Client::builder(transport.clone())
        .service_name("bench")
        .build();
    let transport_call = move |i: u64| {
        let transport = transport.clone();
        let call = call_of(i);
        async move { transport.oneshot(call).await.is_ok() }
    };
    let stack_call = move |i: u64| {
        let stack = stack.clone();
        async move { stack.call(&Echo { n: i }).await.is_ok_and(|n| n == i) }
    };
    let mut figures = [vec![], vec![], vec![]];
    for _ in 0..2 {
        figures[0].push(measure(seconds, concurrency, raw_call.clone()).await);
        figures[1].push(measure(seconds, concurrency, transport_call.clone()).await);
        figures[2].push(measure(seconds, concurrency, stack_call.clone()).await);
    }
    let [raw_f, transport_f, stack_f] = figures.map(|f| mean(&f[0], &f[1]));
    println!("gRPC decomposition, {concurrency} callers:");
    row("raw tonic client", &raw_f, None);
    row("GrpcTransport alone", &transport_f, Some(&raw_f));
    row("Client (all layers)", &stack_f, Some(&raw_f));
}

async fn overhead(seconds: u64, concurrency: usize) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tabgrab_call::serve(
        listener,
        tabgrab_call::router(handlers()),
        std::future::pending(),
    ));
    let base = format!("http://{addr}");

    // HTTP: raw hyper vs tabgrab.
    let raw = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http::<Full<Bytes>>();
    let uri: http::Uri = format!("{base}/queries/bench.echo.v1").parse().unwrap();
    let raw_call = move |i: u64| {
        let raw = raw.clone();
        let uri = uri.clone();
        async move {
            let request = http::Request::post(uri)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!("{{\"n\":{i}}}"))))
                .unwrap();
            match raw.request(request).await {
                Ok(r) if r.status() == 200 => r.into_body().collect().await.is_ok(),
                _ => false,
            }
        }
    };
    let stack = Client::builder(
        HttpTransport::builder(base.clone())
            .pool_max_idle_per_host(concurrency)
            .build(),
    )
    .service_name("bench")
    .build();
    let stack_call = move |i: u64| {
        let stack = stack.clone();
        async move { stack.call(&Echo { n: i }).await.is_ok_and(|n| n == i) }
    };
    let r1 = measure(seconds, concurrency, raw_call.clone()).await;
    let s1 = measure(seconds, concurrency, stack_call.clone()).await;
    let r2 = measure(seconds, concurrency, raw_call).await;
    let s2 = measure(seconds, concurrency, stack_call).await;
    let (raw_http, stack_http) = (mean(&r1, &r2), mean(&s1, &s2));
    println!("HTTP/1.1, {concurrency} callers, same axum server:");
    row("raw hyper client", &raw_http, None);
    row("tabgrab Client (full stack)", &stack_http, Some(&raw_http));

    // gRPC: raw tonic vs tabgrab.
    let tonic_client = CallsClient::connect(base.clone()).await.unwrap();
    let raw_call = move |i: u64| {
        let mut client = tonic_client.clone();
        async move {
            let request = CallRequest {
                r#type: Echo::TYPE.to_owned(),
                data: Bytes::from(format!("{{\"n\":{i}}}")),
                attributes: Default::default(),
            };
            client.call(request).await.is_ok()
        }
    };
    let stack = Client::builder(GrpcTransport::new(base.clone()).unwrap())
        .service_name("bench")
        .build();
    let stack_call = move |i: u64| {
        let stack = stack.clone();
        async move { stack.call(&Echo { n: i }).await.is_ok_and(|n| n == i) }
    };
    let r1 = measure(seconds, concurrency, raw_call.clone()).await;
    let s1 = measure(seconds, concurrency, stack_call.clone()).await;
    let r2 = measure(seconds, concurrency, raw_call).await;
    let s2 = measure(seconds, concurrency, stack_call).await;
    let (raw_grpc, stack_grpc) = (mean(&r1, &r2), mean(&s1, &s2));
    println!("gRPC (one HTTP/2 connection), {concurrency} callers, same server:");
    row("raw tonic client", &raw_grpc, None);
    row("tabgrab Client (full stack)", &stack_grpc, Some(&raw_grpc));
}

/// The child process of part 3: serves the sleep query until stdin closes.
fn slow_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1];
            let _ = std::io::Read::read(&mut std::io::stdin(), &mut buf);
            let _ = closed.send(());
        });
        let stdin_closed = async move {
            let _ = stdin_closed.await;
        };
        tabgrab_call::serve_with(
            listener,
            tabgrab_call::router(handlers()),
            stdin_closed,
            ServeConfig {
                max_concurrent_streams: 1_000_000,
                connection_window: 1 << 30,
                ..ServeConfig::default()
            },
        )
        .await
        .unwrap();
    });
}

/// Part 3, in a fresh child process per transport so that each one's peak RSS is its own:
/// re-runs this example with `--in-flight N grpc|http2`.
fn in_flight_scenario(n: usize, grpc: bool) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--in-flight",
            &n.to_string(),
            if grpc { "grpc" } else { "http2" },
        ])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
}

fn in_flight_child(n: usize, grpc: bool) {
    let (base, mut child) = start_slow_server();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (wall, ok, errors, first_error) = runtime.block_on(async {
        let builder = if grpc {
            Client::builder(tower::util::BoxCloneSyncService::new(
                GrpcTransport::builder(base)
                    .connection_window(1 << 30)
                    .build()
                    .unwrap(),
            ))
        } else {
            Client::builder(tower::util::BoxCloneSyncService::new(
                HttpTransport::builder(base)
                    .http2_only(true)
                    .connection_window(1 << 30)
                    .build(),
            ))
        };
        let client = builder
            .service_name("slow")
            .max_in_flight(n + 1)
            .default_timeout(Duration::from_secs(30))
            .build();
        // One call first, so the connection is up before the clock starts.
        client.call(&Sleep { ms: 0 }).await.unwrap();
        let started = Instant::now();
        let mut calls: futures::stream::FuturesUnordered<_> = (0..n)
            .map(|_| {
                let client = client.clone();
                async move { client.call(&Sleep { ms: 1000 }).await }
            })
            .collect();
        let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
        while let Some(result) = calls.next().await {
            match result {
                Ok(_) => ok += 1,
                Err(e) => {
                    errors += 1;
                    if e.kind() != tabgrab_core::ErrorKind::CircuitOpen {
                        first_error
                            .get_or_insert(format!("{e}: {:?}", std::error::Error::source(&e)));
                    }
                }
            }
        }
        (started.elapsed(), ok, errors, first_error)
    });
    let threads = proc_status("Threads:");
    let hwm = proc_status("VmHWM:");
    drop(runtime);
    drop(child.stdin.take());
    let _ = child.wait();
    println!(
        "{n} calls in flight at once, server answers after 1 s, client on a current-thread runtime, {}:",
        if grpc {
            "gRPC over one HTTP/2 connection"
        } else {
            "HTTP/2 (prior knowledge), one connection"
        }
    );
    println!(
        "  wall time {:.2} s, ok {ok}, errors {errors}, peak RSS {hwm}, OS threads {threads}",
        wall.as_secs_f64()
    );
    if let Some(e) = first_error {
        println!("  first error: {e}");
    }
}
