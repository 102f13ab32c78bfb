//! The NATS client transport: one [`Call`] → one core NATS request to the service's queue
//! group, with the remaining deadline as the request's timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{HeaderName, HeaderValue, RequestErrorKind};
use bytes::Bytes;
use tabgrab_core::{Codec, ErrorKind};
use tower::Service;

use tabgrab_core::wire::ContentMode;
use tabgrab_core::wire::nats::connect_options;

use super::{ERROR_HEADER_NAME, SUBJECT_PREFIX, service_token, type_tokens};
use crate::call::{
    IDEMPOTENCY_ATTRIBUTE, IDEMPOTENCY_KEY, RequestKind, TIMEOUT_ATTRIBUTE, TIMEOUT_HEADER,
};
use crate::error::{ErrorBody, kind_from_str};
use crate::{Call, CallError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

const TIMEOUT: HeaderName = HeaderName::from_static(TIMEOUT_HEADER);
const IDEMPOTENCY: HeaderName = HeaderName::from_static(IDEMPOTENCY_KEY);

/// Sends calls to one service over core NATS. Cheap to clone: one reference count (the
/// client stack clones its transport for every call); the NATS connection itself is shared.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tabgrab_call::Client;
/// use tabgrab_call::nats::NatsTransport;
///
/// let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let menu = Client::builder(NatsTransport::new(nats, "menu"))
///     .service_name("menu")
///     .build();
/// # let _ = menu;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct NatsTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The NATS connection (reconnects by itself).
    client: async_nats::Client,
    /// The service called, as it appears in errors.
    service: String,
    /// `tabgrab.call.<service>.commands.`, to which the type's tokens are appended.
    commands: String,
    /// `tabgrab.call.<service>.queries.`.
    queries: String,
    /// Limits what is sent and what is accepted back.
    codec: Codec,
    /// How a request carries its envelope.
    content_mode: ContentMode,
    /// `Bearer <token>` for the `authorization` header, if the servers authenticate.
    bearer: Option<String>,
}

/// Builds a [`NatsTransport`].
pub struct NatsTransportBuilder {
    client: async_nats::Client,
    service: String,
    codec: Codec,
    content_mode: ContentMode,
    bearer: Option<String>,
}

impl std::fmt::Debug for NatsTransportBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransportBuilder")
            .field("service", &self.service)
            .field("content_mode", &self.content_mode)
            .field("bearer_token", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// A transport to the servers of `service` on the NATS connection `client`.
    pub fn new(client: async_nats::Client, service: &str) -> NatsTransport {
        NatsTransport::builder(client, service).build()
    }

    /// A builder for a transport to `service`.
    pub fn builder(client: async_nats::Client, service: &str) -> NatsTransportBuilder {
        NatsTransportBuilder {
            client,
            service: service.to_owned(),
            codec: Codec::default(),
            content_mode: ContentMode::default(),
            bearer: None,
        }
    }

    /// Connects to NATS at `url` and makes a transport to `service` over it.
    pub async fn connect(url: &str, service: &str) -> Result<NatsTransport, tabgrab_core::Error> {
        let url = tabgrab_core::SecretUrl::new(url);
        let client = connect_options(&url)
            .connect(tabgrab_core::wire::nats::server_addrs(&url)?)
            .await
            .map_err(|e| {
                tabgrab_core::Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot connect to NATS at {url}; is nats-server running there?"),
                )
                .with_source(url.scrub(&e))
            })?;
        Ok(NatsTransport::new(client, service))
    }

    /// The NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }
}

impl NatsTransportBuilder {
    /// Sends `authorization: Bearer <token>` with every call, for servers whose handlers
    /// authenticate callers ([`crate::auth`]). A call then carries NATS headers in either
    /// content mode. A token that cannot be a header value (control characters) is not sent,
    /// and the server refuses the calls as unauthenticated.
    pub fn bearer_token(mut self, token: impl AsRef<str>) -> Self {
        // The value the HTTP and gRPC transports send, as NATS headers take it (a string).
        self.bearer = crate::auth::bearer(token.as_ref())
            .and_then(|value| value.to_str().ok().map(str::to_owned));
        self
    }

    /// The codec whose size limit applies to requests and answers.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How requests carry their envelope: structured (the default; the CloudEvent as the body,
    /// measured faster in BENCHMARKS.md) or binary (`ce-*` headers, the data as the body).
    /// Servers read both.
    pub fn content_mode(mut self, mode: ContentMode) -> Self {
        self.content_mode = mode;
        self
    }

    /// Builds the transport.
    pub fn build(self) -> NatsTransport {
        let token = service_token(&self.service);
        NatsTransport {
            inner: Arc::new(Inner {
                commands: format!("{SUBJECT_PREFIX}.{token}.commands."),
                queries: format!("{SUBJECT_PREFIX}.{token}.queries."),
                client: self.client,
                service: self.service,
                codec: self.codec,
                content_mode: self.content_mode,
                bearer: self.bearer,
            }),
        }
    }
}

impl Service<Call> for NatsTransport {
    type Response = Bytes;
    type Error = CallError;
    type Future = BoxFuture<Result<Bytes, CallError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.send(call).await })
    }
}

impl Inner {
    async fn send(&self, call: Call) -> Result<Bytes, CallError> {
        let ty: &str = &call.envelope.ty;
        let fail = |kind: ErrorKind, message: String| {
            CallError::new(kind, Arc::clone(&call.service), ty, message)
        };
        let remaining = call.remaining();
        let timeout_ms = remaining.map(|remaining| {
            u64::try_from(remaining.as_millis())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        let (headers, payload) = match self.content_mode {
            // The whole call is the event: the remaining time and the key as attributes, and
            // no header at all (a message with headers costs async-nats a map of strings on
            // each side; measured in BENCHMARKS.md).
            ContentMode::Structured => {
                let timeout = timeout_ms.map(|ms| ms.to_string());
                let timeout = timeout.as_deref().map(|ms| (TIMEOUT_ATTRIBUTE, ms));
                let key = (call.idempotency_key.as_deref()).map(|k| (IDEMPOTENCY_ATTRIBUTE, k));
                let extra: &[(&str, &str)] = match (timeout, key) {
                    (Some(timeout), Some(key)) => &[timeout, key],
                    (Some(one), None) | (None, Some(one)) => &[one],
                    (None, None) => &[],
                };
                let payload = self
                    .codec
                    .encode_with(&call.envelope, extra)
                    .map_err(|e| fail(e.kind(), format!("cannot send it: {}", e.message())))?;
                (None, payload)
            }
            ContentMode::Binary => {
                let (mut headers, payload) = tabgrab_core::wire::nats::encode(
                    &self.codec,
                    &call.envelope,
                    ContentMode::Binary,
                )
                .map_err(|e| fail(e.kind(), format!("cannot send it: {}", e.message())))?;
                if let Some(ms) = timeout_ms {
                    headers.insert(TIMEOUT, HeaderValue::from(ms));
                }
                if let Some(key) = &call.idempotency_key {
                    headers.insert(IDEMPOTENCY, key.as_str());
                }
                (Some(headers), payload)
            }
        };
        let prefix = match call.kind {
            RequestKind::Command => &self.commands,
            RequestKind::Query => &self.queries,
        };
        let mut subject = String::with_capacity(prefix.len() + ty.len());
        subject.push_str(prefix);
        subject.push_str(&type_tokens(ty));
        // The request's timeout is the caller's deadline (the connection's default without
        // one): the deadline layer above fires at the same instant, whichever wakes first.
        let headers = match (&self.bearer, headers) {
            (Some(bearer), headers) => {
                let mut headers = headers.unwrap_or_default();
                headers.insert(http::header::AUTHORIZATION.as_str(), bearer.as_str());
                Some(headers)
            }
            (None, headers) => headers,
        };
        let mut request = async_nats::Request::new().payload(payload);
        if let Some(headers) = headers {
            request = request.headers(headers);
        }
        let request = match remaining {
            Some(remaining) => request.timeout(Some(remaining.max(Duration::from_millis(1)))),
            None => request,
        };
        let answer = self
            .client
            .send_request(subject, request)
            .await
            .map_err(|e| {
                let (kind, what) = match e.kind() {
                    RequestErrorKind::NoResponders => (
                        ErrorKind::Unavailable,
                        format!(
                            "no server of service {} is listening on NATS (no responders); \
                             start one or check the service name",
                            self.service
                        ),
                    ),
                    RequestErrorKind::TimedOut => {
                        if call.remaining().is_none_or(|r| r.is_zero()) {
                            (
                                ErrorKind::DeadlineExceeded,
                                "no answer over NATS before the deadline".to_owned(),
                            )
                        } else {
                            (
                                ErrorKind::Timeout,
                                "no answer over NATS before the request's timeout".to_owned(),
                            )
                        }
                    }
                    RequestErrorKind::MaxPayloadExceeded => (
                        ErrorKind::TooLarge,
                        "the request exceeds the NATS server's max_payload".to_owned(),
                    ),
                    RequestErrorKind::InvalidSubject => (
                        ErrorKind::Malformed,
                        "the message type does not make a valid NATS subject".to_owned(),
                    ),
                    RequestErrorKind::Other => (
                        ErrorKind::Unavailable,
                        "the connection to NATS failed".to_owned(),
                    ),
                };
                fail(kind, what).with_source(e)
            })?;
        if answer.payload.len() > self.codec.max_size() {
            return Err(fail(
                ErrorKind::Protocol,
                format!(
                    "the answer of {} bytes exceeds the maximum of {} bytes",
                    answer.payload.len(),
                    self.codec.max_size()
                ),
            ));
        }
        let error = answer
            .headers
            .as_ref()
            .and_then(|h| h.get(ERROR_HEADER_NAME))
            .map(|v| v.as_str().to_owned());
        match error {
            None => Ok(answer.payload),
            Some(kind) => Err(error_from(&call, &kind, &answer.payload)),
        }
    }
}

/// The error an error answer stands for.
fn error_from(call: &Call, kind: &str, body: &[u8]) -> CallError {
    let service = Arc::clone(&call.service);
    let ty = call.envelope.ty.as_str();
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    if let Some(rejection) = parsed.as_ref().and_then(|p| p.rejection.clone()) {
        return CallError::remote(service, ty, rejection);
    }
    let message = parsed.map_or_else(
        || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        |p| p.error,
    );
    match kind_from_str(kind) {
        Some(kind) => CallError::new(kind, service, ty, format!("the server answered: {message}")),
        None => CallError::new(
            ErrorKind::Protocol,
            service,
            ty,
            format!("the server answered an unknown error kind {kind:?}: {message}"),
        ),
    }
}
