//! `pizzeria console`: the operator console ([`tabgrab::console`]) over the pizzeria's bus,
//! showing the pizzeria topic with its five consumer groups' lag and its dead letters.
//!
//! `pizzeria run --console <addr>` serves the same from a running restaurant (the embedded
//! log has one writer, so that is the way to watch a run on it).
//!
//! Redrive and purge need the operator token, read from the environment variable
//! [`TOKEN_VAR`] (not a flag: a flag shows in `ps` and in shell history); without it the
//! console is read-only. It listens on 127.0.0.1 unless told otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use std::sync::Arc;

use tabgrab::backend::Bus;
use tabgrab::messaging::{CorrelationStore, PostgresStore, SqliteStore};

use crate::error::{Error, ErrorKind};
use crate::messages::TOPIC;
use crate::services::{delivery, front_desk, inventory, kitchen, payment};
use crate::telemetry::Endpoint;

/// The environment variable that holds the operator token.
pub const TOKEN_VAR: &str = "PIZZERIA_CONSOLE_TOKEN";

/// Options of `pizzeria console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The bus: `nats://host:port` or `amqp://user:pass@host:port/vhost` (with `?namespace=`
    /// as given to `pizzeria run`); without it, the embedded log of --data-dir (stop
    /// `pizzeria run` first: the log has one writer).
    #[arg(long, env = "PIZZERIA_BUS", hide_env_values = true)]
    pub bus: Option<String>,
    /// Directory of the embedded event log, as given to `pizzeria run`.
    #[arg(long, default_value = "./pizzeria-data")]
    pub data_dir: PathBuf,
    /// Where the console listens (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// The messaging style's correlation store, to list the requests waiting for replies:
    /// `sqlite:PATH` or `postgres://…`; by default `<data-dir>/correlation.db` when it exists.
    #[arg(
        long,
        env = "PIZZERIA_CORRELATION_STORE",
        hide_env_values = true,
        value_name = "URL",
        alias = "store"
    )]
    pub correlation_store: Option<String>,
    /// The topics to show, each with the consumer groups whose lag, members and flow are
    /// shown: `TOPIC` or `TOPIC:GROUP,GROUP…` (repeatable). By default the pizzeria topic with
    /// its five groups.
    #[arg(long = "topic", value_name = "TOPIC[:GROUPS]")]
    pub topics: Vec<String>,
}

/// The topics of `--topic` (or the pizzeria's), each with its groups.
fn topics(args: &[String]) -> Result<Vec<(String, Vec<String>)>, Error> {
    if args.is_empty() {
        return Ok(vec![(
            TOPIC.to_owned(),
            [
                front_desk::GROUP,
                payment::GROUP,
                inventory::GROUP,
                kitchen::GROUP,
                delivery::GROUP,
            ]
            .iter()
            .map(|g| (*g).to_owned())
            .collect(),
        )]);
    }
    args.iter()
        .map(|arg| {
            let (topic, groups) = arg.split_once(':').unwrap_or((arg, ""));
            tabgrab::Topic::new(topic)
                .map_err(|e| Error::new(ErrorKind::Usage, format!("--topic {topic:?}: {e}")))?;
            let groups = groups
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect();
            Ok((topic.to_owned(), groups))
        })
        .collect()
}

/// The correlation store named by `url` (`sqlite:PATH`, `postgres://…`), or the one of the
/// messaging style in `data_dir` when there is one.
async fn correlation_store(
    url: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<Option<Arc<dyn CorrelationStore>>, Error> {
    let open_error = |e: tabgrab::Error| {
        Error::new(ErrorKind::Bus, "cannot open the correlation store").with_source(e)
    };
    let store: Arc<dyn CorrelationStore> = match url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Arc::new(PostgresStore::connect(url).await.map_err(open_error)?)
        }
        Some(url) => {
            let path = url.strip_prefix("sqlite:").ok_or_else(|| {
                Error::new(
                    ErrorKind::Usage,
                    "--correlation-store takes sqlite:PATH or postgres://…",
                )
            })?;
            Arc::new(SqliteStore::open(path).await.map_err(open_error)?)
        }
        None => {
            let path = data_dir.join("correlation.db");
            if !path.is_file() {
                return Ok(None);
            }
            Arc::new(SqliteStore::open(path).await.map_err(open_error)?)
        }
    };
    Ok(Some(store))
}

/// Runs `pizzeria console` until SIGINT or SIGTERM.
pub async fn command(args: ConsoleArgs) -> Result<(), Error> {
    let opened = crate::namespace::open(args.bus.as_deref(), &args.data_dir).await?;
    let requests = correlation_store(args.correlation_store.as_deref(), &args.data_dir).await?;
    let topics = topics(&args.topics)?;
    let endpoint = start_with(&opened.bus, args.listen, requests, &topics).await?;
    crate::service::signal().await;
    endpoint.stop().await;
    opened.close().await
}

/// Serves the console over `bus` on `listen` (the pizzeria topic and its five groups, the
/// requests in flight in `requests` if given, the token from [`TOKEN_VAR`]); says where on
/// stdout, and warns when it is reachable from other machines.
pub async fn start(
    bus: &Bus,
    listen: SocketAddr,
    requests: Option<Arc<dyn CorrelationStore>>,
) -> Result<Endpoint, Error> {
    start_with(bus, listen, requests, &topics(&[])?).await
}

/// [`start`] showing `topics`, each with its groups.
async fn start_with(
    bus: &Bus,
    listen: SocketAddr,
    requests: Option<Arc<dyn CorrelationStore>>,
    topics: &[(String, Vec<String>)],
) -> Result<Endpoint, Error> {
    let token = std::env::var(TOKEN_VAR).unwrap_or_default();
    let writable = !token.is_empty();
    let mut console = tabgrab::console::Console::new(bus).operator_token(token);
    for (topic, groups) in topics {
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        console = console.topic(topic, &groups);
    }
    if let Some(store) = requests {
        console = console.requests(store);
    }
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot listen on {listen} for the console"),
        )
        .with_source(e)
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Io, "no local address").with_source(e))?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: the console listens on {addr}, beyond this machine, without TLS: anyone \
             who reaches it can read every dead letter; bind 127.0.0.1 or put a TLS proxy in front"
        );
    }
    println!("console on http://{addr}/");
    if !writable {
        println!("read-only: set {TOKEN_VAR} to allow redrive and purge");
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let router = console.stop_streams_on(stop.clone()).router();
    Ok(Endpoint::serve_until(listener, addr, router, stop))
}
