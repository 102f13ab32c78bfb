//! `--metrics-listen`: a process's `/metrics` (Prometheus), `/healthz` and `/readyz`.
//!
//! The endpoint is tabgrab's ([`tabgrab::telemetry::router`]); this module binds it, says
//! where it is, and stops it. The Prometheus recorder is installed when the endpoint starts,
//! so start it before the services (they take their metric handles when they start).

use std::net::SocketAddr;

use tabgrab::telemetry::{Health, Prometheus};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind};

/// A running endpoint; stopped by [`Endpoint::stop`] or when dropped.
#[derive(Debug)]
pub struct Endpoint {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Installs the Prometheus recorder, binds `listen` and serves the endpoint with `health`'s
/// readiness checks; prints its address on stderr.
pub async fn start(listen: SocketAddr, health: Health) -> Result<Endpoint, Error> {
    let metrics = Prometheus::install().map_err(|e| {
        Error::new(ErrorKind::Io, "cannot install the metrics recorder").with_source(e)
    })?;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot listen on {listen} for metrics"),
        )
        .with_source(e)
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot read the metrics address").with_source(e))?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: the metrics and health endpoint listens on {addr}, beyond this machine, \
             without TLS or authentication"
        );
    }
    let router = tabgrab::telemetry::router(Some(metrics), health);
    eprintln!("metrics on http://{addr}/metrics, health on http://{addr}/healthz and /readyz");
    Ok(Endpoint::serve(listener, addr, router))
}

impl Endpoint {
    /// Serves `router` on `listener` (bound to `addr`) until stopped.
    pub(crate) fn serve(
        listener: tokio::net::TcpListener,
        addr: SocketAddr,
        router: axum::Router,
    ) -> Endpoint {
        Endpoint::serve_until(listener, addr, router, CancellationToken::new())
    }

    /// Serves `router` on `listener` (bound to `addr`) until stopped, which cancels `stop`
    /// (for streams that must end before a graceful shutdown can).
    pub(crate) fn serve_until(
        listener: tokio::net::TcpListener,
        addr: SocketAddr,
        router: axum::Router,
        stop: CancellationToken,
    ) -> Endpoint {
        let task = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        Endpoint {
            addr,
            stop,
            task: Some(task),
        }
    }

    /// Stops serving and waits for open requests to finish.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && let Ok(Err(e)) = task.await
        {
            eprintln!("the endpoint on {} failed: {e}", self.addr);
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
