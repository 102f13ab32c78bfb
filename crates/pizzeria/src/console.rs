//! `pizzeria console`: the operator console ([`tabgrab::console`]) over the pizzeria's bus,
//! showing the pizzeria topic with its five consumer groups' lag and its dead letters.
//!
//! Redrive and purge need the operator token, read from the environment variable
//! [`TOKEN_VAR`] (not a flag: a flag shows in `ps` and in shell history); without it the
//! console is read-only. It listens on 127.0.0.1 unless told otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, ErrorKind};
use crate::messages::TOPIC;
use crate::services::{delivery, front_desk, inventory, kitchen, payment};

/// The environment variable that holds the operator token.
pub const TOKEN_VAR: &str = "PIZZERIA_CONSOLE_TOKEN";

/// Options of `pizzeria console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The bus: `nats://host:port` or `amqp://user:pass@host:port/vhost` (with `?namespace=`
    /// as given to `pizzeria run`); without it, the embedded log of --data-dir (stop
    /// `pizzeria run` first: the log has one writer).
    #[arg(long)]
    pub bus: Option<String>,
    /// Directory of the embedded event log, as given to `pizzeria run`.
    #[arg(long, default_value = "./pizzeria-data")]
    pub data_dir: PathBuf,
    /// Where the console listens (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
}

/// Runs `pizzeria console` until SIGINT or SIGTERM.
pub async fn command(args: ConsoleArgs) -> Result<(), Error> {
    let opened = crate::namespace::open(args.bus.as_deref(), &args.data_dir).await?;
    let bus = opened.bus.clone();
    let groups = [
        front_desk::GROUP,
        payment::GROUP,
        inventory::GROUP,
        kitchen::GROUP,
        delivery::GROUP,
    ];
    let mut console = tabgrab::console::Console::new(&bus).topic(TOPIC, &groups);
    let token = std::env::var(TOKEN_VAR).unwrap_or_default();
    let writable = !token.is_empty();
    console = console.operator_token(token);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot listen on {}", args.listen)).with_source(e)
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
    axum::serve(listener, console.router())
        .with_graceful_shutdown(crate::service::signal())
        .await
        .map_err(|e| Error::new(ErrorKind::Io, "the console failed").with_source(e))?;
    opened.close().await
}
