//! The axum router of the HTTP transport; see the [module docs](super).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use tabgrab_core::{Envelope, ErrorKind};
use tokio::time::Instant;

use super::{ErrorBody, status_of};
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
    (status_of(e.kind), axum::Json(body)).into_response()
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
    let deadline = deadline_of(&parts.headers)?;
    let idempotency_key = parts
        .headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_body(handlers, &ty, &parts.headers, body).await?;
    let envelope = envelope_of(handlers, &ty, &parts.headers, body)?;
    handlers.dispatch(envelope, deadline, idempotency_key).await
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
    if let Some(len) = announced {
        if len > max as u64 {
            return Err(too_large(len.to_string()));
        }
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
        return Ok(Envelope::raw("/unknown", ty, body));
    }
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
