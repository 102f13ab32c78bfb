//! The HTTP client transport: one [`Call`] → one `POST`, over hyper's pooled client.
//!
//! Why hyper's client and not reqwest: the transport is a tower `Service` under our own
//! layers (deadline, retry, breaker), so reqwest's own timeout and redirect machinery would
//! only be in the way, and hyper-util's pooled client is what reqwest is built on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tabgrab_core::{Codec, Envelope, ErrorKind};
use tower::Service;

use super::{ErrorBody, kind_from_str};
use crate::call::{IDEMPOTENCY_KEY, TIMEOUT_HEADER};
use crate::{Call, CallError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Sends calls as HTTP requests to one base URL. Cheap to clone: one reference count (the
/// client stack clones its transport for every call).
#[derive(Clone, Debug)]
pub struct HttpTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The pooled hyper client (`https://` bases over TLS).
    client: HyperClient<crate::tls::Connector, Full<Bytes>>,
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// Limits what we send and what we accept back.
    codec: Codec,
    /// The TLS of an `https://` base, if configured.
    tls: Option<crate::tls::ClientTls>,
    /// `authorization: Bearer <token>`, marked sensitive, if the server authenticates.
    bearer: Option<http::HeaderValue>,
    /// What the connections' TLS refused after the handshake.
    alerts: Arc<crate::tls::Alerts>,
}

/// Builds an [`HttpTransport`].
#[derive(Debug)]
pub struct HttpTransportBuilder {
    /// Marked sensitive: `Debug` shows it as `Sensitive`.
    bearer: Option<http::HeaderValue>,
    base: String,
    http2_only: bool,
    connect_timeout: Duration,
    pool_max_idle_per_host: usize,
    codec: Codec,
    connection_window: u32,
    tls: Option<crate::tls::ClientTls>,
}

impl HttpTransport {
    /// A transport to `base` (`http://127.0.0.1:8080`) with defaults.
    pub fn new(base: impl Into<String>) -> HttpTransport {
        HttpTransport::builder(base).build()
    }

    /// A builder for a transport to `base`.
    pub fn builder(base: impl Into<String>) -> HttpTransportBuilder {
        HttpTransportBuilder {
            base: base.into(),
            http2_only: false,
            connect_timeout: Duration::from_secs(2),
            pool_max_idle_per_host: 256,
            codec: Codec::default(),
            connection_window: 8 * 1024 * 1024,
            tls: None,
            bearer: None,
        }
    }
}

impl HttpTransportBuilder {
    /// Sends `authorization: Bearer <token>` with every call, for servers whose handlers
    /// authenticate callers ([`crate::auth`]). A token that cannot be a header value (control
    /// characters) is not sent, and the server refuses the calls as unauthenticated.
    pub fn bearer_token(mut self, token: impl AsRef<str>) -> Self {
        self.bearer = crate::auth::bearer(token.as_ref());
        self
    }

    /// TLS for an `https://` base: the CA to trust and, for mutual TLS, the client's
    /// certificate ([`ClientTls`](crate::ClientTls)). Without it an `https://` base trusts the
    /// Mozilla root certificates (webpki-roots).
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Speak HTTP/2 only (prior knowledge): all calls multiplexed on one connection.
    pub fn http2_only(mut self, yes: bool) -> Self {
        self.http2_only = yes;
        self
    }

    /// How long connecting may take before the call fails with `Unavailable`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Idle connections kept per host (HTTP/1.1).
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// The HTTP/2 connection-level receive window, in bytes (default 8 MiB; HTTP/2 only). h2 also sizes its
    /// defence against floods of small DATA frames from it (half the window): a client that
    /// has thousands of calls in flight receives thousands of small answers at once, and with
    /// a small window h2 would close the connection (`ENHANCE_YOUR_CALM`). Raise it for tens
    /// of thousands of calls in flight on one connection.
    pub fn connection_window(mut self, bytes: u32) -> Self {
        self.connection_window = bytes;
        self
    }

    /// The codec whose size limit applies to requests and responses.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Builds the transport.
    pub fn build(self) -> HttpTransport {
        let alerts = Arc::<crate::tls::Alerts>::default();
        let connector = crate::tls::connector(
            self.tls.as_ref(),
            self.connect_timeout,
            true,
            Arc::clone(&alerts),
        );
        let client = HyperClient::builder(TokioExecutor::new())
            .http2_only(self.http2_only)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .http2_initial_connection_window_size(self.connection_window)
            .build(connector);
        HttpTransport {
            inner: Arc::new(Inner {
                client,
                base: self.base.trim_end_matches('/').to_owned(),
                codec: self.codec,
                tls: self.tls,
                bearer: self.bearer,
                alerts,
            }),
        }
    }
}

impl Service<Call> for HttpTransport {
    type Response = Bytes;
    type Error = CallError;
    type Future = BoxFuture<Result<Bytes, CallError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { send(&inner, call).await })
    }
}

async fn send(inner: &Inner, call: Call) -> Result<Bytes, CallError> {
    let (client, base, codec) = (&inner.client, inner.base.as_str(), inner.codec);
    let service = call.service.clone();
    let ty: &str = &call.envelope.ty;
    let fail =
        |kind: ErrorKind, message: String| CallError::new(kind, service.clone(), ty, message);
    let headers = ce_headers(&codec, &call.envelope)
        .map_err(|e| fail(e.kind(), format!("cannot send it: {}", e.message())))?;
    let body = call.envelope.data.clone();
    let uri: Uri = format!("{base}/{}/{ty}", call.kind.path_segment())
        .parse()
        .map_err(|e| {
            fail(
                ErrorKind::Malformed,
                format!("bad URL from base {base}: {e}"),
            )
        })?;
    let mut request = Request::builder().method(Method::POST).uri(uri);
    if let Some(map) = request.headers_mut() {
        *map = headers;
    }
    if let Some(remaining) = call.remaining() {
        let ms = u64::try_from(remaining.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        request = request.header(HeaderName::from_static(TIMEOUT_HEADER), ms);
    }
    if let Some(key) = &call.idempotency_key {
        request = request.header(HeaderName::from_static(IDEMPOTENCY_KEY), key);
    }
    if let Some(bearer) = &inner.bearer {
        request = request.header(http::header::AUTHORIZATION, bearer.clone());
    }
    let request = request.body(Full::new(body)).map_err(|e| {
        fail(
            ErrorKind::Malformed,
            format!("cannot build the request: {e}"),
        )
    })?;
    let started = std::time::Instant::now();
    let response = client.request(request).await.map_err(|e| {
        // rustls' reason, in the error or (TLS 1.3, read after the handshake) recorded by the
        // connection that it closed.
        if let Some(why) = crate::tls::failure(&e).or_else(|| inner.alerts.since(started)) {
            return fail(
                ErrorKind::Protocol,
                format!("TLS with {base} failed: {why}"),
            )
            .with_source(e);
        }
        let message = if e.is_connect() {
            format!("cannot connect to {base}")
        } else if base.starts_with("https:") {
            format!(
                "the connection failed to {base}{}",
                crate::tls::closed_hint(inner.tls.as_ref())
            )
        } else {
            format!("the connection failed to {base}")
        };
        fail(ErrorKind::Unavailable, message).with_source(e)
    })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), codec.max_size())
        .collect()
        .await
        .map_err(|e| {
            fail(
                ErrorKind::Protocol,
                format!(
                    "the response body could not be read (or exceeds {} bytes): {e}",
                    codec.max_size()
                ),
            )
        })?
        .to_bytes();
    if status == StatusCode::OK {
        return Ok(body);
    }
    Err(error_from(&call, status, &body))
}

/// The CloudEvents binary-mode headers of `envelope`: written straight into a `HeaderMap` with
/// static names when every attribute is plain header text (the common case: ids, URIs, type
/// names, RFC 3339 times), else through [`Codec::encode_binary`], which percent-encodes. Both
/// give the same headers (a unit test holds them equal) and check the same size limit.
fn ce_headers(codec: &Codec, envelope: &Envelope) -> Result<HeaderMap, tabgrab_core::Error> {
    if let Some(map) = plain_ce_headers(codec, envelope) {
        return Ok(map);
    }
    let (pairs, _) = codec.encode_binary(envelope)?;
    let mut map = HeaderMap::with_capacity(pairs.len() + 3);
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            map.append(name, value);
        }
    }
    Ok(map)
}

/// The fast path of [`ce_headers`]; `None` when a value needs percent-encoding or it is over
/// the size limit (the codec then says why).
///
/// Cheaper than the codec's path in what it allocates, which matters with many calls in
/// flight (each request's headers live until h2 has written them): a map sized for the
/// headers of a call (not the codec's worst case), static values for `ce-specversion` and the
/// JSON content type, and the time written by [`rfc3339`](tabgrab_core::wire::rfc3339) on the stack.
fn plain_ce_headers(codec: &Codec, envelope: &Envelope) -> Option<HeaderMap> {
    use tabgrab_core::envelope::{JSON, SPEC_VERSION};
    use tabgrab_core::wire::Name;
    let mut bufs = [[0u8; tabgrab_core::wire::RFC3339_MAX]; 2];
    // The attributes, the content type, the deadline and an idempotency key: 12 entries
    // without growing (the codec's 14 would allocate room for 24).
    let mut map = HeaderMap::with_capacity(10);
    for (name, value) in tabgrab_core::wire::plain_headers(codec, envelope, &mut bufs)? {
        let value = match value {
            SPEC_VERSION => HeaderValue::from_static(SPEC_VERSION),
            JSON if name == Name::Known("content-type") => HeaderValue::from_static(JSON),
            _ => HeaderValue::from_str(value).ok()?,
        };
        let name = match name {
            Name::Known(name) => known_header(name),
            Name::Extension(attribute) => {
                HeaderName::from_bytes(format!("ce-{attribute}").as_bytes()).ok()?
            }
        };
        map.insert(name, value);
    }
    Some(map)
}

/// The header of a known attribute, made at compile time: `HeaderName::from_static` at run
/// time looks the name up among the standard headers and checks each byte of it, on every
/// header of every call.
fn known_header(name: &'static str) -> HeaderName {
    macro_rules! known {
        ($($name:literal),*) => {
            match name {
                $($name => const { HeaderName::from_static($name) },)*
                other => HeaderName::from_static(other),
            }
        };
    }
    known!(
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "ce-subject",
        "ce-correlationid",
        "ce-causationid",
        "ce-traceparent",
        "ce-replyto",
        "ce-deadline",
        "content-type"
    )
}

/// The error an HTTP error answer stands for.
fn error_from(call: &Call, status: StatusCode, body: &[u8]) -> CallError {
    let service = call.service.clone();
    let ty = call.envelope.ty.as_str();
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        if let Some(rejection) = parsed.rejection {
            return CallError::remote(service, ty, rejection);
        }
        if let Some(kind) = kind_from_str(&parsed.kind) {
            return CallError::new(
                kind,
                service,
                ty,
                format!("the server answered {status}: {}", parsed.error),
            );
        }
    }
    let kind = match status {
        StatusCode::BAD_REQUEST => ErrorKind::InvalidPayload,
        StatusCode::NOT_FOUND => ErrorKind::UnknownType,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
        StatusCode::CONFLICT => ErrorKind::Conflict,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::UnsupportedMediaType,
        StatusCode::TOO_MANY_REQUESTS => ErrorKind::Rejected,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => ErrorKind::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => ErrorKind::DeadlineExceeded,
        _ => ErrorKind::Protocol,
    };
    CallError::new(
        kind,
        service,
        ty,
        format!(
            "the server answered {status} with a body that is not a tabgrab error: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow_path(codec: &Codec, envelope: &Envelope) -> Vec<(String, String)> {
        let mut pairs = codec.encode_binary(envelope).unwrap().0;
        pairs.sort();
        pairs
    }

    fn as_pairs(map: &HeaderMap) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = map
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn the_fast_headers_are_the_codecs_headers() {
        let codec = Codec::default();
        let envelope = Envelope::raw("/pizzeria/front-desk", "demo.ping.v1", Bytes::from("{}"))
            .with_subject("order-1")
            .with_correlation_id("c-1");
        let fast = plain_ce_headers(&codec, &envelope).expect("plain attributes");
        assert_eq!(as_pairs(&fast), slow_path(&codec, &envelope));
        // Every optional attribute, a content type other than JSON, no time.
        let mut envelope = Envelope::raw("/s", "demo.ping.v1", Bytes::from("x"))
            .with_subject("s-1")
            .with_correlation_id("c-1");
        envelope.causationid = Some("cause-1".into());
        envelope.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        envelope.replyto = Some("group-a".into());
        envelope.datacontenttype = Some("text/plain".into());
        envelope.time = None;
        let fast = plain_ce_headers(&codec, &envelope).expect("plain attributes");
        assert_eq!(as_pairs(&fast), slow_path(&codec, &envelope));
    }

    #[test]
    fn values_that_need_encoding_take_the_codecs_path() {
        let codec = Codec::default();
        let envelope = Envelope::raw("/a source with spaces", "demo.ping.v1", Bytes::new());
        assert!(plain_ce_headers(&codec, &envelope).is_none());
        let map = ce_headers(&codec, &envelope).unwrap();
        assert_eq!(as_pairs(&map), slow_path(&codec, &envelope));
        assert_eq!(map["ce-source"], "/a%20source%20with%20spaces");
    }

    #[test]
    fn the_size_limit_holds_on_both_paths() {
        let codec = Codec::with_max_size(64);
        let envelope = Envelope::raw("/s", "demo.ping.v1", Bytes::from(vec![b'1'; 100]));
        let err = ce_headers(&codec, &envelope).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
    }
}
