//! `pizzeria run`: opens the restaurant in one process and sends it simulated customers.
//!
//! The run opens the embedded bus in the data directory, starts every service (each group
//! resumes from its committed offset, so a directory can be reused), binds the front desk on
//! `127.0.0.1:0`, and drives N customers over real HTTP, C at a time, with seeded random
//! orders: a few pizzas each, a rare tartufo (whose truffle runs out) and a small share of
//! cards that are declined. It then waits until every order *it* placed has ended (delivered
//! or cancelled), up to a deadline, waits until every group has caught up with the log (so the
//! compensations ran), shuts everything down in order (HTTP, groups, bus) and summarises.
//!
//! # Memory
//! The driver keeps one entry per order in flight (its id and the time of its POST), and a
//! fixed-size latency histogram; nothing per event. The services keep a few bytes per order
//! (see their modules). The log itself is on disk.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{Error, ErrorKind};
use crate::http::{self, Accepted, ErrorBody};
use crate::menu::{MENU, RARE_INGREDIENT};
use crate::messages::TOPIC;
use crate::order::OrderRequest;
use crate::services::front_desk::{Outcome, Terminal};
use crate::services::{Pizzeria, Settings, Stock};

/// How the services talk to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// Event-driven: the front desk publishes `OrderAccepted` and is done; the others react.
    Events,
    /// Request-response messaging: the front desk sends commands as request messages,
    /// answers 202 at once and follows the order as replies or timeouts arrive.
    Messaging,
    /// Calls: the front desk calls payment, inventory, the kitchen and delivery over HTTP and answers
    /// the customer when they have answered.
    Calls,
}

impl Style {
    /// The style's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Style::Events => "events",
            Style::Messaging => "messaging",
            Style::Calls => "calls",
        }
    }
}

/// The share of pizzas that are a tartufo (the one that needs the rare truffle).
const TARTUFO_SHARE: f64 = 0.03;
/// A card that the payment service declines (ends in 0000).
const DECLINED_CARD: &str = "4000000000000000";
/// A card that the payment service accepts.
const GOOD_CARD: &str = "4242424242424242";

/// What a run does.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The communication style.
    pub style: Style,
    /// Customers to send, one order each.
    pub orders: u64,
    /// Customers ordering at the same time.
    pub concurrency: usize,
    /// The embedded bus directory.
    pub data_dir: PathBuf,
    /// Ovens in the kitchen.
    pub ovens: usize,
    /// Bake time per order.
    pub bake_time: Duration,
    /// Seeds the customers' choices: the same seed places the same orders.
    pub seed: u64,
    /// Share of customers whose card is declined, 0.0 to 1.0.
    pub decline_rate: f64,
    /// Truffles in stock; `None`: one per 25 orders, so some tartufo orders fail.
    pub truffles: Option<u64>,
    /// How long to wait for every order to end.
    pub deadline: Duration,
    /// Whether to show a progress bar on stderr (it is hidden anyway when stderr is no terminal).
    pub progress: bool,
    /// How long the messaging style waits for each reply before the request times out.
    pub request_timeout: Duration,
    /// A shared bus (`nats://host:port`) instead of the embedded one in `data_dir`.
    pub bus: Option<String>,
    /// With `bus`: where the services run (this process, child processes, or elsewhere).
    pub placement: Placement,
    /// With child processes: how many kitchen processes share the kitchen's group.
    pub kitchens: usize,
    /// PostgreSQL URL of the kitchens' shared rail (needed with more than one kitchen).
    pub kitchen_db: Option<String>,
    /// Where payment and inventory keep their state (`sqlite:PATH`, `postgres://…`,
    /// `memory`); `None`: `sqlite:<data_dir>/effects.sqlite` on the embedded bus, and for
    /// child processes one such file per service.
    pub store: Option<String>,
    /// Readiness checks the run adds its bus and consumer groups to (served by
    /// `--metrics-listen`).
    pub health: tabgrab::telemetry::Health,
    /// Serve the operator console over the run's bus on this address while the run lasts
    /// (events style).
    pub console: Option<std::net::SocketAddr>,
}

/// Where the services of a run on a shared bus run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Every service in this process.
    #[default]
    InProcess,
    /// Payment, inventory, delivery and `kitchens` kitchens as child processes
    /// (`pizzeria service ..`), stopped at the end; the front desk in this process.
    Spawn,
    /// Only the front desk here: the other services were started separately.
    External,
}

impl RunConfig {
    /// Defaults for `orders` orders in `data_dir`.
    pub fn new(orders: u64, data_dir: impl Into<PathBuf>) -> RunConfig {
        RunConfig {
            style: Style::Events,
            orders,
            concurrency: 64,
            data_dir: data_dir.into(),
            ovens: 16,
            bake_time: Duration::from_millis(2),
            seed: 1,
            decline_rate: 0.02,
            truffles: None,
            deadline: Duration::from_secs(600),
            progress: false,
            request_timeout: Duration::from_secs(30),
            bus: None,
            placement: Placement::InProcess,
            kitchens: 1,
            kitchen_db: None,
            store: None,
            health: tabgrab::telemetry::Health::new(),
            console: None,
        }
    }
}

/// End-to-end latency, from sending `POST /orders` to the front desk learning of the delivery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Slowest, in milliseconds.
    pub max_ms: f64,
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The communication style.
    pub style: Style,
    /// The seed, to place the same orders again.
    pub seed: u64,
    /// Customers sent.
    pub orders: u64,
    /// Orders the front desk accepted (202).
    pub accepted: u64,
    /// Orders the front desk refused or that failed in transit.
    pub rejected: u64,
    /// Accepted orders delivered.
    pub delivered: u64,
    /// Accepted orders cancelled.
    pub failed: u64,
    /// Cancelled orders by reason.
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Refunds payment gave (cancelled orders it had charged).
    pub refunds: u64,
    /// Releases inventory made (cancelled orders it had reserved for).
    pub releases: u64,
    /// Events appended to the topic during the run.
    pub events_published: u64,
    /// Events the groups dead-lettered during the run.
    pub dead_letters: u64,
    /// From opening the bus to closing it, in seconds.
    pub wall_time_s: f64,
    /// Orders ended per second of wall time.
    pub orders_per_s: f64,
    /// POST to delivery.
    pub latency: Latency,
    /// Peak resident memory of the process, in MiB, where the OS tells it.
    pub peak_rss_mib: Option<f64>,
    /// Messaging style: correlation records written to the store (one per request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_records: Option<u64>,
    /// Messaging style: requests that ended as timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<u64>,
}

impl Summary {
    /// The summary as aligned text lines for people.
    pub fn render(&self) -> String {
        let mut out = format!(
            "pizzeria run, style {}, seed {}\n",
            self.style.as_str(),
            self.seed
        );
        let mut line =
            |label: &str, value: String| out.push_str(&format!("  {label:<18} {value}\n"));
        line(
            "orders accepted",
            format!("{} of {}", self.accepted, self.orders),
        );
        if self.rejected > 0 {
            line("orders rejected", self.rejected.to_string());
        }
        line("delivered", self.delivered.to_string());
        line("failed", self.failed.to_string());
        for (reason, n) in &self.failed_by_reason {
            line("", format!("{n} {reason}"));
        }
        line("refunds", self.refunds.to_string());
        line("releases", self.releases.to_string());
        let published = match self.style {
            Style::Events => "events published",
            // Calls publish nothing on a bus: the line reads 0, which is the point.
            Style::Messaging | Style::Calls => "messages published",
        };
        line(published, self.events_published.to_string());
        if let Some(n) = self.correlation_records {
            line("correlation recs", n.to_string());
        }
        if let Some(n) = self.timeouts {
            line("timeouts", n.to_string());
        }
        line("dead letters", self.dead_letters.to_string());
        line("wall time", format!("{:.2} s", self.wall_time_s));
        line("throughput", format!("{:.0} orders/s", self.orders_per_s));
        line(
            "POST to delivery",
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                self.latency.p50_ms, self.latency.p99_ms, self.latency.max_ms
            ),
        );
        if let Some(rss) = self.peak_rss_mib {
            line("peak RSS", format!("{rss:.1} MiB"));
        }
        out
    }
}

/// Runs the restaurant under simulated load; see the module docs.
pub async fn run(config: RunConfig) -> Result<Summary, Error> {
    check_placement(&config)?;
    if config.style == Style::Messaging {
        return crate::messaging::run(config).await;
    }
    if config.style == Style::Calls {
        return crate::calls::run::run(config).await;
    }
    if let Some(url) = config.bus.clone() {
        return run_on_bus(config, &url).await;
    }
    let started = Instant::now();
    let bus = EmbeddedBus::open(&config.data_dir).map_err(|e| {
        Error::new(
            ErrorKind::Bus,
            format!(
                "cannot open the data directory {}",
                config.data_dir.display()
            ),
        )
        .with_source(e)
    })?;
    let truffles = config.truffles.unwrap_or(config.orders / 25);
    let settings = Settings {
        ovens: config.ovens,
        bake_time: config.bake_time,
        stock: Stock::generous().with(RARE_INGREDIENT, truffles),
    };
    // Every service's durable state; each run is a new day: the shelf is restocked.
    let store = open_store(&config, "effects").await?;
    store.restock(&settings.stock).await?;
    let dead_before = count_dead_letters(&Bus::from(&bus)).await;
    let pizzeria = Pizzeria::start_with(&bus, settings, store)?;
    config.health.bus(&Bus::from(&bus));
    pizzeria.check_health(&config.health);
    let console = match config.console {
        Some(listen) => Some(crate::console::start(&Bus::from(&bus), listen, None).await?),
        None => None,
    };
    let watcher = pizzeria.front_desk.watch();

    let (listener, addr) = bind_front_desk().await?;
    announce(addr, true);
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        pizzeria.front_desk.clone(),
        stop.clone().cancelled_owned(),
    ));

    let driven = drive(&config, addr, watcher, started).await;

    // Shut down in order whatever happened: no new orders, then let the groups catch up
    // (compensations), then stop them (commits offsets), then close the bus.
    stop.cancel();
    let served = server.await;
    let settled = match &driven {
        Ok(_) => pizzeria.settle(Duration::from_secs(30)).await,
        Err(_) => Ok(()),
    };
    let dead_letters = count_dead_letters(&Bus::from(&bus))
        .await
        .saturating_sub(dead_before);
    let counted = match &driven {
        Ok(tally) => Some(count_run(&pizzeria.store, &tally.accepted_ids).await),
        Err(_) => None,
    };
    if let Some(console) = console {
        console.stop().await;
    }
    let stopped = pizzeria.shutdown().await;
    let closed = bus.close().await;

    let tally = driven?;
    settled?;
    let (refunds, releases, events_published) = counted.unwrap_or(Ok((0, 0, 0)))?;
    match served {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(
                Error::new(ErrorKind::Io, "the front desk's HTTP server failed").with_source(e),
            );
        }
        Err(e) => {
            return Err(
                Error::new(ErrorKind::Io, "the front desk's HTTP server task failed")
                    .with_source(e),
            );
        }
    }
    stopped?;
    closed?;

    Ok(tally.into_summary(
        &config,
        started,
        Counts {
            refunds,
            releases,
            events_published,
            dead_letters,
            correlation_records: None,
            timeouts: None,
        },
    ))
}

/// Which styles run on `--bus`, and where their services may run: events and messaging
/// anywhere on a broker, but only in this process on the embedded log (it belongs to one
/// process); calls use no bus, and run their services here or as child processes.
fn check_placement(config: &RunConfig) -> Result<(), Error> {
    match (config.style, &config.bus, config.placement) {
        (Style::Calls, Some(_), _) => Err(Error::new(
            ErrorKind::Usage,
            "the calls style talks HTTP between the services and uses no bus: drop --bus \
             (run the services apart with --services spawn, or `pizzeria service <name> --listen ..`)",
        )),
        (Style::Calls, None, Placement::External) => Err(Error::new(
            ErrorKind::Usage,
            "in the calls style the front desk needs the services' URLs: run `pizzeria service \
             front-desk --payment .. --inventory .. --kitchen .. --delivery ..` (or use \
             --services in-process or spawn)",
        )),
        (Style::Events | Style::Messaging, None, Placement::Spawn | Placement::External) => {
            Err(Error::new(
                ErrorKind::Usage,
                "services in other processes share a broker: give --bus nats://.. or amqp://.. \
                 (the embedded log belongs to one process)",
            ))
        }
        _ => Ok(()),
    }
}

/// Binds the front desk on a free loopback port, for the simulated customers.
pub(crate) async fn bind_front_desk() -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| {
            Error::new(ErrorKind::Io, "cannot bind the front desk on 127.0.0.1").with_source(e)
        })?;
    let addr = listener.local_addr().map_err(|e| {
        Error::new(ErrorKind::Io, "cannot read the front desk's address").with_source(e)
    })?;
    Ok((listener, addr))
}

/// What a style counted beside the driver's tally, for its [`Summary`].
pub(crate) struct Counts {
    /// Refunds given.
    pub(crate) refunds: u64,
    /// Ingredients put back.
    pub(crate) releases: u64,
    /// Messages the run published on the bus.
    pub(crate) events_published: u64,
    /// Messages given up on.
    pub(crate) dead_letters: u64,
    /// Correlation records written (messaging only).
    pub(crate) correlation_records: Option<u64>,
    /// Requests that timed out (messaging only).
    pub(crate) timeouts: Option<u64>,
}

/// What the driver counted.
pub(crate) struct Tally {
    pub(crate) accepted: u64,
    pub(crate) rejected: u64,
    pub(crate) delivered: u64,
    pub(crate) failed: u64,
    pub(crate) failed_by_reason: BTreeMap<String, u64>,
    /// POST-to-delivery times in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// Our orders not yet ended, with the time their POST was sent.
    in_flight: HashMap<Uuid, Instant>,
    /// Every order this run placed and the front desk accepted: the summary counts theirs
    /// only (a directory or bus reused after a crash holds earlier runs' orders too).
    pub(crate) accepted_ids: Vec<Uuid>,
    /// Ends heard before the POST's answer (or of orders of an earlier run in the same
    /// directory, which stay here and are ignored).
    early: HashMap<Uuid, Terminal>,
    /// The first refusal, to explain rejections.
    first_rejection: Option<String>,
}

impl Tally {
    /// The run's summary: this tally, the style's own counts, and the time since `started`.
    pub(crate) fn into_summary(
        self,
        config: &RunConfig,
        started: Instant,
        counts: Counts,
    ) -> Summary {
        let wall = started.elapsed().as_secs_f64();
        let ended = self.delivered + self.failed;
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        Summary {
            style: config.style,
            seed: config.seed,
            orders: config.orders,
            accepted: self.accepted,
            rejected: self.rejected,
            delivered: self.delivered,
            failed: self.failed,
            refunds: counts.refunds,
            releases: counts.releases,
            events_published: counts.events_published,
            dead_letters: counts.dead_letters,
            wall_time_s: wall,
            orders_per_s: if wall > 0.0 { ended as f64 / wall } else { 0.0 },
            latency: Latency {
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                max_ms: self.latency.max() as f64 / 1000.0,
            },
            peak_rss_mib: peak_rss_mib(),
            correlation_records: counts.correlation_records,
            timeouts: counts.timeouts,
            failed_by_reason: self.failed_by_reason,
        }
    }

    fn ended(&mut self, sent: Instant, terminal: &Terminal, progress: &ProgressBar) {
        match &terminal.outcome {
            Outcome::Delivered => {
                self.delivered += 1;
                let us = terminal.at.saturating_duration_since(sent).as_micros();
                self.latency
                    .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
            }
            Outcome::Cancelled(reason) => {
                self.failed += 1;
                *self.failed_by_reason.entry(reason.clone()).or_default() += 1;
            }
        }
        progress.inc(1);
    }
}

/// Opens the run's store: `--store`, or `sqlite:<data_dir>/<name>.sqlite`.
pub(crate) async fn open_store(
    config: &RunConfig,
    name: &str,
) -> Result<crate::services::Store, Error> {
    let url = store_url(config, name);
    crate::services::Store::open(&url).await.map_err(|e| {
        Error::new(
            ErrorKind::Bus,
            format!(
                "cannot open the payment and inventory store {}",
                tabgrab::SecretUrl::new(url.as_str())
            ),
        )
        .with_source(e)
    })
}

/// The store URL of `--store`, or a SQLite file `<name>.sqlite` in the data directory.
fn store_url(config: &RunConfig, name: &str) -> String {
    config.store.clone().unwrap_or_else(|| {
        format!(
            "sqlite:{}",
            config.data_dir.join(format!("{name}.sqlite")).display()
        )
    })
}

/// Sends the customers and waits for their orders to end.
pub(crate) async fn drive(
    config: &RunConfig,
    addr: SocketAddr,
    mut watcher: mpsc::UnboundedReceiver<Terminal>,
    started: Instant,
) -> Result<Tally, Error> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot build the HTTP client").with_source(e))?;
    let url = format!("http://{addr}/orders");
    let mut rng = StdRng::seed_from_u64(config.seed);
    let decline_rate = config.decline_rate.clamp(0.0, 1.0);
    let mut posts = futures::stream::iter(0..config.orders)
        .map(move |i| customer(i, &mut rng, decline_rate))
        .map(|request| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let sent = Instant::now();
                (sent, place(&client, &url, &request).await)
            }
        })
        .buffer_unordered(config.concurrency.max(1));

    let progress = if config.progress {
        ProgressBar::with_draw_target(Some(config.orders), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} orders ended ({per_sec}, eta {eta})")
    {
        progress.set_style(style);
    }
    let mut tally = Tally {
        accepted: 0,
        rejected: 0,
        delivered: 0,
        failed: 0,
        failed_by_reason: BTreeMap::new(),
        // 1 µs to 1 hour at 3 significant digits; slower values are clamped to an hour.
        latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map_err(|e| Error::new(ErrorKind::Usage, "cannot make a histogram").with_source(e))?,
        in_flight: HashMap::new(),
        accepted_ids: Vec::new(),
        early: HashMap::new(),
        first_rejection: None,
    };
    let deadline = tokio::time::sleep_until((started + config.deadline).into());
    tokio::pin!(deadline);
    let mut posting = true;
    while posting || !tally.in_flight.is_empty() {
        tokio::select! {
            post = posts.next(), if posting => match post {
                None => posting = false,
                Some((sent, Ok(order_id))) => {
                    tally.accepted += 1;
                    tally.accepted_ids.push(order_id);
                    match tally.early.remove(&order_id) {
                        Some(terminal) => tally.ended(sent, &terminal, &progress),
                        None => { tally.in_flight.insert(order_id, sent); }
                    }
                }
                Some((_, Err(refusal))) => {
                    tally.rejected += 1;
                    tally.first_rejection.get_or_insert(refusal);
                    progress.inc(1);
                }
            },
            terminal = watcher.recv() => match terminal {
                Some(terminal) => match tally.in_flight.remove(&terminal.order_id) {
                    Some(sent) => tally.ended(sent, &terminal, &progress),
                    None => { tally.early.insert(terminal.order_id, terminal); }
                },
                None => return Err(Error::new(ErrorKind::Bus, "the front desk stopped reporting orders")),
            },
            () = &mut deadline => {
                progress.abandon();
                return Err(Error::new(
                    ErrorKind::Deadline,
                    format!(
                        "deadline of {} s exceeded: {} of {} accepted orders are stuck (neither delivered nor cancelled){}; \
                         see `pizzeria dead-letters` or raise --deadline-secs",
                        config.deadline.as_secs(),
                        tally.in_flight.len(),
                        tally.accepted,
                        if posting { ", and not every order was placed yet" } else { "" },
                    ),
                ));
            }
        }
    }
    progress.finish_and_clear();
    if tally.accepted == 0 && config.orders > 0 {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "the front desk accepted none of {} orders; first refusal: {}",
                config.orders,
                tally.first_rejection.as_deref().unwrap_or("none")
            ),
        ));
    }
    if let Some(refusal) = &tally.first_rejection {
        tracing::warn!(rejected = tally.rejected, first = %refusal, "some orders were refused");
    }
    Ok(tally)
}

/// The `i`-th customer's order: 1 to 3 pizzas, a tartufo now and then, a declined card at
/// `decline_rate`.
pub(crate) fn customer(i: u64, rng: &mut StdRng, decline_rate: f64) -> OrderRequest {
    let count = rng.random_range(1..=3);
    let ordinary = &MENU[..MENU.len() - 1];
    let pizzas = (0..count)
        .map(|_| {
            let pizza = if rng.random_bool(TARTUFO_SHARE) {
                MENU[MENU.len() - 1].name
            } else {
                ordinary[rng.random_range(0..ordinary.len())].name
            };
            pizza.to_owned()
        })
        .collect();
    let card = if rng.random_bool(decline_rate) {
        DECLINED_CARD
    } else {
        GOOD_CARD
    };
    OrderRequest {
        customer: format!("customer-{i}"),
        pizzas,
        card: card.to_owned(),
    }
}

/// Posts one order; the order id on 202, or why not.
async fn place(
    client: &reqwest::Client,
    url: &str,
    request: &OrderRequest,
) -> Result<Uuid, String> {
    let response = client
        .post(url)
        .json(request)
        .send()
        .await
        .map_err(|e| format!("POST /orders failed: {e}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::ACCEPTED {
        let accepted: Accepted = response.json().await.map_err(|e| {
            format!("POST /orders answered 202 with a body that is not an order id: {e}")
        })?;
        return Ok(accepted.order_id);
    }
    let why = match response.json::<ErrorBody>().await {
        Ok(body) => body.error,
        Err(_) => "no JSON error body".to_owned(),
    };
    Err(format!("POST /orders answered {status}: {why}"))
}

/// The process's peak resident memory (`VmHWM` of `/proc/self/status`), on Linux.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// How spawned services find each other: through a bus (events, messaging), or by the URLs
/// they listen on (calls).
#[derive(Clone, Debug)]
pub(crate) enum Wiring {
    /// `pizzeria service <name> --style <style>` on the bus at this URL.
    Bus(String, Style),
    /// `pizzeria service <name> --listen 127.0.0.1:0`: each prints the URL it serves.
    Calls,
}

/// Child service processes, killed (SIGKILL) when dropped if they were not stopped.
pub(crate) struct Children {
    /// Each child with its service's name.
    processes: Vec<(String, std::process::Child)>,
    /// The URL each listens on, in spawning order (calls; empty strings on a bus).
    urls: Vec<String>,
}

impl Children {
    /// Restocks the inventory process's shelf (its store outlives the run: each run is a new
    /// day), then spawns the services ([`Children::spawn`]) off the runtime's threads.
    pub(crate) async fn start(
        config: &RunConfig,
        stock: &Stock,
        wiring: Wiring,
    ) -> Result<Children, Error> {
        open_store(config, "inventory")
            .await?
            .restock(stock)
            .await?;
        let config = config.clone();
        tokio::task::spawn_blocking(move || Children::spawn(&config, wiring))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, "spawning failed").with_source(e))?
    }

    /// Spawns `pizzeria service <name>` processes and waits until each printed `ready` (on a
    /// bus) or the URL it listens on (calls).
    pub(crate) fn spawn(config: &RunConfig, wiring: Wiring) -> Result<Children, Error> {
        let exe = std::env::current_exe().map_err(|e| {
            Error::new(ErrorKind::Io, "cannot find the pizzeria executable").with_source(e)
        })?;
        let shared = config.kitchen_db.is_some()
            || config
                .store
                .as_deref()
                .is_some_and(|s| s.starts_with("postgres"));
        let kitchens = match wiring {
            Wiring::Calls => 1,
            _ => config.kitchens.max(1),
        };
        if kitchens > 1 && !shared && matches!(wiring, Wiring::Bus(_, Style::Events)) {
            return Err(Error::new(
                ErrorKind::Usage,
                "several kitchens share one rail: give --kitchen-db postgres://… (or a PostgreSQL --store)",
            ));
        }
        // The call style's in the order of its front desk's URLs ([`Children::urls`]).
        let names: Vec<&str> = match wiring {
            Wiring::Calls => vec!["payment", "inventory", "kitchen", "delivery"],
            Wiring::Bus(..) => ["payment", "inventory", "delivery"]
                .into_iter()
                .chain(std::iter::repeat_n("kitchen", kitchens))
                .collect(),
        };
        let mut children = Children {
            processes: Vec::new(),
            urls: vec![String::new(); names.len()],
        };
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, name) in names.into_iter().enumerate() {
            let mut command = std::process::Command::new(&exe);
            command.args(["service", name]);
            // URLs that may carry credentials go through the environment, not the command
            // line, which every user of the machine can read (`ps`, /proc/PID/cmdline).
            match &wiring {
                Wiring::Bus(url, style) => {
                    command
                        .args(["--style", style.as_str()])
                        .env("PIZZERIA_BUS", url);
                }
                Wiring::Calls => {
                    command
                        .args(["--listen", "127.0.0.1:0"])
                        .env_remove("PIZZERIA_BUS");
                }
            }
            // Its stdin is a pipe held by this process: if this run dies, even by SIGKILL,
            // the child sees the pipe close and stops (see `service::PARENT_PIPE_VAR`).
            command
                .args(["--ovens", &config.ovens.to_string()])
                .args(["--bake-ms", &config.bake_time.as_millis().to_string()])
                .env(crate::service::PARENT_PIPE_VAR, "1")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit());
            match &config.kitchen_db {
                Some(db) if matches!(wiring, Wiring::Bus(_, Style::Events)) => {
                    command.env("PIZZERIA_KITCHEN_DB", db)
                }
                _ => command.env_remove("PIZZERIA_KITCHEN_DB"),
            };
            // One SQLite file per service unless they share a PostgreSQL store.
            command.env("PIZZERIA_STORE", store_url(config, name));
            let truffles = config.truffles.unwrap_or(config.orders / 25);
            command.args(["--truffles", &truffles.to_string()]);
            let mut child = command.spawn().map_err(|e| {
                Error::new(ErrorKind::Io, format!("cannot start the {name} service")).with_source(e)
            })?;
            // Drain the child's stdout (status lines) so that it never blocks on a full pipe.
            if let Some(stdout) = child.stdout.take() {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    use std::io::BufRead as _;
                    for line in std::io::BufReader::new(stdout)
                        .lines()
                        .map_while(Result::ok)
                    {
                        if line.starts_with("ready ") {
                            let _ = tx.send((i, String::new()));
                        } else if let Some((_, url)) = line.split_once(" listening on ") {
                            let _ = tx.send((i, url.trim().to_owned()));
                        }
                    }
                });
            }
            children.processes.push((name.to_owned(), child));
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ready = 0;
        while ready < children.processes.len() {
            if let Ok((i, url)) = rx.recv_timeout(Duration::from_millis(100)) {
                if let Some(slot) = children.urls.get_mut(i) {
                    *slot = url;
                }
                ready += 1;
                continue;
            }
            for (name, child) in &mut children.processes {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::new(
                        ErrorKind::Bus,
                        format!(
                            "the {name} service exited at start ({status}); see its error above"
                        ),
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Deadline,
                    "the service processes did not all report ready within 60 s",
                ));
            }
        }
        Ok(children)
    }

    /// The URL each child listens on, in spawning order (calls; empty on a bus).
    pub(crate) fn urls(&self) -> Vec<String> {
        self.urls.clone()
    }

    /// [`Children::stop`] off the runtime's threads.
    pub(crate) async fn shutdown(self) -> Result<(), Error> {
        tokio::task::spawn_blocking(move || self.stop())
            .await
            .map_err(|e| Error::new(ErrorKind::Io, "stopping failed").with_source(e))
    }

    /// Stops every child with SIGTERM and waits (SIGKILL after 10 s).
    fn stop(mut self) {
        for (_, child) in &self.processes {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // Through kill(1): the workspace forbids unsafe code, and libc::kill is unsafe.
                let _ = nix_kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, child) in &mut self.processes {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        tracing::warn!(service = %name, "did not stop in 10 s; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.processes.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends a signal to a process we started.
fn nix_kill(pid: libc::pid_t, signal: libc::c_int) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -{signal} {pid} failed"
        )))
    }
}

/// The events style on a shared bus: services here, in child processes, or elsewhere.
async fn run_on_bus(config: RunConfig, url: &str) -> Result<Summary, Error> {
    let started = Instant::now();
    // `?namespace=` prefixes the run's topics; they are deleted at the end (see namespace.rs).
    let connection = crate::namespace::connect(url).await?;
    let bus = connection.bus().clone();
    config.health.bus(&bus);
    // Stopped when the run returns (dropped before the connection).
    let _console = match config.console {
        Some(listen) => Some(crate::console::start(&bus, listen, None).await?),
        None => None,
    };
    if let Ok(report) = bus.report().await {
        eprintln!("bus: {report}");
    }
    let truffles = config.truffles.unwrap_or(config.orders / 25);
    let settings = Settings {
        ovens: config.ovens,
        bake_time: config.bake_time,
        stock: Stock::generous().with(RARE_INGREDIENT, truffles),
    };
    let children = match config.placement {
        Placement::Spawn => Some(
            Children::start(
                &config,
                &settings.stock,
                Wiring::Bus(url.to_owned(), Style::Events),
            )
            .await?,
        ),
        _ => None,
    };
    let dead_before = count_dead_letters(&bus).await;
    let (pizzeria, front_desk, front_side) = match config.placement {
        Placement::InProcess => {
            let store = open_store(&config, "effects").await?;
            store.restock(&settings.stock).await?;
            let pizzeria = Pizzeria::start_with(&bus, settings, store)?;
            pizzeria.ready().await?;
            pizzeria.check_health(&config.health);
            let fd = pizzeria.front_desk.clone();
            (Some(pizzeria), fd, None)
        }
        Placement::Spawn | Placement::External => {
            // The front desk alone here, with a store (and relay) of its own.
            let store = open_store(&config, "front-desk").await?;
            let relay = store.relay(&bus);
            let fd = crate::services::FrontDesk::new(&bus, store)?;
            let sub = fd.subscribe(&bus)?;
            sub.ready().await?;
            config.health.subscription(&sub);
            (None, fd, Some((sub, relay)))
        }
    };
    let watcher = front_desk.watch();
    let (listener, addr) = bind_front_desk().await?;
    announce(addr, true);
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        front_desk.clone(),
        stop.clone().cancelled_owned(),
    ));
    let driven = drive(&config, addr, watcher, started).await;
    stop.cancel();
    let _ = server.await;
    let mut counted = None;
    if let Ok(tally) = &driven {
        match &pizzeria {
            Some(pizzeria) => pizzeria.settle(Duration::from_secs(30)).await?,
            // The services are elsewhere: the compensations of the last orders are done once
            // the view of this run's orders stops changing.
            None => {
                quiesce(front_desk.store(), &tally.accepted_ids).await?;
                // Its view of the orders is as fresh as its group: read what is waiting
                // (earlier runs' orders, late outcomes) before leaving.
                if let Some((sub, _)) = &front_side {
                    catch_up(sub, front_desk.store()).await;
                }
            }
        }
        counted = Some(count_run(front_desk.store(), &tally.accepted_ids).await?);
    }
    let dead_letters = count_dead_letters(&bus).await.saturating_sub(dead_before);
    if let Some(pizzeria) = pizzeria {
        pizzeria.shutdown().await?;
    }
    if let Some((sub, relay)) = front_side {
        sub.shutdown().await?;
        relay.shutdown().await?;
    }
    if let Some(children) = children {
        children.shutdown().await?;
    }
    // A namespace this run owns (its services were here or its children) is deleted, unless
    // it holds dead letters: those are kept for `pizzeria dead-letters --bus`. With external
    // services the topics are theirs: nothing is deleted.
    match connection.namespace() {
        None => {}
        Some(_) if config.placement == Placement::External => {}
        Some(namespace) => {
            // Read again now that every group has stopped: what is about to be deleted.
            let kept = count_dead_letters(&bus).await;
            if kept > 0 {
                eprintln!(
                    "namespace {namespace} kept: it holds {kept} dead letters \
                     (`pizzeria dead-letters --bus <the same url>` lists them)"
                );
            } else {
                connection.clean_up().await?;
            }
        }
    }
    let tally = driven?;
    let (refunds, releases, events_published) = counted.unwrap_or((0, 0, 0));
    Ok(tally.into_summary(
        &config,
        started,
        Counts {
            refunds,
            releases,
            events_published,
            dead_letters,
            correlation_records: None,
            timeouts: None,
        },
    ))
}

/// Tells the user where the front desk listens while the run lasts; `durable_view`: the
/// events style's front desk, whose view of the orders outlives the run.
pub(crate) fn announce(addr: SocketAddr, durable_view: bool) {
    let after = if durable_view {
        "; after the run, `pizzeria orders` reads every order back"
    } else {
        ", while the run lasts"
    };
    eprintln!("front desk: http://{addr} (POST /orders, GET /orders/{{id}}){after}");
}

/// The dead letters of the pizzeria topic so far (0 if they cannot be read).
async fn count_dead_letters(bus: &Bus) -> u64 {
    match bus.dead_letters(TOPIC).await {
        Ok(letters) => letters.len() as u64,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the dead letters");
            0
        }
    }
}

/// The refunds, releases and events of the orders `ids` (this run's), from the front desk's
/// durable view: what the summary reports, whatever else the store or the bus holds.
pub(crate) async fn count_run(
    store: &crate::services::Store,
    ids: &[Uuid],
) -> Result<(u64, u64, u64), Error> {
    use crate::services::front_desk::{IngredientsState, PaymentState};
    let ours: std::collections::HashSet<Uuid> = ids.iter().copied().collect();
    let views = crate::orders::views(store).await?;
    let (mut refunds, mut releases, mut events) = (0, 0, 0);
    for view in views.iter().filter(|v| ours.contains(&v.order_id)) {
        refunds += u64::from(view.payment == Some(PaymentState::Refunded));
        releases += u64::from(view.ingredients == Some(IngredientsState::Released));
        events += view.timestamps.count();
    }
    Ok((refunds, releases, events))
}

/// Waits until the front desk's view of the orders `ids` has not changed for a moment
/// (the compensations of the last cancelled orders reached it), at most 30 s.
/// Waits (30 s at most) until the front desk's group has read everything on the topic and
/// its outbox is empty, twice in a row a poll apart; says so on stderr if it gives up.
async fn catch_up(sub: &tabgrab::event::Subscription, store: &crate::services::Store) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut settled = 0;
    while settled < 2 {
        let pending = store.pending().await.unwrap_or(u64::MAX);
        if sub.lag() == 0 && pending == 0 {
            settled += 1;
        } else {
            settled = 0;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "the front desk's view is {} events behind the bus after 30 s; \
                 `pizzeria orders` shows how far",
                sub.lag()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn quiesce(store: &crate::services::Store, ids: &[Uuid]) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    let mut stable_since = Instant::now();
    loop {
        let now = count_run(store, ids).await?;
        if last != Some(now) {
            last = Some(now);
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(500) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_places_the_same_orders() {
        let orders = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|i| customer(i, &mut rng, 0.1))
                .collect::<Vec<_>>()
        };
        assert_eq!(orders(7), orders(7));
        assert_ne!(orders(7), orders(8));
        for order in orders(7) {
            order.validate().unwrap();
        }
    }
}
