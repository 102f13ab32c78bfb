//! Consumer-group subscriptions: one runtime over [`Backend`] deliveries, for every engine.
//!
//! A subscription joins its group through [`Backend::subscribe`] and takes deliveries: the
//! embedded log's, JetStream's, RabbitMQ's. The engine keeps the group's position and hands
//! out again what is not acknowledged (the embedded log keeps a watermark of settled offsets,
//! see `backend::embedded`; a broker its acknowledgement state). Everything above that is
//! this one code path: decoding checks, bad input to dead letters, per-subject lanes, retries
//! with backoff inside the lane, dead letters after `max_deliveries`, and each delivery
//! settled with its acker once its handler succeeded or its dead letter is stored. While a
//! delivery waits in a lane or retries, the subscription reports progress to the engine so
//! that it is not redelivered behind its own back.
//!
//! # Two limits
//! `max_deliveries` bounds the handler's attempts on one delivery (its retries run inside the
//! lane). An engine also counts how often it delivered a message, but that count is not the
//! handler's attempts: it grows by one for every delivery a member took and gave back without
//! running it (a member that stops with a backlog, messages in transit when it stopped). Used
//! as the attempt count, it dead-lettered events no handler had ever failed on, after a few
//! restarts under load. So the engine's count only guards against crash loops: a delivery made
//! more than `max_redeliveries` times (default 20: its consumers kept crashing or stalling on
//! it, or kept stopping) is dead-lettered without running the handler again, and a broker that
//! counts itself stops there.
//!
//! # How a member works
//! One dispatcher task per subscription takes deliveries (at most `max_in_flight` unsettled).
//! Each is checked (bad input goes to dead letters at once), then queued on its subject's
//! lane. A lane is a task that handles its subject's events one after the other, so order is
//! kept per subject, while lanes of different subjects run in parallel (bounded by
//! `concurrency`). A failing event is retried *inside its lane*, with backoff: only its own
//! subject waits, the others flow.
//!
//! # Circuit breaker
//! A subscription may have a [`BreakerHandle`] ([`SubscriptionBuilder::breaker`]) that stands
//! for its handlers' dependency (a payment service, a database). Each handler run is admitted
//! by the breaker and reports to it: `Ok` and permanent errors (the dependency answered; the
//! event is bad) as successes, transient errors and panics as failures. While the breaker is
//! open, the dispatcher takes no deliveries (the engine keeps them) and the held events wait
//! for admission instead of retrying; at the end of the open duration the breaker's probes
//! run, and when they succeed the group catches up. A transient failure after which the
//! breaker is not closed (it opened it, it was a failed probe, or it came from before the
//! breaker opened) is the dependency's, not the event's: it does not count towards
//! `max_deliveries`, and its backoff is the wait for admission. So an outage dead-letters
//! nothing; it shows as lag and as [`SubscriptionStats::breaker`].
//!
//! The breaker cannot tell an outage from one event that fails transiently forever while no
//! other event succeeds: with `consecutive_failures` at or below `max_deliveries`, such an
//! event (alone on the topic) pauses the group, probe after probe, until it succeeds or an
//! operator steps in; with a higher threshold, or a rate threshold, it is dead-lettered, but
//! an outage during which few events arrive may then dead-letter them. The default breaker
//! ([`BreakerConfig::default`](crate::breaker::BreakerConfig::default): 5 in a row) and the default `max_deliveries` (5) choose the
//! first. Handler attempts that a breaker does not charge count in
//! [`SubscriptionStats::retries`] like the others.
//!
//! # Principals
//! A subscription built with [`SubscriptionBuilder::require_principal`] or
//! [`SubscriptionBuilder::authorize`] handles only events that carry a [`Principal`] (the
//! publisher's, or the one inherited from the call or event that caused it; see
//! [`tabgrab_core::principal`], which also says what such a principal proves) that its rule
//! allows for the event's type. Any other event of a type it handles is bad input: it is
//! dead-lettered before a handler runs, with the reason `unauthenticated` or
//! `permission_denied`, and can be redriven once its publisher is fixed.
//!
//! # Competing consumers
//! Subscriptions with the same topic and group are members of one group, in this process or
//! (on a broker) in others; the engine shares the deliveries among them. Members of a group
//! are expected to handle the same types. When a member stops, what it holds and has not
//! started goes back to the engine at once, and the next member gets it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tabgrab_resilience::breaker::{BreakerHandle, CircuitState, Outcome, Ticket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dead_letter::DeadLetter;
use super::handler::{Context, HandlerError};
use crate::backend::{Acker, Backend, Bus, Deliveries, Delivery, SubscribeRequest};
use crate::retry::Backoff;
use crate::telemetry::{self, Labels, Samples, names};
use crate::{Envelope, Error, ErrorKind, Event, Principal, Registry, Topic};
use tabgrab_core::telemetry::trace::{self, Kind, Parent, Span, Start, Value};

/// Where a group starts reading when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The group's committed offset, or the beginning for a new group (the default: a new
    /// group sees every retained event).
    #[default]
    Committed,
    /// The oldest retained event (replay everything).
    Beginning,
    /// A given offset (clamped to what is retained).
    Offset(u64),
    /// The first event appended at or after this time.
    Time(SystemTime),
    /// Only events published from now on.
    Latest,
}

/// A type-erased handler: decodes the envelope into its event type and runs the user's code.
pub(crate) type ErasedHandler = Arc<
    dyn Fn(Arc<Envelope>, Context) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync,
>;

/// Handlers by event type name.
type Handlers = HashMap<String, ErasedHandler>;

/// Counters of one group, shared by all its members.
#[derive(Default, Debug)]
struct Counters {
    received: AtomicU64,
    acked: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    dead_letter_failures: AtomicU64,
    skipped: AtomicU64,
}

/// A snapshot of a group's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Records read from the topic.
    pub received: u64,
    /// Events whose handler returned `Ok`.
    pub acked: u64,
    /// Handler retries (deliveries after the first).
    pub retries: u64,
    /// Records sent to dead letters.
    pub dead_lettered: u64,
    /// Failed attempts to write a dead letter. Each is retried with backoff; meanwhile the
    /// record stays unacknowledged (and counts in the lag), while the group's other records
    /// flow.
    pub dead_letter_failures: u64,
    /// Known events of types this group does not handle.
    pub skipped: u64,
    /// The state of the subscription's circuit breaker, if it has one.
    pub breaker: Option<CircuitState>,
}

/// Tunables of a subscription.
#[derive(Clone, Debug)]
struct Options {
    max_deliveries: u32,
    max_redeliveries: u32,
    backoff: Backoff,
    start_from: StartFrom,
    concurrency: usize,
    max_in_flight: usize,
    commit_interval: Duration,
    drain_timeout: Duration,
    ack_wait: Duration,
    /// The type of a message that names none (see `SubscribeRequest::untyped_as`).
    untyped_as: Option<String>,
    /// The handlers' dependency's breaker (see "Circuit breaker" above).
    breaker: Option<BreakerHandle>,
    /// Whether events must come from a principal, and which (see "Principals" above).
    admission: Option<Admission>,
}

/// A consumer's requirement of a [`Principal`]: any, or those a rule allows per type.
#[derive(Clone)]
pub(crate) struct Admission {
    rule: Option<Arc<tabgrab_core::principal::Rule>>,
}

impl Admission {
    /// Any principal is admitted.
    pub(crate) fn any() -> Admission {
        Admission { rule: None }
    }

    /// Those `rule` allows.
    pub(crate) fn rule(
        rule: impl Fn(&Principal, &str) -> bool + Send + Sync + 'static,
    ) -> Admission {
        Admission {
            rule: Some(Arc::new(rule)),
        }
    }

    /// Whether `envelope` is admitted: `Unauthenticated` or `PermissionDenied` if not.
    pub(crate) fn check(&self, envelope: &Envelope) -> Result<(), Error> {
        tabgrab_core::principal::admit(
            envelope.principal().as_ref(),
            &envelope.ty,
            self.rule.as_deref(),
        )
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.rule {
            None => "any principal",
            Some(_) => "principals a rule allows",
        })
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_deliveries: 5,
            max_redeliveries: 20,
            backoff: Backoff::default(),
            start_from: StartFrom::Committed,
            concurrency: 64,
            max_in_flight: 4096,
            commit_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            ack_wait: Duration::from_secs(30),
            untyped_as: None,
            breaker: None,
            admission: None,
        }
    }
}

/// Builds a [`Subscription`]: which events to handle, and how.
pub struct SubscriptionBuilder {
    bus: Bus,
    topic: String,
    group: String,
    handlers: Handlers,
    registry: Registry,
    options: Options,
}

impl std::fmt::Debug for SubscriptionBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionBuilder")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("handles", &self.handlers.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish()
    }
}

impl SubscriptionBuilder {
    /// Handles events of type `E` with `handler`. The type is registered as known.
    pub fn handle<E, F, Fut>(mut self, handler: F) -> SubscriptionBuilder
    where
        E: Event,
        F: Fn(E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.registry.register::<E>();
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |envelope: Arc<Envelope>, ctx: Context| {
            let handler = Arc::clone(&handler);
            async move {
                // A payload that does not decode is bad input: no retry can fix it.
                let event = envelope.decode::<E>().map_err(HandlerError::bad_input)?;
                handler(event, ctx).await
            }
            .boxed()
        });
        self.handlers.insert(E::TYPE.to_owned(), erased);
        self
    }

    /// Handles events of type `E` with `handler`, which also gets a clone of `state` on each
    /// call: the service's state without a clone per handler by hand (like axum's
    /// `with_state`, per handler). `state` is typically an `Arc` or a type of cheap clones.
    ///
    /// ```no_run
    /// # fn demo(bus: &tabgrab::backend::embedded::EmbeddedBus) -> Result<(), tabgrab::Error> {
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize, tabgrab::Message)]
    /// # #[message(type = "demo.order.accepted.v1", event)]
    /// # struct OrderAccepted { order_id: String }
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use tabgrab::event::Subscription;
    ///
    /// let baked = Arc::new(AtomicU64::new(0));
    /// let kitchen = Subscription::builder(bus, "orders", "kitchen")
    ///     .handle_with(Arc::clone(&baked), |baked, _order: OrderAccepted, _ctx| async move {
    ///         baked.fetch_add(1, Ordering::Relaxed);
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// # Ok(()) }
    /// ```
    pub fn handle_with<S, E, F, Fut>(self, state: S, handler: F) -> SubscriptionBuilder
    where
        S: Clone + Send + Sync + 'static,
        E: Event,
        F: Fn(S, E, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.handle(move |event: E, ctx| handler(state.clone(), event, ctx))
    }

    /// Handles envelopes of type `ty` with a type-erased handler. Request-response messaging
    /// uses it: requests and replies travel on topics like events but are not events, so the
    /// typed [`handle`](Self::handle) (which takes only `Event`s) cannot carry them.
    pub(crate) fn handle_envelope(
        &mut self,
        ty: &str,
        handler: ErasedHandler,
    ) -> Result<(), Error> {
        self.registry.register_name(ty)?;
        self.handlers.insert(ty.to_owned(), handler);
        Ok(())
    }

    /// Declares types this group knows but does not handle: they are skipped, not
    /// dead-lettered as unknown.
    pub fn known(mut self, registry: &Registry) -> SubscriptionBuilder {
        self.registry.merge(registry);
        self
    }

    /// Handler attempts on one delivery before the event goes to dead letters (default 5,
    /// at least 1); the retries run in the event's lane, with [`Self::backoff`].
    pub fn max_deliveries(mut self, n: u32) -> SubscriptionBuilder {
        self.options.max_deliveries = n.max(1);
        self
    }

    /// On a broker: how often it may deliver an event before the event is dead-lettered
    /// without running its handler again (default 20, at least 1). It guards against crash
    /// loops: a broker counts every delivery, also those a member gave back unstarted when it
    /// stopped, so this is larger than [`Self::max_deliveries`], which counts the handler's
    /// attempts. A broker that counts deliveries itself stops redelivering there; on RabbitMQ
    /// each group's queue also has its own limit of 50 (`x-delivery-limit`).
    pub fn max_redeliveries(mut self, n: u32) -> SubscriptionBuilder {
        self.options.max_redeliveries = n.max(1);
        self
    }

    /// The retry backoff (default: 100 ms doubling to 10 s, full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> SubscriptionBuilder {
        self.options.backoff = backoff;
        self
    }

    /// A circuit breaker for the handlers' dependency: while it is open, the group takes no
    /// deliveries and its held events wait for it instead of using up their attempts into
    /// dead letters (see "Circuit breaker" in the module docs). Takes a [`BreakerConfig`](crate::breaker::BreakerConfig), or
    /// a [`BreakerHandle`] shared with other subscriptions or with a call client of the same
    /// dependency (one breaker then sees every failure of that dependency).
    ///
    /// ```
    /// # use tabgrab::event::Subscription;
    /// # use tabgrab::breaker::BreakerConfig;
    /// # fn doc(bus: tabgrab::backend::Bus) -> Result<(), tabgrab::Error> {
    /// # let _ =
    /// Subscription::builder(&bus, "kitchen", "payments")
    ///     .breaker(BreakerConfig {
    ///         open_for: std::time::Duration::from_secs(10),
    ///         ..BreakerConfig::default()
    ///     });
    /// # Ok(()) }
    /// ```
    pub fn breaker(mut self, breaker: impl Into<BreakerHandle>) -> SubscriptionBuilder {
        self.options.breaker = Some(breaker.into());
        self
    }

    /// Handles only events that carry a [`Principal`] (the `principal` attribute, see
    /// [`tabgrab_core::principal`]): one without is dead-lettered with the reason
    /// `unauthenticated` before any handler runs.
    pub fn require_principal(mut self) -> SubscriptionBuilder {
        self.options.admission = Some(Admission::any());
        self
    }

    /// Handles an event only when it carries a [`Principal`] and `rule(principal, type)`
    /// allows it; otherwise it is dead-lettered before any handler runs, with the reason
    /// `unauthenticated` (no principal) or `permission_denied`. The bus-side twin of the
    /// call server's `Handlers::authorize`.
    ///
    /// ```
    /// # use tabgrab::event::Subscription;
    /// # fn doc(bus: tabgrab::backend::Bus) {
    /// // Only the front desk may tell the kitchen about orders.
    /// # let _ =
    /// Subscription::builder(&bus, "orders", "kitchen")
    ///     .authorize(|principal, _ty| principal.name() == "front-desk");
    /// # }
    /// ```
    pub fn authorize(
        mut self,
        rule: impl Fn(&Principal, &str) -> bool + Send + Sync + 'static,
    ) -> SubscriptionBuilder {
        self.options.admission = Some(Admission::rule(rule));
        self
    }

    /// Where to start reading (default: the committed offset).
    pub fn start_from(mut self, start: StartFrom) -> SubscriptionBuilder {
        self.options.start_from = start;
        self
    }

    /// How many handlers may run at once (default 64).
    pub fn concurrency(mut self, n: usize) -> SubscriptionBuilder {
        self.options.concurrency = n.max(1);
        self
    }

    /// How many records may be read ahead of the committed offset (default 4096).
    pub fn max_in_flight(mut self, n: usize) -> SubscriptionBuilder {
        self.options.max_in_flight = n.max(1);
        self
    }

    /// How often the group's offset is committed (default 1 s). A commit costs two fsyncs
    /// that compete with the log's own; a longer interval means more redelivery after a
    /// crash (never loss).
    pub fn commit_interval(mut self, interval: Duration) -> SubscriptionBuilder {
        self.options.commit_interval = interval;
        self
    }

    /// Reads a message that names no type, on an engine that reads messages of clients that
    /// send no CloudEvents attributes, as one of type `ty` (a requester's reply topic: a plain
    /// AMQP reply carries only its `correlation_id`).
    pub(crate) fn untyped_as(mut self, ty: &str) -> SubscriptionBuilder {
        self.options.untyped_as = Some(ty.to_owned());
        self
    }

    /// How long shutdown waits for running handlers (default 10 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> SubscriptionBuilder {
        self.options.drain_timeout = timeout;
        self
    }

    /// On a broker: how long it waits for an acknowledgement before it redelivers to another
    /// member (default 30 s). A crashed consumer's events are redelivered after it; a live
    /// one reports progress on what it holds, so slow handlers are not redelivered.
    pub fn ack_wait(mut self, wait: Duration) -> SubscriptionBuilder {
        self.options.ack_wait = wait.max(Duration::from_millis(300));
        self
    }

    /// Starts the subscription: joins the group (a competing member when it already runs).
    /// Must be called inside a tokio runtime. An engine that joins without a round trip (the
    /// embedded log) has joined when this returns; on a broker the group is joined in the
    /// background. On every engine [`Subscription::ready`] waits for the join and reports a
    /// failure (an invalid topic or group name is refused here).
    pub fn start(self) -> Result<Subscription, Error> {
        crate::topic::check_group(&self.group)?;
        let topic = Topic::new(&self.topic)?;
        let backend = Arc::clone(self.bus.backend());
        let request = SubscribeRequest {
            topic: topic.clone(),
            group: self.group.clone(),
            start: self.options.start_from,
            ack_wait: self.options.ack_wait,
            max_in_flight: self.options.max_in_flight,
            max_redeliveries: self.options.max_redeliveries,
            rejoin: false,
            stop: CancellationToken::new(),
            commit_interval: self.options.commit_interval,
            untyped_as: self.options.untyped_as.clone(),
        };
        let joining = Arc::clone(&backend).subscribe(request.clone());
        let system = names::messaging_system(backend.name());
        let labels: Labels = vec![
            (names::SYSTEM, system.to_owned()),
            (names::DESTINATION, topic.to_string()),
            (names::GROUP, self.group.clone()),
        ];
        let group = Arc::new(Group {
            processed: metrics::histogram!(names::PROCESS_DURATION, &labels),
            labels,
            system,
            in_flight: Arc::new(Semaphore::new(self.options.max_in_flight)),
            running: Arc::new(Semaphore::new(self.options.concurrency)),
            bus: self.bus,
            topic,
            name: self.group.into(),
            handlers: Arc::new(self.handlers),
            held: Mutex::new(HashMap::new()),
            broker_pending: AtomicU64::new(0),
            ready: tokio::sync::watch::Sender::new(Readiness::Starting),
            registry: self.registry,
            options: self.options,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            cancel: CancellationToken::new(),
            lanes: TaskTracker::new(),
            dispatcher: Mutex::new(None),
        });
        let handle = tokio::spawn(Arc::clone(&group).dispatch(backend, request, joining));
        *lock(&group.dispatcher) = Some(handle);
        let source: Arc<dyn telemetry::Source> = Arc::clone(&group) as _;
        telemetry::register(Arc::downgrade(&source));
        Ok(Subscription {
            member: NEXT_MEMBER.fetch_add(1, Ordering::Relaxed),
            group,
        })
    }
}

static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

/// How long a stopping member waits for what the broker had already sent it (to give it
/// back at once): a NATS member waits for its pull requests to end (a quarter of a second,
/// unless the server does not answer).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// How often an idle broker member asks the server for its group's lag. A member learns the
/// lag from each delivery's metadata (the broker's count of what waits after it); once
/// deliveries stop, the last count would stand for ever, and it can be stale (nats-server 2.9
/// reports a few pending after the last message of a burst), so [`Subscription::lag`] would
/// never reach zero and nothing waiting for a caught-up group would end.
const IDLE_LAG_CHECK: Duration = Duration::from_secs(1);

/// A running member of a consumer group. Dropping it stops it; [`Subscription::shutdown`]
/// also waits for the drain and for its settlements to reach the engine.
pub struct Subscription {
    group: Arc<Group>,
    member: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.group.topic)
            .field("group", &self.group.name)
            .field("member", &self.member)
            .finish()
    }
}

impl Subscription {
    /// Starts building a subscription of `group` to `topic`.
    /// `bus` is a [`Bus`] or an `&EmbeddedBus`.
    pub fn builder(bus: impl Into<Bus>, topic: &str, group: &str) -> SubscriptionBuilder {
        SubscriptionBuilder {
            bus: bus.into(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            handlers: HashMap::new(),
            registry: Registry::new(),
            options: Options::default(),
        }
    }

    /// This member's counters.
    pub fn stats(&self) -> SubscriptionStats {
        let c = &self.group.counters;
        SubscriptionStats {
            received: c.received.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            dead_letter_failures: c.dead_letter_failures.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            breaker: self
                .group
                .options
                .breaker
                .as_ref()
                .map(BreakerHandle::state),
        }
    }

    /// How many records of the topic this group has not finished yet: 0 means the group has
    /// caught up. On the embedded bus, the end of the topic minus the group's watermark; on a
    /// broker, what the broker last said is pending for the group, plus what this member
    /// holds.
    pub fn lag(&self) -> u64 {
        let group = &self.group;
        group
            .bus
            .backend()
            .live_lag(&group.topic, &group.name)
            .unwrap_or_else(|| {
                group.broker_pending.load(Ordering::Relaxed)
                    + lock(&group.state).pending.len() as u64
            })
    }

    /// Waits until the subscription has joined its group (at once on the embedded bus; on a
    /// broker, once the consumer exists). Returns the reason if joining failed.
    pub async fn ready(&self) -> Result<(), Error> {
        self.ready_owned().await
    }

    /// The readiness check of [`Health::subscription`](crate::telemetry::Health::subscription):
    /// its name (`topic/group`) and a probe that does not keep the member alive.
    pub(crate) fn probe(
        &self,
    ) -> (
        String,
        impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        let name = format!("{}/{}", self.group.topic, self.group.name);
        let group = Arc::downgrade(&self.group);
        let probe = move || {
            let group = group.upgrade().ok_or("stopped")?;
            if group.cancel.is_cancelled() {
                return Err("stopping".to_owned());
            }
            if lock(&group.dispatcher)
                .as_ref()
                .is_none_or(JoinHandle::is_finished)
            {
                return Err("its dispatcher ended".to_owned());
            }
            match &*group.ready.borrow() {
                Readiness::Ready => Ok(()),
                Readiness::Starting => Err("joining its group".to_owned()),
                Readiness::Failed(_, reason) => Err(format!("joining failed: {reason}")),
            }
        };
        (name, probe)
    }

    /// [`Subscription::ready`] as a future that does not borrow the subscription.
    pub(crate) fn ready_owned(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let group = Arc::clone(&self.group);
        async move { group.wait_ready().await }
    }
}

impl Group {
    /// Waits until the group has joined (or failed to).
    async fn wait_ready(&self) -> Result<(), Error> {
        let mut rx = self.ready.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Readiness::Starting => {}
                Readiness::Ready => return Ok(()),
                Readiness::Failed(kind, message) => {
                    return Err(Error::new(*kind, message.clone()));
                }
            }
            if rx.changed().await.is_err() {
                return Err(Error::new(
                    ErrorKind::Closed,
                    format!("group {} stopped before it was ready", self.name),
                ));
            }
        }
    }
}

impl Subscription {
    /// Stops this member: stops taking deliveries, gives back what it has not started, waits
    /// for running handlers (up to the drain timeout) and for its settlements to reach the
    /// engine (on the embedded bus, the group's offset is committed).
    pub async fn shutdown(self) -> Result<(), Error> {
        self.group.cancel.cancel();
        let dispatcher = lock(&self.group.dispatcher).take();
        match dispatcher {
            Some(handle) => handle.await.map_err(|e| {
                Error::new(
                    ErrorKind::Closed,
                    format!("group {} dispatcher failed", self.group.name),
                )
                .with_source(e)
            })?,
            None => Ok(()),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.group.cancel.cancel();
    }
}

/// Whether a group has joined its broker.
#[derive(Clone, Debug)]
enum Readiness {
    Starting,
    Ready,
    Failed(ErrorKind, String),
}

/// A record waiting in its subject's lane.
struct Job {
    offset: u64,
    envelope: Arc<Envelope>,
    raw: Bytes,
    /// Held until the job is done: bounds read-ahead.
    _permit: OwnedSemaphorePermit,
}

/// Mutable state of a group.
#[derive(Default)]
struct State {
    /// Queued jobs per subject; a key exists exactly while its lane task runs.
    lanes: HashMap<String, VecDeque<Job>>,
    /// Records to dead-letter that never reached a lane (bad input, crash loops), in the
    /// order they were read, with their read-ahead permits.
    burials: VecDeque<(DeadLetter, OwnedSemaphorePermit)>,
    /// Whether the burial lane runs.
    burying: bool,
    /// Positions taken and not yet done.
    pending: BTreeSet<u64>,
}

/// One member of a consumer group: its handlers and the deliveries it holds.
pub(crate) struct Group {
    bus: Bus,
    topic: Topic,
    name: Arc<str>,
    /// The member's handlers by event type.
    handlers: Arc<Handlers>,
    /// Held deliveries by position, settled when done.
    held: Mutex<HashMap<u64, Arc<dyn Acker>>>,
    /// What the broker last reported as pending for the group.
    broker_pending: AtomicU64,
    /// Whether the group has joined.
    ready: tokio::sync::watch::Sender<Readiness>,
    registry: Registry,
    options: Options,
    state: Mutex<State>,
    counters: Counters,
    cancel: CancellationToken,
    in_flight: Arc<Semaphore>,
    running: Arc<Semaphore>,
    lanes: TaskTracker,
    dispatcher: Mutex<Option<JoinHandle<Result<(), Error>>>>,
    /// The group's metric attributes (engine, topic, group).
    labels: Labels,
    /// The engine as `messaging.system` names it.
    system: &'static str,
    /// Handler durations of successful runs (failures' are taken when they happen).
    processed: metrics::Histogram,
}

/// Locks a mutex, recovering the data if a panic poisoned it (our critical sections leave
/// the state consistent at every step).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Group {
    /// Takes the engine's deliveries and feeds the lanes until cancelled; then drains and
    /// gives back what was not handled (so another member gets it at once).
    async fn dispatch(
        self: Arc<Group>,
        backend: Arc<dyn Backend>,
        request: SubscribeRequest,
        joining: futures::future::BoxFuture<'static, Result<Deliveries, Error>>,
    ) -> Result<(), Error> {
        let mut deliveries = match joining.await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(topic = %self.topic, group = %self.name, error = %e, "cannot join the consumer group");
                self.ready
                    .send_replace(Readiness::Failed(e.kind(), e.to_string()));
                return Err(e);
            }
        };
        self.ready.send_replace(Readiness::Ready);
        let request = SubscribeRequest {
            start: StartFrom::Committed,
            rejoin: true,
            ..request
        };
        // Deliveries taken but not started when the member stops.
        let mut arrived: Vec<Box<dyn Acker>> = Vec::new();
        let keep_alive = CancellationToken::new();
        let ack_wait = backend.ack_wait(self.options.ack_wait);
        let keeping_alive =
            tokio::spawn(Arc::clone(&self).keep_alive(ack_wait, keep_alive.clone()));
        let mut breaker = self
            .options
            .breaker
            .as_ref()
            .map(|breaker| (breaker, breaker.subscribe()));
        loop {
            if let Some((handle, changes)) = &mut breaker
                && !Box::pin(self.intake_allowed(handle, changes)).await
            {
                break;
            }
            let item = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                // The breaker opened while waiting for a delivery: pause before taking one.
                () = opened(&mut breaker) => continue,
                item = futures::StreamExt::next(&mut deliveries) => item,
            };
            match item {
                Some(Ok(delivery)) => {
                    let permit = tokio::select! {
                        () = self.cancel.cancelled() => {
                            // Given back with the rest of the handover below.
                            arrived.push(delivery.acker);
                            break;
                        }
                        permit = Arc::clone(&self.in_flight).acquire_owned() => permit,
                    };
                    let Ok(permit) = permit else { break };
                    self.accept_delivery(delivery, permit).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, group = %self.name, error = %e, "broker delivery error");
                }
                None => {
                    tracing::warn!(topic = %self.topic, group = %self.name, "the engine ended the subscription; joining again");
                    tokio::select! {
                        () = self.cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    match Arc::clone(&backend).subscribe(request.clone()).await {
                        Ok(d) => deliveries = d,
                        Err(e) if e.kind() == ErrorKind::Closed => {
                            tracing::error!(topic = %self.topic, group = %self.name, error = %e, "the engine is closed; the member stops");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(topic = %self.topic, group = %self.name, error = %e, "joining again failed; retrying");
                        }
                    }
                }
            }
        }
        // What is on its way to this member goes back at once, not after the broker's ack
        // wait: the backend stops asking for more, and its stream yields what the broker had
        // already sent, then ends (bounded in time: a broken stream may never end). It is
        // given back after the stream ended: earlier, the broker could send it to this
        // member's requests again.
        request.stop.cancel();
        let handover = async {
            while let Some(item) = futures::StreamExt::next(&mut deliveries).await {
                if let Ok(delivery) = item {
                    arrived.push(delivery.acker);
                }
            }
        };
        if tokio::time::timeout(HANDOVER_TIMEOUT, handover)
            .await
            .is_err()
        {
            tracing::debug!(topic = %self.topic, group = %self.name, "the broker's stream did not end within the handover time");
        }
        drop(deliveries);
        for acker in arrived {
            let _ = acker.nack(Duration::ZERO).await;
        }
        self.lanes.close();
        if tokio::time::timeout(self.options.drain_timeout, self.lanes.wait())
            .await
            .is_err()
        {
            tracing::warn!(topic = %self.topic, group = %self.name, "drain timed out; unfinished events will be redelivered");
        }
        keep_alive.cancel();
        // Ended before `shutdown` returns: it holds the member (and its handlers).
        let _ = keeping_alive.await;
        let held: Vec<Arc<dyn Acker>> = lock(&self.held).drain().map(|(_, a)| a).collect();
        for acker in held {
            let _ = acker.nack(Duration::ZERO).await;
        }
        // The settlements are on their way to the broker before `shutdown` returns.
        if let Err(e) = backend.flush().await {
            tracing::warn!(topic = %self.topic, group = %self.name, error = %e, "flushing the settlements failed; the broker redelivers what it did not hear of after its ack wait");
        }
        Ok(())
    }

    /// Waits while `breaker` is open (until its open duration ends: its probes then need
    /// deliveries to run on, and it stays open until a first call). Marks the state as seen in
    /// `changes`, so that an opening afterwards wakes [`opened`]. `false` when the member
    /// stops first.
    async fn intake_allowed(
        &self,
        breaker: &BreakerHandle,
        changes: &mut tokio::sync::watch::Receiver<CircuitState>,
    ) -> bool {
        let mut logged = false;
        loop {
            changes.borrow_and_update();
            let until = match breaker.open_until() {
                Some(until) if until > tokio::time::Instant::now() => until,
                _ => {
                    if logged {
                        tracing::info!(topic = %self.topic, group = %self.name, "the circuit breaker's open time is over; taking deliveries again");
                    }
                    return true;
                }
            };
            if !logged {
                tracing::info!(topic = %self.topic, group = %self.name, "the circuit breaker is open; the group takes no deliveries until it probes again");
                logged = true;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep_until(until) => {}
                _ = changes.changed() => {}
            }
        }
    }

    /// Tells the broker, well within its ack wait, that held deliveries are being worked on.
    async fn keep_alive(self: Arc<Group>, ack_wait: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(ack_wait / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut idle = tokio::time::interval(IDLE_LAG_CHECK);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = self.counters.received.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = idle.tick() => {
                    seen = self.refresh_idle_lag(seen).await;
                    continue;
                }
            }
            let held: Vec<Arc<dyn Acker>> = lock(&self.held).values().cloned().collect();
            for acker in held {
                if let Err(e) = acker.progress().await {
                    tracing::debug!(topic = %self.topic, group = %self.name, error = %e, "progress report failed");
                }
            }
        }
    }

    /// When nothing arrived since the last check (`seen` deliveries then) and the member
    /// holds nothing, takes the group's lag from the server instead of the last delivery's
    /// count (see [`IDLE_LAG_CHECK`]). Returns the deliveries seen now.
    async fn refresh_idle_lag(&self, seen: u64) -> u64 {
        let now = self.counters.received.load(Ordering::Relaxed);
        if now != seen
            || self.broker_pending.load(Ordering::Relaxed) == 0
            || !lock(&self.held).is_empty()
        {
            return now;
        }
        if let Ok(Some(lag)) = self.bus.backend().group_lag(&self.topic, &self.name).await
            && self.counters.received.load(Ordering::Relaxed) == now
        {
            self.broker_pending.store(lag, Ordering::Relaxed);
        }
        now
    }

    /// Takes one broker delivery: like [`Group::accept`], and it is held until done.
    async fn accept_delivery(self: &Arc<Group>, delivery: Delivery, permit: OwnedSemaphorePermit) {
        let Delivery {
            envelope,
            raw,
            position,
            attempt,
            pending,
            acker,
        } = delivery;
        self.broker_pending.store(pending, Ordering::Relaxed);
        let acker: Arc<dyn Acker> = Arc::from(acker);
        {
            let mut held = lock(&self.held);
            if let Some(old) = held.get_mut(&position) {
                // Redelivered while still held here (a progress report came too late): the
                // job in the lane settles it, with the newer delivery's acker.
                *old = acker;
                return;
            }
            held.insert(position, acker);
        }
        lock(&self.state).pending.insert(position);
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let checked = envelope.map_err(|e| (e, None)).and_then(|envelope| {
            let admitted = match &self.options.admission {
                // Only the types this member handles: others are skipped anyway.
                Some(admission) if self.handlers.contains_key(&envelope.ty) => {
                    admission.check(&envelope)
                }
                _ => Ok(()),
            };
            match self.registry.check(&envelope.ty).and(admitted) {
                Ok(()) => Ok(envelope),
                Err(e) => Err((e, Some(Box::new(envelope)))),
            }
        });
        let envelope = match checked {
            Ok(envelope) => envelope,
            Err((e, envelope)) => {
                tracing::warn!(topic = %self.topic, group = %self.name, position, error = %e, "undecodable, unknown or unadmitted message dead-lettered");
                let letter =
                    DeadLetter::new(&self.topic, &self.name, position, &raw, envelope.as_deref())
                        .because(e.kind().as_str(), e.to_string(), 0);
                self.bury(letter, permit);
                return;
            }
        };
        if attempt > self.options.max_redeliveries {
            tracing::warn!(topic = %self.topic, group = %self.name, position, attempt, "delivered too often without an acknowledgement; dead-lettered");
            let letter = DeadLetter::new(&self.topic, &self.name, position, &raw, Some(&envelope))
                .because(
                    "max_deliveries",
                    format!(
                        "delivered {attempt} times without an acknowledgement (its consumers \
                         stopped or crashed while handling it)"
                    ),
                    attempt - 1,
                );
            self.bury(letter, permit);
            return;
        }
        // The handler's attempts count from 1 on every delivery: the broker's count also
        // counts deliveries given back unstarted (see "Two limits" above).
        self.enqueue(envelope, position, raw, permit).await;
    }

    /// Queues a decoded envelope on its subject's lane (or skips it when no member handles
    /// its type).
    async fn enqueue(
        self: &Arc<Group>,
        envelope: Envelope,
        offset: u64,
        raw: Bytes,
        permit: OwnedSemaphorePermit,
    ) {
        if self.cancel.is_cancelled() {
            // The member stops while this delivery was being taken. Not a type nobody
            // handles: it is given back with the other held deliveries.
            return;
        }
        if !self.handlers.contains_key(&envelope.ty) {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            self.done(offset).await;
            return;
        }
        let key = envelope
            .subject
            .clone()
            .unwrap_or_else(|| envelope.id.clone());
        let job = Job {
            offset,
            envelope: Arc::new(envelope),
            // A copy: the record is a slice of the buffer it was read in (a 64 KiB chunk of
            // the log, a client's read buffer), which a slice would keep alive for as long as
            // the job waits. Jobs spread thinly over a backlog pinned a chunk each.
            raw: Bytes::copy_from_slice(&raw),
            _permit: permit,
        };
        let mut state = lock(&self.state);
        match state.lanes.get_mut(&key) {
            Some(queue) => queue.push_back(job),
            None => {
                state.lanes.insert(key.clone(), VecDeque::from([job]));
                drop(state);
                self.lanes.spawn(Arc::clone(self).lane(key));
            }
        }
    }

    /// Handles one subject's jobs in order until its queue is empty.
    async fn lane(self: Arc<Group>, key: String) {
        loop {
            let job = {
                let mut state = lock(&self.state);
                let Some(queue) = state.lanes.get_mut(&key) else {
                    return;
                };
                match queue.pop_front() {
                    Some(job) => job,
                    None => {
                        state.lanes.remove(&key);
                        return;
                    }
                }
            };
            if self.cancel.is_cancelled() {
                // Not started: left pending, so it is redelivered after a restart.
                return;
            }
            // The handler's span continues the trace the event carries; retries and the dead
            // letter are events on it.
            let span = self.process_span(&job.envelope);
            span.instrument(self.deliver(job)).await;
        }
    }

    /// The span of handling `envelope` (OpenTelemetry messaging conventions), a child of the
    /// span that made it.
    fn process_span(&self, envelope: &Envelope) -> Span {
        Span::start(Start {
            kind: Kind::Consumer,
            parent: Parent::Carried(envelope.traceparent.as_deref()),
            name: ("process", &self.topic),
            attributes: &[
                ("messaging.system", Value::Str(self.system)),
                ("messaging.destination.name", Value::Str(&self.topic)),
                ("messaging.consumer.group.name", Value::Str(&self.name)),
                ("messaging.operation.type", Value::Str("process")),
                ("messaging.message.id", Value::Str(&envelope.id)),
                (
                    "messaging.message.conversation_id",
                    envelope.correlationid.as_deref().into(),
                ),
                ("cloudevents.event_type", Value::Str(&envelope.ty)),
            ],
        })
    }

    /// Runs the handler with retries; ends with the job done, or pending if cancelled.
    async fn deliver(&self, job: Job) {
        let Some(handler) = self.handlers.get(&job.envelope.ty).cloned() else {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            self.done(job.offset).await;
            return;
        };
        let mut attempt = 1;
        loop {
            let admitted = match &self.options.breaker {
                None => None,
                Some(breaker) => match breaker.allow(tokio::time::Instant::now()) {
                    Some(ticket) => Some(Admitted::new(breaker, ticket)),
                    // Boxed: a rare wait that would make every lane task larger.
                    None => match Box::pin(self.admission(breaker)).await {
                        Some(admitted) => Some(admitted),
                        None => return,
                    },
                },
            };
            let ctx = Context {
                envelope: Arc::clone(&job.envelope),
                offset: job.offset,
                attempt,
                group: Arc::clone(&self.name),
                shutdown: self.cancel.clone(),
            };
            let (outcome, took) = {
                let Ok(_running) = self.running.acquire().await else {
                    return;
                };
                let started = std::time::Instant::now();
                let outcome = AssertUnwindSafe(handler(Arc::clone(&job.envelope), ctx))
                    .catch_unwind()
                    .await;
                (outcome, started.elapsed())
            };
            if let Some(admitted) = admitted {
                admitted.record(match &outcome {
                    Ok(Err(e)) if e.is_retryable() => Outcome::Failure,
                    Ok(_) => Outcome::Success,
                    Err(_) => Outcome::Failure,
                });
            }
            let error = match outcome {
                Ok(Ok(())) => {
                    self.processed.record(took);
                    self.counters.acked.fetch_add(1, Ordering::Relaxed);
                    self.done(job.offset).await;
                    return;
                }
                Ok(Err(e)) => e,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_owned());
                    HandlerError::transient(format!("handler panicked: {what}"))
                }
            };
            let mut labels = self.labels.clone();
            labels.push((names::ERROR_TYPE, error.reason().to_owned()));
            metrics::histogram!(names::PROCESS_DURATION, &labels).record(took);
            let reason = if !error.is_retryable() {
                error.reason()
            } else if self
                .options
                .breaker
                .as_ref()
                .is_some_and(|b| b.state() != CircuitState::Closed)
            {
                // The dependency's failure, not the event's (see "Circuit breaker" above):
                // not charged; the wait for admission is its backoff.
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(topic = %self.topic, group = %self.name, offset = job.offset, attempt, %error, "handler failed while the circuit breaker is not closed; the attempt is not counted");
                continue;
            } else if attempt >= self.options.max_deliveries {
                "max_deliveries"
            } else {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::info!(topic = %self.topic, group = %self.name, offset = job.offset, attempt, %error, "handler failed; retrying");
                trace::event(
                    "handler failed; retrying",
                    &[
                        ("attempt", attempt.into()),
                        ("error", Value::Str(&error.to_string())),
                    ],
                );
                // Boxed, like the dead letter below: rare paths whose futures would otherwise
                // make every lane task larger than the allocator's small sizes (see `lane`).
                let wait = async {
                    tokio::select! {
                        () = self.cancel.cancelled() => false,
                        () = tokio::time::sleep(self.options.backoff.delay(attempt)) => true,
                    }
                };
                if !Box::pin(wait).await {
                    return;
                }
                attempt += 1;
                continue;
            };
            tracing::warn!(topic = %self.topic, group = %self.name, offset = job.offset, attempt, %error, reason, "event dead-lettered");
            let message = error.to_string();
            trace::event(
                "event dead-lettered",
                &[
                    ("reason", Value::Str(reason)),
                    ("attempt", attempt.into()),
                    ("error", Value::Str(&message)),
                ],
            );
            trace::fail(reason, &message);
            let letter = DeadLetter::new(
                &self.topic,
                &self.name,
                job.offset,
                &job.raw,
                Some(&job.envelope),
            )
            .because(reason, message, attempt);
            if let Some(settle) = Box::pin(self.dead_letter(letter)).await {
                self.finish(job.offset, settle).await;
            }
            return;
        }
    }

    /// Waits until `breaker` admits a handler run: at the end of its open time, or when its
    /// state changes (a probe slot may be free). `None` when the member stops first.
    async fn admission<'a>(&self, breaker: &'a BreakerHandle) -> Option<Admitted<'a>> {
        let mut changes = breaker.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(ticket) = breaker.allow(tokio::time::Instant::now()) {
                return Some(Admitted::new(breaker, ticket));
            }
            // Refused: open until `reopens`, or half-open with every probe slot taken (a
            // state change or a slot given back wakes it).
            let reopens = breaker.open_until();
            tokio::select! {
                () = self.cancel.cancelled() => return None,
                _ = changes.changed() => {}
                () = async {
                    match reopens {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// Dead-letters a record that the dispatcher cannot queue (bad input, a crash loop) in
    /// the group's burial lane, a task like a subject's lane, so that a slow or failing
    /// dead-letter write never holds up the records behind it, and such dead letters are
    /// written in the order they were read. The record's read-ahead permit is held until it
    /// is settled.
    fn bury(self: &Arc<Group>, letter: DeadLetter, permit: OwnedSemaphorePermit) {
        let mut state = lock(&self.state);
        state.burials.push_back((letter, permit));
        if !state.burying {
            state.burying = true;
            drop(state);
            self.lanes.spawn(Arc::clone(self).burial());
        }
    }

    /// The burial lane: writes queued dead letters one after the other until none is left
    /// (or the group stops: what is left stays unacknowledged).
    async fn burial(self: Arc<Group>) {
        loop {
            let (letter, permit) = {
                let mut state = lock(&self.state);
                match state.burials.pop_front() {
                    Some(burial) => burial,
                    None => {
                        state.burying = false;
                        return;
                    }
                }
            };
            let position = letter.offset;
            let Some(settle) = self.dead_letter(letter).await else {
                return;
            };
            self.finish(position, settle).await;
            drop(permit);
        }
    }

    /// Writes a dead letter durably. Returns how to settle its record once it is written
    /// (only then may the record count as done); `None` only when the group stops first, and
    /// the record then stays unacknowledged (redelivered after a restart).
    ///
    /// A dead letter is bounded and cut to fit the bus's envelope limit (see
    /// `dead_letter.rs`), so a failure is the engine's, not the message's: it is retried with
    /// the subscription's backoff until it succeeds. Should the engine still refuse it for a
    /// reason no retry mends (a broker limit below the codec's), it is written without the
    /// original's bytes (their size and digest stay). Every failure is counted
    /// ([`SubscriptionStats::dead_letter_failures`]) and logged, at most once per 10 s for
    /// one record.
    async fn dead_letter(&self, letter: DeadLetter) -> Option<Settle> {
        let offset = letter.offset;
        let mut letter = letter.fit(self.bus.codec(), || {
            self.bus.original_location(&self.topic, offset)
        });
        let mut failures = 0;
        let mut stripped = false;
        let mut logged: Option<std::time::Instant> = None;
        loop {
            let error = match letter.record(&self.bus).await {
                Ok(_) => {
                    self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    let mut labels = self.labels.clone();
                    labels.push((names::REASON, letter.reason.clone()));
                    metrics::counter!(names::DEAD_LETTERS, &labels).increment(1);
                    if failures > 0 {
                        tracing::warn!(topic = %self.topic, group = %self.name, offset = letter.offset, failures, "dead letter written after failures");
                    }
                    return Some(Settle::term(&letter));
                }
                Err(e) => e,
            };
            failures += 1;
            self.counters
                .dead_letter_failures
                .fetch_add(1, Ordering::Relaxed);
            if !error.kind().is_retryable() && !stripped {
                tracing::error!(topic = %self.topic, group = %self.name, offset = letter.offset, %error, "the engine refused the dead letter; writing it without the original's bytes");
                letter = letter.without_original();
                stripped = true;
                continue;
            }
            if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                tracing::error!(topic = %self.topic, group = %self.name, offset = letter.offset, failures, %error, "cannot write a dead letter; the record stays unacknowledged and the write is retried");
                logged = Some(std::time::Instant::now());
            }
            tokio::select! {
                () = self.cancel.cancelled() => return None,
                () = tokio::time::sleep(self.options.backoff.delay(failures)) => {}
            }
        }
    }

    /// The record at `offset` is finished (handled, skipped): never deliver it again.
    async fn done(&self, offset: u64) {
        self.finish(offset, Settle::Ack).await;
    }

    /// Finishes a record: settles its delivery.
    async fn finish(&self, offset: u64, settle: Settle) {
        lock(&self.state).pending.remove(&offset);
        let Some(acker) = lock(&self.held).remove(&offset) else {
            return;
        };
        let result = match settle {
            Settle::Ack => acker.ack().await,
            Settle::Term {
                keep_original: false,
            } => acker.term().await,
            Settle::Term {
                keep_original: true,
            } => acker.reject().await,
        };
        if let Err(e) = result {
            // Not lost: the broker redelivers it, and it is handled again (at least once).
            tracing::warn!(topic = %self.topic, group = %self.name, offset, error = %e, "settling a delivery failed; it will be redelivered");
        }
    }
}

impl telemetry::Source for Group {
    fn sample(&self, out: &mut Samples) {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let labels = &self.labels;
        out.counter(names::CONSUMED, labels, get(&c.received));
        for (outcome, value) in [
            ("ack", get(&c.acked)),
            ("skipped", get(&c.skipped)),
            ("dead_letter", get(&c.dead_lettered)),
        ] {
            out.counter_by(names::PROCESSED, labels, (names::OUTCOME, outcome), value);
        }
        out.counter(names::RETRIES, labels, get(&c.retries));
        if !out.wants_gauges() {
            return;
        }
        let lag = self
            .bus
            .backend()
            .live_lag(&self.topic, &self.name)
            .unwrap_or_else(|| {
                self.broker_pending.load(Ordering::Relaxed) + lock(&self.state).pending.len() as u64
            });
        out.gauge(names::CONSUMER_LAG, labels, lag as f64);
        if let Some(breaker) = &self.options.breaker {
            breaker.sample(out, labels);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        telemetry::retire(self);
    }
}

/// Resolves when `breaker` (if any) changes to open after its receiver last looked.
async fn opened(
    breaker: &mut Option<(&BreakerHandle, tokio::sync::watch::Receiver<CircuitState>)>,
) {
    let Some((_, changes)) = breaker else {
        return std::future::pending().await;
    };
    loop {
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        if *changes.borrow_and_update() == CircuitState::Open {
            return;
        }
    }
}

/// A handler run the breaker admitted: records its outcome, or gives its ticket back when
/// the run ends without one (the lane was dropped).
struct Admitted<'a> {
    breaker: &'a BreakerHandle,
    ticket: Option<Ticket>,
}

impl<'a> Admitted<'a> {
    fn new(breaker: &'a BreakerHandle, ticket: Ticket) -> Admitted<'a> {
        Admitted {
            breaker,
            ticket: Some(ticket),
        }
    }

    fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker
                .record(ticket, outcome, tokio::time::Instant::now());
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.cancel(ticket);
        }
    }
}

/// How a finished broker delivery is settled.
#[derive(Clone, Copy, Debug)]
enum Settle {
    /// Handled or skipped.
    Ack,
    /// Dead-lettered; `keep_original` when the dead letter holds only an excerpt, so that
    /// the engine must keep the whole message (see [`Acker::reject`]).
    Term { keep_original: bool },
}

impl Settle {
    /// How to settle the record that `letter` stands for.
    fn term(letter: &DeadLetter) -> Settle {
        Settle::Term {
            keep_original: letter.original_truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Probe {}
    impl crate::Message for Probe {
        const TYPE: &'static str = "test.probe.v1";
    }
    impl crate::Event for Probe {}

    /// A lane task (spawned per subject with work) stays within glibc's small allocation
    /// sizes (up to about 1 KiB); retries and dead letters, which are rare, are boxed. It was
    /// 1,368 bytes, and every spawn made the allocator consolidate its free lists.
    #[tokio::test]
    async fn a_lane_task_is_a_small_allocation() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bus = crate::backend::embedded::EmbeddedBus::open(dir.path()).expect("a bus");
        let sub = Subscription::builder(&bus, "t", "g")
            .handle(|_: Probe, _| async { Ok(()) })
            .start()
            .expect("a subscription");
        let lane = Arc::clone(&sub.group).lane("subject".into());
        let size = std::mem::size_of_val(&lane);
        assert!(size < 1000, "the lane future is {size} bytes");
        drop(lane);
        sub.shutdown().await.expect("a clean shutdown");
    }
}
