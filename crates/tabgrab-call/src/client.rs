//! The client: typed calls through the resilience policies, the same for every transport.
//!
//! The policies, outermost first:
//!
//! | policy | stops a call with | why there |
//! |---|---|---|
//! | bulkhead, load shedding (`tabgrab_resilience::Bulkhead`) | `Rejected` | outermost, so a call's retries and pauses hold one slot |
//! | deadline | `DeadlineExceeded` | around the retries: no retry outlives the caller's budget |
//! | [`retry`](crate::retry) (with budget) | — (returns the last error) | outside the breaker, so each attempt is counted and an open breaker ends the retries |
//! | [`breaker`](crate::breaker) | `CircuitOpen` | next to the wire: it judges the recipient by single attempts |
//! | attempt timeout (optional) | `Timeout` | one slow attempt can be retried within the deadline |
//! | transport ([`HttpTransport`](crate::http::HttpTransport), [`GrpcTransport`](crate::grpc::GrpcTransport)) | `Unavailable`, `Remote`, `Protocol`, … | sends the remaining budget to the server |
//!
//! They run *fused*: one `async` function per call that acquires the bulkhead permit, sets the
//! deadline, loops over the attempts and gates each one at the breaker, with the policies of
//! `tabgrab-resilience` (the same ones the bus's consumers use). There is no second,
//! composable tower stack: composed as tower layers, a call cost a clone of the boxed stack for
//! `oneshot`, a clone of the inner stack for tower's `Retry` future and one boxed future per
//! layer; fused, a call costs one boxed future, one timer (the deadline; a second only with an
//! attempt timeout) and a clone of the transport per attempt (one reference count for
//! tabgrab's transports). BENCHMARKS.md ("the fused client stack") has the measurement.
//! `tests/policies_model.rs` composes the policies by hand and holds the client to the same
//! behaviour on random scripts.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tabgrab_core::telemetry::trace::{self, Kind, Parent, Span, Start, Value};
use tabgrab_core::{Envelope, ErrorKind, Request};
use tokio::time::Instant;
use tower::{Service, ServiceExt as _};

use crate::CallError;
use crate::breaker::{BreakerConfig, BreakerHandle, Pending};
use crate::call::{Call, CallOptions, RequestKind};
use crate::retry::{RetryBudget, RetryConfig};
use tabgrab_resilience::Bulkhead;

/// The future of one call through the stack, borrowing the stack.
type StackFuture<'a> = Pin<Box<dyn Future<Output = Result<Bytes, CallError>> + Send + 'a>>;

/// The policies over a transport, with the transport's type erased.
trait Stack: Send + Sync {
    /// Runs `call` through the policies and the transport.
    fn call(&self, call: Call) -> StackFuture<'_>;
}

/// Calls one service's commands and queries; cheap to clone, share it between tasks.
#[derive(Clone)]
pub struct Client {
    /// The policies over the transport, fused (see the module docs).
    stack: Arc<dyn Stack>,
    /// The service called, for errors.
    service: Arc<str>,
    /// The CloudEvents `source` of the calls sent.
    source: Arc<str>,
    /// The breaker, to observe it.
    breaker: BreakerHandle,
    /// The retry budget, to observe it.
    budget: Arc<RetryBudget>,
    /// Durations of successful calls, by request type.
    durations: Arc<std::sync::Mutex<HashMap<&'static str, metrics::Histogram>>>,
    /// The breaker's state and the budget's counts as metrics, while a clone lives.
    _telemetry: Arc<Telemetry>,
}

/// What a client reports when metrics are rendered (see `tabgrab_core::telemetry`).
struct Telemetry {
    labels: tabgrab_core::telemetry::Labels,
    breaker: BreakerHandle,
    budget: Arc<RetryBudget>,
}

impl tabgrab_core::telemetry::Source for Telemetry {
    fn sample(&self, out: &mut tabgrab_core::telemetry::Samples) {
        use tabgrab_core::telemetry as names;
        out.counter(names::RETRIES, &self.labels, self.budget.granted());
        out.counter(
            names::RETRY_BUDGET_EXHAUSTED,
            &self.labels,
            self.budget.refused(),
        );
        self.breaker.sample(out, &self.labels);
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        tabgrab_core::telemetry::retire(self);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.service)
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

/// Builds a [`Client`] over a transport.
#[derive(Debug)]
pub struct ClientBuilder<T> {
    transport: T,
    service: String,
    source: String,
    default_timeout: Duration,
    attempt_timeout: Option<Duration>,
    retry: RetryConfig,
    budget: Option<Arc<RetryBudget>>,
    breaker: BreakerConfig,
    max_in_flight: usize,
}

impl Client {
    /// A builder over `transport` (an [`HttpTransport`](crate::http::HttpTransport), a
    /// [`GrpcTransport`](crate::grpc::GrpcTransport), or any service of [`Call`]s).
    pub fn builder<T>(transport: T) -> ClientBuilder<T> {
        ClientBuilder {
            transport,
            service: "unnamed".to_owned(),
            source: "/tabgrab/client".to_owned(),
            default_timeout: Duration::from_secs(5),
            attempt_timeout: None,
            retry: RetryConfig::default(),
            budget: None,
            breaker: BreakerConfig::default(),
            max_in_flight: 10_000,
        }
    }

    /// Calls `request` with the default options (the client's default timeout, no key).
    pub async fn call<R: Request>(&self, request: &R) -> Result<R::Response, CallError> {
        self.call_with(request, CallOptions::default()).await
    }

    /// Calls `request` with a deadline and/or an idempotency key.
    pub async fn call_with<R: Request>(
        &self,
        request: &R,
        options: CallOptions,
    ) -> Result<R::Response, CallError> {
        let span = Span::start(Start {
            kind: Kind::Client,
            parent: Parent::Current,
            name: (R::TYPE, ""),
            attributes: &[
                ("rpc.system", Value::Str("tabgrab")),
                ("rpc.service", Value::Str(&self.service)),
                ("rpc.method", Value::Str(R::TYPE)),
            ],
        });
        let envelope = span
            .in_scope(|| Envelope::new(self.source.as_ref(), request))
            .map_err(|e| {
                CallError::new(
                    e.kind(),
                    self.service.clone(),
                    R::TYPE,
                    e.message().to_owned(),
                )
            })?;
        let call = Call {
            service: self.service.clone(),
            kind: if R::IS_COMMAND {
                RequestKind::Command
            } else {
                RequestKind::Query
            },
            envelope: Arc::new(envelope),
            deadline: options.deadline,
            idempotency_key: options.idempotency_key,
        };
        let at = std::time::Instant::now();
        let result = span
            .instrument(async {
                let result = self.stack.call(call).await;
                if let Err(e) = &result {
                    trace::fail(e.kind().as_str(), &e.to_string());
                }
                result
            })
            .await;
        self.record(
            R::TYPE,
            at.elapsed(),
            result.as_ref().err().map(CallError::kind),
        );
        let bytes = result?;
        serde_json::from_slice(&bytes).map_err(|e| {
            CallError::new(
                ErrorKind::Protocol,
                self.service.clone(),
                R::TYPE,
                format!("the response is not a valid response to {}: {e}", R::TYPE),
            )
        })
    }

    /// Records a call's duration, by request type and outcome.
    fn record(&self, ty: &'static str, took: Duration, failed: Option<ErrorKind>) {
        use tabgrab_core::telemetry as names;
        let service = || self.service.to_string();
        match failed {
            None => self
                .durations
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(ty)
                .or_insert_with(|| {
                    metrics::histogram!(
                        names::RPC_CLIENT_DURATION,
                        names::RPC_SERVICE => service(),
                        names::RPC_METHOD => ty
                    )
                })
                .record(took),
            Some(kind) => metrics::histogram!(
                names::RPC_CLIENT_DURATION,
                names::RPC_SERVICE => service(),
                names::RPC_METHOD => ty,
                names::ERROR_TYPE => kind.as_str()
            )
            .record(took),
        }
    }

    /// The service's breaker: its state and its changes.
    pub fn breaker(&self) -> &BreakerHandle {
        &self.breaker
    }

    /// The retry budget: retries granted and refused.
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// The service called.
    pub fn service_name(&self) -> &str {
        &self.service
    }
}

impl<T> ClientBuilder<T>
where
    T: Service<Call, Response = Bytes, Error = CallError> + Clone + Send + Sync + 'static,
    T::Future: Send + 'static,
{
    /// The service's name, used in every error message (default `unnamed`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service = name.into();
        self
    }

    /// The CloudEvents `source` of the calls (default `/tabgrab/client`).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// The deadline of calls that bring none (default 5 s).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// A bound on each attempt, below the deadline (default: none).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Retry caps and backoff (default: 3 attempts, 20 ms base, 1 s cap).
    pub fn retry(mut self, config: RetryConfig) -> Self {
        self.retry = config;
        self
    }

    /// The retry budget (default: 20 % of the last 10 s plus 10/s); share one between
    /// clients to bound their retries together.
    pub fn retry_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The breaker's thresholds.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// The bulkhead: calls in flight beyond this fail at once with `Rejected` (default 10,000).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Assembles the stack.
    pub fn build(self) -> Client {
        let budget = self.budget.unwrap_or_default();
        let breaker = BreakerHandle::new(self.breaker);
        let stack = Fused {
            transport: self.transport,
            bulkhead: Bulkhead::new(self.max_in_flight),
            default_timeout: self.default_timeout,
            attempt_timeout: self.attempt_timeout,
            retry: self.retry,
            budget: Arc::clone(&budget),
            breaker: breaker.clone(),
        };
        let telemetry = Arc::new(Telemetry {
            labels: vec![(tabgrab_core::telemetry::RPC_SERVICE, self.service.clone())],
            breaker: breaker.clone(),
            budget: Arc::clone(&budget),
        });
        let source: Arc<dyn tabgrab_core::telemetry::Source> = Arc::clone(&telemetry) as _;
        tabgrab_core::telemetry::register(Arc::downgrade(&source));
        Client {
            _telemetry: telemetry,
            stack: Arc::new(stack),
            service: self.service.into(),
            source: self.source.into(),
            breaker,
            budget,
            durations: Arc::default(),
        }
    }
}

/// The policies of the module docs' table as one function per call.
struct Fused<T> {
    transport: T,
    /// The bulkhead (`crate::limit`).
    bulkhead: Bulkhead,
    /// The deadline of calls that bring none (`crate::deadline`).
    default_timeout: Duration,
    attempt_timeout: Option<Duration>,
    /// Retries ([`crate::retry`]).
    retry: RetryConfig,
    budget: Arc<RetryBudget>,
    /// The breaker ([`crate::breaker`]).
    breaker: BreakerHandle,
}

impl<T> Stack for Fused<T>
where
    T: Service<Call, Response = Bytes, Error = CallError> + Clone + Send + Sync + 'static,
    T::Future: Send + 'static,
{
    fn call(&self, call: Call) -> StackFuture<'_> {
        Box::pin(self.run(call))
    }
}

impl<T> Fused<T>
where
    T: Service<Call, Response = Bytes, Error = CallError> + Clone + Send + Sync + 'static,
    T::Future: Send + 'static,
{
    /// Bulkhead, then deadline around the retries.
    async fn run(&self, mut call: Call) -> Result<Bytes, CallError> {
        // The bulkhead: outermost, so retries and pauses hold the one slot.
        let Some(_permit) = self.bulkhead.try_enter() else {
            return Err(crate::limit::shed(&call, self.bulkhead.max()));
        };
        // The deadline: the caller's, or the default one.
        let now = Instant::now();
        let deadline = *call
            .deadline
            .get_or_insert_with(|| now + self.default_timeout);
        if deadline <= now {
            return Err(crate::deadline::expired(&call.service, &call.envelope.ty));
        }
        match tokio::time::timeout_at(deadline, self.attempts(&call)).await {
            Ok(result) => result,
            Err(_) => Err(crate::deadline::expired(&call.service, &call.envelope.ty)),
        }
    }

    /// The retry loop: attempts, each through the breaker, paced and bounded by the retry
    /// rules ([`crate::retry::next_attempt`]).
    async fn attempts(&self, call: &Call) -> Result<Bytes, CallError> {
        // Every call earns the budget its share once, as tower's `Retry` with our policy does.
        self.budget.deposit();
        let mut attempts = 1;
        loop {
            let result = self.attempt(call.clone()).await;
            let Err(error) = &result else {
                return result;
            };
            let Some(resume) =
                crate::retry::next_attempt(&self.retry, &self.budget, attempts, call, error)
            else {
                return result;
            };
            attempts += 1;
            tokio::time::sleep_until(resume).await;
        }
    }

    /// One attempt: the breaker's gate, the attempt timeout, the transport. None once the
    /// deadline has passed: the deadline's timer around the retries does not stop that on its
    /// own, because a task woken late (a loaded machine) finds the backoff's sleep and the
    /// deadline both expired, and `timeout_at` polls the attempts before its timer.
    async fn attempt(&self, call: Call) -> Result<Bytes, CallError> {
        if call
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Err(crate::deadline::expired(&call.service, &call.envelope.ty));
        }
        let pending = Pending::admit(&self.breaker, &call)?;
        let result = match self.attempt_timeout {
            None => self.send(call).await,
            Some(timeout) => {
                let (service, envelope) = (Arc::clone(&call.service), Arc::clone(&call.envelope));
                match tokio::time::timeout(timeout, self.send(call)).await {
                    Ok(result) => result,
                    Err(_) => Err(crate::deadline::attempt_timed_out(
                        &service,
                        &envelope.ty,
                        timeout,
                    )),
                }
            }
        };
        pending.finish(&result);
        result
    }

    /// Hands the attempt to (a clone of) the transport, once it is ready.
    async fn send(&self, call: Call) -> Result<Bytes, CallError> {
        let mut transport = self.transport.clone();
        transport.ready().await?;
        transport.call(call).await
    }
}
