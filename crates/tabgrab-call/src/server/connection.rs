//! One connection's state and its deadline: what it is doing (no request yet, requests in
//! flight, idle between requests, the next head begun), and the task that closes it when the
//! deadline of what it is doing passes.
//!
//! Why one deadline recomputed from a few counters, and not a timer per event: the hot path
//! (a request starting and ending) only bumps atomics; the connection's task sleeps until the
//! one deadline that applies now, and on waking recomputes it from the counters, so a request
//! that started in between simply moves the deadline instead of racing a timer. The task is
//! woken early only when the deadline may have come closer: the last request in flight ended,
//! an HTTP/1 head began, or the connection was chosen to make room ([`super::limit`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::limit::{Entry, Room};

/// How long an HTTP/2 connection asked to close (its `GOAWAY` sent) may take to finish its
/// handshake before it is dropped; HTTP/1 closes at once.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The two timeouts of [`super::ServeConfig`] that the connection's task applies.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    /// For a request head; see [`super::ServeConfig::header_read_timeout`].
    pub(super) header_read: Option<Duration>,
    /// Between requests; see [`super::ServeConfig::idle_timeout`].
    pub(super) idle: Option<Duration>,
}

/// What one connection is doing, shared by its task, its service (requests starting and
/// ending), its socket (bytes read) and the registry of connections (eviction).
#[derive(Debug)]
pub(super) struct State {
    /// When the connection was accepted: the time base of the millisecond fields below.
    accepted: Instant,
    /// Request heads received so far: 0 means the connection has not sent a complete request.
    requests: AtomicU64,
    /// Requests whose answer has not been sent (HTTP/2: open streams).
    in_flight: AtomicU32,
    /// Whether the connection speaks HTTP/2 (known from its first request): its bytes between
    /// requests are pings and settings, not the start of a head.
    http2: AtomicBool,
    /// When the last request in flight ended, in ms after `accepted`.
    idle_since_ms: AtomicU64,
    /// When the first byte after the last answer was read (an HTTP/1 head begun), in ms after
    /// `accepted`, plus one; 0: none yet.
    head_started_ms: AtomicU64,
    /// Set by the registry to make room for a newcomer; the task then drops the connection.
    evicted: AtomicBool,
    /// Wakes the task when the deadline may have come closer.
    wake: Notify,
    /// The registry's signal that a connection finished or became idle, for an accept loop
    /// waiting for room.
    room: Arc<Room>,
}

/// What the deadline of a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// A head did not arrive in time: drop the connection.
    Head,
    /// Idle too long: ask it to close (HTTP/2 `GOAWAY`).
    Idle,
    /// Asked to close, and it did not: drop it.
    Close,
}

impl State {
    /// A connection accepted now.
    pub(super) fn new(room: Arc<Room>) -> State {
        State {
            accepted: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            http2: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
            room,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at_ms(&self, ms: u64) -> Instant {
        self.accepted + Duration::from_millis(ms)
    }

    /// A request head arrived (the service was called); `http2` from its version.
    pub(super) fn request_started(&self, http2: bool) {
        // In flight before counted as a request, so that a reader that sees the request also
        // sees it in flight (or its end, which wrote `idle_since_ms` first).
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if http2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::SeqCst);
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    /// A request's answer was sent (or abandoned).
    pub(super) fn request_ended(&self) {
        // Written before the count drops, so that a reader that sees no request in flight
        // never reads an older idle time.
        self.idle_since_ms.store(self.now_ms(), Ordering::SeqCst);
        self.head_started_ms.store(0, Ordering::SeqCst);
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.wake.notify_one();
            self.room.changed();
        }
    }

    /// Bytes were read from the socket: on an idle HTTP/1 connection, the next head began.
    pub(super) fn bytes_read(&self) {
        if self.head_started_ms.load(Ordering::Relaxed) != 0 || self.http2.load(Ordering::Relaxed) {
            return;
        }
        if self.requests.load(Ordering::SeqCst) == 0 || self.in_flight.load(Ordering::SeqCst) > 0 {
            return;
        }
        self.head_started_ms
            .store(self.now_ms().saturating_add(1), Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether the connection may be closed to make room: no request in flight.
    pub(super) fn can_give_way(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && !self.evicted.load(Ordering::SeqCst)
    }

    /// Whether the connection has never sent a complete request.
    pub(super) fn is_fresh(&self) -> bool {
        self.requests.load(Ordering::SeqCst) == 0
    }

    /// Since when the connection has done no work: its accept, or its last answer.
    pub(super) fn idle_since(&self) -> Instant {
        if self.is_fresh() {
            self.accepted
        } else {
            self.at_ms(self.idle_since_ms.load(Ordering::SeqCst))
        }
    }

    /// Whether the connection was chosen to make room.
    pub(super) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::SeqCst)
    }

    /// Marks the connection for closing to make room, and wakes its task.
    pub(super) fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The deadline that applies now, and what it ends; `None` while a request is in flight
    /// or when the timeout that would apply is off.
    fn deadline(&self, timeouts: Timeouts, closing: Option<Instant>) -> Option<(Instant, Expiry)> {
        // Requests before in flight: see `request_started`.
        let requests = self.requests.load(Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if let Some(since) = closing {
            return Some((since + CLOSE_GRACE, Expiry::Close));
        }
        if requests == 0 {
            return timeouts
                .header_read
                .map(|t| (self.accepted + t, Expiry::Head));
        }
        let head_started = self.head_started_ms.load(Ordering::SeqCst);
        if head_started != 0 && !self.http2.load(Ordering::SeqCst) {
            return timeouts
                .header_read
                .map(|t| (self.at_ms(head_started - 1) + t, Expiry::Head));
        }
        let idle_since = self.at_ms(self.idle_since_ms.load(Ordering::SeqCst));
        timeouts.idle.map(|t| (idle_since + t, Expiry::Idle))
    }
}

/// Drives one connection to its end: serves it, closes it when its deadline passes or when
/// it is chosen to make room, and closes it gracefully when the server shuts down (`stop`
/// changes). Dropping `entry` at the end takes it out of the registry.
pub(super) async fn drive<C>(
    connection: C,
    entry: Entry,
    timeouts: Timeouts,
    mut stop: watch::Receiver<()>,
) where
    C: GracefulConnection,
    C::Error: fmt::Display,
{
    let state = Arc::clone(entry.state());
    tokio::pin!(connection);
    let mut draining = false;
    let mut closing: Option<Instant> = None;
    loop {
        let deadline = state.deadline(timeouts, closing);
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = state.wake.notified() => {
                if state.is_evicted() {
                    tracing::debug!("connection closed to make room for a newcomer");
                    return;
                }
            }
            changed = stop.changed(), if !draining => {
                let _ = changed;
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = sleep => {
                // Recomputed: a request may have started since.
                match state.deadline(timeouts, closing) {
                    Some((at, Expiry::Head)) if at <= Instant::now() => {
                        tracing::debug!("connection closed: no complete request head in time");
                        return;
                    }
                    Some((at, Expiry::Idle)) if at <= Instant::now() => {
                        closing = Some(Instant::now());
                        connection.as_mut().graceful_shutdown();
                    }
                    Some((at, Expiry::Close)) if at <= Instant::now() => return,
                    _ => {}
                }
            }
        }
    }
}
