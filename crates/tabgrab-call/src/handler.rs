//! Typed handlers of commands and queries, keyed by message type, shared by both servers.
//!
//! One [`Handlers`] value is served by the HTTP router and the gRPC service alike, so a handler
//! is written once. The dispatch path is also shared, and it enforces the rules every server
//! must keep before and around a handler:
//!
//! 1. the type must be registered (else [`ServeError`] of kind `UnknownType`: 404,
//!    `UNIMPLEMENTED`);
//! 2. the envelope must keep the attribute rules of every transport
//!    ([`Codec::check_envelope`]: names, values without control characters, at most
//!    [`MAX_ATTRIBUTES`](tabgrab_core::attribute::MAX_ATTRIBUTES), attributes and payload
//!    together within the size limit), the payload must be JSON (else `UnsupportedMediaType`:
//!    415, `INVALID_ARGUMENT`), and it must decode as the message type with no field the type
//!    does not have (else `TooLarge` / `Malformed` / `MissingAttribute` / `InvalidPayload`:
//!    413 / 400, `INVALID_ARGUMENT`, the message naming the field); the handler never sees bad
//!    input. Why unknown fields are refused rather than ignored: a misspelt optional field
//!    (`"tip_cent"`) would otherwise be dropped in silence and the command run without it;
//!    message types carry their version in their name, so a sender with new fields sends a
//!    new version. A handler that finds the input out of its domain's bounds answers
//!    [`HandlerError::invalid`], the same 400 / `INVALID_ARGUMENT`;
//! 3. a command with an idempotency key runs at most once per key and payload: a repeat gets
//!    the first answer, the same key with another payload is a `Conflict` (409,
//!    `ALREADY_EXISTS`); see [`crate::idempotency`];
//! 4. a call that arrives after its deadline is not handled at all, and past the caller's
//!    deadline the handler's future is dropped, which cancels its work
//!    (else it would keep burning capacity for an answer nobody waits for), and the caller
//!    gets `DeadlineExceeded` (504, `DEADLINE_EXCEEDED`);
//! 5. a handler's [`Rejection`] goes back whole (422, `FAILED_PRECONDITION` with the rejection
//!    in the details); any other error is `Handler` (500, `INTERNAL`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tabgrab_core::telemetry::trace::{self, Kind, Parent, Span, Start, Value};
use tabgrab_core::{Codec, Envelope, ErrorKind, Rejection, Request};
use tokio::time::Instant;

use crate::call::{CallOptions, RequestKind};
use crate::idempotency::{self, Claim, Digest, IdempotencyConfig, Record};

/// What a handler returns when it does not answer: the one failure type of every kind of
/// handler ([`tabgrab_core::handler`]). A call handler's refusal
/// ([`HandlerError::rejected`], or a [`Rejection`] with `?`) goes back whole (422,
/// `FAILED_PRECONDITION`); [`HandlerError::invalid`] is 400, `INVALID_ARGUMENT`:
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tabgrab_call::{CallContext, HandlerError, Handlers};
/// use tabgrab_core::Message;
///
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(type = "demo.tip.v1", command, response = u64)]
/// struct Tip { cents: u64 }
///
/// let handlers = Handlers::new().handle(|tip: Tip, _ctx: CallContext| async move {
///     if tip.cents > 10_000 {
///         return Err(HandlerError::invalid("cents: a tip is at most 10000 cents"));
///     }
///     Ok(tip.cents)
/// });
/// # let _ = handlers;
/// ```
pub use tabgrab_core::HandlerError;

/// The kind of a handler's failure, a nested call's [`CallError`](crate::CallError) included
/// (its kind, not `handler`: a nested call's deadline is the caller's deadline).
fn kind_of(error: &HandlerError) -> ErrorKind {
    error
        .error()
        .and_then(|e| e.downcast_ref::<crate::CallError>())
        .map_or_else(|| error.kind(), crate::CallError::kind)
}

/// What a handler knows about the call it serves: the shape of every handler's context
/// (`envelope`, `principal`, `remaining`, `attempt`; see `tabgrab::event::handler`). A call
/// has no redelivery (a retry is a new call, so `attempt` is 1) and no shutdown signal: the
/// server drains the calls in flight, and drops a call's work when its deadline passes.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The incoming envelope's attributes (id, source, correlation id); `data` is left empty.
    envelope: Envelope,
    /// The caller's deadline, if it sent one.
    deadline: Option<Instant>,
    /// The idempotency key, if the caller sent one.
    idempotency_key: Option<String>,
    /// Who calls, when the handlers authenticate callers; `None` otherwise.
    principal: Option<crate::auth::Principal>,
}

impl CallContext {
    /// The incoming envelope's attributes (id, source, correlation id, trace); its `data` is
    /// left empty (the handler has the decoded request).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Who calls, when the handlers authenticate callers ([`Handlers::authenticate`]);
    /// `None` otherwise.
    pub fn principal(&self) -> Option<crate::auth::Principal> {
        self.principal.clone()
    }

    /// The caller's deadline, if it sent one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The idempotency key, if the caller sent one.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// Always 1: a call is not redelivered; a client's retry is a new call.
    pub fn attempt(&self) -> u32 {
        1
    }

    /// The time left before the caller's deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Options for a nested call made while handling this one: the same deadline, so the
    /// budget shrinks hop by hop and the whole chain stops when the edge's budget is spent.
    pub fn options(&self) -> CallOptions {
        CallOptions {
            deadline: self.deadline,
            idempotency_key: None,
        }
    }
}

/// Why the server did not produce a response; mapped to a status by each transport.
#[derive(Clone, Debug)]
pub struct ServeError {
    /// The matchable kind (`UnknownType`, `InvalidPayload`, `TooLarge`, `DeadlineExceeded`,
    /// `Remote`, `Handler`, …).
    pub kind: ErrorKind,
    /// What happened, naming the message type.
    pub message: String,
    /// The refusal, for `Remote`.
    pub rejection: Option<Rejection>,
}

impl ServeError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ServeError {
        ServeError {
            kind,
            message: message.into(),
            rejection: None,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A call that passed the checks: its handler's future, the caller's deadline, and the type
/// name (for the deadline's error).
struct Started {
    work: BoxFuture<Result<Bytes, ServeError>>,
    deadline: Option<Instant>,
    ty: String,
    /// The handler's duration histogram (successful calls).
    duration: metrics::Histogram,
}
type Erased =
    dyn Fn(Bytes, CallContext) -> BoxFuture<Result<Bytes, ServeError>> + Send + Sync + 'static;

/// A registered handler, with its request kind.
#[derive(Clone)]
struct Entry {
    kind: RequestKind,
    handler: Arc<Erased>,
    /// Durations of successful calls of this type.
    duration: metrics::Histogram,
}

/// Records a server call's duration that failed with `kind` (`method` is `_OTHER` for a
/// type no handler is registered for: callers choose it, so it is not an attribute).
fn record_failure(method: &str, kind: ErrorKind, took: std::time::Duration) {
    use tabgrab_core::telemetry as names;
    metrics::histogram!(
        names::RPC_SERVER_DURATION,
        names::RPC_METHOD => method.to_owned(),
        names::ERROR_TYPE => kind.as_str()
    )
    .record(took);
}

/// The typed handlers of a server, keyed by message type.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tabgrab_call::{CallContext, HandlerError, Handlers};
/// use tabgrab_core::Message;
///
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(type = "demo.ping.v1", query, response = u32)]
/// struct Ping { n: u32 }
///
/// let handlers = Handlers::new()
///     .handle(|ping: Ping, _ctx: CallContext| async move { Ok::<_, HandlerError>(ping.n + 1) });
/// assert!(handlers.contains("demo.ping.v1"));
/// ```
#[derive(Clone, Default)]
pub struct Handlers {
    /// Handlers by message type.
    entries: Arc<HashMap<&'static str, Entry>>,
    /// The size limit and the attribute rules, applied before decoding.
    codec: Codec,
    /// The record of idempotency keys, shared by every transport serving these handlers.
    idempotency: Record,
    /// Who may call at all; `None`: anyone who reaches the server.
    authenticator: Option<Arc<dyn crate::auth::Authenticator>>,
    /// Which principal may call which message type; `None`: every authenticated one.
    authorization: Option<Arc<Authorization>>,
}

/// An authorization rule: whether a principal may call a message type.
type Authorization = tabgrab_core::principal::Rule;

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("types", &self.entries.keys().collect::<Vec<_>>())
            .field("max_size", &self.codec.max_size())
            .field("authenticates", &self.authenticator.is_some())
            .field("authorizes", &self.authorization.is_some())
            .finish()
    }
}

impl Handlers {
    /// No handlers, the default 1 MiB size limit.
    pub fn new() -> Handlers {
        Handlers::default()
    }

    /// Requires every call to prove who it is to `authenticator` (for example
    /// [`BearerTokens`](crate::auth::BearerTokens)), on every transport, before anything else
    /// is done with it: a call without valid credentials is refused with `Unauthenticated`,
    /// and a handler finds the principal in [`CallContext::principal`]. See [`crate::auth`].
    pub fn authenticate(mut self, authenticator: impl crate::auth::Authenticator) -> Handlers {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Lets a principal call a message type only when `rule(principal, type)` says so;
    /// otherwise the call is refused with `PermissionDenied` before its handler runs. Needs
    /// [`Handlers::authenticate`] (without a principal nothing is allowed).
    pub fn authorize(
        mut self,
        rule: impl Fn(&crate::auth::Principal, &str) -> bool + Send + Sync + 'static,
    ) -> Handlers {
        self.authorization = Some(Arc::new(rule));
        self
    }

    /// Whether these handlers authenticate callers.
    pub(crate) fn authenticates(&self) -> bool {
        self.authenticator.is_some()
    }

    /// The principal `headers` prove, when these handlers authenticate callers (`Ok(None)`
    /// when they do not); `Unauthenticated` when the headers prove none.
    /// [`Handlers::authenticate_presented`] of the headers and no client certificate.
    pub fn authenticate_headers(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<crate::auth::Principal>, ServeError> {
        self.authenticate_presented(&crate::auth::Presented::new(headers))
    }

    /// The principal what a call presents proves (its headers, and over mutual TLS its
    /// client certificate), when these handlers authenticate callers (`Ok(None)` when they do
    /// not); `Unauthenticated` when it proves none. Every transport calls it before
    /// [`Handlers::dispatch_as`].
    pub fn authenticate_presented(
        &self,
        presented: &crate::auth::Presented<'_>,
    ) -> Result<Option<crate::auth::Principal>, ServeError> {
        let Some(authenticator) = &self.authenticator else {
            return Ok(None);
        };
        authenticator
            .authenticate_presented(presented)
            .map(Some)
            .map_err(|why| ServeError::new(ErrorKind::Unauthenticated, format!("refused: {why}")))
    }

    /// Sets the codec, whose maximum size limits request bodies.
    pub fn codec(mut self, codec: Codec) -> Handlers {
        self.codec = codec;
        self
    }

    /// The codec in force.
    pub fn codec_ref(&self) -> &Codec {
        &self.codec
    }

    /// Sets the bounds of the record of idempotency keys (a new, empty record).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tabgrab_call::{Handlers, IdempotencyConfig};
    ///
    /// let handlers = Handlers::new().idempotency(IdempotencyConfig {
    ///     ttl: Duration::from_secs(60),
    ///     ..IdempotencyConfig::default()
    /// });
    /// assert_eq!(handlers.idempotency_config().ttl, Duration::from_secs(60));
    /// ```
    pub fn idempotency(mut self, config: IdempotencyConfig) -> Handlers {
        self.idempotency = Record::new(config);
        self
    }

    /// The bounds of the record of idempotency keys.
    pub fn idempotency_config(&self) -> IdempotencyConfig {
        self.idempotency.config()
    }

    /// [`handle`](Self::handle) with a clone of `state` on each call: the service's state
    /// without a clone per handler by hand (like axum's `with_state`, per handler).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use serde::{Deserialize, Serialize};
    /// use tabgrab_call::Handlers;
    /// use tabgrab_core::Message;
    ///
    /// #[derive(Serialize, Deserialize, Message)]
    /// #[message(type = "demo.tip.v1", command, response = u64)]
    /// struct Tip { cents: u64 }
    ///
    /// let tips = Arc::new(AtomicU64::new(0));
    /// let handlers = Handlers::new().handle_with(Arc::clone(&tips), |tips, tip: Tip, _ctx| async move {
    ///     Ok(tips.fetch_add(tip.cents, Ordering::Relaxed) + tip.cents)
    /// });
    /// # let _ = handlers;
    /// ```
    pub fn handle_with<S, R, F, Fut>(self, state: S, handler: F) -> Handlers
    where
        S: Clone + Send + Sync + 'static,
        R: Request,
        F: Fn(S, R, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, HandlerError>> + Send + 'static,
    {
        self.handle(move |request: R, ctx| handler(state.clone(), request, ctx))
    }

    /// Registers the handler of `R`. A second handler for the same type replaces the first.
    pub fn handle<R, F, Fut>(mut self, handler: F) -> Handlers
    where
        R: Request,
        F: Fn(R, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Arc<Erased> = Arc::new(move |body: Bytes, ctx: CallContext| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let request: R = decode_strict(&body, R::TYPE)?;
                match handler(request, ctx).await {
                    Ok(response) => serde_json::to_vec(&response).map(Bytes::from).map_err(|e| {
                        ServeError::new(
                            ErrorKind::Handler,
                            format!("the response to {} does not serialise: {e}", R::TYPE),
                        )
                    }),
                    Err(error) => Err(match error.rejection() {
                        Some(rejection) => ServeError {
                            kind: ErrorKind::Remote,
                            message: format!("the {} handler refused it: {rejection}", R::TYPE),
                            rejection: Some(rejection.clone()),
                        },
                        None => {
                            // Keep kinds a caller can act on (a nested call's deadline,
                            // overload); anything else is a handler failure.
                            let kind = match kind_of(&error) {
                                k @ (ErrorKind::DeadlineExceeded
                                | ErrorKind::Rejected
                                | ErrorKind::Unavailable
                                | ErrorKind::InvalidPayload
                                | ErrorKind::Conflict) => k,
                                _ => ErrorKind::Handler,
                            };
                            ServeError::new(
                                kind,
                                format!("the {} handler failed: {error}", R::TYPE),
                            )
                        }
                    }),
                }
            }) as BoxFuture<Result<Bytes, ServeError>>
        });
        let kind = if R::IS_COMMAND {
            RequestKind::Command
        } else {
            RequestKind::Query
        };
        let entries = Arc::make_mut(&mut self.entries);
        entries.insert(
            R::TYPE,
            Entry {
                kind,
                handler: erased,
                duration: metrics::histogram!(
                    tabgrab_core::telemetry::RPC_SERVER_DURATION,
                    tabgrab_core::telemetry::RPC_METHOD => R::TYPE
                ),
            },
        );
        self
    }

    /// Whether a handler for `ty` is registered.
    pub fn contains(&self, ty: &str) -> bool {
        self.entries.contains_key(ty)
    }

    /// The kind of the request type `ty`, if registered.
    pub fn kind_of(&self, ty: &str) -> Option<RequestKind> {
        self.entries.get(ty).map(|e| e.kind)
    }

    /// Runs the handler of `envelope.ty` on its data, under the rules of the module docs, for
    /// a call from `principal` (what [`Handlers::authenticate_headers`] found, `None` when
    /// nobody was authenticated): with an authenticator, a call without a principal is
    /// refused with `Unauthenticated`, and with an authorization rule, a principal the rule
    /// does not allow this type is refused with `PermissionDenied`.
    ///
    /// Every transport of this crate calls it; call it yourself to serve the same handlers
    /// through a protocol of your own, such as a typed gRPC service generated from your
    /// `.proto` (the pizzeria's `TypedPayment` does, with [`grpc::deadline_of`](crate::grpc::deadline_of)
    /// and [`grpc::status_of`](crate::grpc::status_of)), so size limits, deadlines,
    /// idempotency and rejections behave as on every other transport.
    ///
    /// The checks run when it is called, and the returned future holds only the handler's
    /// future and the deadline: transports box or spawn it per call, and a future that also
    /// held the envelope was larger than the allocator's small sizes (about 1 KiB).
    pub fn dispatch_as(
        &self,
        envelope: Envelope,
        deadline: Option<Instant>,
        idempotency_key: Option<String>,
        principal: Option<crate::auth::Principal>,
    ) -> impl Future<Output = Result<Bytes, ServeError>> + Send + 'static {
        let at = std::time::Instant::now();
        let span = Span::start(Start {
            kind: Kind::Server,
            parent: Parent::Carried(envelope.traceparent.as_deref()),
            name: (&envelope.ty, ""),
            attributes: &[
                ("rpc.system", Value::Str("tabgrab")),
                ("rpc.method", Value::Str(&envelope.ty)),
            ],
        });
        // The method of a refused call: its type when a handler is registered for it (the
        // registered name, no allocation), `_OTHER` for a type a caller made up.
        let method = self
            .entries
            .get_key_value(envelope.ty.as_str())
            .map_or("_OTHER", |(ty, _)| *ty);
        let started = span.in_scope(|| self.start(envelope, deadline, idempotency_key, principal));
        let work = async move {
            let Started {
                work,
                deadline,
                ty,
                duration,
            } = started.inspect_err(|e| {
                record_failure(method, e.kind, at.elapsed());
                trace::fail(e.kind.as_str(), &e.message);
            })?;
            let result = match deadline {
                None => work.await,
                Some(deadline) => match tokio::time::timeout_at(deadline, work).await {
                    Ok(result) => result,
                    Err(_) => Err(ServeError::new(
                        ErrorKind::DeadlineExceeded,
                        format!(
                            "the caller's deadline for {ty} passed while the handler worked; \
                             its work was cancelled"
                        ),
                    )),
                },
            };
            match &result {
                Ok(_) => duration.record(at.elapsed()),
                Err(e) => {
                    record_failure(&ty, e.kind, at.elapsed());
                    trace::fail(e.kind.as_str(), &e.message);
                }
            }
            result
        };
        span.instrument(work)
    }

    /// The checks of [`Handlers::dispatch_as`], and the handler's future.
    fn start(
        &self,
        envelope: Envelope,
        deadline: Option<Instant>,
        idempotency_key: Option<String>,
        principal: Option<crate::auth::Principal>,
    ) -> Result<Started, ServeError> {
        if self.authenticator.is_some() || self.authorization.is_some() {
            tabgrab_core::principal::admit(
                principal.as_ref(),
                &envelope.ty,
                self.authorization.as_deref(),
            )
            .map_err(|e| ServeError::new(e.kind(), e.message()))?;
        }
        let Some(entry) = self.entries.get(envelope.ty.as_str()) else {
            return Err(ServeError::new(
                ErrorKind::UnknownType,
                format!(
                    "no handler for message type {:?} here; check the type name and version",
                    envelope.ty
                ),
            ));
        };
        if let Err(e) = self.codec.check_envelope(&envelope) {
            return Err(ServeError::new(
                e.kind(),
                format!("{} refused: {}", envelope.ty, e.message()),
            ));
        }
        if !envelope.is_json() {
            let ct = envelope.datacontenttype.as_deref().unwrap_or_default();
            return Err(ServeError::new(
                ErrorKind::UnsupportedMediaType,
                format!(
                    "{} refused: its content type is {ct:?}, and its handler reads JSON; send \
                     the message as application/json",
                    envelope.ty
                ),
            ));
        }
        if let Some(key) = &idempotency_key {
            let valid = !key.is_empty()
                && key.len() <= idempotency::MAX_KEY_LEN
                && tabgrab_core::attribute::check_value("idempotency-key", key).is_ok();
            if !valid {
                return Err(ServeError::new(
                    ErrorKind::Malformed,
                    format!(
                        "{} refused: an idempotency key is 1 to {} bytes without control \
                         characters",
                        envelope.ty,
                        idempotency::MAX_KEY_LEN
                    ),
                ));
            }
        }
        let ty = envelope.ty.clone();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(ServeError::new(
                ErrorKind::DeadlineExceeded,
                format!("the caller's deadline for {ty} had passed when it arrived; not handled"),
            ));
        }
        let mut envelope = envelope;
        // Who the server found the caller to be, not who the caller says it is: what the
        // handler's effects inherit (`caused_by`) and carry on over the bus.
        envelope.set_principal(principal.as_ref());
        let body = std::mem::take(&mut envelope.data);
        let key = match (entry.kind, &idempotency_key) {
            (RequestKind::Command, Some(key)) => Some(key.clone()),
            _ => None,
        };
        let ctx = CallContext {
            envelope,
            deadline,
            idempotency_key,
            principal,
        };
        let work = match key {
            None => (entry.handler)(body, ctx),
            Some(key) => keyed(
                self.idempotency.clone(),
                Arc::clone(&entry.handler),
                ty.clone(),
                key,
                body,
                ctx,
            ),
        };
        Ok(Started {
            work,
            deadline,
            ty,
            duration: entry.duration.clone(),
        })
    }
}

/// A command with an idempotency key: through the record (see [`crate::idempotency`]).
fn keyed(
    record: Record,
    handler: Arc<Erased>,
    ty: String,
    key: String,
    body: Bytes,
    ctx: CallContext,
) -> BoxFuture<Result<Bytes, ServeError>> {
    let digest = Digest::of(&body);
    let mut input = Some((body, ctx));
    Box::pin(async move {
        loop {
            match record.claim(&ty, &key, digest) {
                Claim::Run(run) => {
                    let Some((body, ctx)) = input.take() else {
                        return Err(ServeError::new(
                            ErrorKind::Handler,
                            format!("the {ty} under idempotency key {key:?} ran twice"),
                        ));
                    };
                    let outcome = handler(body, ctx).await;
                    run.finish(&outcome);
                    return outcome;
                }
                Claim::Replay(outcome) => return outcome,
                Claim::Conflict => return Err(idempotency::conflict(&ty, &key)),
                // Within the caller's deadline: `dispatch` bounds this whole future.
                Claim::Wait(done) => done.await,
            }
        }
    })
}

/// Decodes a request's JSON as `R`, refusing a field `R` does not have (by its path) as well
/// as anything that does not decode ([`ErrorKind::InvalidPayload`]).
fn decode_strict<R: DeserializeOwned>(body: &[u8], ty: &str) -> Result<R, ServeError> {
    let invalid = |what: String| {
        ServeError::new(
            ErrorKind::InvalidPayload,
            format!("the body is not a valid {ty} ({what}); send the JSON of the message"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut unknown = Vec::new();
    let request: R = serde_ignored::deserialize(&mut de, |path| {
        if unknown.len() < 8 {
            unknown.push(path.to_string());
        }
    })
    .map_err(|e| invalid(e.to_string()))?;
    de.end().map_err(|e| invalid(e.to_string()))?;
    if !unknown.is_empty() {
        return Err(invalid(format!(
            "unknown field{} {}; a {ty} has no such field",
            if unknown.len() > 1 { "s" } else { "" },
            unknown
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(request)
}
