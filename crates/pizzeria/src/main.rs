//! The `pizzeria` binary: parses the command line and runs it; see `pizzeria --help`.

use std::process::ExitCode;

use clap::Parser as _;
use pizzeria::cli::{Cli, execute};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pizzeria: {e}");
            ExitCode::FAILURE
        }
    }
}
