//! The `pizzeria` binary: parses the command line and runs it; see `pizzeria --help`.

use std::process::ExitCode;

use clap::Parser as _;
use pizzeria::cli::{Cli, execute};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The lab's blocking probe measures what one thread does: it gets a current-thread
    // runtime, so the threads it counts are its own.
    let mut builder = if matches!(cli.command, pizzeria::cli::Command::LabProbe(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pizzeria: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logs to stderr (RUST_LOG, default warn), coloured only on a terminal (not into a file
    // or a pipe); with --otlp, spans at info and above to the OTLP endpoint as well.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")));
    let otel = match cli.otlp() {
        None => None,
        Some((endpoint, service, sample)) => {
            let _runtime = runtime.enter();
            let mut otel = tabgrab::telemetry::Otel::builder(endpoint).service(&service);
            if let Some(share) = sample {
                otel = otel.sampling(share);
            }
            match otel.install() {
                Ok(otel) => {
                    eprintln!(
                        "traces and metrics to {endpoint} (OTLP/gRPC) as service {service}, {}{}",
                        otel.sampling(),
                        if sample.is_none() {
                            " (--trace-sample 1 keeps every one)"
                        } else {
                            ""
                        }
                    );
                    Some(otel)
                }
                Err(e) => {
                    eprintln!("pizzeria: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let traces = otel.as_ref().map(|otel| {
        otel.layer()
            .with_filter(tabgrab::telemetry::Otel::filter(&["pizzeria"]))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    let result = runtime.block_on(execute(cli));
    // The last batch of spans, exported while the runtime still runs.
    if let Some(otel) = otel
        && let Err(e) = otel.shutdown()
    {
        eprintln!("pizzeria: {e}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pizzeria: {e}");
            ExitCode::FAILURE
        }
    }
}
