//! The requester: sends requests after persisting them, and turns replies and timeouts into
//! exactly one outcome per request for its reply handler.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::reply::{RawOutcome, ReplyBody};
use super::store::{Claim, CorrelationStore, PendingRequest, RecordState, ReplyKey, Tally};
use super::{
    Clock, Outcome, PLAIN_REPLY_TYPE, REPLY_TYPE, REQUEST_TYPE_ATTR, RESPONDER_ATTR, RequestId,
    SendOptions, duration_ms, to_datetime,
};
use crate::backend::{Bus, ReplyAddress};
use crate::breaker::{BreakerHandle, CircuitState};
use crate::event::{Context, ErasedHandler, HandlerError, Publisher, Subscription};
use crate::{Envelope, Error, ErrorKind, Request, Topic};

/// What a reply handler receives besides the outcome.
#[derive(Clone, Debug)]
pub struct ReplyContext {
    /// The request as stored.
    request: Arc<PendingRequest>,
    /// The reply's delivery; `None` for a timeout (the sweep's).
    delivery: Option<Context>,
    /// The requester's shutdown.
    shutdown: CancellationToken,
}

impl ReplyContext {
    /// The reply's envelope; `None` when the outcome is a timeout (no reply came).
    pub fn envelope(&self) -> Option<&Envelope> {
        self.delivery.as_ref().map(Context::envelope)
    }

    /// Who sent the reply (its `principal` attribute), if anyone said so.
    pub fn principal(&self) -> Option<crate::Principal> {
        self.delivery.as_ref().and_then(Context::principal)
    }

    /// The handler's attempt on this outcome, starting at 1 (a timeout's handler that failed
    /// is tried again by a later sweep, which counts from 1 again).
    pub fn attempt(&self) -> u32 {
        self.delivery.as_ref().map_or(1, Context::attempt)
    }

    /// The time left before the request's deadline, zero once it has passed (always zero for
    /// a timeout).
    pub fn remaining(&self) -> Option<Duration> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let left = i128::from(self.request.deadline_ms) - now;
        Some(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
    }

    /// Completes when the requester shuts down.
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await;
    }

    /// Whether the requester is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The request id (its correlation id).
    pub fn request_id(&self) -> &str {
        &self.request.id
    }

    /// The request's message type.
    pub fn request_type(&self) -> &str {
        &self.request.request_type
    }

    /// The caller's context value, as given to `send`.
    pub fn context(&self) -> &serde_json::Value {
        &self.request.context
    }

    /// The caller's context decoded as `T`.
    pub fn context_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.request.context).map_err(|e| {
            Error::new(
                ErrorKind::InvalidPayload,
                format!(
                    "the context of {} request {} is not a {}",
                    self.request.request_type,
                    self.request.id,
                    std::any::type_name::<T>()
                ),
            )
            .with_source(e)
        })
    }

    /// When the request was sent, Unix milliseconds.
    pub fn sent_ms(&self) -> i64 {
        self.request.sent_ms
    }

    /// The request's deadline, Unix milliseconds.
    pub fn deadline_ms(&self) -> i64 {
        self.request.deadline_ms
    }
}

/// A reply handler with its response type erased.
type ErasedReplyHandler = Arc<
    dyn Fn(RawOutcome, ReplyContext) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync,
>;

/// Where a request type goes, and who handles its outcomes.
#[derive(Clone)]
struct Route {
    /// The responder's topic.
    topic: String,
    /// The reply handler; `None` for types only used with [`Requester::request`].
    handler: Option<ErasedReplyHandler>,
}

/// Counters of one requester (this node).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) records_written: AtomicU64,
    pub(crate) replied: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) late: AtomicU64,
    pub(crate) duplicate: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) unhandled: AtomicU64,
    pub(crate) handler_failures: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) circuit_open: AtomicU64,
}

/// A snapshot of a requester's counters (this node only; other nodes of the group count
/// their own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequesterStats {
    /// Requests published.
    pub sent: u64,
    /// Correlation records inserted into the store.
    pub records_written: u64,
    /// Replies handed to a reply handler (or a waiting `request`).
    pub replied: u64,
    /// `TimedOut` outcomes handed to a reply handler (or a waiting `request`).
    pub timed_out: u64,
    /// Replies that arrived after their request's deadline or timeout: dropped.
    pub late: u64,
    /// Replies to requests that already had theirs: ignored.
    pub duplicate: u64,
    /// Replies with an unknown or forged correlation id, or not matching the stored request
    /// type or responder, or undecodable: rejected (and dead-lettered).
    pub rejected: u64,
    /// Outcomes of request types with no reply handler and no waiting `request` (logged).
    pub unhandled: u64,
    /// Reply handler failures (the outcome is retried).
    pub handler_failures: u64,
    /// Requests refused by the bulkhead ([`RequesterBuilder::max_in_flight`]).
    pub shed: u64,
    /// Requests refused by the open circuit breaker ([`RequesterBuilder::breaker`]).
    pub circuit_open: u64,
    /// The circuit breaker's state, if the node has one.
    pub breaker: Option<CircuitState>,
    /// This node's requests awaiting their outcome, if it has a bulkhead.
    pub in_flight: Option<usize>,
}

/// Tunables of a requester.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) default_timeout: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) sweep_batch: u32,
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
    pub(crate) concurrency: usize,
    pub(crate) max_in_flight: Option<usize>,
    pub(crate) breaker: Option<BreakerHandle>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            default_timeout: Duration::from_secs(30),
            sweep_interval: Duration::from_millis(200),
            sweep_batch: 256,
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            concurrency: 64,
            max_in_flight: None,
            breaker: None,
        }
    }
}

/// Builds a [`Requester`].
pub struct RequesterBuilder {
    bus: Bus,
    group: String,
    store: Option<Arc<dyn CorrelationStore>>,
    routes: HashMap<String, Route>,
    options: Options,
}

impl std::fmt::Debug for RequesterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequesterBuilder")
            .field("group", &self.group)
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RequesterBuilder {
    /// The correlation store (required): SQLite for one node, PostgreSQL for several.
    pub fn store(self, store: impl CorrelationStore) -> RequesterBuilder {
        self.shared_store(Arc::new(store))
    }

    /// A correlation store shared with other requesters (other nodes in one process, tests).
    pub fn shared_store(mut self, store: Arc<dyn CorrelationStore>) -> RequesterBuilder {
        self.store = Some(store);
        self
    }

    /// Sends requests of type `R` to `topic` and hands their outcomes to `handler`, exactly
    /// once per request across the group (see the module docs for the crash case).
    ///
    /// A handler error is retried: a reply is redelivered with backoff, a timeout by the next
    /// sweep.
    pub fn on_reply<R, F, Fut>(mut self, topic: &str, handler: F) -> RequesterBuilder
    where
        R: Request,
        F: Fn(Outcome<R>, ReplyContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: ErasedReplyHandler = Arc::new(move |raw: RawOutcome, ctx: ReplyContext| {
            let handler = Arc::clone(&handler);
            async move {
                let outcome = raw.decode::<R>().map_err(HandlerError::permanent)?;
                handler(outcome, ctx).await
            }
            .boxed()
        });
        self.routes.insert(
            R::TYPE.to_owned(),
            Route {
                topic: topic.to_owned(),
                handler: Some(erased),
            },
        );
        self
    }

    /// [`on_reply`](Self::on_reply) with a clone of `state` on each call (see
    /// [`SubscriptionBuilder::handle_with`](crate::event::SubscriptionBuilder::handle_with)).
    pub fn on_reply_with<S, R, F, Fut>(self, topic: &str, state: S, handler: F) -> RequesterBuilder
    where
        S: Clone + Send + Sync + 'static,
        R: Request,
        F: Fn(S, Outcome<R>, ReplyContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.on_reply(topic, move |outcome: Outcome<R>, ctx| {
            handler(state.clone(), outcome, ctx)
        })
    }

    /// Sends requests of type `R` to `topic`, without a reply handler: for types used with
    /// [`Requester::request`] only. An outcome nobody awaits any more (after a restart) is
    /// logged and counted as unhandled.
    pub fn route<R: Request>(mut self, topic: &str) -> RequesterBuilder {
        self.routes.insert(
            R::TYPE.to_owned(),
            Route {
                topic: topic.to_owned(),
                handler: None,
            },
        );
        self
    }

    /// The timeout of requests sent without one (default 30 s).
    pub fn default_timeout(mut self, timeout: Duration) -> RequesterBuilder {
        self.options.default_timeout = timeout;
        self
    }

    /// How often the timeout sweep looks for expired requests (default 200 ms): a
    /// `TimedOut` outcome comes at most this long after the deadline (plus handler time).
    pub fn sweep_interval(mut self, interval: Duration) -> RequesterBuilder {
        self.options.sweep_interval = interval;
        self
    }

    /// How long a claimed outcome stays with the node that claimed it before another node
    /// may take it over (default 30 s). Must exceed the longest reply handler run.
    pub fn lease(mut self, lease: Duration) -> RequesterBuilder {
        self.options.lease = lease;
        self
    }

    /// How long finished requests stay as tombstones, to tell late and duplicate replies from
    /// forged ones (default 24 h).
    pub fn retention(mut self, retention: Duration) -> RequesterBuilder {
        self.options.retention = retention;
        self
    }

    /// How many replies are handled at once on this node (default 64).
    pub fn concurrency(mut self, n: usize) -> RequesterBuilder {
        self.options.concurrency = n.max(1);
        self
    }

    /// A bulkhead: at most `n` requests of this node awaiting their outcome; the next is
    /// refused at once with `Rejected` (default: no cap, as a durable request may wait for a
    /// recipient that is down).
    pub fn max_in_flight(mut self, n: usize) -> RequesterBuilder {
        self.options.max_in_flight = Some(n);
        self
    }

    /// A circuit breaker over this node's requests: time-outs count as failures, replies
    /// (answers and rejections) as successes; while it is open, requests are refused at once
    /// with `CircuitOpen`, before anything is stored or published (default: none, as a durable
    /// request may wait for a recipient that is down). Takes a
    /// [`BreakerConfig`](crate::breaker::BreakerConfig) or a
    /// [`BreakerHandle`](crate::breaker::BreakerHandle) shared with a call client or a
    /// consumer of the same dependency. A request whose outcome another node of the group
    /// takes counts for neither side: it is forgotten once no outcome can come any more.
    pub fn breaker(mut self, breaker: impl Into<BreakerHandle>) -> RequesterBuilder {
        self.options.breaker = Some(breaker.into());
        self
    }

    /// Starts the requester: joins the group's reply consumer group and starts the timeout
    /// sweep. Must be called inside a tokio runtime.
    pub fn start(self) -> Result<Requester, Error> {
        crate::topic::check_group(&self.group).map_err(|e| {
            Error::new(
                ErrorKind::Malformed,
                format!("requester group {:?}: {}", self.group, e.message()),
            )
        })?;
        let store = self.store.ok_or_else(|| {
            Error::new(
                ErrorKind::Malformed,
                format!(
                    "requester group {}: no correlation store; call .store(SqliteStore::open(..)) on the builder",
                    self.group
                ),
            )
        })?;
        let reply_topic = Topic::new(&format!("replies.{}", self.group))?;
        // Where the engine can name the queue the group's replies arrive in, that queue is
        // the reply address, so that a plain client (which replies to a queue) reaches the
        // group too; tabgrab's responders reply to it the same way.
        let reply_to = match self.bus.backend().group_queue(&reply_topic, &self.group) {
            Some(queue) if self.bus.capabilities().reply_queues => {
                ReplyAddress::Queue(queue).to_string()
            }
            _ => reply_topic.to_string(),
        };
        let mut publishers = HashMap::new();
        for route in self.routes.values() {
            if !publishers.contains_key(&route.topic) {
                let publisher = Publisher::new(
                    &self.bus,
                    &route.topic,
                    &format!("/tabgrab/requester/{}", self.group),
                )?;
                publishers.insert(route.topic.clone(), publisher);
            }
        }
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            shutdown: cancel.clone(),
            group: self.group.clone(),
            reply_to,
            store,
            routes: self.routes,
            publishers,
            options: self.options.clone(),
            clock: Clock::new(),
            counters: Counters::default(),
            waiters: Mutex::new(HashMap::new()),
            admission: Admission::new(self.options.max_in_flight, self.options.breaker.clone()),
            labels: vec![
                (
                    crate::telemetry::names::SYSTEM,
                    crate::telemetry::names::messaging_system(self.bus.name()).to_owned(),
                ),
                (crate::telemetry::names::GROUP, self.group.clone()),
            ],
        });
        let source: Arc<dyn crate::telemetry::Source> = Arc::clone(&inner) as _;
        crate::telemetry::register(Arc::downgrade(&source));
        let on_reply: ErasedHandler = {
            let inner = Arc::clone(&inner);
            Arc::new(move |envelope: Arc<Envelope>, ctx: Context| {
                let inner = Arc::clone(&inner);
                async move { inner.handle_reply(&envelope, ctx).await }.boxed()
            })
        };
        let mut subscription = Subscription::builder(&self.bus, &reply_topic, &self.group)
            .untyped_as(PLAIN_REPLY_TYPE)
            .concurrency(self.options.concurrency)
            // Enough retries (backoff up to 10 s each) to outlast a dead node's lease, so that
            // a reply whose request is claimed by a node that died is not dead-lettered first.
            .max_deliveries(30)
            .commit_interval(Duration::from_millis(200));
        subscription.handle_envelope(REPLY_TYPE, Arc::clone(&on_reply))?;
        subscription.handle_envelope(PLAIN_REPLY_TYPE, on_reply)?;
        let subscription = subscription.start()?;
        let sweep = tokio::spawn(super::sweep::run(Arc::clone(&inner), cancel.clone()));
        Ok(Requester {
            inner,
            subscription: Arc::new(Mutex::new(Some(subscription))),
            sweep: Arc::new(Mutex::new(Some(sweep))),
            _guard: Arc::new(DropGuard(cancel.clone())),
            cancel,
        })
    }
}

/// The shared state of a requester node.
pub(crate) struct Inner {
    /// Cancelled when the requester shuts down (a reply handler's `shutdown_requested`).
    shutdown: CancellationToken,
    /// The requester group (the reply address's owner).
    pub(crate) group: String,
    /// The `replyto` of every request: the reply topic `replies.<group>`, or the queue the
    /// group consumes (`/queues/<name>`) where the engine has `Capabilities::reply_queues`.
    reply_to: String,
    /// Where pending requests live.
    pub(crate) store: Arc<dyn CorrelationStore>,
    /// Request types this node sends, by type name.
    routes: HashMap<String, Route>,
    /// One publisher per responder topic.
    publishers: HashMap<String, Publisher>,
    /// Timeouts, sweep and lease settings.
    pub(crate) options: Options,
    /// Milliseconds for deadlines and claims.
    pub(crate) clock: Clock,
    /// This node's counters.
    pub(crate) counters: Counters,
    /// Callers of `request` waiting on this node, by request id.
    waiters: Mutex<HashMap<String, oneshot::Sender<RawOutcome>>>,
    /// The bulkhead and the breaker, with this node's requests in flight.
    pub(crate) admission: Admission,
    /// Metric attributes (engine, group).
    labels: crate::telemetry::Labels,
}

impl crate::telemetry::Source for Inner {
    fn sample(&self, out: &mut crate::telemetry::Samples) {
        use crate::telemetry::names;
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let labels = &self.labels;
        out.counter(names::REQUESTS_SENT, labels, get(&c.sent));
        out.counter(names::REQUESTS_TIMED_OUT, labels, get(&c.timed_out));
        for (outcome, value) in [
            ("handled", get(&c.replied)),
            ("late", get(&c.late)),
            ("duplicate", get(&c.duplicate)),
            ("forged", get(&c.rejected)),
        ] {
            out.counter_by(names::REPLIES, labels, (names::OUTCOME, outcome), value);
        }
        for (reason, value) in [
            ("bulkhead", get(&c.shed)),
            ("circuit_open", get(&c.circuit_open)),
        ] {
            out.counter_by(
                names::REQUESTS_REFUSED,
                labels,
                (names::REASON, reason),
                value,
            );
        }
        // With a bulkhead it counts exactly; without, this node's requests that have not
        // ended here (a reply handled by another node after a crash ends it there).
        let in_flight = self.admission.in_flight().map_or_else(
            || get(&c.sent).saturating_sub(get(&c.replied) + get(&c.timed_out)),
            |n| n as u64,
        );
        out.gauge(names::REQUESTS_IN_FLIGHT, labels, in_flight as f64);
        if let Some(breaker) = self.admission.breaker() {
            breaker.sample(out, labels);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        crate::telemetry::retire(self);
    }
}

impl Inner {
    fn waiters(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<RawOutcome>>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Handles one reply envelope from the group's reply topic.
    async fn handle_reply(&self, envelope: &Envelope, ctx: Context) -> Result<(), HandlerError> {
        let rejected = |why: String| {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(group = %self.group, reply = %envelope.id, "rejected reply: {why}");
            HandlerError::permanent(Error::new(ErrorKind::Malformed, why))
        };
        let Some(id) = envelope.correlationid.as_deref() else {
            return Err(rejected("a reply without correlationid".into()));
        };
        let (request_type, responder, body) = if envelope.ty == PLAIN_REPLY_TYPE {
            // A plain client's reply: its body is the response, and it cannot say what it
            // answers; the correlation id alone names the request.
            match serde_json::from_slice::<Box<serde_json::value::RawValue>>(&envelope.data) {
                Ok(raw) => (None, None, ReplyBody::Ok(raw)),
                Err(e) => {
                    return Err(rejected(format!(
                        "plain reply to {id}: the body is not the JSON response ({e})"
                    )));
                }
            }
        } else {
            let (Some(request_type), Some(responder)) = (
                envelope.extensions.get(REQUEST_TYPE_ATTR),
                envelope.extensions.get(RESPONDER_ATTR),
            ) else {
                return Err(rejected(format!(
                    "reply to {id} lacks the {REQUEST_TYPE_ATTR} or {RESPONDER_ATTR} attribute"
                )));
            };
            match ReplyBody::decode(&envelope.data) {
                Ok(body) => (Some(request_type.as_str()), Some(responder.as_str()), body),
                Err(e) => return Err(rejected(format!("reply to {id}: {e}"))),
            }
        };
        let now = self.clock.now_ms();
        let key = ReplyKey {
            id,
            request_type,
            responder,
        };
        let claim = self
            .store
            .claim_reply(
                key,
                now,
                now.saturating_add(duration_ms(self.options.lease)),
            )
            .await
            .map_err(HandlerError::transient)?;
        match claim {
            Claim::Claimed(request) => {
                let request = Arc::new(request);
                match self
                    .deliver(Arc::clone(&request), RawOutcome::Replied(body), Some(ctx))
                    .await
                {
                    Ok(()) => {
                        self.finish(&request.id, RecordState::Replied).await;
                        self.counters.replied.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        self.counters
                            .handler_failures
                            .fetch_add(1, Ordering::Relaxed);
                        if let Err(release) = self.store.release(&request.id).await {
                            tracing::error!(group = %self.group, id, error = %release, "cannot release a claim; it lapses after the lease");
                        }
                        Err(e)
                    }
                }
            }
            Claim::InProgress => Err(HandlerError::transient(format!(
                "reply to {id}: another claim on the request is being handled; retrying until it completes or its lease lapses"
            ))),
            Claim::Duplicate => {
                self.counters.duplicate.fetch_add(1, Ordering::Relaxed);
                self.tally(Tally::Duplicate);
                tracing::debug!(group = %self.group, id, "duplicate reply ignored");
                Ok(())
            }
            Claim::Late => {
                self.counters.late.fetch_add(1, Ordering::Relaxed);
                self.tally(Tally::Late);
                tracing::warn!(group = %self.group, id, ?request_type, "late reply (after the request's deadline) dropped");
                Ok(())
            }
            Claim::Forged => {
                self.tally(Tally::Forged);
                Err(rejected(format!(
                    "reply to {id} ({} from {}) matches no pending request of this group",
                    request_type.unwrap_or("a plain reply"),
                    responder.unwrap_or("a plain client")
                )))
            }
        }
    }

    /// Counts a reply not handed to a handler in the store, for every node of the group and
    /// the operator's console to see; in the background (a count must not hold the reply
    /// consumer up), and only logged if the store fails.
    fn tally(&self, tally: Tally) {
        let store = Arc::clone(&self.store);
        let group = self.group.clone();
        tokio::spawn(async move {
            if let Err(e) = store.tally(tally).await {
                tracing::debug!(%group, tally = tally.as_str(), error = %e, "cannot tally a reply in the store");
            }
        });
    }

    /// Hands an outcome to a waiting `request` on this node, or to the reply handler.
    pub(crate) async fn deliver(
        &self,
        request: Arc<PendingRequest>,
        raw: RawOutcome,
        delivery: Option<Context>,
    ) -> Result<(), HandlerError> {
        self.admission
            .outcome(&request.id, matches!(raw, RawOutcome::Replied(_)));
        let waiter = self.waiters().remove(&request.id);
        let raw = match waiter {
            Some(tx) => match tx.send(raw) {
                Ok(()) => return Ok(()),
                Err(raw) => raw,
            },
            None => raw,
        };
        let handler = self
            .routes
            .get(&request.request_type)
            .and_then(|r| r.handler.clone());
        match handler {
            Some(handler) => {
                let ctx = ReplyContext {
                    request,
                    delivery,
                    shutdown: self.shutdown.clone(),
                };
                handler(raw, ctx).await
            }
            None => {
                self.counters.unhandled.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(group = %self.group, id = %request.id, request_type = %request.request_type, "an outcome nobody waits for (no reply handler for this type)");
                Ok(())
            }
        }
    }

    /// Marks a claimed request finished, retrying the store a few times: once the handler
    /// ran, a lost completion would let the claim lapse and the outcome be handed again.
    pub(crate) async fn finish(&self, id: &str, state: RecordState) {
        for attempt in 1..=5u32 {
            match self.store.complete(id, state, self.clock.now_ms()).await {
                Ok(true) => return,
                Ok(false) => {
                    tracing::warn!(group = %self.group, id, %state, "completion found the claim taken over (lease too short?)");
                    return;
                }
                Err(e) => {
                    tracing::error!(group = %self.group, id, attempt, error = %e, "cannot record a request's outcome; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
            }
        }
    }
}

/// Sends requests and handles their outcomes; one node of a requester group. Cheap to clone.
#[derive(Clone)]
pub struct Requester {
    inner: Arc<Inner>,
    /// The reply consumer group membership, taken by `shutdown`.
    subscription: Arc<Mutex<Option<Subscription>>>,
    /// The timeout sweep task, taken by `shutdown`.
    sweep: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Stops the sweep.
    cancel: CancellationToken,
    /// Stops the sweep when the last clone is dropped without `shutdown`.
    _guard: Arc<DropGuard>,
}

/// Cancels a token when dropped.
struct DropGuard(CancellationToken);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("group", &self.inner.group)
            .field("store", &self.inner.store.name())
            .finish_non_exhaustive()
    }
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

impl Requester {
    /// Starts building a node of requester group `group` on `bus`.
    pub fn builder(bus: impl Into<Bus>, group: &str) -> RequesterBuilder {
        RequesterBuilder {
            bus: bus.into(),
            group: group.to_owned(),
            store: None,
            routes: HashMap::new(),
            options: Options::default(),
        }
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.inner.group
    }

    /// The reply address (`replyto`) of the group's requests: the reply topic's name
    /// (`replies.<group>`), or, on an engine with
    /// [`Capabilities::reply_queues`](crate::backend::Capabilities::reply_queues), the queue
    /// the group's replies arrive in (`/queues/tabgrab.replies.<group>.<group>` on RabbitMQ).
    pub fn reply_to(&self) -> &str {
        &self.inner.reply_to
    }

    /// The correlation store.
    pub fn store(&self) -> &Arc<dyn CorrelationStore> {
        &self.inner.store
    }

    /// Sends `request`: stores it as pending, then publishes it durably; returns its id at
    /// once. Its outcome (reply or timeout) goes to the reply handler registered for `R`.
    ///
    /// If the publish fails the record is removed and the error returned; if even that fails,
    /// the request ends as `TimedOut` at its deadline (never silently pending).
    pub async fn send<R: Request>(
        &self,
        request: &R,
        options: SendOptions,
    ) -> Result<RequestId, Error> {
        let id = RequestId::new();
        self.send_with_id(&id, request, options).await?;
        Ok(id)
    }

    async fn send_with_id<R: Request>(
        &self,
        id: &RequestId,
        request: &R,
        options: SendOptions,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let route = inner.routes.get(R::TYPE).ok_or_else(|| {
            // The Rust name of the request, as the user wrote it (without its module path).
            let full = std::any::type_name::<R>();
            let path = full.split('<').next().unwrap_or(full);
            let name = path.rsplit("::").next().unwrap_or(path);
            Error::new(
                ErrorKind::UnknownType,
                format!(
                    "requester group {} has no route for {}: add .on_reply(topic, |o: Outcome<{name}>, ctx| ..) or .route::<{name}>(topic) to its builder",
                    inner.group,
                    R::TYPE
                ),
            )
        })?;
        let publisher = inner.publishers.get(&route.topic).ok_or_else(|| {
            Error::new(
                ErrorKind::Closed,
                format!("no publisher for topic {}", route.topic),
            )
        })?;
        let pass = inner
            .admission
            .admit(&inner.group, R::TYPE)
            .inspect_err(|e| {
                let counter = if e.kind() == ErrorKind::Rejected {
                    &inner.counters.shed
                } else {
                    &inner.counters.circuit_open
                };
                counter.fetch_add(1, Ordering::Relaxed);
            })?;
        let now = inner.clock.now_ms();
        let timeout = options.timeout.unwrap_or(inner.options.default_timeout);
        let deadline_ms = now.saturating_add(duration_ms(timeout));
        let mut envelope = publisher.envelope_of(request)?;
        envelope.correlationid = Some(id.to_string());
        envelope.replyto = Some(inner.reply_to.clone());
        envelope.deadline = to_datetime(deadline_ms);
        // No subject by default: each request then has a lane of its own (keyed by its id),
        // and a broker is not made to index one subject per request.
        envelope.subject = options.subject;
        envelope.set_principal(options.principal.as_ref());
        let record = PendingRequest {
            id: id.to_string(),
            group: inner.group.clone(),
            request_type: R::TYPE.to_owned(),
            responder: route.topic.clone(),
            sent_ms: now,
            deadline_ms,
            context: options.context,
        };
        inner.store.insert(&record).await?;
        inner
            .counters
            .records_written
            .fetch_add(1, Ordering::Relaxed);
        pass.book(
            id.as_str(),
            tokio::time::Instant::now()
                + timeout
                + inner.options.sweep_interval * 2
                + Duration::from_secs(1),
        );
        if let Err(e) = publisher.publish_envelope(&envelope).await {
            inner.admission.withdraw(id.as_str());
            if let Err(remove) = inner.store.remove(id.as_str()).await {
                tracing::error!(group = %inner.group, %id, error = %remove, "publish failed and the pending record could not be removed; it will time out");
            }
            return Err(e);
        }
        inner.counters.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends `request` and waits for its response here. The request is persisted like any
    /// other: if this process stops waiting (restart, dropped future), the outcome goes to
    /// the reply handler of `R`, if any, on whichever node gets it.
    ///
    /// The error's [`kind`](Error::kind) says how it ended, as a call's does:
    /// [`ErrorKind::Remote`] when the responder refused it (its [`Rejection`](crate::Rejection) in
    /// [`Error::rejection`]), [`ErrorKind::DeadlineExceeded`] when no reply came in time, or
    /// the kind of what stopped the send (`TooLarge`, `Unavailable`, `Storage`, …).
    ///
    /// ```no_run
    /// # async fn demo(requester: tabgrab::messaging::Requester) -> Result<(), tabgrab::Error> {
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize, tabgrab::Message)]
    /// # #[message(type = "demo.menu.get-price.v1", query, response = u64)]
    /// # struct GetPrice { pizza: String }
    /// use tabgrab::ErrorKind;
    /// use tabgrab::messaging::SendOptions;
    ///
    /// let ask = GetPrice { pizza: "tartufo".into() };
    /// match requester.request(&ask, SendOptions::default()).await {
    ///     Ok(cents) => println!("{cents} cents"),
    ///     Err(e) if e.kind() == ErrorKind::Remote => println!("refused: {:?}", e.rejection()),
    ///     Err(e) if e.kind() == ErrorKind::DeadlineExceeded => println!("no answer in time"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// In a group of several nodes the reply may reach another node, which has no waiter for
    /// it. The wait is therefore bounded: at the deadline plus two sweep intervals and a
    /// second, the store decides. A request that is still unanswered there ends as
    /// `DeadlineExceeded`; one answered on another node fails with `Unavailable` (its
    /// outcome went to that node's reply handler). Code that runs several nodes should use
    /// [`RequesterBuilder::on_reply`] instead, which works on any node.
    pub async fn request<R: Request>(
        &self,
        request: &R,
        options: SendOptions,
    ) -> Result<R::Response, Error> {
        let id = RequestId::new();
        let timeout = options
            .timeout
            .unwrap_or(self.inner.options.default_timeout);
        let (tx, rx) = oneshot::channel();
        self.inner.waiters().insert(id.to_string(), tx);
        if let Err(e) = self.send_with_id(&id, request, options).await {
            self.inner.waiters().remove(id.as_str());
            return Err(e);
        }
        let wait = timeout + self.inner.options.sweep_interval * 2 + Duration::from_secs(1);
        let raw = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(_)) => {
                return Err(Error::new(
                    ErrorKind::Closed,
                    format!("the requester stopped before {} {id} ended", R::TYPE),
                ));
            }
            Err(_) => {
                self.inner.waiters().remove(id.as_str());
                return match self.inner.store.state(id.as_str()).await? {
                    Some(RecordState::Replied | RecordState::Replying) => Err(Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "the reply to {} {id} reached another node of group {}; receive outcomes with on_reply to handle them on any node",
                            R::TYPE,
                            self.inner.group
                        ),
                    )),
                    // Past its deadline without a reply: timed out, whichever node's sweep
                    // records it.
                    _ => Outcome::<R>::TimedOut.into_result(),
                };
            }
        };
        raw.decode::<R>()?.into_result()
    }

    /// Waits until the group's reply subscription has joined the bus (at once on the
    /// embedded bus).
    pub async fn ready(&self) -> Result<(), Error> {
        let ready = self
            .subscription
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(Subscription::ready_owned);
        match ready {
            Some(ready) => ready.await,
            None => Err(Error::new(
                ErrorKind::Closed,
                format!("requester group {} is shut down", self.inner.group),
            )),
        }
    }

    /// This node's counters.
    pub fn stats(&self) -> RequesterStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequesterStats {
            sent: get(&c.sent),
            records_written: get(&c.records_written),
            replied: get(&c.replied),
            timed_out: get(&c.timed_out),
            late: get(&c.late),
            duplicate: get(&c.duplicate),
            rejected: get(&c.rejected),
            unhandled: get(&c.unhandled),
            handler_failures: get(&c.handler_failures),
            shed: get(&c.shed),
            circuit_open: get(&c.circuit_open),
            breaker: self.inner.admission.breaker().map(BreakerHandle::state),
            in_flight: self.inner.admission.in_flight(),
        }
    }

    /// Runs one timeout sweep now (the background sweep does this every interval); returns
    /// how many requests it ended as `TimedOut`.
    pub async fn sweep_now(&self) -> Result<usize, Error> {
        super::sweep::sweep_once(&self.inner).await
    }

    /// Stops this node: the sweep, then the reply consumer (running handlers finish, the
    /// offset is committed). Pending requests stay in the store for the other nodes or the
    /// next start.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.cancel.cancel();
        if let Some(sweep) = take(&self.sweep) {
            let _ = sweep.await;
        }
        if let Some(subscription) = take(&self.subscription) {
            subscription.shutdown().await?;
        }
        self.inner.waiters().clear();
        Ok(())
    }
}
