//! The NATS server side: a queue-group subscription per service in front of
//! [`Handlers`]; see the [module docs](super).
//!
//! Like the HTTP server, it is a function of its listener (here a subscription, made by
//! [`listen`] so that a test knows when requests can arrive) and of a shutdown future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Message, Subject, Subscriber};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use tabgrab_core::{Envelope, Error, ErrorKind};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{ERROR_HEADER_NAME, SUBJECT_PREFIX, service_subject, service_token, type_tokens};
use crate::call::{
    IDEMPOTENCY_ATTRIBUTE, IDEMPOTENCY_KEY, RequestKind, TIMEOUT_ATTRIBUTE, TIMEOUT_HEADER,
};
use crate::error::ErrorBody;
use crate::handler::{Handlers, ServeError};

/// A service's subscription to its call subjects, in its queue group; serve it with
/// [`serve`].
#[derive(Debug)]
pub struct NatsListener {
    /// The connection answers go out on.
    client: async_nats::Client,
    /// The queue-group subscription to `tabgrab.call.<service>.>`.
    subscriber: Subscriber,
    /// `tabgrab.call.<service>.`: what every request's subject starts with.
    prefix: String,
    /// The service, for logs.
    service: String,
}

impl NatsListener {
    /// The service served.
    pub fn service(&self) -> &str {
        &self.service
    }
}

/// Knobs of [`serve_with`].
#[derive(Clone, Copy, Debug)]
pub struct NatsServeConfig {
    /// Handlers running at once; a request beyond it is answered at once with `Rejected`
    /// (load shedding: the caller's retry or breaker decides, and the server's memory stays
    /// bounded; NATS itself would drop messages for a subscriber that falls behind).
    pub max_in_flight: usize,
    /// How long shutdown waits for running handlers to answer.
    pub drain_timeout: Duration,
}

impl Default for NatsServeConfig {
    fn default() -> NatsServeConfig {
        NatsServeConfig {
            max_in_flight: 10_000,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Subscribes to the calls of `service` on `client`, in the service's queue group, and waits
/// until the server has the subscription (so a request sent after this returns finds it).
pub async fn listen(client: &async_nats::Client, service: &str) -> Result<NatsListener, Error> {
    let token = service_token(service);
    let subscriber = client
        .queue_subscribe(service_subject(service), token.clone())
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot subscribe to the calls of service {service} on NATS"),
            )
            .with_source(e)
        })?;
    confirm_subscriptions(client).await.map_err(|why| {
        Error::new(
            ErrorKind::Unavailable,
            format!("the NATS server did not confirm the subscription of service {service}: {why}"),
        )
    })?;
    Ok(NatsListener {
        client: client.clone(),
        subscriber,
        prefix: format!("{SUBJECT_PREFIX}.{token}."),
        service: service.to_owned(),
    })
}

/// Waits until the server has processed this connection's subscriptions, so that a request
/// from any other client finds them. async-nats' `flush` only empties the client's buffer; a
/// message to ourselves makes the round trip (the server handles one connection's commands
/// in order: once our own message comes back, every earlier `SUB` is in place).
async fn confirm_subscriptions(client: &async_nats::Client) -> Result<(), String> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("the connection closed".into()),
        Err(_) => Err("no round trip within 10 s".into()),
    }
}

/// Serves `handlers` on `listener` until `shutdown` completes; then stops taking requests,
/// answers those already received, and returns.
pub async fn serve(
    listener: NatsListener,
    handlers: Handlers,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    serve_with(listener, handlers, shutdown, NatsServeConfig::default()).await
}

/// [`serve`] with explicit knobs.
pub async fn serve_with(
    listener: NatsListener,
    handlers: Handlers,
    shutdown: impl Future<Output = ()> + Send,
    config: NatsServeConfig,
) -> Result<(), Error> {
    let NatsListener {
        client,
        mut subscriber,
        prefix,
        service,
    } = listener;
    let max = config.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let server = Arc::new(Server {
        client,
        handlers,
        prefix,
    });
    tokio::pin!(shutdown);
    let mut draining = false;
    loop {
        let message = if draining {
            subscriber.next().await
        } else {
            tokio::select! {
                message = subscriber.next() => message,
                () = &mut shutdown => {
                    // Unsubscribe, but take what the server already sent us.
                    draining = true;
                    let _ = subscriber.drain().await;
                    continue;
                }
            }
        };
        let Some(message) = message else { break };
        let Some(reply) = message.reply.clone() else {
            tracing::warn!(service, subject = %message.subject, "a call without a reply subject was ignored: nobody can receive its answer");
            continue;
        };
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let server = Arc::clone(&server);
                let mut call = Box::pin(async move {
                    let answer = server.serve_one(&message).await;
                    server.answer(reply, answer).await;
                    drop(permit);
                });
                // A handler that finishes at once (most do: no I/O) is answered here, without
                // a task and the hand-over to another worker; one that waits gets a task.
                if call.as_mut().now_or_never().is_none() {
                    tokio::spawn(call);
                }
            }
            Err(_) => {
                let shed = ServeError::new(
                    ErrorKind::Rejected,
                    format!("service {service} has {max} calls running; try again later"),
                );
                server.answer(reply, Err(shed)).await;
            }
        }
    }
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(config.drain_timeout, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            service,
            "handlers still running after the drain timeout; their callers will time out"
        );
    }
    let _ = server.client.flush().await;
    Ok(())
}

/// What every request task shares.
struct Server {
    client: async_nats::Client,
    handlers: Handlers,
    prefix: String,
}

impl Server {
    /// Routes, decodes and dispatches one request.
    async fn serve_one(&self, message: &Message) -> Result<Bytes, ServeError> {
        let (kind, subject_ty) = self.route(&message.subject)?;
        let headers = message.headers.as_ref();
        let mut envelope = self.envelope_of(subject_ty, headers, &message.payload)?;
        // A structured call carries its deadline and key as attributes of the event (no
        // headers); a binary or plain one as headers. Either way the handler sees neither.
        let timeout = envelope.extensions.remove(TIMEOUT_ATTRIBUTE);
        let key = envelope.extensions.remove(IDEMPOTENCY_ATTRIBUTE);
        let deadline = deadline_of(
            headers
                .and_then(|h| h.get(TIMEOUT_HEADER))
                .map(|v| v.as_str())
                .or(timeout.as_deref()),
        )?;
        let idempotency_key = headers
            .and_then(|h| h.get(IDEMPOTENCY_KEY))
            .map(|v| v.as_str().to_owned())
            .or(key);
        match self.handlers.kind_of(&envelope.ty) {
            None => {
                return Err(ServeError::new(
                    ErrorKind::UnknownType,
                    format!(
                        "no handler for message type {:?} here; check the type name and version",
                        envelope.ty
                    ),
                ));
            }
            Some(registered) if registered != kind => {
                return Err(ServeError::new(
                    ErrorKind::UnknownType,
                    format!(
                        "{} is not a {}; send it to {}{}.{}",
                        envelope.ty,
                        if kind == RequestKind::Command {
                            "command"
                        } else {
                            "query"
                        },
                        self.prefix,
                        registered.path_segment(),
                        type_tokens(&envelope.ty)
                    ),
                ));
            }
            Some(_) => {}
        }
        let principal = if self.handlers.authenticates() {
            let mut map = http::HeaderMap::new();
            if let Some(value) = headers
                .and_then(|h| h.get(http::header::AUTHORIZATION.as_str()))
                .and_then(|v| http::HeaderValue::from_str(v.as_str()).ok())
            {
                map.insert(http::header::AUTHORIZATION, value);
            }
            self.handlers.authenticate_headers(&map)?
        } else {
            None
        };
        self.handlers
            .dispatch_as(envelope, deadline, idempotency_key, principal)
            .await
    }

    /// The request kind and the type's tokens from the subject.
    fn route<'a>(&self, subject: &'a Subject) -> Result<(RequestKind, &'a str), ServeError> {
        let rest = subject.as_str().strip_prefix(self.prefix.as_str());
        let routed = rest.and_then(|rest| {
            if let Some(ty) = rest.strip_prefix("commands.") {
                Some((RequestKind::Command, ty))
            } else {
                rest.strip_prefix("queries.")
                    .map(|ty| (RequestKind::Query, ty))
            }
        });
        routed.ok_or_else(|| {
            ServeError::new(
                ErrorKind::UnknownType,
                format!(
                    "subject {subject} is not a call; send to {}commands.<type> or {}queries.<type>",
                    self.prefix, self.prefix
                ),
            )
        })
    }

    /// The envelope: the CloudEvent in the body (structured mode) or in `ce-*` headers
    /// (binary mode) when the request is one, else made here for a plain request.
    fn envelope_of(
        &self,
        subject_ty: &str,
        headers: Option<&HeaderMap>,
        body: &Bytes,
    ) -> Result<Envelope, ServeError> {
        if !tabgrab_core::wire::nats::is_cloud_event(headers, body) {
            let mut envelope = Envelope::raw("/unknown", subject_ty, body.clone());
            // The payload's media type as sent; dispatch refuses one that is not JSON.
            if let Some(ct) = headers.and_then(|h| h.get("content-type")) {
                envelope.datacontenttype = Some(ct.as_str().to_owned());
            }
            return Ok(envelope);
        }
        let envelope =
            tabgrab_core::wire::nats::decode(self.handlers.codec_ref(), headers, body.clone())
                .map_err(|e| {
                    ServeError::new(
                        e.kind(),
                        format!("the CloudEvent of the {subject_ty} request is invalid: {e}"),
                    )
                })?;
        if type_tokens(&envelope.ty) != subject_ty {
            return Err(ServeError::new(
                ErrorKind::TypeMismatch,
                format!(
                    "the CloudEvent's type is {} but the subject says {subject_ty}; they must agree",
                    envelope.ty
                ),
            ));
        }
        Ok(envelope)
    }

    /// Publishes the answer (the response, or the error with its kind in a header).
    async fn answer(&self, reply: Subject, answer: Result<Bytes, ServeError>) {
        let sent = match answer {
            // Boxed, as below: under 1 KiB alone, with the rest of a call's future not.
            Ok(body) => Box::pin(self.client.publish(reply, body)).await,
            Err(e) => {
                let mut headers = HeaderMap::new();
                headers.insert(ERROR_HEADER_NAME, e.kind.as_str());
                let body = ErrorBody {
                    kind: e.kind.as_str().to_owned(),
                    error: e.message,
                    rejection: e.rejection,
                };
                let body = serde_json::to_vec(&body).unwrap_or_default();
                // Boxed: inline, the publish futures made every call's future larger than the
                // allocator's small sizes (see `Handlers::dispatch_as`).
                Box::pin(
                    self.client
                        .publish_with_headers(reply, headers, Bytes::from(body)),
                )
                .await
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "answering a call failed; the caller will time out");
        }
    }
}

/// The deadline from the caller's remaining time: the `tabgrab-timeout` header or the
/// `tabgrabtimeout` attribute, in milliseconds.
fn deadline_of(value: Option<&str>) -> Result<Option<Instant>, ServeError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let ms = value.trim().parse::<u64>().map_err(|_| {
        ServeError::new(
            ErrorKind::Malformed,
            format!(
                "the {TIMEOUT_HEADER} header (or {TIMEOUT_ATTRIBUTE} attribute) must be a \
                 whole number of milliseconds, not {value:?}"
            ),
        )
    })?;
    Ok(Instant::now().checked_add(Duration::from_millis(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call's future (boxed per call, and spawned when its handler waits) stays within
    /// glibc's small allocation sizes (about 1 KiB): at 1,648 bytes it made the allocator
    /// consolidate its free lists on every call.
    #[tokio::test]
    async fn a_call_future_is_a_small_allocation() {
        // No server needed: the client connects in the background, and the future is only
        // measured, never polled.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .expect("a client that connects in the background");
        let server = Arc::new(Server {
            client,
            handlers: Handlers::new(),
            prefix: String::new(),
        });
        let message = Message {
            subject: "tabgrab.call.svc.queries.t".into(),
            reply: None,
            payload: Bytes::new(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        };
        // What `serve` boxes per call.
        let call = async move {
            let answer = server.serve_one(&message).await;
            server.answer("reply".into(), answer).await;
        };
        let size = std::mem::size_of_val(&call);
        assert!(size < 1000, "the call future is {size} bytes");
    }
}
