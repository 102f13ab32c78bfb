//! The gRPC client transport: one [`Call`] → one `tabgrab.call.v1.Calls/Call`, over a tonic
//! channel (one HTTP/2 connection, calls multiplexed as streams).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tabgrab_core::{Codec, ErrorKind, Rejection};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tower::Service;

use super::proto::CallRequest;
use super::proto::calls_client::CallsClient;
use crate::call::IDEMPOTENCY_KEY;
use crate::{Call, CallError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Sends calls to one gRPC endpoint. Cheap to clone: one reference count (the client stack
/// clones its transport for every call).
#[derive(Clone, Debug)]
pub struct GrpcTransport {
    inner: std::sync::Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The generated client over a tonic channel (one HTTP/2 connection).
    client: CallsClient<Channel>,
    /// The endpoint, for error messages.
    uri: String,
    /// Whether the TLS is without a client certificate (for the hint of a closed connection).
    tls: Option<crate::tls::ClientTls>,
    /// `Bearer <token>` for the `authorization` metadata, marked sensitive.
    bearer: Option<http::HeaderValue>,
    /// What the connection's TLS refused after the handshake.
    alerts: std::sync::Arc<crate::tls::Alerts>,
}

/// Builds a [`GrpcTransport`].
#[derive(Debug)]
pub struct GrpcTransportBuilder {
    uri: String,
    connect_timeout: Duration,
    codec: Codec,
    connection_window: u32,
    tls: Option<crate::tls::ClientTls>,
    bearer: Option<http::HeaderValue>,
}

impl GrpcTransport {
    /// A builder for a transport to `uri` (`http://127.0.0.1:50051`).
    pub fn builder(uri: impl Into<String>) -> GrpcTransportBuilder {
        GrpcTransportBuilder {
            uri: uri.into(),
            connect_timeout: Duration::from_secs(2),
            codec: Codec::default(),
            connection_window: 8 * 1024 * 1024,
            tls: None,
            bearer: None,
        }
    }

    /// A transport to `uri` with defaults; connects lazily, on the first call.
    pub fn new(uri: impl Into<String>) -> Result<GrpcTransport, tabgrab_core::Error> {
        GrpcTransport::builder(uri).build()
    }
}

impl GrpcTransportBuilder {
    /// Sends `authorization: Bearer <token>` metadata with every call, for servers whose
    /// handlers authenticate callers ([`crate::auth`]). A token that cannot be a header value
    /// (control characters) is not sent, and the server refuses the calls as unauthenticated.
    pub fn bearer_token(mut self, token: impl AsRef<str>) -> Self {
        self.bearer = crate::auth::bearer(token.as_ref());
        self
    }

    /// TLS for an `https://` endpoint: the CA to trust and, for mutual TLS, the client's
    /// certificate ([`ClientTls`](crate::ClientTls)). Without it an `https://` endpoint trusts
    /// the Mozilla root certificates (webpki-roots).
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long connecting may take before a call fails with `Unavailable`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The HTTP/2 connection-level receive window, in bytes (default 8 MiB). h2 also sizes its
    /// defence against floods of small DATA frames from it (half the window): a client that
    /// has thousands of calls in flight receives thousands of small answers at once, and with
    /// a small window h2 would close the connection (`ENHANCE_YOUR_CALM`). Raise it for tens
    /// of thousands of calls in flight on one connection.
    pub fn connection_window(mut self, bytes: u32) -> Self {
        self.connection_window = bytes;
        self
    }

    /// The codec whose size limit applies to messages.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Builds the transport; the connection is made on the first call.
    pub fn build(self) -> Result<GrpcTransport, tabgrab_core::Error> {
        let endpoint = Endpoint::from_shared(self.uri.clone())
            .map_err(|e| {
                tabgrab_core::Error::new(
                    ErrorKind::Malformed,
                    format!("{:?} is not a gRPC endpoint URI", self.uri),
                )
                .with_source(e)
            })?
            .connect_timeout(self.connect_timeout)
            .initial_connection_window_size(self.connection_window)
            .tcp_nodelay(true);
        // The HTTP transport's connector, HTTP/2 only.
        let alerts = std::sync::Arc::<crate::tls::Alerts>::default();
        let connector = crate::tls::connector(
            self.tls.as_ref(),
            self.connect_timeout,
            false,
            std::sync::Arc::clone(&alerts),
        );
        let max = self.codec.max_size().saturating_mul(2);
        let client = CallsClient::new(endpoint.connect_with_connector_lazy(connector))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        Ok(GrpcTransport {
            inner: std::sync::Arc::new(Inner {
                client,
                uri: self.uri,
                tls: self.tls,
                bearer: self.bearer,
                alerts,
            }),
        })
    }
}

impl Service<Call> for GrpcTransport {
    type Response = bytes::Bytes;
    type Error = CallError;
    type Future = BoxFuture<Result<bytes::Bytes, CallError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // The channel's own readiness is awaited inside the call, under the deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let inner = std::sync::Arc::clone(&self.inner);
        Box::pin(async move {
            let mut client = inner.client.clone();
            let uri = &inner.uri;
            let envelope = &call.envelope;
            let optional = [
                ("subject", &envelope.subject),
                ("correlationid", &envelope.correlationid),
                ("causationid", &envelope.causationid),
                ("traceparent", &envelope.traceparent),
            ];
            // Sized for what is sent: the map lives, with the request, until h2 has written it.
            let present = optional.iter().filter(|(_, v)| v.is_some()).count();
            let mut attributes = std::collections::HashMap::with_capacity(2 + present);
            attributes.insert("id".to_owned(), envelope.id.clone());
            attributes.insert("source".to_owned(), envelope.source.clone());
            for (name, value) in optional {
                if let Some(value) = value {
                    attributes.insert(name.to_owned(), value.clone());
                }
            }
            let mut request = tonic::Request::new(CallRequest {
                r#type: envelope.ty.clone(),
                data: envelope.data.clone(),
                attributes,
            });
            if let Some(remaining) = call.remaining() {
                request.set_timeout(remaining.max(Duration::from_millis(1)));
            }
            if let Some(key) = &call.idempotency_key
                && let Ok(value) = MetadataValue::try_from(key.as_str())
            {
                request.metadata_mut().insert(IDEMPOTENCY_KEY, value);
            }
            if let Some(bearer) = &inner.bearer {
                // The metadata is a header map: the HTTP transport's value, as it is.
                request
                    .metadata_mut()
                    .as_mut()
                    .insert(http::header::AUTHORIZATION, bearer.clone());
            }
            let started = std::time::Instant::now();
            match client.call(request).await {
                Ok(reply) => Ok(reply.into_inner().data),
                Err(status) => {
                    let alert = inner.alerts.since(started);
                    Err(error_from(&call, uri, status, inner.tls.as_ref(), alert))
                }
            }
        })
    }
}

/// The error a gRPC status stands for.
fn error_from(
    call: &Call,
    uri: &str,
    status: Status,
    tls: Option<&crate::tls::ClientTls>,
    alert: Option<String>,
) -> CallError {
    let service = call.service.clone();
    let ty = call.envelope.ty.as_str();
    if status.code() == Code::FailedPrecondition
        && let Ok(rejection) = serde_json::from_slice::<Rejection>(status.details())
    {
        return CallError::remote(service, ty, rejection);
    }
    // rustls' reason, in the status or (TLS 1.3, read after the handshake) recorded by the
    // connection that it closed.
    let closed = matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown
    );
    if let Some(why) = crate::tls::failure(&status).or(alert.filter(|_| closed)) {
        let message = format!("TLS with {uri} failed: {why}");
        return CallError::new(ErrorKind::Protocol, service, ty, message).with_source(status);
    }
    // The connection broke under the call (not an answer of the server's).
    let transport = std::error::Error::source(&status)
        .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
    let kind = match status.code() {
        Code::InvalidArgument => ErrorKind::InvalidPayload,
        Code::Unimplemented => ErrorKind::UnknownType,
        Code::AlreadyExists => ErrorKind::Conflict,
        Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        Code::Cancelled if call.remaining().is_some_and(|r| r.is_zero()) => {
            ErrorKind::DeadlineExceeded
        }
        Code::Cancelled if transport => ErrorKind::Unavailable,
        Code::ResourceExhausted => ErrorKind::Rejected,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::Unavailable => ErrorKind::Unavailable,
        Code::Internal => ErrorKind::Handler,
        _ => ErrorKind::Protocol,
    };
    let hint = if (status.code() == Code::Unavailable || transport) && uri.starts_with("https:") {
        crate::tls::closed_hint(tls)
    } else {
        ""
    };
    let message = format!(
        "{uri} answered {:?}: {}{hint}",
        status.code(),
        status.message()
    );
    CallError::new(kind, service, ty, message).with_source(status)
}
