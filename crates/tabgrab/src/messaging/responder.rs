//! The responder: handles requests of given types on a topic and replies to their `replyto`.
//!
//! A `replyto` is a topic, or a queue (`/queues/<name>`, see
//! [`ReplyAddress`]) on an engine with
//! [`Capabilities::reply_queues`](crate::backend::Capabilities::reply_queues): on RabbitMQ a
//! plain AMQP client's `reply_to` property, or a tabgrab requester's reply queue. A request
//! whose reply address the bus cannot serve, or that has none, is refused before its handler
//! runs and dead-lettered with the reason.
//!
//! A responder built with [`ResponderBuilder::require_principal`] or
//! [`ResponderBuilder::authorize`] answers a request that carries no [`Principal`], or one
//! its rule does not allow for the request's type, with a [`Rejection`] of code
//! `unauthenticated` or `permission_denied` before its handler runs: the requester learns at
//! once, as a caller of a call server with the same rule does (see
//! [`tabgrab_core::principal`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;

use super::reply::ReplyBody;
use super::{Clock, REPLY_TYPE, REQUEST_TYPE_ATTR, RESPONDER_ATTR, to_ms};
use crate::backend::{Bus, ReplyAddress};
use crate::event::{Admission, Context, ErasedHandler, HandlerError, Publisher, Subscription};
use crate::{Envelope, Error, ErrorKind, Principal, Rejection, Request};

/// What a request handler receives besides the request.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The delivery context of the request envelope.
    delivery: Context,
}

impl RequestContext {
    /// The request envelope.
    pub fn envelope(&self) -> &Envelope {
        self.delivery.envelope()
    }

    /// The request id (its correlation id).
    pub fn request_id(&self) -> &str {
        let envelope = self.delivery.envelope();
        envelope.correlationid.as_deref().unwrap_or(&envelope.id)
    }

    /// Who sent the request (its `principal` attribute, see [`crate::principal`]), if
    /// anyone said so.
    pub fn principal(&self) -> Option<Principal> {
        self.delivery.principal()
    }

    /// The handler's attempt on this delivery of the request, starting at 1 (a request
    /// redelivered after a crash starts again at 1; see `Context::attempt`).
    pub fn attempt(&self) -> u32 {
        self.delivery.attempt()
    }

    /// Completes when the responder shuts down.
    pub async fn shutdown_requested(&self) {
        self.delivery.shutdown_requested().await;
    }

    /// Whether the responder is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.delivery.is_shutting_down()
    }

    /// The time left before the requester stops waiting (the request's deadline), zero once
    /// it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.delivery.remaining()
    }
}

/// A snapshot of a responder's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponderStats {
    /// Requests answered with a response.
    pub replied: u64,
    /// Requests answered with a typed rejection.
    pub rejected: u64,
    /// Requests skipped because their deadline had passed (the handler did not run).
    pub expired: u64,
}

#[derive(Debug, Default)]
struct Counters {
    replied: AtomicU64,
    rejected: AtomicU64,
    expired: AtomicU64,
}

/// Shared state of a responder's handlers.
struct Shared {
    bus: Bus,
    topic: String,
    source: String,
    clock: Clock,
    counters: Counters,
    /// Whether the bus can put a reply into a named queue (`Capabilities::reply_queues`).
    reply_queues: bool,
    /// Publishers by reply topic, made on first use.
    publishers: Mutex<HashMap<String, Publisher>>,
    /// Which principals may send requests, set once when the responder starts.
    admission: std::sync::OnceLock<Admission>,
}

impl Shared {
    fn publisher(&self, topic: &str) -> Result<Publisher, Error> {
        let mut publishers = self
            .publishers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = publishers.get(topic) {
            return Ok(p.clone());
        }
        let p = Publisher::new(&self.bus, topic, &self.source)?;
        publishers.insert(topic.to_owned(), p.clone());
        Ok(p)
    }
}

/// Builds a [`Responder`].
pub struct ResponderBuilder {
    builder: crate::event::SubscriptionBuilder,
    shared: Arc<Shared>,
    /// The first registration error (an invalid type name), reported by `start`.
    error: Option<Error>,
    /// Which principals may send requests (none required when `None`).
    admission: Option<Admission>,
}

impl std::fmt::Debug for ResponderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponderBuilder")
            .field("topic", &self.shared.topic)
            .finish_non_exhaustive()
    }
}

impl ResponderBuilder {
    /// Handles requests of type `R`: the handler's response, or its typed refusal
    /// ([`HandlerError::rejected`], or a [`Rejection`] returned with `?` or `.into()`), is
    /// sent back to the request's `replyto` with its correlation id. A transient failure
    /// (`?` on an I/O error, a store that is down) is not answered: the request is
    /// redelivered and handled again, with the subscription's backoff. A permanent one is
    /// dead-lettered. Requests whose deadline has passed are skipped without running the
    /// handler.
    pub fn handle<R, F, Fut>(mut self, handler: F) -> ResponderBuilder
    where
        R: Request,
        F: Fn(R, RequestContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let shared = Arc::clone(&self.shared);
        let erased: ErasedHandler = Arc::new(move |envelope: Arc<Envelope>, ctx: Context| {
            let handler = Arc::clone(&handler);
            let shared = Arc::clone(&shared);
            async move {
                if let Some(deadline) = envelope.deadline
                    && to_ms(deadline) <= shared.clock.now_ms()
                {
                    shared.counters.expired.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %shared.topic, id = %envelope.id, "request past its deadline skipped");
                    return Ok(());
                }
                let Some(reply_to) = envelope.replyto.clone() else {
                    return Err(HandlerError::permanent(Error::new(
                        ErrorKind::MissingAttribute,
                        format!("a {} request without replyto cannot be answered", R::TYPE),
                    )));
                };
                let reply_to = ReplyAddress::parse(&reply_to).map_err(HandlerError::permanent)?;
                if matches!(reply_to, ReplyAddress::Queue(_)) && !shared.reply_queues {
                    return Err(HandlerError::permanent(Error::new(
                        ErrorKind::Malformed,
                        format!(
                            "a {} request asks for its reply in the queue {reply_to}, and the {} bus \
                             cannot put messages into named queues; reply to a topic",
                            R::TYPE,
                            shared.bus.name()
                        ),
                    )));
                }
                let refused = shared.admission.get().and_then(|a| a.check(&envelope).err());
                let answer = match refused {
                    // Answered, not dead-lettered: the requester learns why at once.
                    Some(e) => {
                        tracing::debug!(topic = %shared.topic, id = %envelope.id, error = %e, "request refused");
                        Err(HandlerError::rejected(Rejection::new(e.kind().as_str(), e.message())))
                    }
                    None => {
                        let request = envelope.decode::<R>().map_err(HandlerError::bad_input)?;
                        handler(request, RequestContext { delivery: ctx }).await
                    }
                };
                let body = match answer {
                    // Serialized once, into the text the reply carries.
                    Ok(response) => ReplyBody::ok(&response).map_err(|e| {
                        HandlerError::permanent(Error::new(
                            ErrorKind::InvalidPayload,
                            format!("the response to a {} does not serialise: {e}", R::TYPE),
                        ))
                    })?,
                    Err(error) => match error.rejection() {
                        Some(rejection) => ReplyBody::Rejected(rejection.clone()),
                        // Not an answer: redelivered (transient) or dead-lettered (permanent).
                        None => return Err(error),
                    },
                };
                let rejected = matches!(body, ReplyBody::Rejected(_));
                let data = body.encode().map_err(HandlerError::permanent)?;
                let mut reply =
                    Envelope::raw(&*shared.source, REPLY_TYPE, Bytes::from(data)).caused_by(&envelope);
                reply.subject.clone_from(&envelope.subject);
                reply
                    .extensions
                    .insert(REQUEST_TYPE_ATTR.to_owned(), R::TYPE.to_owned());
                reply
                    .extensions
                    .insert(RESPONDER_ATTR.to_owned(), shared.topic.clone());
                // A publish failure is transient: the request is redelivered and answered again
                // (the requester ignores the duplicate if the first reply got through).
                match &reply_to {
                    ReplyAddress::Topic(topic) => shared
                        .publisher(topic)
                        .map_err(HandlerError::transient)?
                        .publish_envelope(&reply)
                        .await
                        .map(|_| ()),
                    ReplyAddress::Queue(queue) => shared
                        .bus
                        .backend()
                        .publish_to_queue(queue, &reply)
                        .await
                        .map(|_| ()),
                }
                .map_err(HandlerError::transient)?;
                let counter = if rejected {
                    &shared.counters.rejected
                } else {
                    &shared.counters.replied
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            .boxed()
        });
        if let Err(e) = self.builder.handle_envelope(R::TYPE, erased) {
            self.error.get_or_insert(e);
        }
        self
    }

    /// Handles requests of type `R` like [`handle`](Self::handle), with a clone of `state` on
    /// each call (see [`SubscriptionBuilder::handle_with`](crate::event::SubscriptionBuilder::handle_with)).
    pub fn handle_with<S, R, F, Fut>(self, state: S, handler: F) -> ResponderBuilder
    where
        S: Clone + Send + Sync + 'static,
        R: Request,
        F: Fn(S, R, RequestContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, HandlerError>> + Send + 'static,
    {
        self.handle(move |request: R, ctx| handler(state.clone(), request, ctx))
    }

    /// Handles only requests that carry a [`Principal`]; one without is answered with the
    /// rejection `unauthenticated` (see [`Responder`]).
    pub fn require_principal(mut self) -> ResponderBuilder {
        self.admission = Some(Admission::any());
        self
    }

    /// Handles a request only when it carries a [`Principal`] that `rule(principal, type)`
    /// allows; otherwise it is answered with the rejection `unauthenticated` (no principal)
    /// or `permission_denied`. The bus-side twin of the call server's `Handlers::authorize`.
    pub fn authorize(
        mut self,
        rule: impl Fn(&Principal, &str) -> bool + Send + Sync + 'static,
    ) -> ResponderBuilder {
        self.admission = Some(Admission::rule(rule));
        self
    }

    /// How many requests are handled at once (default 64).
    pub fn concurrency(mut self, n: usize) -> ResponderBuilder {
        self.builder = self.builder.concurrency(n);
        self
    }

    /// Handler attempts on one request before it is dead-lettered (default 5, at least 1),
    /// when the handler fails transiently: the same rule as an event's
    /// ([`SubscriptionBuilder::max_deliveries`](crate::event::SubscriptionBuilder::max_deliveries)).
    pub fn max_deliveries(mut self, n: u32) -> ResponderBuilder {
        self.builder = self.builder.max_deliveries(n);
        self
    }

    /// The backoff between those attempts (default: 100 ms doubling to 10 s, full jitter).
    pub fn backoff(mut self, backoff: crate::retry::Backoff) -> ResponderBuilder {
        self.builder = self.builder.backoff(backoff);
        self
    }

    /// Starts handling requests. Must be called inside a tokio runtime.
    pub fn start(self) -> Result<Responder, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if let Some(admission) = self.admission {
            // The only set: the cell is the builder's until now.
            let _ = self.shared.admission.set(admission);
        }
        let subscription = self.builder.start()?;
        Ok(Responder {
            subscription,
            shared: self.shared,
        })
    }
}

/// Handles requests on a topic as a consumer group (several responders of one group share
/// the work).
///
/// One built with [`ResponderBuilder::require_principal`] or [`ResponderBuilder::authorize`]
/// answers a request that carries no [`Principal`], or one its rule does not allow for the
/// request's type, with a [`Rejection`] of code `unauthenticated` or `permission_denied`
/// before its handler runs (see [`crate::principal`]).
pub struct Responder {
    subscription: Subscription,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("topic", &self.shared.topic)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Starts building a responder of group `group` for requests on `topic`.
    pub fn builder(bus: impl Into<Bus>, topic: &str, group: &str) -> ResponderBuilder {
        let bus = bus.into();
        let reply_queues = bus.capabilities().reply_queues;
        ResponderBuilder {
            builder: Subscription::builder(&bus, topic, group)
                .commit_interval(Duration::from_millis(200)),
            shared: Arc::new(Shared {
                bus,
                topic: topic.to_owned(),
                source: format!("/tabgrab/responder/{topic}"),
                clock: Clock::new(),
                counters: Counters::default(),
                reply_queues,
                publishers: Mutex::new(HashMap::new()),
                admission: std::sync::OnceLock::new(),
            }),
            error: None,
            admission: None,
        }
    }

    /// Waits until the responder's group has joined the bus (at once on the embedded bus; on
    /// a broker, once its consumer or queue exists).
    pub async fn ready(&self) -> Result<(), Error> {
        self.subscription.ready().await
    }

    /// The responder's counters.
    pub fn stats(&self) -> ResponderStats {
        let c = &self.shared.counters;
        ResponderStats {
            replied: c.replied.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
        }
    }

    /// How many requests of the topic this responder's group has not finished.
    pub fn lag(&self) -> u64 {
        self.subscription.lag()
    }

    /// Stops handling requests (running handlers finish; the offset is committed).
    pub async fn shutdown(self) -> Result<(), Error> {
        self.subscription.shutdown().await
    }
}
