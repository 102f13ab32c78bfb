//! The axum router of the HTTP transport; see the [module docs](super).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use tabgrab_core::{Codec, Envelope, ErrorKind};
use tokio::time::Instant;

use super::{ErrorBody, status_of};
use crate::auth::{PeerCertificate, Presented};
use crate::call::{IDEMPOTENCY_KEY, RequestKind, TIMEOUT_HEADER};
use crate::handler::{Handlers, ServeError};

/// The HTTP routes of `handlers`: `POST /commands/{type}` and `POST /queries/{type}`.
///
/// A plain function of the handlers, so tests can drive it with `tower::ServiceExt::oneshot`
/// and no server. Serve it with [`serve`](crate::serve) (or merge it into a bigger router).
pub fn router(handlers: Handlers) -> Router {
    Router::new()
        .route("/commands/{ty}", post(command))
        .route("/queries/{ty}", post(query))
        .with_state(handlers)
}

async fn command(
    State(handlers): State<Handlers>,
    Path(ty): Path<String>,
    request: Request,
) -> Response {
    handle(handlers, RequestKind::Command, ty, request).await
}

async fn query(
    State(handlers): State<Handlers>,
    Path(ty): Path<String>,
    request: Request,
) -> Response {
    handle(handlers, RequestKind::Query, ty, request).await
}

async fn handle(handlers: Handlers, kind: RequestKind, ty: String, request: Request) -> Response {
    match serve_one(&handlers, kind, ty, request).await {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, tabgrab_core::envelope::JSON)],
            body,
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}

/// Turns a server error into its status and JSON body.
fn error_response(e: ServeError) -> Response {
    let body = ErrorBody {
        kind: e.kind.as_str().to_owned(),
        error: e.message,
        rejection: e.rejection,
    };
    let mut response = (status_of(e.kind), axum::Json(body)).into_response();
    if e.kind == ErrorKind::Unauthenticated {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

async fn serve_one(
    handlers: &Handlers,
    kind: RequestKind,
    ty: String,
    request: Request,
) -> Result<Bytes, ServeError> {
    // Resolve the route before reading a byte of the body.
    match handlers.kind_of(&ty) {
        None => {
            return Err(ServeError::new(
                ErrorKind::UnknownType,
                format!("no handler for message type {ty:?} here; check the type name and version"),
            ));
        }
        Some(registered) if registered != kind => {
            return Err(ServeError::new(
                ErrorKind::UnknownType,
                format!(
                    "{ty} is not a {}; POST it to /{}/{ty}",
                    if kind == RequestKind::Command {
                        "command"
                    } else {
                        "query"
                    },
                    registered.path_segment()
                ),
            ));
        }
        Some(_) => {}
    }
    let (parts, body) = request.into_parts();
    // Before a byte of the body is read, too.
    let presented = Presented::new(&parts.headers)
        .with_peer_certificate(parts.extensions.get::<PeerCertificate>());
    let principal = handlers.authenticate_presented(&presented)?;
    let structured = structured_mode(&ty, &parts.headers)?;
    let deadline = deadline_of(&parts.headers)?;
    let idempotency_key = parts
        .headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_body(handlers, &ty, &parts.headers, body).await?;
    let envelope = if structured {
        structured_envelope(handlers, &ty, &body)?
    } else {
        envelope_of(handlers, &ty, &parts.headers, body)?
    };
    handlers
        .dispatch_as(envelope, deadline, idempotency_key, principal)
        .await
}

/// The CloudEvents structured-mode media type: the body is the whole envelope.
const STRUCTURED: &str = "application/cloudevents+json";

/// Whether the request is in structured mode (`application/cloudevents+json`); `false` for a
/// JSON payload (binary mode, or a plain POST), which is also what a request without
/// `content-type` is taken for (an envelope without `datacontenttype` holds JSON); refuses
/// any other media type with [`ErrorKind::UnsupportedMediaType`] (415).
fn structured_mode(ty: &str, headers: &HeaderMap) -> Result<bool, ServeError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(false);
    };
    let unsupported = |shown: &str| {
        ServeError::new(
            ErrorKind::UnsupportedMediaType,
            format!(
                "the {ty} request's content type is {shown:?}; send the message's JSON as \
                 application/json (or a +json type), or the CloudEvent as {STRUCTURED}"
            ),
        )
    };
    let text = value
        .to_str()
        .map_err(|_| unsupported("(not visible ASCII)"))?;
    let media = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == STRUCTURED {
        return Ok(true);
    }
    if media == "application/json" || (media.ends_with("+json") && !media.contains("batch")) {
        return Ok(false);
    }
    let shown: String = text.chars().take(60).collect();
    Err(unsupported(&shown))
}

/// The envelope of a structured-mode body, through the codec (which says what is wrong).
fn structured_envelope(
    handlers: &Handlers,
    ty: &str,
    body: &Bytes,
) -> Result<Envelope, ServeError> {
    let envelope = handlers.codec_ref().decode(body).map_err(|e| {
        ServeError::new(
            e.kind(),
            format!("the {ty} request is not a valid structured CloudEvent: {e}"),
        )
    })?;
    if envelope.ty != ty {
        return Err(ServeError::new(
            ErrorKind::TypeMismatch,
            format!(
                "the CloudEvent's type is {} but the path says {ty}; they must agree",
                envelope.ty
            ),
        ));
    }
    Ok(envelope)
}

/// The deadline from the `tabgrab-timeout` header.
fn deadline_of(headers: &HeaderMap) -> Result<Option<Instant>, ServeError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let ms = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ServeError::new(
                ErrorKind::Malformed,
                format!("header {TIMEOUT_HEADER} must be a whole number of milliseconds"),
            )
        })?;
    Ok(Some(Instant::now() + Duration::from_millis(ms)))
}

/// Reads the body under the codec's size limit: the announced length is checked first, so an
/// oversized request is refused before its body is read.
async fn read_body(
    handlers: &Handlers,
    ty: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ServeError> {
    let max = handlers.codec_ref().max_size();
    let too_large = |size: String| {
        ServeError::new(
            ErrorKind::TooLarge,
            format!(
                "the {ty} body of {size} bytes exceeds the maximum of {max} bytes; \
                 send large payloads by reference"
            ),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced
        && len > max as u64
    {
        return Err(too_large(len.to_string()));
    }
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return too_large("more than that".to_owned());
            }
            source = s.source();
        }
        ServeError::new(
            ErrorKind::Malformed,
            format!("could not read the {ty} request body: {e}"),
        )
    })
}

/// The envelope: from `ce-*` headers (binary mode) when present, else made here for a plain
/// JSON request.
fn envelope_of(
    handlers: &Handlers,
    ty: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Envelope, ServeError> {
    if !headers.contains_key("ce-specversion") {
        let mut envelope = Envelope::raw("/unknown", ty, body);
        // The payload's media type as sent (JSON, checked by `structured_mode`).
        if let Some(ct) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            envelope.datacontenttype = Some(ct.to_owned());
        }
        return Ok(envelope);
    }
    let decoded = match plain_envelope(handlers.codec_ref(), headers, &body) {
        Some(envelope) => Ok(envelope),
        None => codec_envelope(handlers, ty, headers, body),
    };
    let envelope = decoded?;
    if envelope.ty != ty {
        return Err(ServeError::new(
            ErrorKind::TypeMismatch,
            format!(
                "header ce-type says {} but the path says {ty}; they must agree",
                envelope.ty
            ),
        ));
    }
    Ok(envelope)
}

/// The envelope through [`Codec::decode_binary`](tabgrab_core::Codec::decode_binary), which
/// handles every case (percent-encoding, extensions, any RFC 3339 offset) and says what is
/// wrong.
fn codec_envelope(
    handlers: &Handlers,
    ty: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Envelope, ServeError> {
    // Only the CloudEvents headers go to the codec (http's names are lowercase already).
    let pairs = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("ce-") || *name == header::CONTENT_TYPE)
        .map(|(name, value)| (name.as_str(), value.as_bytes()));
    let envelope = handlers
        .codec_ref()
        .decode_binary(pairs, body)
        .map_err(|e| {
            ServeError::new(
                e.kind(),
                format!("the CloudEvents headers of the {ty} request are invalid: {e}"),
            )
        })?;
    Ok(envelope)
}

/// The fast path of the envelope ([`tabgrab_core::wire::fast_envelope`]) over HTTP headers; `None`
/// for anything the codec must decode.
fn plain_envelope(codec: &Codec, headers: &HeaderMap, body: &Bytes) -> Option<Envelope> {
    tabgrab_core::wire::fast_envelope(
        codec,
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn by_codec(map: &HeaderMap, body: &Bytes) -> Result<Envelope, tabgrab_core::Error> {
        let pairs = map
            .iter()
            .filter(|(n, _)| n.as_str().starts_with("ce-") || *n == header::CONTENT_TYPE)
            .map(|(n, v)| (n.as_str(), v.as_bytes()));
        Codec::default().decode_binary(pairs, body.clone())
    }

    #[test]
    fn the_fast_envelope_is_the_codecs_envelope() {
        let codec = Codec::default();
        let body = Bytes::from_static(b"{\"n\":7}");
        let base = [
            ("ce-specversion", "1.0"),
            ("ce-id", "0193a3c4-0000-7000-8000-000000000000"),
            ("ce-source", "/tabgrab/client"),
            ("ce-type", "bench.echo.v1"),
            ("content-type", "application/json"),
            ("tabgrab-timeout", "5000"),
        ];
        let times = [
            "2026-11-27T02:37:05Z",
            "2026-11-27T02:37:05.1Z",
            "2026-11-27T02:37:05.123456789Z",
            "2026-11-27T02:37:05.000000001Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2024-02-29T12:00:00.5Z",
        ];
        for time in times {
            let mut pairs = base.to_vec();
            pairs.push(("ce-time", time));
            pairs.push(("ce-subject", "order-1"));
            pairs.push(("ce-correlationid", "c-1"));
            pairs.push(("ce-deadline", time));
            pairs.push(("ce-requesttype", "bench.echo.v1"));
            let map = headers(&pairs);
            let fast = plain_envelope(&codec, &map, &body).expect(time);
            assert_eq!(fast, by_codec(&map, &body).unwrap(), "{time}");
        }
        let map = headers(&base);
        assert_eq!(
            plain_envelope(&codec, &map, &body).unwrap(),
            by_codec(&map, &body).unwrap()
        );
        // Left to the codec: other spellings of the time, bad dates, percent-encoding, an
        // extension name the codec refuses, a missing or wrong attribute.
        let odd: [&[(&'static str, &str)]; 9] = [
            &[("ce-time", "2026-11-27T02:37:05+02:00")],
            &[("ce-time", "2026-11-27t02:37:05z")],
            &[("ce-time", "2026-02-30T02:37:05Z")],
            &[("ce-time", "2026-11-27T02:37:60Z")],
            &[("ce-time", "2026-11-27T02:37:05.1234567891Z")],
            &[("ce-source", "/a%20b")],
            &[("ce-my_extension", "x")],
            &[("ce-specversion", "0.3")],
            &[("ce-id", "")],
        ];
        for extra in odd {
            let mut map = headers(&base);
            for (name, value) in extra {
                map.insert(
                    http::HeaderName::from_static(name),
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            assert!(plain_envelope(&codec, &map, &body).is_none(), "{extra:?}");
        }
        let small = Codec::with_max_size(16);
        assert!(plain_envelope(&small, &headers(&base), &body).is_none());
    }
}
