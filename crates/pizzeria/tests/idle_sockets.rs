//! The measurement of idle and slow sockets against a call server (issue 14): the payment
//! service runs as a child process with a 1,024 file-descriptor limit, 5,000 sockets that
//! send nothing and 500 slowloris sockets (a head at a byte a second) are held open against
//! it (reopened whenever the server closes one, as an attacker would), and meanwhile 100
//! normal requests, one every 200 ms, each on a new connection, are timed. It prints their latency, the
//! server's CPU use and the lines it logged, and asserts that every request was answered and
//! that the server neither spun nor flooded its log.
//!
//! A measurement, not a CI test (under a minute, 5,500 sockets), so `#[ignore]`d:
//!
//! ```sh
//! cargo test --release -p pizzeria --test idle_sockets -- --ignored --nocapture
//! PIZZERIA_BIN=/path/to/an/older/pizzeria cargo test --release -p pizzeria --test idle_sockets -- --ignored --nocapture
//! ```
//!
//! Loopback only; it stops the server it started, by its PID, and its own sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Sockets that connect and send nothing.
const IDLE: usize = 5_000;
/// Sockets that send a head a byte a second.
const SLOWLORIS: usize = 500;
/// Normal requests timed during the attack.
const REQUESTS: usize = 100;
/// The server's descriptor limit.
const NOFILE: u32 = 1_024;
/// A normal request that takes longer has failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the attackers did.
#[derive(Default)]
struct Attack {
    connected: AtomicU64,
    closed_by_server: AtomicU64,
    connect_failed: AtomicU64,
}

/// Lines a stream of the child wrote.
async fn count_lines(stream: impl tokio::io::AsyncRead + Unpin, lines: Arc<AtomicU64>) {
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                lines.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One attacking socket, reopened whenever the server closes it, until `stop`.
async fn attacker(
    addr: SocketAddr,
    slowloris: bool,
    attack: Arc<Attack>,
    connects: Arc<Semaphore>,
    stop: CancellationToken,
) {
    const HEAD: &[u8] =
        b"POST /commands/pizzeria.payment.charge-card.v1 HTTP/1.1\r\nhost: payment\r\nx-padding: ";
    while !stop.is_cancelled() {
        let connect = async {
            let _permit = connects.acquire().await.unwrap();
            tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await
        };
        let stream = tokio::select! {
            stream = connect => stream,
            () = stop.cancelled() => return,
        };
        let Ok(Ok(stream)) = stream else {
            attack.connect_failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        attack.connected.fetch_add(1, Ordering::Relaxed);
        let (mut read, mut write) = stream.into_split();
        let held = async {
            let mut buf = [0u8; 256];
            if slowloris {
                let dribble = async {
                    for byte in HEAD.iter().chain(std::iter::repeat(&b'a')) {
                        if write.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                };
                tokio::select! {
                    () = dribble => {}
                    _ = read.read(&mut buf) => {}
                }
            } else {
                let _ = read.read(&mut buf).await;
            }
        };
        tokio::select! {
            () = held => {
                attack.closed_by_server.fetch_add(1, Ordering::Relaxed);
            }
            () = stop.cancelled() => return,
        }
    }
}

/// User and system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 30 s, 5,500 sockets): see the file's docs"]
async fn idle_and_slowloris_sockets_leave_the_server_useful() {
    let bin =
        std::env::var("PIZZERIA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pizzeria").to_owned());
    let mut child = tokio::process::Command::new("prlimit")
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg("--")
        .arg(&bin)
        .args([
            "service",
            "payment",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit and the pizzeria binary run");
    // prlimit sets the limit on itself and execs the service: one PID.
    let pid = child.id().expect("the child runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).await.unwrap();
    let addr: SocketAddr = first
        .trim()
        .rsplit_once("http://")
        .and_then(|(_, a)| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    let lines = Arc::new(AtomicU64::new(0));
    tokio::spawn(count_lines(stdout, Arc::clone(&lines)));
    tokio::spawn(count_lines(
        child.stderr.take().unwrap(),
        Arc::clone(&lines),
    ));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let mut order = 0u128;
    let mut request = || {
        order += 1;
        let body = format!(
            "{{\"order_id\":\"{}\",\"amount_cents\":900,\"card\":\"**** 1111\"}}",
            uuid::Uuid::from_u128(order)
        );
        let client = client.clone();
        async move {
            let start = Instant::now();
            let answer = client
                .post(format!(
                    "http://{addr}/commands/pizzeria.payment.charge-card.v1"
                ))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => Some(start.elapsed()),
                _ => None,
            }
        }
    };
    // Quiet: the server answers.
    let mut quiet = Vec::new();
    for _ in 0..20 {
        quiet.push(request().await.expect("the quiet server answers"));
    }
    quiet.sort();

    // The attack.
    let stop = CancellationToken::new();
    let attack = Arc::new(Attack::default());
    let connects = Arc::new(Semaphore::new(256));
    let (lines_before, ticks_before, started) = (
        lines.load(Ordering::Relaxed),
        cpu_ticks(pid),
        Instant::now(),
    );
    let mut attackers = Vec::new();
    for i in 0..IDLE + SLOWLORIS {
        attackers.push(tokio::spawn(attacker(
            addr,
            i >= IDLE,
            Arc::clone(&attack),
            Arc::clone(&connects),
            stop.clone(),
        )));
    }
    // Let every socket try once (or 15 s pass).
    let ramp = Instant::now();
    while attack.connected.load(Ordering::Relaxed) + attack.connect_failed.load(Ordering::Relaxed)
        < (IDLE + SLOWLORIS) as u64
        && ramp.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp_time = ramp.elapsed();
    let ramp_tries =
        attack.connected.load(Ordering::Relaxed) + attack.connect_failed.load(Ordering::Relaxed);
    // Open loop: a request every 200 ms whether or not the previous one was answered, so a
    // stuck server cannot hide its delays by slowing the requests down (and the run stays
    // bounded: 20 s plus the last request's timeout).
    let mut sent = Vec::new();
    let mut descriptors = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    for _ in 0..REQUESTS {
        tick.tick().await;
        sent.push(tokio::spawn(request()));
        descriptors = descriptors.max(open_descriptors(pid));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for answer in sent {
        match answer.await.unwrap() {
            Some(latency) => latencies.push(latency),
            None => failed += 1,
        }
    }
    let window = started.elapsed();
    let ticks = cpu_ticks(pid) - ticks_before;
    let logged = lines.load(Ordering::Relaxed) - lines_before;
    stop.cancel();
    for a in attackers {
        let _ = a.await;
    }
    // Stop the server by its PID.
    let _ = child.start_kill();
    let _ = child.wait().await;

    latencies.sort();
    let cpu = ticks as f64 / clock_ticks_per_second() as f64 / window.as_secs_f64() * 100.0;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("server: {bin}, nofile {NOFILE}");
    println!(
        "quiet: {} requests, p50 {:.1} ms, max {:.1} ms",
        quiet.len(),
        ms(percentile(&quiet, 0.5)),
        ms(percentile(&quiet, 1.0))
    );
    println!(
        "attack: {IDLE} idle + {SLOWLORIS} slowloris sockets ({ramp_tries} connects tried in the first {:.1} s); {} connects in total, {} failed, {} sockets closed by the server; server descriptors at most {descriptors}",
        ramp_time.as_secs_f64(),
        attack.connected.load(Ordering::Relaxed),
        attack.connect_failed.load(Ordering::Relaxed),
        attack.closed_by_server.load(Ordering::Relaxed),
    );
    println!(
        "during the attack: {} of {REQUESTS} requests answered, {failed} failed (timeout {} s); p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        REQUEST_TIMEOUT.as_secs(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
    );
    println!(
        "server over {:.1} s of attack: CPU {cpu:.0} % of one core, {logged} log lines",
        window.as_secs_f64()
    );
    assert_eq!(failed, 0, "every normal request is answered");
    assert!(logged <= 10, "the log does not flood: {logged} lines");
    assert!(
        cpu < 100.0,
        "the server does not spin: {cpu:.0} % of a core"
    );
}
