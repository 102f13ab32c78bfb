//! Blocking: N requests in flight at once, each taking a fixed time at the recipient, and
//! what that costs the caller in OS threads, wall time and memory.
//!
//! # Why a child process per style
//! Threads and peak memory are process-wide figures (`Threads` and `VmHWM` of
//! `/proc/self/status`). Measured in the lab's own process they would mix the four styles
//! and the lab's servers. So each style runs in a fresh `pizzeria lab-probe` process on a
//! `current_thread` tokio runtime, and prints its figures as JSON; the recipient (a kitchen
//! whose every ticket takes the fixed time) runs in the lab's process for the calls and the
//! baseline. The embedded bus lives in one process, so for messaging and events the probe
//! holds the bus and the recipient too (its handlers are timers, not threads): the figure
//! is then an upper bound of the caller's own.
//!
//! # The baseline
//! A thread per call, each doing a blocking HTTP/1.1 request over `std::net::TcpStream`:
//! the usual synchronous client. It makes the difference visible rather than assumed: with
//! N calls in flight it holds N threads, and tabgrab's styles hold a handful.
//!
//! On a broker (`pizzeria lab --bus nats://…`) the messaging and events probes use it, in a
//! namespace of their own that they delete at the end; the recipient's side still runs in
//! the probe, so the threads of the broker's client library (if it has any) are counted too.
//!
//! The verdict "blocks a thread per request" is derived from the figure: peak threads of at
//! least 90% of N.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::call::Client;
use tabgrab::call::http::HttpTransport;
use tabgrab::event::{Publisher, Subscription};
use tabgrab::messaging::{Outcome, Requester, Responder, SendOptions, SqliteStore};
use tabgrab_core::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::calls::{Backoffice, ServiceName, service_router};
use crate::commands::{Baked, PlaceTicket};
use crate::error::{Error, ErrorKind};
use crate::messages::PizzaReady;
use crate::namespace::Connection;

/// The caller of the blocking measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Caller {
    /// tabgrab's call client: N concurrent calls on one thread.
    Calls,
    /// tabgrab's requester: N `send`s, then every reply.
    Messaging,
    /// tabgrab's publisher: N publishes, then every event handled.
    Events,
    /// A thread per call with a blocking HTTP request.
    Baseline,
}

impl Caller {
    /// Its name in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Caller::Calls => "calls",
            Caller::Messaging => "messaging",
            Caller::Events => "events",
            Caller::Baseline => "baseline",
        }
    }
}

/// What one probe process measured (printed as JSON by `pizzeria lab-probe`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeOutput {
    /// Requests that completed.
    pub completed: u64,
    /// From the first send to the last completion, in seconds.
    pub wall_s: f64,
    /// Most OS threads the process had at once (a sampler thread included).
    pub peak_threads: u64,
    /// Peak resident memory (`VmHWM`), in MiB.
    pub peak_rss_mib: f64,
}

/// The figures of one caller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockingFigures {
    /// calls, messaging, events or baseline.
    pub caller: Caller,
    /// Requests in flight at once.
    pub n: u64,
    /// The recipient's fixed time per request, in milliseconds.
    pub delay_ms: u64,
    /// What the probe measured.
    #[serde(flatten)]
    pub probe: ProbeOutput,
    /// Derived: peak threads ≥ 0.9·N.
    pub blocks_a_thread_per_request: bool,
}

impl BlockingFigures {
    fn new(caller: Caller, n: u64, delay_ms: u64, probe: ProbeOutput) -> BlockingFigures {
        let blocks = probe.peak_threads as f64 >= 0.9 * n as f64;
        BlockingFigures {
            caller,
            n,
            delay_ms,
            probe,
            blocks_a_thread_per_request: blocks,
        }
    }
}

/// The recipient of the calls and the baseline: a kitchen with an oven per request, each
/// ticket taking `delay`. Stopped on drop of the token.
pub(crate) async fn recipient(
    n: u64,
    delay: Duration,
    stop: CancellationToken,
) -> Result<SocketAddr, Error> {
    // A deep accept queue: N clients connect at once, and a dropped SYN costs a second.
    let io = |e| Error::new(ErrorKind::Io, "cannot bind the recipient").with_source(e);
    let socket = tokio::net::TcpSocket::new_v4().map_err(io)?;
    socket.set_reuseaddr(true).map_err(io)?;
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(io)?;
    let listener = socket.listen(16_384).map_err(io)?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot read an address").with_source(e))?;
    let office = Backoffice::new(
        crate::services::Store::memory(),
        crate::services::Stock::generous(),
        usize::try_from(n).unwrap_or(usize::MAX),
        delay,
    );
    let router = service_router(ServiceName::Kitchen, &office)
        .ok_or_else(|| Error::new(ErrorKind::Usage, "no kitchen router"))?;
    tokio::spawn(tabgrab::call::serve(
        listener,
        router,
        stop.cancelled_owned(),
    ));
    Ok(addr)
}

/// Runs one probe in a child process (`exe lab-probe …`) and reads its figures.
pub(crate) async fn measure(
    exe: &Path,
    caller: Caller,
    n: u64,
    delay: Duration,
    recipient: SocketAddr,
    bus: Option<&str>,
) -> Result<BlockingFigures, Error> {
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let mut command = std::process::Command::new(exe);
    command
        .arg("lab-probe")
        .arg(caller.as_str())
        .args(["--n", &n.to_string()])
        .args(["--delay-ms", &delay_ms.to_string()])
        .args(["--recipient", &recipient.to_string()]);
    // Through the environment: the URL may carry credentials (see `run`'s children).
    match bus {
        Some(url) => command.env("PIZZERIA_BUS", url),
        None => command.env_remove("PIZZERIA_BUS"),
    };
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| Error::new(ErrorKind::Io, "the probe's task failed").with_source(e))?
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                "cannot start the probe process (pizzeria lab-probe)",
            )
            .with_source(e)
        })?;
    if !output.status.success() {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "the {} probe failed ({}): {}",
                caller.as_str(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    let probe: ProbeOutput = serde_json::from_slice(&output.stdout).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("the {} probe printed no figures", caller.as_str()),
        )
        .with_source(e)
    })?;
    Ok(BlockingFigures::new(caller, n, delay_ms, probe))
}

/// Reads one `kB` or count field of `/proc/self/status`.
fn status_field(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the thread count every millisecond until dropped; keeps the peak.
struct ThreadSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ThreadSampler {
    fn start() -> Result<ThreadSampler, Error> {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&peak), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("thread-sampler".to_owned())
            .stack_size(64 * 1024)
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if let Some(n) = status_field("Threads:") {
                        p.fetch_max(n, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .map_err(|e| Error::new(ErrorKind::Io, "cannot start a thread").with_source(e))?;
        Ok(ThreadSampler {
            peak,
            stop,
            thread: Some(thread),
        })
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// The child's side: runs `caller` with `n` requests in flight on this (current-thread)
/// runtime and returns its figures.
pub async fn probe(
    caller: Caller,
    n: u64,
    delay: Duration,
    recipient: SocketAddr,
    bus: Option<&str>,
) -> Result<ProbeOutput, Error> {
    let sampler = ThreadSampler::start()?;
    let started = Instant::now();
    let completed = match caller {
        Caller::Baseline => baseline(n, recipient)?,
        Caller::Calls => calls(n, recipient).await?,
        Caller::Messaging => messaging(n, delay, ProbeBus::open(bus).await?).await?,
        Caller::Events => events(n, delay, ProbeBus::open(bus).await?).await?,
    };
    let wall_s = started.elapsed().as_secs_f64();
    let peak_threads = sampler.finish();
    Ok(ProbeOutput {
        completed,
        wall_s,
        peak_threads,
        peak_rss_mib: status_field("VmHWM:").unwrap_or(0) as f64 / 1024.0,
    })
}

fn ticket() -> PlaceTicket {
    PlaceTicket {
        order_id: Uuid::now_v7(),
        pizzas: vec!["margherita".to_owned()],
    }
}

/// A thread per call, each a blocking HTTP/1.1 POST.
fn baseline(n: u64, recipient: SocketAddr) -> Result<u64, Error> {
    let path = format!("/commands/{}", PlaceTicket::TYPE);
    // Every thread waits at the barrier until all N exist, so the N requests are in flight
    // at once (as the async callers' are), not spread over the time it takes to spawn them.
    let barrier = Arc::new(std::sync::Barrier::new(
        usize::try_from(n).unwrap_or(usize::MAX),
    ));
    let mut threads = Vec::new();
    for _ in 0..n {
        let body = serde_json::to_vec(&ticket())
            .map_err(|e| Error::new(ErrorKind::Io, "cannot encode a ticket").with_source(e))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {recipient}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let barrier = Arc::clone(&barrier);
        let thread = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || -> bool {
                barrier.wait();
                let Ok(mut stream) = TcpStream::connect(recipient) else {
                    return false;
                };
                if stream.write_all(head.as_bytes()).is_err() || stream.write_all(&body).is_err() {
                    return false;
                }
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                answer.starts_with(b"HTTP/1.1 200")
            })
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    "cannot start another thread for the baseline; lower --n",
                )
                .with_source(e)
            })?;
        threads.push(thread);
    }
    Ok(threads
        .into_iter()
        .map(|t| u64::from(t.join().unwrap_or(false)))
        .sum())
}

/// N concurrent calls through tabgrab's client.
async fn calls(n: u64, recipient: SocketAddr) -> Result<u64, Error> {
    let size = usize::try_from(n).unwrap_or(usize::MAX);
    let client = Client::builder(
        HttpTransport::builder(format!("http://{recipient}"))
            .pool_max_idle_per_host(size)
            .build(),
    )
    .service_name("kitchen")
    .max_in_flight(size.max(1))
    .default_timeout(Duration::from_secs(60))
    .build();
    let calls = (0..n).map(|_| {
        let client = client.clone();
        async move { client.call(&ticket()).await.is_ok() }
    });
    Ok(futures::future::join_all(calls)
        .await
        .into_iter()
        .map(u64::from)
        .sum())
}

/// Waits until `count` reaches `n`, up to a minute.
async fn wait_for(count: &AtomicU64, notify: &Notify, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let notified = notify.notified();
        let now = count.load(Ordering::Relaxed);
        if now >= n {
            return now;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return count.load(Ordering::Relaxed);
        }
    }
}

fn bus_error(what: &'static str) -> impl FnOnce(tabgrab::Error) -> Error {
    move |e| Error::new(ErrorKind::Bus, what).with_source(e)
}

/// The bus of a messaging or events probe: an embedded bus in a scratch directory, or a
/// broker namespace (deleted at the end). The scratch directory holds the correlation store.
struct ProbeBus {
    dir: tempfile::TempDir,
    bus: Bus,
    embedded: Option<EmbeddedBus>,
    connection: Option<Connection>,
}

impl ProbeBus {
    async fn open(url: Option<&str>) -> Result<ProbeBus, Error> {
        let dir = tempfile::tempdir()
            .map_err(|e| Error::new(ErrorKind::Io, "cannot make a temp dir").with_source(e))?;
        Ok(match url {
            None => {
                let embedded =
                    EmbeddedBus::open(dir.path()).map_err(bus_error("cannot open the bus"))?;
                ProbeBus {
                    dir,
                    bus: Bus::from(&embedded),
                    embedded: Some(embedded),
                    connection: None,
                }
            }
            Some(url) => {
                let connection = crate::namespace::connect(url).await?;
                ProbeBus {
                    dir,
                    bus: connection.bus().clone(),
                    embedded: None,
                    connection: Some(connection),
                }
            }
        })
    }

    async fn close(self) -> Result<(), Error> {
        if let Some(embedded) = self.embedded {
            embedded
                .close()
                .await
                .map_err(bus_error("cannot close the bus"))?;
        }
        if let Some(connection) = self.connection {
            connection.clean_up().await?;
        }
        drop(self.dir);
        Ok(())
    }
}

/// N `Requester::send`s, then every reply.
async fn messaging(n: u64, delay: Duration, probe_bus: ProbeBus) -> Result<u64, Error> {
    let (bus, dir) = (probe_bus.bus.clone(), probe_bus.dir.path().to_owned());
    let size = usize::try_from(n).unwrap_or(usize::MAX).max(1);
    let responder = Responder::builder(&bus, "kitchen", "kitchen")
        .concurrency(size)
        .handle(move |t: PlaceTicket, _ctx| async move {
            tokio::time::sleep(delay).await;
            Ok(Baked {
                order_id: t.order_id,
            })
        })
        .start()
        .map_err(bus_error("cannot start the responder"))?;
    let replied = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let (r, w) = (Arc::clone(&replied), Arc::clone(&notify));
    let store = SqliteStore::open(dir.join("correlation.db"))
        .await
        .map_err(bus_error("cannot open the correlation store"))?;
    let requester = Requester::builder(&bus, "lab-probe")
        .store(store)
        .default_timeout(Duration::from_secs(60))
        .on_reply("kitchen", move |outcome: Outcome<PlaceTicket>, _ctx| {
            if outcome.ok().is_some() {
                r.fetch_add(1, Ordering::Relaxed);
                w.notify_one();
            }
            async { Ok(()) }
        })
        .start()
        .map_err(bus_error("cannot start the requester"))?;
    responder
        .ready()
        .await
        .map_err(bus_error("the responder did not join the bus"))?;
    requester
        .ready()
        .await
        .map_err(bus_error("the requester did not join the bus"))?;
    let sends = (0..n).map(|_| {
        let requester = requester.clone();
        async move {
            let t = ticket();
            let options = SendOptions::default().subject(t.order_id.to_string());
            requester.send(&t, options).await.is_ok()
        }
    });
    futures::future::join_all(sends).await;
    let done = wait_for(&replied, &notify, n).await;
    requester
        .shutdown()
        .await
        .map_err(bus_error("the requester did not stop"))?;
    responder
        .shutdown()
        .await
        .map_err(bus_error("the responder did not stop"))?;
    probe_bus.close().await?;
    Ok(done)
}

/// N publishes, then every event handled.
async fn events(n: u64, delay: Duration, probe_bus: ProbeBus) -> Result<u64, Error> {
    let bus = probe_bus.bus.clone();
    let size = usize::try_from(n).unwrap_or(usize::MAX).max(1);
    let handled = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let (h, w) = (Arc::clone(&handled), Arc::clone(&notify));
    let subscription = Subscription::builder(&bus, "lab", "kitchen")
        .concurrency(size)
        .max_in_flight(size)
        .handle(move |_e: PizzaReady, _ctx| {
            let (h, w) = (Arc::clone(&h), Arc::clone(&w));
            async move {
                tokio::time::sleep(delay).await;
                h.fetch_add(1, Ordering::Relaxed);
                w.notify_one();
                Ok(())
            }
        })
        .start()
        .map_err(bus_error("cannot subscribe"))?;
    subscription
        .ready()
        .await
        .map_err(bus_error("the subscription did not join the bus"))?;
    let publisher = Publisher::new(&bus, "lab", "/pizzeria/lab").map_err(bus_error("publisher"))?;
    let publishes = (0..n).map(|_| {
        let publisher = publisher.clone();
        async move {
            let order_id = Uuid::now_v7();
            publisher
                .publish(&PizzaReady { order_id }, order_id.to_string())
                .await
                .is_ok()
        }
    });
    futures::future::join_all(publishes).await;
    let done = wait_for(&handled, &notify, n).await;
    subscription
        .shutdown()
        .await
        .map_err(bus_error("the subscription did not stop"))?;
    probe_bus.close().await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(peak_threads: u64) -> ProbeOutput {
        ProbeOutput {
            completed: 1000,
            wall_s: 0.3,
            peak_threads,
            peak_rss_mib: 20.0,
        }
    }

    #[test]
    fn a_caller_blocks_a_thread_per_request_from_ninety_percent_of_n_threads() {
        let verdict = |threads| BlockingFigures::new(Caller::Baseline, 1000, 200, probe(threads));
        assert!(!verdict(4).blocks_a_thread_per_request);
        assert!(!verdict(899).blocks_a_thread_per_request);
        assert!(verdict(900).blocks_a_thread_per_request);
        assert!(verdict(1002).blocks_a_thread_per_request);
    }
}
