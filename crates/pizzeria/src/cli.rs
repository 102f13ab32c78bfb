//! The `pizzeria` command line: `run` (the restaurant under simulated load) and
//! `dead-letters` (what the services gave up on). The binary only parses and calls
//! [`execute`].

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;

use crate::error::{Error, ErrorKind};
use crate::messages::TOPIC;
use crate::run::{self, RunConfig, Style};

/// The pizzeria: tabgrab's reference system, a restaurant whose order flow shows what each
/// kind of asynchronous communication does to a system.
#[derive(Debug, Parser)]
#[command(name = "pizzeria", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every service in this process and send it simulated customers over HTTP; print a
    /// summary (orders delivered and failed, events, dead letters, throughput, latency).
    Run(RunArgs),
    /// List, show, redrive or purge the dead letters of the pizzeria topic: events a service
    /// gave up on, with why (of the embedded log in --data-dir, or of a broker with --bus).
    DeadLetters(crate::dead_letters::DeadLettersArgs),
    /// Serve the operator console: the pizzeria topic's consumer groups with their lag, and
    /// its dead letters to inspect, redrive and purge (with the token in
    /// PIZZERIA_CONSOLE_TOKEN; read-only without), on 127.0.0.1:8089 by default.
    Console(crate::console::ConsoleArgs),
    /// Show what became of every order, read back from the front desk's durable view (no
    /// service needs to run): counts by fate, and each order that has not ended with its
    /// history; `--check` fails if one has not.
    Orders(OrdersArgs),
    /// Measure the embedded backend beside the disk's own fdatasync and a bare group commit
    /// at the same rate: durable publish throughput and publish-to-handler latency at a fixed
    /// rate (see BENCHMARKS.md).
    Bench(BenchArgs),
    /// Run one service alone, as its own process. Call style (no --bus, `--listen`):
    /// payment, inventory, the kitchen or delivery answer their commands over HTTP
    /// (POST /commands/{type}) and gRPC on the same port; the front desk takes POST /orders
    /// and calls the four others (give their URLs); prints the address it listens on, then
    /// serves until SIGINT or SIGTERM. Events style (`--bus nats://.. | amqp://..`): payment,
    /// inventory, kitchen or delivery joins its consumer group on the shared bus (start one
    /// several times to share its work), prints `ready`, and runs until SIGINT or SIGTERM.
    /// Messaging style (`--style messaging --bus ..`): the same, as the responder of the
    /// service's request topic.
    Service(ServiceArgs),
    /// The lab: runs the restaurant in each style under the same load and fault schedule,
    /// measures whether the caller's thread is blocked, whether the recipient must be up,
    /// whether a response is expected and what each does to the kitchen's capacity; prints
    /// the comparison table and writes lab.json and lab.html.
    Lab(LabArgs),
    /// One blocking measurement in this process (the lab runs it as a child; not for people).
    #[command(hide = true)]
    LabProbe(LabProbeArgs),
}

/// Options of `pizzeria lab`.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// The reduced lab: 1,000 requests in flight, a 1 s outage, seconds instead of minutes.
    #[arg(long)]
    pub quick: bool,
    /// Where to write lab.json and lab.html.
    #[arg(long, default_value = "./lab-out")]
    pub out: PathBuf,
    /// The bus to measure: `embedded` (in-process, the default), `nats://host:port` or
    /// `amqp://user:pass@host:port/vhost`. On a broker every trial uses topics of its own
    /// (a namespace) and deletes them at its end.
    #[arg(
        long,
        env = "PIZZERIA_BUS",
        hide_env_values = true,
        default_value = "embedded"
    )]
    pub bus: String,
    /// Seed of the customers' random choices [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Requests in flight in the blocking scenario [default: 10000, quick 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=15_000))]
    pub n: Option<u64>,
}

/// Options of `pizzeria lab-probe`.
#[derive(Debug, Args)]
pub struct LabProbeArgs {
    /// The caller to measure.
    #[arg(value_enum)]
    pub caller: crate::lab::blocking::Caller,
    /// Requests in flight.
    #[arg(long)]
    pub n: u64,
    /// The recipient's time per request, in milliseconds.
    #[arg(long)]
    pub delay_ms: u64,
    /// The recipient's address (calls, baseline).
    #[arg(long)]
    pub recipient: std::net::SocketAddr,
    /// Messaging, events: the broker (with a `?namespace=`) instead of an embedded bus.
    #[arg(long, env = "PIZZERIA_BUS", hide_env_values = true)]
    pub bus: Option<String>,
}

/// Options of `pizzeria service`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// Which service to run.
    #[arg(value_enum)]
    pub name: crate::service::ServiceName,
    /// How it talks: `events` or `messaging` on --bus, `calls` over HTTP and gRPC on
    /// --listen [default: events with --bus, calls without].
    #[arg(long, value_enum)]
    pub style: Option<Style>,
    /// Events and messaging styles: the shared bus, e.g. `nats://127.0.0.1:4222`
    /// (`?ack_wait_ms=2000` makes a crashed member's messages go to another one sooner) or
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`. Without it, the call style.
    #[arg(long, env = "PIZZERIA_BUS", hide_env_values = true, conflicts_with_all = ["payment", "inventory", "kitchen", "delivery"])]
    pub bus: Option<String>,
    /// Events style, kitchen: PostgreSQL URL of the rail shared by several kitchens
    /// (required when more than one kitchen runs); the kitchen's store, as --store is.
    #[arg(
        long,
        env = "PIZZERIA_KITCHEN_DB",
        hide_env_values = true,
        requires = "bus"
    )]
    pub kitchen_db: Option<String>,
    /// Where the service keeps its state (payment's ledger, inventory's reservations and
    /// shelf, deliveries; in the events style also the kitchen's rail, inboxes, outbox), in
    /// every style: `sqlite:PATH`, `postgres://user@host/db` (several members of a group, or
    /// a restart on another machine, share it) or `memory` (not durable); by default
    /// `sqlite:./pizzeria-data/<service>.sqlite`.
    #[arg(long, env = "PIZZERIA_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// The address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Kitchen: ovens, how many orders bake at the same time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub ovens: u64,
    /// Kitchen: milliseconds an order spends in the oven.
    #[arg(long, default_value_t = 2)]
    pub bake_ms: u64,
    /// Inventory: truffles in stock (the tartufo's rare ingredient).
    #[arg(long, default_value_t = 40)]
    pub truffles: u64,
    /// Inventory, events style: the only pizzas whose recipes it knows, comma-separated
    /// (default: the whole menu), as an older release would; an order for another pizza
    /// becomes a dead letter naming it, to redrive once an inventory that knows it runs.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "PIZZA,...",
        requires = "bus"
    )]
    pub recipes: Option<Vec<String>>,
    /// Front desk: payment's base URL, e.g. http://127.0.0.1:7001.
    #[arg(long)]
    pub payment: Option<String>,
    /// Front desk: inventory's base URL.
    #[arg(long)]
    pub inventory: Option<String>,
    /// Front desk: the kitchen's base URL.
    #[arg(long)]
    pub kitchen: Option<String>,
    /// Front desk: delivery's base URL.
    #[arg(long)]
    pub delivery: Option<String>,
    /// Call style: serve over TLS with this certificate chain (PEM), with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Call style: the private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Call style: require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Front desk: trust this CA (PEM) for https:// payment, inventory and kitchen URLs.
    #[arg(long, value_name = "FILE")]
    pub peer_ca: Option<PathBuf>,
    /// Front desk: show this client certificate (PEM) to them (mutual TLS), with
    /// --peer-key.
    #[arg(long, value_name = "FILE", requires_all = ["peer_key", "peer_ca"])]
    pub peer_cert: Option<PathBuf>,
    /// Front desk: the private key (PEM) of --peer-cert.
    #[arg(long, value_name = "FILE", requires = "peer_cert")]
    pub peer_key: Option<PathBuf>,
    /// Front desk: milliseconds one order may take, all its calls included (the deadline
    /// that travels to the services).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub order_timeout_ms: u64,
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz: bus connected,
    /// consumer group joined) on this address, e.g. 127.0.0.1:9464 (port 0: any free port,
    /// printed at start).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Export traces and metrics over OTLP/gRPC to this endpoint, e.g. http://127.0.0.1:4317 (a
    /// collector, Jaeger, Tempo): one trace per order, through every service.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp: Option<String>,
    /// With --otlp: the share of new traces to keep, 0 to 1 (default: OTEL_TRACES_SAMPLER if
    /// set, else 0.01); a service keeps the decision an order's messages carry.
    #[arg(long, value_name = "SHARE", requires = "otlp", value_parser = parse_share)]
    pub trace_sample: Option<f64>,
}

/// Options of `pizzeria bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scratch directory for the benchmark's logs (a fresh sub-directory is made and removed).
    /// Put it on the disk you want to measure.
    #[arg(long, default_value = "./pizzeria-data/bench")]
    pub dir: PathBuf,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Concurrent publishers in the throughput phases (group commit needs many in flight).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub publishers: u64,
    /// Payload bytes per event (the encoded envelope adds the CloudEvents attributes).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(20..=1_000_000))]
    pub payload_bytes: u64,
    /// Events per second in the latency phase.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate: u64,
    /// Print the figures as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Options of `pizzeria run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// How the services talk to each other: `events` (the front desk publishes OrderAccepted
    /// and the other services react), `messaging` (the front desk sends request messages
    /// and follows the replies and timeouts) or `calls` (the front desk calls payment,
    /// inventory, the kitchen and delivery and answers when they have).
    #[arg(long, value_enum, default_value = "events")]
    pub style: Style,
    /// Customers to send, one order each.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub orders: u64,
    /// Customers ordering at the same time (open HTTP requests).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
    /// Directory of the embedded event log and of the services' SQLite stores; reused across
    /// runs (each service resumes where it stopped). Only one run may use it at a time.
    #[arg(long, default_value = "./pizzeria-data")]
    pub data_dir: PathBuf,
    /// Ovens in the kitchen: how many orders bake at the same time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub ovens: u64,
    /// Milliseconds an order spends in the oven.
    #[arg(long, default_value_t = 2)]
    pub bake_ms: u64,
    /// Seed of the customers' random choices: the same seed places the same orders
    /// [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of customers whose card is declined, from 0 to 1.
    #[arg(long, default_value_t = 0.02, value_parser = parse_share)]
    pub decline_rate: f64,
    /// Truffles in stock (the tartufo's rare ingredient); when they run out, tartufo orders
    /// are cancelled and compensated [default: one per 25 orders].
    #[arg(long)]
    pub truffles: Option<u64>,
    /// Seconds to wait for every order to be delivered or cancelled before giving up.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub deadline_secs: u64,
    /// Messaging style: milliseconds to wait for each reply before the request times out.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// Print the summary as JSON on stdout (the text summary then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Events or messaging style on a shared bus instead of the embedded log, e.g.
    /// `nats://127.0.0.1:4222` or `amqp://guest:guest@127.0.0.1:5672/%2f`. `?namespace=NAME`
    /// prefixes the run's topics with NAME (runs then share a broker without mixing) and
    /// deletes them at the end.
    #[arg(long, env = "PIZZERIA_BUS", hide_env_values = true)]
    pub bus: Option<String>,
    /// Run the services in this process (`in-process`), as child processes (`spawn`:
    /// payment, inventory, delivery and --kitchens kitchens, each `pizzeria service <name>`
    /// with a store of its own), or not at all (`external`: started with `pizzeria service`).
    /// The events and messaging styles need --bus for `spawn` and `external` (the embedded
    /// log belongs to one process); the calls style spawns without one. Spawned services
    /// stop with the run, even when it is killed.
    #[arg(long, value_enum, default_value = "in-process")]
    pub services: crate::run::Placement,
    /// With --services spawn: kitchen processes sharing the kitchen's consumer group.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub kitchens: u64,
    /// PostgreSQL URL of the kitchens' shared rail (needed with more than one kitchen).
    #[arg(long, env = "PIZZERIA_KITCHEN_DB", hide_env_values = true)]
    pub kitchen_db: Option<String>,
    /// Where the services keep their state (payment's ledger, inventory's reservations and
    /// shelf, deliveries; in the events style also the kitchen's rail, the front desk's view
    /// of the orders, inboxes, outbox), in every style: `sqlite:PATH`,
    /// `postgres://user@host/db` or `memory` (not durable); by default
    /// `sqlite:<data-dir>/effects.sqlite`, and with --services spawn one file per service,
    /// `sqlite:<data-dir>/<service>.sqlite`.
    #[arg(long, env = "PIZZERIA_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz) of this process on
    /// this address while the run lasts, e.g. 127.0.0.1:9464 (port 0: any free port, printed
    /// at start).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Export traces and metrics over OTLP/gRPC to this endpoint, e.g. http://127.0.0.1:4317 (a
    /// collector, Jaeger, Tempo): one trace per order, from POST /orders to its last handler.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp: Option<String>,
    /// With --otlp: the share of new traces to keep, 0 to 1 (default: OTEL_TRACES_SAMPLER if
    /// set, else 0.01); a service keeps the decision an order's messages carry.
    #[arg(long, value_name = "SHARE", requires = "otlp", value_parser = parse_share)]
    pub trace_sample: Option<f64>,
    /// With --metrics-listen: after the summary, keep serving the metrics until SIGINT or
    /// SIGTERM (so that a scraper reads the final figures).
    #[arg(long, requires = "metrics_listen")]
    pub hold: bool,
    /// Events style: serve the operator console (lag, dead letters, redrive and purge with
    /// PIZZERIA_CONSOLE_TOKEN) over the run's bus on this address while the run lasts, e.g.
    /// 127.0.0.1:8089 (port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR")]
    pub console: Option<std::net::SocketAddr>,
}

/// Options of `pizzeria orders`.
#[derive(Debug, Args)]
pub struct OrdersArgs {
    /// Directory of the run, as given to `pizzeria run`: its store is
    /// `<data-dir>/effects.sqlite` (services in one process) or `<data-dir>/front-desk.sqlite`
    /// (services in other processes).
    #[arg(long, default_value = "./pizzeria-data")]
    pub data_dir: PathBuf,
    /// The front desk's store instead: `sqlite:PATH` or `postgres://…`.
    #[arg(long, env = "PIZZERIA_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Show this order and its history only.
    #[arg(long)]
    pub id: Option<uuid::Uuid>,
    /// The bus the front desk reads (`nats://…`, `amqp://…`, with `?namespace=` if the run
    /// had one), to tell how far its view is behind; with --data-dir, its embedded log.
    #[arg(long, env = "PIZZERIA_BUS", hide_env_values = true)]
    pub bus: Option<String>,
    /// List every order, not only those that have not ended.
    #[arg(long)]
    pub all: bool,
    /// Exit with an error if an order has not ended (delivered, or cancelled with its money
    /// and ingredients given back), or if the view is behind the bus (it cannot tell yet).
    #[arg(long)]
    pub check: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Parses a share: a number from 0 to 1.
fn parse_share(s: &str) -> Result<f64, String> {
    let share: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("{share} is not between 0 and 1"))
    }
}

impl Cli {
    /// Where to export traces, as which service and with which sampling, if the command
    /// exports them.
    pub fn otlp(&self) -> Option<(&str, String, Option<f64>)> {
        match &self.command {
            Command::Run(args) => args
                .otlp
                .as_deref()
                .map(|url| (url, "pizzeria".to_owned(), args.trace_sample)),
            Command::Service(args) => args.otlp.as_deref().map(|url| {
                (
                    url,
                    format!("pizzeria-{}", args.name.as_str()),
                    args.trace_sample,
                )
            }),
            _ => None,
        }
    }
}

/// Runs a parsed command line. Must be called inside a tokio runtime.
pub async fn execute(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Run(args) => run_command(args).await,
        Command::DeadLetters(args) => crate::dead_letters::command(&args).await,
        Command::Console(args) => crate::console::command(args).await,
        Command::Orders(args) => orders_command(&args).await,
        Command::Bench(args) => bench_command(args).await,
        Command::Service(args) => service_command(args).await,
        Command::Lab(args) => lab_command(args).await,
        Command::LabProbe(args) => lab_probe_command(args).await,
    }
}

async fn lab_command(args: LabArgs) -> Result<(), Error> {
    let bus = crate::lab::LabBus::parse(&args.bus)?;
    let mut config = crate::lab::LabConfig::new(args.quick, args.out);
    config.bus = bus;
    config.progress = std::io::stderr().is_terminal();
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if let Some(n) = args.n {
        config.blocking_n = n;
    }
    let report = crate::lab::run(&config).await?;
    print!("{}", report.render());
    println!(
        "\nwrote {} and {}",
        config.out.join("lab.json").display(),
        config.out.join("lab.html").display()
    );
    std::io::stdout()
        .flush()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot write the table").with_source(e))
}

async fn lab_probe_command(args: LabProbeArgs) -> Result<(), Error> {
    let output = crate::lab::blocking::probe(
        args.caller,
        args.n,
        Duration::from_millis(args.delay_ms),
        args.recipient,
        args.bus.as_deref(),
    )
    .await?;
    let json = serde_json::to_string(&output)
        .map_err(|e| Error::new(ErrorKind::Io, "cannot encode the figures").with_source(e))?;
    println!("{json}");
    Ok(())
}

async fn service_command(args: ServiceArgs) -> Result<(), Error> {
    let health = tabgrab::telemetry::Health::new();
    // Before the service starts: it takes its metric handles when it does.
    let _endpoint = match args.metrics_listen {
        Some(listen) => Some(crate::telemetry::start(listen, health.clone()).await?),
        None => None,
    };
    let style = args.style.unwrap_or(if args.bus.is_some() {
        Style::Events
    } else {
        Style::Calls
    });
    if style == Style::Calls && args.bus.is_some() {
        return Err(Error::new(
            ErrorKind::Usage,
            "the calls style uses no bus: drop --bus, or give --style events or messaging",
        ));
    }
    if style != Style::Calls && args.bus.is_none() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "the {} style's services share a bus: give --bus nats://.. or amqp://..",
                style.as_str()
            ),
        ));
    }
    if let Some(bus) = args.bus {
        if args.tls_cert.is_some() || args.peer_ca.is_some() {
            return Err(Error::new(
                ErrorKind::Usage,
                "--tls-cert and --peer-ca are for the call style (no --bus); on a bus, TLS is \
                 in its URL (tls://…?tls_ca=…, amqps://…)",
            ));
        }
        let config = crate::service::ServiceConfig {
            name: args.name,
            style,
            bus,
            ovens: usize::try_from(args.ovens).unwrap_or(usize::MAX),
            bake_time: Duration::from_millis(args.bake_ms),
            kitchen_db: args.kitchen_db,
            truffles: Some(args.truffles),
            recipes: args.recipes,
            store: args.store,
            health,
        };
        return crate::service::serve(config, crate::service::signal()).await;
    }
    let name = args.name.call_style().ok_or_else(|| {
        Error::new(
            ErrorKind::Usage,
            format!("the {} service has no call-style form", args.name.as_str()),
        )
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot listen on {}", args.listen)).with_source(e)
        })?;
    let addr = listener.local_addr().map_err(|e| {
        Error::new(ErrorKind::Io, "cannot read the listening address").with_source(e)
    })?;
    // The front desk keeps no back office; it calls the others.
    let office = match args.name {
        crate::service::ServiceName::FrontDesk => None,
        name => Some(
            crate::service::office(
                name,
                args.store,
                Some(args.truffles),
                usize::try_from(args.ovens).unwrap_or(usize::MAX),
                Duration::from_millis(args.bake_ms),
            )
            .await?,
        ),
    };
    let peers = match (args.payment, args.inventory, args.kitchen, args.delivery) {
        (Some(payment), Some(inventory), Some(kitchen), Some(delivery)) => {
            Some(crate::calls::Peers {
                payment,
                inventory,
                kitchen,
                delivery,
                order_timeout: Duration::from_millis(args.order_timeout_ms),
                pool: 256,
                tls: peer_tls(
                    args.peer_ca.as_deref(),
                    args.peer_cert.as_deref(),
                    args.peer_key.as_deref(),
                )?,
                token: std::env::var(crate::calls::TOKEN_VAR)
                    .ok()
                    .filter(|t| !t.trim().is_empty()),
            })
        }
        _ => None,
    };
    let tls = crate::calls::TlsFiles {
        cert: args.tls_cert,
        key: args.tls_key,
        client_ca: args.tls_client_ca,
    }
    .server()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "pizzeria service {} listening on {scheme}://{addr}",
        args.name.as_str()
    );
    std::io::stdout()
        .flush()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot write to stdout").with_source(e))?;
    crate::calls::serve_service_with(name, listener, office, peers, crate::service::signal(), tls)
        .await
}

async fn bench_command(args: BenchArgs) -> Result<(), Error> {
    let config = crate::lab::bench::BenchConfig {
        dir: args.dir,
        duration: Duration::from_secs(args.seconds),
        publishers: usize::try_from(args.publishers).unwrap_or(usize::MAX),
        payload_bytes: usize::try_from(args.payload_bytes).unwrap_or(usize::MAX),
        rate: args.rate,
    };
    let report = crate::lab::bench::run(&config)
        .await
        .map_err(|e| Error::new(ErrorKind::Bus, format!("benchmark failed: {e}")))?;
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| {
            Error::new(ErrorKind::Io, "cannot encode the figures as JSON").with_source(e)
        })?;
        crate::lab::bench::print(&report, &mut std::io::stderr())
            .map_err(|e| Error::new(ErrorKind::Io, "cannot write the table").with_source(e))?;
        println!("{json}");
    } else {
        crate::lab::bench::print(&report, &mut std::io::stdout())
            .map_err(|e| Error::new(ErrorKind::Io, "cannot write the table").with_source(e))?;
    }
    Ok(())
}

async fn run_command(args: RunArgs) -> Result<(), Error> {
    if args.console.is_some() && args.style != Style::Events {
        return Err(Error::new(
            ErrorKind::Usage,
            "--console shows consumer groups and dead letters, which only the events style has \
             (use --style events)",
        ));
    }
    let health = tabgrab::telemetry::Health::new();
    // Before the services start: they take their metric handles when they do.
    let endpoint = match args.metrics_listen {
        Some(listen) => Some(crate::telemetry::start(listen, health.clone()).await?),
        None => None,
    };
    let config = RunConfig {
        health,
        style: args.style,
        orders: args.orders,
        concurrency: usize::try_from(args.concurrency).unwrap_or(usize::MAX),
        data_dir: args.data_dir,
        ovens: usize::try_from(args.ovens).unwrap_or(usize::MAX),
        bake_time: Duration::from_millis(args.bake_ms),
        seed: args.seed.unwrap_or(1),
        decline_rate: args.decline_rate,
        truffles: args.truffles,
        deadline: Duration::from_secs(args.deadline_secs),
        progress: std::io::stderr().is_terminal(),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        bus: args.bus,
        placement: args.services,
        kitchens: usize::try_from(args.kitchens).unwrap_or(1),
        kitchen_db: args.kitchen_db,
        store: args.store,
        console: args.console,
    };
    let summary = run::run(config).await?;
    if args.json {
        eprint!("{}", summary.render());
        let json = serde_json::to_string_pretty(&summary).map_err(|e| {
            Error::new(ErrorKind::Io, "cannot encode the summary as JSON").with_source(e)
        })?;
        println!("{json}");
    } else {
        print!("{}", summary.render());
    }
    std::io::stdout()
        .flush()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot write the summary").with_source(e))?;
    if let Some(endpoint) = endpoint {
        if args.hold {
            eprintln!(
                "serving the run's metrics on http://{}/metrics until SIGINT or SIGTERM",
                endpoint.addr
            );
            crate::service::signal().await;
        }
        endpoint.stop().await;
    }
    Ok(())
}

async fn orders_command(args: &OrdersArgs) -> Result<(), Error> {
    let url = match &args.store {
        Some(url) => url.clone(),
        None => {
            let found = ["effects", "front-desk"]
                .iter()
                .map(|name| args.data_dir.join(format!("{name}.sqlite")))
                .find(|path| path.is_file());
            match found {
                Some(path) => format!("sqlite:{}", path.display()),
                None => {
                    return Err(Error::new(
                        ErrorKind::Usage,
                        format!(
                            "{} holds no front desk store (effects.sqlite or front-desk.sqlite); \
                             pass the --data-dir of a `pizzeria run`, or --store",
                            args.data_dir.display()
                        ),
                    ));
                }
            }
        }
    };
    let store = crate::services::Store::open(&url).await.map_err(|e| {
        Error::new(
            ErrorKind::Bus,
            format!(
                "cannot open the store {}",
                tabgrab::SecretUrl::new(url.as_str())
            ),
        )
        .with_source(e)
    })?;
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| Error::new(ErrorKind::Io, "cannot write to stdout").with_source(e);
    if let Some(id) = args.id {
        let Some(view) = crate::orders::view(&store, id).await? else {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("no order {id} in {}", store.url()),
            ));
        };
        if args.json {
            let json = serde_json::to_string_pretty(&view)
                .map_err(|e| Error::new(ErrorKind::Io, "cannot encode JSON").with_source(e))?;
            writeln!(out, "{json}").map_err(io)?;
        } else {
            write!(out, "{}", crate::orders::render_one(&view)).map_err(io)?;
        }
        return Ok(());
    }
    let views = crate::orders::views(&store).await?;
    let report = crate::orders::Report::of(&views);
    let behind = view_behind(args).await;
    if args.json {
        let body = serde_json::json!({
            "view_behind_events": behind.as_ref().ok(),
            "orders": report.orders,
            "by_fate": report.by_fate,
            "open": report.open,
            "all": if args.all { Some(&views) } else { None },
        });
        let json = serde_json::to_string_pretty(&body)
            .map_err(|e| Error::new(ErrorKind::Io, "cannot encode JSON").with_source(e))?;
        writeln!(out, "{json}").map_err(io)?;
    } else {
        write!(out, "{}", report.render()).map_err(io)?;
        match &behind {
            Ok(0) => {}
            Ok(n) => writeln!(
                out,
                "the front desk's view is {n} events behind the bus: orders and outcomes in them \
                 show once a front desk runs again (`pizzeria run` on the same data)"
            )
            .map_err(io)?,
            Err(why) => {
                writeln!(out, "how far the view is behind the bus is unknown: {why}").map_err(io)?
            }
        }
        if args.all {
            for view in views.iter().filter(|v| crate::orders::Fate::of(v).ended()) {
                write!(out, "{}", crate::orders::render_one(view)).map_err(io)?;
            }
        }
    }
    out.flush().map_err(io)?;
    if args.check {
        report.check()?;
        match behind {
            Ok(0) => {}
            Ok(n) => {
                return Err(Error::new(
                    ErrorKind::Deadline,
                    format!(
                        "the front desk's view is {n} events behind the bus: it cannot tell yet \
                         whether every order ended"
                    ),
                ));
            }
            Err(why) => {
                return Err(Error::new(
                    ErrorKind::Usage,
                    format!("cannot check that every order ended: {why}"),
                ));
            }
        }
    }
    Ok(())
}

/// How many events of the pizzeria topic the front desk's group has not read: from --bus,
/// or from the embedded log in --data-dir (`Err` says why it cannot be told).
async fn view_behind(args: &OrdersArgs) -> Result<u64, String> {
    let group = crate::services::front_desk::GROUP;
    let lag = match &args.bus {
        Some(url) => {
            let connection = crate::namespace::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            connection.bus().lag(TOPIC, group).await
        }
        None if args.store.is_some() => {
            return Err("pass --bus to compare the view with the bus".into());
        }
        None => {
            if !args.data_dir.join("topics").is_dir() {
                return Err(format!("{} holds no event log", args.data_dir.display()));
            }
            let bus = EmbeddedBus::open(&args.data_dir).map_err(|e| {
                format!(
                    "cannot open the event log in {} (is a run using it?): {e}",
                    args.data_dir.display()
                )
            })?;
            let lag = Bus::from(&bus).lag(TOPIC, group).await;
            let _ = bus.close().await;
            lag
        }
    };
    match lag {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Ok(0), // no front desk ever read the topic: nothing it has not read
        Err(e) => Err(e.to_string()),
    }
}

/// The front desk's TLS for its peers: their CA, and a client certificate for mutual TLS.
fn peer_tls(
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<tabgrab::call::ClientTls>, Error> {
    let tls = match (ca, cert, key) {
        (None, _, _) => return Ok(None),
        (Some(ca), Some(cert), Some(key)) => {
            tabgrab::call::ClientTls::mutual_from_files(ca, cert, key)
        }
        (Some(ca), _, _) => tabgrab::call::ClientTls::trusting_file(ca),
    };
    tls.map(Some)
        .map_err(|e| Error::new(ErrorKind::Usage, "the peers' TLS files").with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        assert_eq!(parse_share("0.5"), Ok(0.5));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("x").is_err());
    }
}
