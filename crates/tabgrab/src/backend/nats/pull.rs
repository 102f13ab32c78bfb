//! A JetStream pull consumer's messages, pulled by tabgrab itself so that a member that stops
//! can hand over everything on its way to it.
//!
//! # Why not async-nats's pull `Stream`
//! A pull consumer sends its messages to the member's inbox in answer to pull requests. When a
//! member stops, some messages are already on their way to it: sent by the server, not yet
//! read. async-nats's `Stream` can only be dropped, which unsubscribes at once: the client
//! discards what arrives after that, and the server redelivers it only after the ack wait
//! (30 s by default), although the member gave everything else back at once.
//!
//! Unsubscribing first and reading what still arrives (NATS's drain) is not enough either:
//! the server checks a pull request's interest when it picks the request, and a message it
//! picked just before the `UNSUB` is sent after it, to an inbox nobody reads (seen here: one
//! message in a few stops under load). So a stopping member first sends no more pull
//! requests and reads on until every request it sent has ended, fulfilled or expired (the
//! server says so with a `408`/`409` and the count it still owed): requests expire after
//! [`EXPIRES`], so this takes at most that long, and no time when the requests were
//! fulfilled. Only then does it drain the subscription. Everything it read meanwhile is
//! yielded; the subscription gives it all back at once when the stream ends (giving it back
//! earlier would have the server redeliver it to the same member's open requests).
//!
//! # The protocol
//! Pull requests go to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with the inbox as
//! reply subject: `{"batch": n, "expires": ns}`. Up to `batch` messages are outstanding at a
//! time, asked for again when fewer than half remain. A request that expires or ends is
//! announced by a `408` / `409` status with `Nats-Pending-Messages` (what it still owed); a
//! `409 Consumer Deleted` ends the stream with an error (the subscription joins again). A
//! request can also vanish (the server restarted): when nothing has arrived for `expires`
//! plus a margin, or the connection came back, the count of outstanding messages is reset
//! and a new request is sent.

use std::time::Duration;

use async_nats::{Client, StatusCode, Subscriber};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Error, ErrorKind};

/// How long one pull request waits for messages before the server ends it: also the longest
/// a stopping member waits for its requests to end, and how often an idle member asks again
/// (four small requests a second, answered by the server's `408`: cheap, and a stop takes
/// at most this long).
const EXPIRES: Duration = Duration::from_millis(250);
/// Silence beyond `EXPIRES` after which a pull request is taken for lost.
const LOST_AFTER: Duration = Duration::from_secs(2);

/// What is pulled: the consumer and how many messages may be on their way at once.
pub(super) struct Pull {
    /// The core NATS client.
    pub(super) client: Client,
    /// The JetStream API prefix (`$JS.API`).
    pub(super) api_prefix: String,
    /// The stream's name.
    pub(super) stream: String,
    /// The durable consumer's name.
    pub(super) consumer: String,
    /// At most this many messages outstanding (asked for, not yet received).
    pub(super) batch: usize,
    /// Stops pulling and drains (see the module docs).
    pub(super) stop: CancellationToken,
}

/// The messages of `pull`, until it is stopped and drained (or the consumer is deleted).
pub(super) async fn messages(
    pull: Pull,
) -> Result<BoxStream<'static, Result<async_nats::Message, Error>>, Error> {
    let inbox = pull.client.new_inbox();
    let subscriber = pull.client.subscribe(inbox.clone()).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("nats: cannot subscribe to a pull inbox: {e}"),
        )
    })?;
    let puller = Puller {
        subject: format!(
            "{}.CONSUMER.MSG.NEXT.{}.{}",
            pull.api_prefix, pull.stream, pull.consumer
        ),
        inbox,
        subscriber,
        outstanding: 0,
        draining: false,
        unsubscribed: false,
        last_request: Instant::now(),
        last_heard: Instant::now(),
        connected: true,
        pull,
    };
    Ok(futures::stream::unfold(puller, |mut puller| async move {
        let item = puller.next().await?;
        Some((item, puller))
    })
    .boxed())
}

/// The state of one member's pulling.
struct Puller {
    pull: Pull,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    subject: String,
    /// Where the server sends the messages.
    inbox: String,
    subscriber: Subscriber,
    /// Messages asked for and not received yet.
    outstanding: usize,
    /// Stopped: no more pull requests; reading on until they have all ended.
    draining: bool,
    /// The subscription is draining (after the requests ended, or their expiry passed).
    unsubscribed: bool,
    /// When the last pull request was sent: every request has expired `EXPIRES` after it.
    last_request: Instant,
    /// When the inbox last heard from the server.
    last_heard: Instant,
    /// Whether the client was connected at the last look.
    connected: bool,
}

impl Puller {
    /// The next message; `None` once drained (or the client closed).
    async fn next(&mut self) -> Option<Result<async_nats::Message, Error>> {
        loop {
            if let Err(e) = self.ask().await {
                return Some(Err(e));
            }
            let ended = self.last_request + EXPIRES + LOST_AFTER;
            if self.draining
                && !self.unsubscribed
                && (self.outstanding == 0 || Instant::now() >= ended)
            {
                // Every request has ended: nothing more can be sent to the inbox.
                self.unsubscribed = true;
                if self.subscriber.drain().await.is_err() {
                    return None;
                }
            }
            let lost = tokio::time::sleep_until(self.last_heard + EXPIRES + LOST_AFTER);
            let tick = tokio::time::sleep(Duration::from_secs(1));
            let requests_end = tokio::time::sleep_until(ended);
            tokio::select! {
                () = self.pull.stop.cancelled(), if !self.draining => {
                    self.draining = true;
                }
                () = requests_end, if self.draining && !self.unsubscribed => {}
                message = self.subscriber.next() => {
                    let message = message?;
                    self.last_heard = Instant::now();
                    if let Some(item) = self.take(message) {
                        return Some(item);
                    }
                }
                () = lost, if !self.draining => {
                    // The request vanished (a server restart, a lost reply): ask anew.
                    self.outstanding = 0;
                    self.last_heard = Instant::now();
                }
                () = tick, if !self.draining => {
                    let connected = matches!(
                        self.pull.client.connection_state(),
                        async_nats::connection::State::Connected
                    );
                    if connected && !self.connected {
                        // Reconnected: the server may have forgotten our requests.
                        self.outstanding = 0;
                    }
                    self.connected = connected;
                }
            }
        }
    }

    /// Sends a pull request if fewer than half the batch are outstanding.
    async fn ask(&mut self) -> Result<(), Error> {
        let batch = self.pull.batch.max(1);
        if self.draining || self.outstanding > batch / 2 {
            return Ok(());
        }
        let want = batch - self.outstanding;
        let body = format!("{{\"batch\":{want},\"expires\":{}}}", EXPIRES.as_nanos());
        self.pull
            .client
            .publish_with_reply(self.subject.clone(), self.inbox.clone(), Bytes::from(body))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("nats: cannot send a pull request to {}: {e}", self.subject),
                )
            })?;
        self.outstanding += want;
        self.last_request = Instant::now();
        Ok(())
    }

    /// What a message from the inbox means: a delivery to yield, an error to yield, or
    /// bookkeeping only (`None`).
    fn take(&mut self, message: async_nats::Message) -> Option<Result<async_nats::Message, Error>> {
        match message.status.unwrap_or(StatusCode::OK) {
            StatusCode::OK => {
                self.outstanding = self.outstanding.saturating_sub(1);
                Some(Ok(message))
            }
            StatusCode::IDLE_HEARTBEAT => None,
            StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED | StatusCode::NOT_FOUND => {
                let description = message.description.as_deref().unwrap_or("");
                if description.eq_ignore_ascii_case("consumer deleted") {
                    return Some(Err(Error::new(
                        ErrorKind::Closed,
                        format!("nats: the consumer {} was deleted", self.pull.consumer),
                    )));
                }
                // What the ended request still owed; all of it when the server does not say.
                let owed = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Pending-Messages"))
                    .and_then(|v| v.as_str().parse::<usize>().ok())
                    .unwrap_or(self.outstanding);
                self.outstanding = self.outstanding.saturating_sub(owed);
                None
            }
            StatusCode::NO_RESPONDERS => {
                self.outstanding = 0;
                Some(Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "nats: no JetStream answers pull requests for {}",
                        self.subject
                    ),
                )))
            }
            status => {
                self.outstanding = 0;
                Some(Err(Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "nats: unexpected status {status} on the pull inbox of {}: {}",
                        self.pull.consumer,
                        message.description.as_deref().unwrap_or("")
                    ),
                )))
            }
        }
    }
}

/// A delivery's place in its stream, read from its ack subject
/// (`$JS.ACK.[<domain>.<account>.]<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AckInfo {
    /// How many times the server delivered it.
    pub(super) delivered: u64,
    /// Its sequence in the stream.
    pub(super) stream_sequence: u64,
    /// Messages of the consumer still waiting beyond it.
    pub(super) pending: u64,
}

/// Reads an ack subject; `None` if it is not one.
pub(super) fn ack_info(reply: &str) -> Option<AckInfo> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    let tokens: Vec<&str> = rest.split('.').collect();
    // v1: stream, consumer, then five numbers; v2 prefixes domain and account hash and may
    // end with a random token.
    let numbers = match tokens.len() {
        7 => &tokens[2..7],
        n if n >= 9 => &tokens[4..9],
        _ => return None,
    };
    let number = |i: usize| numbers[i].parse::<u64>().ok();
    Some(AckInfo {
        delivered: number(0)?,
        stream_sequence: number(1)?,
        pending: number(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_of_both_versions_are_read() {
        assert_eq!(
            ack_info("$JS.ACK.TABGRAB_t.g.3.42.17.1700000000000000000.5"),
            Some(AckInfo {
                delivered: 3,
                stream_sequence: 42,
                pending: 5
            })
        );
        assert_eq!(
            ack_info("$JS.ACK._.ACCHASH.TABGRAB_t.g.1.7.7.1700000000000000000.0.token"),
            Some(AckInfo {
                delivered: 1,
                stream_sequence: 7,
                pending: 0
            })
        );
        assert_eq!(ack_info("_INBOX.x"), None);
        assert_eq!(ack_info("$JS.ACK.a.b.c"), None);
    }
}
