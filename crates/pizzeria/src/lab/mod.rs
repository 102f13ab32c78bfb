//! `pizzeria lab`: the table of the three kinds of asynchronous communication, measured on
//! this machine with the pizzeria instead of asserted.
//!
//! Teams that split a system are usually handed a table of claims: whether the caller's
//! thread is blocked, whether the recipient must be up, whether the sender expects a
//! response. The lab runs the restaurant in each style under the same load and the same
//! fault schedule and fills that table with figures, each cell's verdict derived from its
//! figures ([`report`]):
//!
//! | scenario | module | how |
//! |---|---|---|
//! | blocking | [`blocking`] | N requests in flight on one thread, each taking a fixed time at the recipient, in a child process per caller; a thread-per-call baseline beside them |
//! | availability | [`availability`] | the kitchen, then payment, stopped for a while as customers keep ordering (`trial.rs`, `restaurant.rs`) |
//! | response expected | [`response`] | responses, correlation records, timeouts and the front desk's open work, per order |
//! | capacity | [`capacity`] | a kitchen with two ovens under more orders than it can bake |
//!
//! [`bench`](mod@bench) is the other measurement, `pizzeria bench`: the embedded backend beside the disk's
//! own `fdatasync`.
//!
//! It prints the table, and writes `lab.json` ([`json`]: every figure, the machine, the
//! version, the seed) and `lab.html` ([`html`]: the table and charts as inline SVG, no
//! network) to the output directory.
//!
//! # Backends
//! `--bus` chooses the engine the messaging and events styles run on: `embedded` (the
//! default), `nats://host:port` or `amqp://user:pass@host:port/vhost`. On a broker every
//! trial and every blocking probe gets a namespace of its own
//! (`lab-<pid>-<random>-<trial>`, see [`crate::namespace`]): nothing it publishes mixes with
//! another run's, even one on the same broker at the same time, and its streams, exchanges
//! and queues are deleted when the trial ends. The calls style talks HTTP and uses no bus,
//! so its column is the same measurement on every engine (the report says so). A scenario
//! that cannot run on an engine is an [`ErrorKind::Unsupported`] error, never a figure.

pub mod availability;
pub mod bench;
pub mod blocking;
pub mod capacity;
pub mod html;
pub mod json;
mod load;
pub mod report;
pub mod response;
mod restaurant;
mod trial;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind};
use crate::run::Style;
use report::{LabReport, Machine};
use restaurant::{Down, Kit};
use trial::{Outage, Plan};

/// The engine the lab measures the messaging and events styles on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabBus {
    /// The embedded log, a fresh directory per trial.
    Embedded,
    /// A broker's URL (`nats://…`, `amqp://…`), without a namespace: the lab makes one per
    /// trial.
    Broker(String),
}

impl LabBus {
    /// Reads `--bus`: `embedded`, `nats://…` (or `tls://…`) or `amqp://…` (or `amqps://…`).
    pub fn parse(bus: &str) -> Result<LabBus, Error> {
        if bus == "embedded" || bus == "embedded://" {
            return Ok(LabBus::Embedded);
        }
        let known = ["nats://", "tls://", "amqp://", "amqps://"];
        if !known.iter().any(|scheme| bus.starts_with(scheme)) {
            return Err(Error::new(
                ErrorKind::Usage,
                format!(
                    "--bus {:?} is not a bus the lab knows: use `embedded`, `nats://host:port` or `amqp://user:pass@host:port/vhost`",
                    tabgrab::SecretUrl::new(bus).redacted()
                ),
            ));
        }
        let (url, namespace) = crate::namespace::split_url(bus)?;
        if namespace.is_some() {
            return Err(Error::new(
                ErrorKind::Usage,
                "the lab makes a namespace per trial (and deletes it): drop `namespace=` from --bus",
            ));
        }
        Ok(LabBus::Broker(url))
    }

    /// The engine's name: `embedded`, `nats`, `amqp`.
    pub fn engine(&self) -> &'static str {
        match self {
            LabBus::Embedded => "embedded",
            LabBus::Broker(url) if url.starts_with("nats://") || url.starts_with("tls://") => {
                "nats"
            }
            LabBus::Broker(_) => "amqp",
        }
    }

    /// The URL of one trial's namespace on the broker (`None` on the embedded bus).
    fn trial(&self, run: &str, trial: &str) -> Option<String> {
        match self {
            LabBus::Embedded => None,
            LabBus::Broker(url) => {
                let glue = if url.contains('?') { '&' } else { '?' };
                Some(format!("{url}{glue}namespace={run}-{trial}"))
            }
        }
    }
}

/// What the lab does.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// The reduced lab (fewer requests, shorter outage): seconds instead of minutes.
    pub quick: bool,
    /// The customers' seed.
    pub seed: u64,
    /// Requests in flight in the blocking scenario.
    pub blocking_n: u64,
    /// The recipient's time per request in the blocking scenario.
    pub blocking_delay: Duration,
    /// How long a service stays down.
    pub outage: Duration,
    /// Orders per second in the availability and response scenarios.
    pub rate: f64,
    /// Where `lab.json` and `lab.html` go (created if missing).
    pub out: PathBuf,
    /// The `pizzeria` executable to run the blocking probes with.
    pub probe_exe: PathBuf,
    /// Whether to show progress bars on stderr.
    pub progress: bool,
    /// The engine of the messaging and events styles.
    pub bus: LabBus,
    /// How long the calls style's circuit breakers stay open before they let a probe through
    /// (the rest of tabgrab's defaults: 5 failures in a row or half of the last 100 calls
    /// open it, 3 probes close it). It bounds the calls style's recovery from below.
    pub breaker_open_for: Duration,
}

impl LabConfig {
    /// The full lab (`quick` false) or the reduced one, writing to `out`.
    pub fn new(quick: bool, out: impl Into<PathBuf>) -> LabConfig {
        LabConfig {
            quick,
            seed: 1,
            blocking_n: if quick { 1_000 } else { 10_000 },
            blocking_delay: Duration::from_millis(200),
            outage: Duration::from_secs(if quick { 1 } else { 3 }),
            rate: if quick { 50.0 } else { 100.0 },
            out: out.into(),
            probe_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pizzeria")),
            progress: false,
            bus: LabBus::Embedded,
            breaker_open_for: Duration::from_secs(1),
        }
    }
}

fn scratch(root: &Path, name: &str) -> Result<PathBuf, Error> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::new(ErrorKind::Io, format!("cannot make {}", dir.display())).with_source(e)
    })?;
    Ok(dir)
}

/// Runs the lab, writes `lab.json` and `lab.html` to `config.out`, and returns the report.
pub async fn run(config: &LabConfig) -> Result<LabReport, Error> {
    let started = Instant::now();
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let data = tempfile::tempdir()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot make a scratch directory").with_source(e))?;
    // On a broker: check it answers before measuring anything, and read what it is.
    let bus_report = match &config.bus {
        LabBus::Embedded => None,
        LabBus::Broker(url) => Some(report::BusReport::read(url).await?),
    };
    // Namespaces of this run: unique per process and run, so two labs (or a lab and the
    // tests) on one broker never share a topic.
    let run_id = format!(
        "lab-{}-{}",
        std::process::id(),
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    );
    let styles = [Style::Calls, Style::Messaging, Style::Events];
    let callers = [
        blocking::Caller::Calls,
        blocking::Caller::Messaging,
        blocking::Caller::Events,
        blocking::Caller::Baseline,
    ];
    let steps = callers.len() + styles.len() * 4;
    let progress = if config.progress {
        ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed})") {
        progress.set_style(style);
    }

    // 1. Blocking.
    let stop = CancellationToken::new();
    let recipient =
        blocking::recipient(config.blocking_n, config.blocking_delay, stop.clone()).await?;
    let mut blocking_figures = Vec::new();
    for caller in callers {
        progress.set_message(format!("blocking: {}", caller.as_str()));
        blocking_figures.push(
            blocking::measure(
                &config.probe_exe,
                caller,
                config.blocking_n,
                config.blocking_delay,
                recipient,
                config
                    .bus
                    .trial(&run_id, &format!("probe-{}", caller.as_str()))
                    .as_deref(),
            )
            .await?,
        );
        progress.inc(1);
    }
    stop.cancel();

    let breaker = tabgrab::call::breaker::BreakerConfig {
        open_for: config.breaker_open_for,
        ..tabgrab::call::breaker::BreakerConfig::default()
    };
    let kit = Kit {
        ovens: 16,
        bake_time: Duration::from_millis(2),
        request_timeout: Duration::from_secs(60),
        order_timeout: Duration::from_secs(5),
        breaker,
    };
    let before = Duration::from_millis(if config.quick { 500 } else { 1000 });
    // Long enough for the calls' circuit breaker (open for `breaker_open_for` after its last
    // failed probe) to let orders through again, so their recovery is measured too.
    let after = Duration::from_millis(if config.quick { 500 } else { 3500 })
        .max(config.breaker_open_for + Duration::from_millis(500));
    let total = before + config.outage + after;
    let orders = (config.rate * total.as_secs_f64()).round() as u64;

    // 2. Availability.
    let mut availability_figures = Vec::new();
    for down in [Down::Kitchen, Down::Payment] {
        for style in styles {
            progress.set_message(format!(
                "availability: {} down, {}",
                down.as_str(),
                style.as_str()
            ));
            let plan = Plan {
                kit: kit.clone(),
                rate: config.rate,
                orders,
                seed: config.seed,
                outage: Some(Outage {
                    service: down,
                    after: before,
                    length: config.outage,
                }),
                drain: Duration::from_secs(30),
                bus: config
                    .bus
                    .trial(&run_id, &format!("{}-{}", down.as_str(), style.as_str())),
            };
            let dir = scratch(
                data.path(),
                &format!("availability-{}-{}", down.as_str(), style.as_str()),
            )?;
            let trace = trial::run(style, &plan, &dir).await?;
            availability_figures.push(availability::figures(style, down.as_str(), &trace));
            progress.inc(1);
        }
    }

    // 3. Response expected.
    let mut response_figures = Vec::new();
    for style in styles {
        progress.set_message(format!("response expected: {}", style.as_str()));
        let plan = Plan {
            kit: kit.clone(),
            rate: config.rate,
            orders: (config.rate * if config.quick { 0.5 } else { 2.0 }).round() as u64,
            seed: config.seed,
            outage: None,
            drain: Duration::from_secs(30),
            bus: config
                .bus
                .trial(&run_id, &format!("response-{}", style.as_str())),
        };
        let dir = scratch(data.path(), &format!("response-{}", style.as_str()))?;
        let trace = trial::run(style, &plan, &dir).await?;
        response_figures.push(response::figures(style, &trace));
        progress.inc(1);
    }

    // 4. Capacity: 2 ovens × 10 ms = 200 orders/s at most; offer twice that.
    let mut capacity_figures = Vec::new();
    let slow = Kit {
        ovens: 2,
        bake_time: Duration::from_millis(10),
        request_timeout: Duration::from_secs(60),
        order_timeout: Duration::from_secs(5),
        breaker,
    };
    let offered = 400.0;
    for style in styles {
        progress.set_message(format!("capacity: {}", style.as_str()));
        let plan = Plan {
            kit: slow.clone(),
            rate: offered,
            orders: (offered * if config.quick { 0.6 } else { 2.0 }).round() as u64,
            seed: config.seed,
            outage: None,
            drain: Duration::from_secs(30),
            bus: config
                .bus
                .trial(&run_id, &format!("capacity-{}", style.as_str())),
        };
        let dir = scratch(data.path(), &format!("capacity-{}", style.as_str()))?;
        let trace = trial::run(style, &plan, &dir).await?;
        capacity_figures.push(capacity::figures(
            style,
            slow.ovens as u64,
            slow.bake_time.as_secs_f64() * 1000.0,
            offered,
            &trace,
        ));
        progress.inc(1);
    }
    progress.finish_and_clear();

    let table = report::table(
        &blocking_figures,
        &availability_figures,
        &response_figures,
        &capacity_figures,
    );
    let report = LabReport {
        seed: config.seed,
        quick: config.quick,
        bus: config.bus.engine().to_owned(),
        bus_report,
        namespace: (config.bus != LabBus::Embedded).then(|| run_id.clone()),
        breaker_open_for_s: config.breaker_open_for.as_secs_f64(),
        machine: Machine::read(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        rustc: option_env!("PIZZERIA_RUSTC_VERSION")
            .unwrap_or("unknown (not recorded at build time)")
            .to_owned(),
        started_at,
        wall_time_s: started.elapsed().as_secs_f64(),
        blocking: blocking_figures,
        availability: availability_figures,
        response: response_figures,
        capacity: capacity_figures,
        table,
    };
    std::fs::create_dir_all(&config.out).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot make {}", config.out.display()),
        )
        .with_source(e)
    })?;
    json::write(&report, &config.out.join("lab.json"))?;
    html::write(&report, &config.out.join("lab.html"))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_takes_the_buses_tabgrab_connects_to() {
        for (bus, engine) in [
            ("nats://127.0.0.1:4222", "nats"),
            ("tls://127.0.0.1:4222?tls_ca=/ca.pem", "nats"),
            ("amqp://guest:guest@127.0.0.1:5672/%2f", "amqp"),
            ("amqps://guest:guest@127.0.0.1:5671/%2f", "amqp"),
        ] {
            assert_eq!(LabBus::parse(bus).unwrap().engine(), engine, "{bus}");
        }
        assert!(LabBus::parse("kafka://127.0.0.1:9092").is_err());
    }
}
