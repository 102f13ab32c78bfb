//! The tonic service of the generic envelope service; see the [module docs](super).

use std::time::Duration;

use bytes::Bytes;
use tabgrab_core::ErrorKind;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use super::proto::calls_server::{Calls, CallsServer};
use super::proto::{CallReply, CallRequest};
use crate::auth::{PeerCertificate, Presented};
use crate::call::IDEMPOTENCY_KEY;
use crate::handler::{Handlers, ServeError};

/// Serves [`Handlers`] as `tabgrab.call.v1.Calls`.
#[derive(Clone, Debug)]
pub struct CallsService {
    handlers: Handlers,
}

impl CallsService {
    /// The service over `handlers`.
    pub fn new(handlers: Handlers) -> CallsService {
        CallsService { handlers }
    }

    /// The tonic server, with message size limits from the handlers' codec. gRPC frames a
    /// bit above the codec's limit are let in so that the size check below answers with a
    /// clear `INVALID_ARGUMENT`; beyond twice the limit tonic refuses on its own.
    pub fn into_server(self) -> CallsServer<CallsService> {
        let max = self.handlers.codec_ref().max_size().saturating_mul(2);
        CallsServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }
}

/// The gRPC routes of `handlers`, as an axum router (merge it with the HTTP router to serve
/// both on one port, as [`crate::router`] does).
pub fn router(handlers: Handlers) -> axum::Router {
    service_router(CallsService::new(handlers).into_server())
}

/// Any tonic service as an axum router, on `/{package.Service}/{method}`, without a fallback
/// (tonic's `Routes` adds one, and axum cannot merge two routers that both have one), so
/// several gRPC services and the HTTP routes merge into one router.
pub fn service_router<S>(service: S) -> axum::Router
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    use tower::ServiceExt as _;
    axum::Router::new().route_service(
        &format!("/{}/{{*method}}", S::NAME),
        service.map_request(|request: http::Request<axum::body::Body>| {
            request.map(tonic::body::Body::new)
        }),
    )
}

/// The deadline of a gRPC request from its `grpc-timeout` metadata (`<digits><unit>`, unit one
/// of `H M S m u n`): for a typed gRPC service of your own that dispatches to
/// [`Handlers::dispatch_as`](crate::Handlers::dispatch_as), as the generic service does.
pub fn deadline_of(metadata: &MetadataMap) -> Result<Option<Instant>, Status> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument("grpc-timeout is not <digits><unit H|M|S|m|u|n>");
    let text = value.to_str().map_err(|_| bad())?;
    if text.len() < 2 || !text.is_ascii() {
        return Err(bad());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Instant::now().checked_add(timeout))
}

/// The gRPC status of a server error (its kind's code, the rejection in the details): for a
/// typed gRPC service of your own over [`Handlers::dispatch_as`](crate::Handlers::dispatch_as).
pub fn status_of(e: ServeError) -> Status {
    let code = match e.kind {
        ErrorKind::InvalidPayload
        | ErrorKind::Malformed
        | ErrorKind::MissingAttribute
        | ErrorKind::UnsupportedVersion
        | ErrorKind::TypeMismatch
        | ErrorKind::UnsupportedMediaType
        | ErrorKind::TooLarge => Code::InvalidArgument,
        ErrorKind::Conflict => Code::AlreadyExists,
        ErrorKind::UnknownType => Code::Unimplemented,
        ErrorKind::DeadlineExceeded | ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::Remote => Code::FailedPrecondition,
        ErrorKind::Rejected | ErrorKind::CircuitOpen => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        _ => Code::Internal,
    };
    match e.rejection.and_then(|r| serde_json::to_vec(&r).ok()) {
        Some(details) => Status::with_details(code, e.message, Bytes::from(details)),
        None => Status::new(code, e.message),
    }
}

#[tonic::async_trait]
impl Calls for CallsService {
    async fn call(&self, request: Request<CallRequest>) -> Result<Response<CallReply>, Status> {
        // The metadata is the request's header map; the connection's verified client
        // certificate is in the extensions, as for HTTP (one hyper connection serves both).
        let presented = Presented::new(request.metadata().as_ref())
            .with_peer_certificate(request.extensions().get::<PeerCertificate>());
        let principal = self
            .handlers
            .authenticate_presented(&presented)
            .map_err(status_of)?;
        let deadline = deadline_of(request.metadata())?;
        let idempotency_key = request
            .metadata()
            .get(IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let CallRequest {
            r#type,
            data,
            attributes,
        } = request.into_inner();
        // Under the attribute rules of every transport, counted with `data` against the
        // size limit.
        let envelope = self
            .handlers
            .codec_ref()
            .decode_attributes(&r#type, attributes, data)
            .map_err(|e| {
                status_of(ServeError::new(
                    e.kind(),
                    format!("the {type} call's attributes are invalid: {e}", type = r#type),
                ))
            })?;
        let data = self
            .handlers
            .dispatch_as(envelope, deadline, idempotency_key, principal)
            .await
            .map_err(status_of)?;
        Ok(Response::new(CallReply { data }))
    }
}
