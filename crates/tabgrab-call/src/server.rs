//! Serving a router: HTTP/1.1, HTTP/2 (prior knowledge, which is how gRPC arrives) and gRPC on
//! one listener, with graceful shutdown.
//!
//! Why not `axum::serve`: it cannot raise HTTP/2's limit of concurrent streams per connection
//! (hyper's default is 200). A gRPC client multiplexes all its calls over one connection, so
//! with 200 a client holding 100,000 calls in flight to a slow server would queue all but 200
//! of them in its own memory. This loop is `axum::serve` with that knob
//! ([`ServeConfig::max_concurrent_streams`]), and the connection window that h2 sizes its flood
//! defence from ([`ServeConfig::connection_window`]).
//!
//! The server is a function of its listener and its shutdown future: tests bind
//! `127.0.0.1:0`, and a shutdown stops accepting, lets the connections finish their calls
//! in flight, and returns.

use std::future::Future;
use std::io;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Knobs of [`serve_with`].
#[derive(Clone, Copy, Debug)]
pub struct ServeConfig {
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_concurrent_streams: u32,
    /// The HTTP/2 connection-level flow-control window, in bytes. Besides flow control, h2
    /// sizes its defence against floods of small DATA frames from it (half the window): a
    /// client that opens thousands of calls at once sends thousands of small frames before
    /// the handlers read them, and with the 64 KiB default h2 answers `ENHANCE_YOUR_CALM`
    /// and closes the connection. A window is a permission, not an allocation.
    pub connection_window: u32,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            max_concurrent_streams: 10_000,
            connection_window: 8 * 1024 * 1024,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then drains connections.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    serve_with(listener, router, shutdown, ServeConfig::default()).await
}

/// [`serve`] with explicit knobs.
pub async fn serve_with(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
    config: ServeConfig,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(config.max_concurrent_streams)
        .initial_connection_window_size(config.connection_window);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a connection reset during accept: the
                    // listener itself is fine, keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::task::yield_now().await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
