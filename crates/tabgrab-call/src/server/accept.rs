//! Accepting connections: the source of sockets, and what the loop does when an accept fails
//! (the pause before the next attempt, and the rate-limited log line).
//!
//! Why pause: an accept that failed for lack of a resource (`EMFILE`, `ENFILE`, `ENOBUFS`,
//! `ENOMEM`) leaves the connection in the backlog, so the listener stays readable and an
//! immediate retry fails the same way: a loop that retries at once spins a core and, if it
//! logs each failure, writes millions of lines. The pause doubles from 5 ms to 1 s while
//! failures last (a shortage that lasts is retried once a second; a brief one costs
//! milliseconds) and starts again at 5 ms after a success. An error that concerns only the
//! connection being accepted (reset or aborted by the peer before the accept) is skipped
//! without a pause: the next connection is unaffected.
//!
//! Why rate-limit the log: the operator needs to know that accepts fail, how often, and why,
//! not each failure. One line per [`LOG_INTERVAL`] at most, carrying the number of failures
//! not logged since the previous line.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The first pause after a failed accept.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line about accept errors per interval.
pub(super) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A source of connections: a TCP listener, or a test's stand-in.
pub(super) trait Accept: Send {
    /// A connection's socket.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<TcpStream> {
        let (stream, _peer) = TcpListener::accept(self).await?;
        // Answers are small and latency matters more than segments saved.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// The accept loop's memory of failures: the next pause and the log's rate limit.
#[derive(Debug, Default)]
pub(super) struct AcceptErrors {
    /// The pause after the next resource failure; `None`: the first one.
    pause: Option<Duration>,
    /// No log line before this instant.
    quiet_until: Option<Instant>,
    /// Failures since the last line that it did not report.
    unlogged: u64,
    /// Lines written, for tests.
    lines: u64,
}

impl AcceptErrors {
    /// An accept succeeded: the next failure pauses briefly again.
    pub(super) fn succeeded(&mut self) {
        self.pause = None;
        if self.unlogged > 0 && self.may_log() {
            tracing::warn!(
                not_logged = self.unlogged,
                "accepting connections again after failed accepts"
            );
            self.logged();
        }
    }

    /// An accept failed with `error`: logs it (rate-limited) and says how long to pause
    /// before the next accept (`None`: retry at once).
    pub(super) fn failed(&mut self, error: &io::Error) -> Option<Duration> {
        let pause = if concerns_one_connection(error) {
            None
        } else {
            let pause = self.pause.unwrap_or(FIRST_PAUSE);
            self.pause = Some(pause.saturating_mul(2).min(MAX_PAUSE));
            Some(pause)
        };
        if self.may_log() {
            tracing::warn!(
                %error,
                not_logged = self.unlogged,
                pause_ms = pause.map_or(0, |p| p.as_millis()),
                "accept failed; the server keeps serving its open connections and retries \
                 (one such line per {} s at most; not_logged counts the failures since the last)",
                LOG_INTERVAL.as_secs()
            );
            self.logged();
        } else {
            self.unlogged += 1;
        }
        pause
    }

    /// Lines written so far.
    #[cfg(test)]
    pub(super) fn lines(&self) -> u64 {
        self.lines
    }

    fn may_log(&self) -> bool {
        self.quiet_until.is_none_or(|until| Instant::now() >= until)
    }

    fn logged(&mut self) {
        self.unlogged = 0;
        self.lines += 1;
        self.quiet_until = Some(Instant::now() + LOG_INTERVAL);
    }
}

/// Whether an accept error concerns only the connection being accepted, not the listener
/// or the process.
fn concerns_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_to_a_second_and_start_again_after_a_success() {
        let mut errors = AcceptErrors::default();
        let pauses: Vec<u128> = (0..10)
            .map(|_| errors.failed(&emfile()).map_or(0, |p| p.as_millis()))
            .collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        errors.succeeded();
        assert_eq!(errors.failed(&emfile()), Some(FIRST_PAUSE));
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(errors.failed(&reset), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_failure_writes_one_line_per_interval() {
        let mut errors = AcceptErrors::default();
        // 100,000 failures, one per millisecond of (paused) time: 100 s.
        for _ in 0..100_000 {
            errors.failed(&emfile());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(errors.lines(), 10);
        // The count of what was not logged is reported, on the next line.
        assert!(errors.unlogged > 9_000, "{}", errors.unlogged);
        tokio::time::advance(LOG_INTERVAL).await;
        errors.succeeded();
        assert_eq!((errors.lines(), errors.unlogged), (11, 0));
    }
}
