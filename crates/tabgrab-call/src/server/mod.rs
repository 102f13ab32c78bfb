//! Serving a router: HTTP/1.1, HTTP/2 (prior knowledge, which is how gRPC arrives) and gRPC on
//! one listener, with graceful shutdown, and with bounds on what a socket may hold, so that
//! sockets that send nothing, or send a request a byte at a time, cannot take the server down.
//!
//! Why not `axum::serve`: it cannot raise HTTP/2's limit of concurrent streams per connection
//! (hyper's default is 200). A gRPC client multiplexes all its calls over one connection, so
//! with 200 a client holding 100,000 calls in flight to a slow server would queue all but 200
//! of them in its own memory. This loop has that knob ([`ServeConfig::max_concurrent_streams`]),
//! the connection window that h2 sizes its flood defence from
//! ([`ServeConfig::connection_window`]), and the bounds below, which `axum::serve` lacks too
//! (it also logs every accept error and sleeps a fixed second after each).
//!
//! # How long a connection may hold a socket without working
//!
//! Each connection has one deadline, kept by its own task (module `connection`), that depends on
//! what the connection is doing:
//!
//! | the connection | deadline | then |
//! |---|---|---|
//! | accepted, its first request head not complete (a silent socket, a slowloris, the HTTP/1-or-2 sniff, the HTTP/2 handshake) | [`header_read_timeout`](ServeConfig::header_read_timeout) after the accept | closed |
//! | a request in flight | none here: the caller's deadline bounds the handler | |
//! | HTTP/1 keep-alive, waiting for the next request, nothing of it sent yet | [`idle_timeout`](ServeConfig::idle_timeout) after the last answer | closed |
//! | HTTP/1, the next request's head begun (its first byte read) | `header_read_timeout` after that byte | closed |
//! | HTTP/2 with no open stream (its pings do not count) | `idle_timeout` after the last stream ended | `GOAWAY`, then closed |
//!
//! Why the server keeps these deadlines and not hyper: in hyper 1.12 (the version this
//! workspace locks) HTTP/1's `header_read_timeout` starts when the connection begins to wait
//! for a head, after an answer too, so it is one timer for idle and head and cannot give a
//! keep-alive connection a minute while a slowloris gets seconds; hyper-util's auto builder
//! reads the first bytes to tell HTTP/1 from HTTP/2 before that timer exists, with no timeout
//! at all; and HTTP/2 has neither timer in hyper. One deadline per connection covers both
//! protocols and the sniff. hyper's HTTP/2 keep-alive pings are used for what they do
//! ([`http2_keep_alive_interval`](ServeConfig::http2_keep_alive_interval)): a peer that stops
//! answering them is dropped even with calls open, so a vanished client does not hold its
//! streams forever.
//!
//! # The connection limit, and who gives way
//!
//! The server holds at most [`max_connections`](ServeConfig::max_connections) connections
//! (by default half the process's file-descriptor limit, the other half left for the log,
//! stores and outgoing calls). When it is full and one more connection arrives, the server
//! does not refuse the newcomer: it closes, oldest first, a connection that has not sent a
//! complete request, else the connection idle the longest (module `limit`). Why this
//! policy: refusing newcomers (or not accepting, which leaves them in the kernel's backlog)
//! hands the server to whoever opened sockets first, and idle sockets cost an attacker nothing,
//! so the server would answer nobody until the timeouts free it; closing the sockets that do
//! no work costs a legitimate client at most a reconnect (an idle pooled connection is
//! reopened; a fresh connection is the newest, so it is the last to go), and a request in
//! flight is never cut. Only when every connection has a request in flight does the server
//! stop accepting until one finishes: then it is truly busy, and the backlog is the right
//! place to wait.
//!
//! # Accept errors
//!
//! An accept that fails for lack of a resource (out of file descriptors, `EMFILE`/`ENFILE`,
//! or of buffers or memory) fails again at once if retried at once: the pending connection
//! stays in the backlog. So the loop sleeps before the next accept, 5 ms doubling to 1 s,
//! and back to 5 ms after a success (module `accept`); errors that concern one connection only
//! (reset or aborted before it was accepted) are skipped at once. Logging is rate-limited: one
//! line per 10 s at most, counting the errors it did not print, so a lasting shortage is
//! visible without writing a line per attempt.
//!
//! # TLS
//!
//! [`serve_tls`] serves the same over TLS (and mutual TLS, [`ServerTls`]): each accepted
//! connection does its handshake in its own task, within the
//! [`header_read_timeout`](ServeConfig::header_read_timeout) that bounds everything before a
//! first request, and counts toward the connection limit from the accept on; a socket that
//! never finishes its handshake is closed like one that never sends its head. ALPN chooses
//! HTTP/2 or HTTP/1.1. A client that fails the handshake (no certificate where one is
//! required, one from another CA, an expired one) is dropped before any handler runs, with a
//! lingering close: the server's alert says why, then the server closes its side and reads
//! what the client already sent (up to 64 KiB, for at most a second) until the client closes.
//! Closing at once with the client's first request unread would make the kernel answer with
//! a reset, which may overtake the alert and make the client discard it: it would see
//! "connection reset" and, taking it for a lost connection, try again. With
//! mutual TLS, the client's verified certificate ([`PeerCertificate`]) goes into the
//! extensions of each of the connection's requests, where an
//! [`Authenticator`](crate::auth::Authenticator) finds it
//! ([`ClientCertificates`](crate::auth::ClientCertificates) names the principal from it).
//!
//! # Shutdown
//!
//! The server is a function of its listener and its shutdown future: tests bind
//! `127.0.0.1:0`, and a shutdown stops accepting, lets the connections finish their calls
//! in flight (idle ones close at once, HTTP/2 ones get a `GOAWAY`), and returns. The deadlines
//! above keep running while it drains, so a silent socket cannot hold the shutdown.

mod accept;
mod connection;
mod limit;
mod tracked;

use std::future::Future;
use std::io;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::accept::{Accept, AcceptErrors};
use self::connection::Timeouts;
use self::limit::Connections;
use self::tracked::{Tracked, Watched};
use crate::tls::{PeerCertificate, ServerTls};

/// Knobs of [`serve_with`]. The defaults are safe for a server facing clients it does not
/// control; tests set short timeouts.
///
/// ```no_run
/// # async fn demo(router: axum::Router) -> std::io::Result<()> {
/// use std::time::Duration;
/// use tabgrab_call::ServeConfig;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let config = ServeConfig {
///     header_read_timeout: Some(Duration::from_secs(5)),
///     max_connections: 2_000,
///     ..ServeConfig::default()
/// };
/// tabgrab_call::serve_with(listener, router, std::future::pending(), config).await
/// # }
/// ```
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
    /// How long a request head may take to arrive: from the accept for a connection's first
    /// request (whatever the protocol), from its first byte for a later HTTP/1 request. A
    /// socket that sends nothing, or sends its head a byte at a time (slowloris), is closed
    /// after it. `None`: no limit. Default 10 s: a head is a few hundred bytes, which any
    /// client that means to be served sends in milliseconds.
    pub header_read_timeout: Option<Duration>,
    /// How long a connection may stay open with no request in flight after its last answer
    /// (HTTP/1 keep-alive; HTTP/2 with no open stream, pings included). `None`: no limit.
    /// Default 120 s: longer than the idle timeout of the usual clients' pools (90 s in
    /// hyper-util's and Go's), so that a client retires a pooled connection before the server
    /// closes it under it, and reuse saves the connects that keep-alive is for. Under pressure
    /// idle connections give way to newcomers anyway (see the module docs).
    pub idle_timeout: Option<Duration>,
    /// Most connections open at once; when full, a newcomer takes the place of a connection
    /// that does no work (see the module docs). Default: half the process's soft limit of
    /// open files (`RLIMIT_NOFILE`), at most 16,384, so that connections alone can never
    /// exhaust the descriptors the process needs for its log, stores and outgoing calls.
    pub max_connections: usize,
    /// How often an HTTP/2 connection is pinged; a peer that does not answer within 20 s is
    /// dropped, with its streams. Without it a client that vanished (no FIN, no RST) would
    /// hold its calls' streams until the TCP stack gave up, hours later. `None`: no pings.
    /// Default 30 s.
    pub http2_keep_alive_interval: Option<Duration>,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            max_concurrent_streams: 10_000,
            connection_window: 8 * 1024 * 1024,
            header_read_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(120)),
            max_connections: limit::default_max_connections(),
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
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
    if let Some(warning) = listener.local_addr().ok().and_then(beyond_this_machine) {
        tracing::warn!("{warning}");
    }
    serve_on(listener, router, shutdown, config, None).await
}

/// [`serve_with`] over TLS: every connection does its handshake with `tls` (mutual TLS if it
/// requires client certificates) before HTTP/1.1 or HTTP/2 (by ALPN) starts.
pub async fn serve_tls(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
    config: ServeConfig,
    tls: ServerTls,
) -> io::Result<()> {
    if let Some(addr) = listener.local_addr().ok().filter(|a| !a.ip().is_loopback()) {
        tracing::info!(%addr, ?tls, "the call server listens beyond this machine over TLS");
    }
    serve_on(listener, router, shutdown, config, Some(tls)).await
}

/// The warning for a plain-text server that listens on `addr`, if other machines can reach
/// it: anyone who can reach it reads the calls, and calls every handler unless the handlers
/// authenticate callers.
fn beyond_this_machine(addr: std::net::SocketAddr) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "the call server listens on {addr}, beyond this machine, without TLS or \
             authentication: anyone who reaches it reads the calls, and can call every handler \
             unless the handlers authenticate callers; bind 127.0.0.1, or serve with serve_tls \
             and Handlers::authenticate (docs/calls.md)"
        )
    })
}

/// The accept loop, over any source of connections (tests inject failing ones).
async fn serve_on<L: Accept>(
    mut listener: L,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
    config: ServeConfig,
    tls: Option<ServerTls>,
) -> io::Result<()> {
    let acceptor = tls.as_ref().map(ServerTls::acceptor);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The connection's own deadline does this job; see the module docs.
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .initial_connection_window_size(config.connection_window)
        .keep_alive_interval(config.http2_keep_alive_interval);
    let timeouts = Timeouts {
        header_read: config.header_read_timeout,
        idle: config.idle_timeout,
    };
    let connections = Connections::new(config.max_connections);
    let mut errors = AcceptErrors::default();
    // Every connection's task holds a receiver: `send` asks them to finish, and `closed`
    // resolves when the last one has.
    let (stop, stopped) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        // Full, with every connection busy: wait for one to finish (see the module docs).
        tokio::select! {
            () = connections.wait_for_room() => {}
            () = &mut shutdown => break,
        }
        let io = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(io) => {
                    errors.succeeded();
                    io
                }
                Err(e) => {
                    if let Some(pause) = errors.failed(&e) {
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let entry = tokio::select! {
            entry = connections.admit() => entry,
            () = &mut shutdown => break,
        };
        let state = std::sync::Arc::clone(entry.state());
        let service = Tracked::new(router.clone(), std::sync::Arc::clone(&state));
        let Some(acceptor) = &acceptor else {
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(Watched::new(io, state)), service)
                .into_owned();
            tokio::spawn(connection::drive(
                connection,
                entry,
                timeouts,
                stopped.clone(),
            ));
            continue;
        };
        // The handshake in the connection's own task, bounded like a first head.
        let (acceptor, builder, mut stopped) = (acceptor.clone(), builder.clone(), stopped.clone());
        tokio::spawn(async move {
            let handshake = acceptor.accept(io).into_fallible();
            let limit = timeouts.header_read.unwrap_or(Duration::MAX);
            let tls = tokio::select! {
                done = tokio::time::timeout(limit, handshake) => match done {
                    Ok(Ok(tls)) => tls,
                    Ok(Err((e, io))) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        linger(io).await;
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake not done within the header read timeout");
                        return;
                    }
                },
                _ = stopped.changed() => return,
            };
            // rustls has verified the chain (the server requires client certificates only
            // with a client CA): its leaf names the client to the authenticator.
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(PeerCertificate::from_chain);
            let service = service.with_peer(peer);
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(Watched::new(tls, state)), service)
                .into_owned();
            connection::drive(connection, entry, timeouts, stopped).await;
        });
    }
    drop(listener);
    drop(stopped);
    let _ = stop.send(());
    stop.closed().await;
    Ok(())
}

/// How long a refused TLS client is read from before its socket is closed.
const LINGER: Duration = Duration::from_secs(1);

/// How much of what a refused TLS client sent is read and dropped.
const LINGER_BYTES: usize = 64 * 1024;

/// Closes a connection whose handshake failed without a reset (see "TLS" in the module
/// docs): the alert is written already; shut the write side, then drain the client's bytes
/// until it closes, [`LINGER`] passes or [`LINGER_BYTES`] came.
async fn linger<Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: Io) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let drain = async {
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match io.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests;
