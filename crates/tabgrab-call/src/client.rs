//! The client: typed calls through one tower stack, the same for every transport.
//!
//! The stack, outermost first:
//!
//! | layer | stops a call with | why there |
//! |---|---|---|
//! | [`limit`](crate::limit) (bulkhead, load shedding) | `Rejected` | outermost, so a call's retries and pauses hold one slot |
//! | [`deadline`](crate::deadline) | `DeadlineExceeded` | around the retries: no retry outlives the caller's budget |
//! | [`retry`](crate::retry) (with budget) | — (returns the last error) | outside the breaker, so each attempt is counted and an open breaker ends the retries |
//! | [`breaker`](crate::breaker) | `CircuitOpen` | next to the wire: it judges the recipient by single attempts |
//! | attempt timeout (optional) | `Timeout` | one slow attempt can be retried within the deadline |
//! | transport ([`HttpTransport`](crate::http::HttpTransport), [`GrpcTransport`](crate::grpc::GrpcTransport)) | `Unavailable`, `Remote`, `Protocol`, … | sends the remaining budget to the server |

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tabgrab_core::{Envelope, ErrorKind, Request};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt as _};

use crate::CallError;
use crate::breaker::{BreakerConfig, BreakerHandle, BreakerLayer};
use crate::call::{Call, CallOptions, RequestKind};
use crate::deadline::{AttemptTimeoutLayer, DeadlineLayer};
use crate::limit::LimitLayer;
use crate::retry::{RetryBudget, RetryConfig, RetryPolicy};

/// Calls one service's commands and queries; cheap to clone, share it between tasks.
#[derive(Clone)]
pub struct Client {
    /// The layers over the transport.
    stack: BoxCloneSyncService<Call, Bytes, CallError>,
    /// The service called, for errors.
    service: Arc<str>,
    /// The CloudEvents `source` of the calls sent.
    source: Arc<str>,
    /// The breaker, to observe it.
    breaker: BreakerHandle,
    /// The retry budget, to observe it.
    budget: Arc<RetryBudget>,
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
        let envelope = Envelope::new(self.source.as_ref(), request).map_err(|e| {
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
        let bytes = self.stack.clone().oneshot(call).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            CallError::new(
                ErrorKind::Protocol,
                self.service.clone(),
                R::TYPE,
                format!("the response is not a valid response to {}: {e}", R::TYPE),
            )
        })
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
        let stack = ServiceBuilder::new()
            .layer(LimitLayer::new(self.max_in_flight))
            .layer(DeadlineLayer::new(self.default_timeout))
            .layer(tower::retry::RetryLayer::new(RetryPolicy::new(
                self.retry,
                Arc::clone(&budget),
            )))
            .layer(BreakerLayer::new(breaker.clone()))
            .layer(AttemptTimeoutLayer::new(self.attempt_timeout))
            .service(self.transport);
        Client {
            stack: BoxCloneSyncService::new(stack),
            service: self.service.into(),
            source: self.source.into(),
            breaker,
            budget,
        }
    }
}
