//! Payment's typed gRPC service, `pizzeria.payment.v1.Payment` (`proto/payment.proto`), for
//! gRPC clients that did not come from tabgrab.
//!
//! It answers through the very same [`Handlers`] as HTTP and the generic service: each typed
//! request becomes the command's JSON and is dispatched, so the size limit, the deadline
//! (`grpc-timeout`) and the rejections behave identically on every transport.

use tabgrab::Envelope;
use tabgrab::call::grpc::{deadline_of, status_of};
use tabgrab::call::{Handlers, IDEMPOTENCY_KEY};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::commands::{ChargeCard, Charged, RefundPayment, Refunded};

/// The generated messages, server and client of `proto/payment.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("pizzeria.payment.v1");
}

use proto::payment_server::{Payment, PaymentServer};
use proto::{ChargeCardReply, ChargeCardRequest, RefundPaymentReply, RefundPaymentRequest};

/// The typed payment service over payment's handlers.
#[derive(Clone, Debug)]
pub struct TypedPayment {
    handlers: Handlers,
}

impl TypedPayment {
    /// The service over `handlers` (from [`PaymentDesk::handlers`](super::PaymentDesk::handlers)).
    pub fn new(handlers: Handlers) -> TypedPayment {
        TypedPayment { handlers }
    }

    /// Its routes, as an axum router to merge beside the toolkit's.
    pub fn router(self) -> axum::Router {
        tabgrab::call::grpc::service_router(PaymentServer::new(self))
    }

    async fn dispatch<R: tabgrab::Request>(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        command: &R,
    ) -> Result<R::Response, Status> {
        let deadline = deadline_of(metadata)?;
        let key = metadata
            .get(IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let envelope = Envelope::new("/pizzeria/grpc-client", command)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The same check as the generic services: the typed service is no way around it.
        let principal = self
            .handlers
            .authenticate_headers(&metadata.clone().into_headers())
            .map_err(status_of)?;
        let data = self
            .handlers
            .dispatch_as(envelope, deadline, key, principal)
            .await
            .map_err(status_of)?;
        serde_json::from_slice(&data)
            .map_err(|e| Status::internal(format!("the {} answer did not decode: {e}", R::TYPE)))
    }
}

fn order_id(s: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(s).map_err(|_| {
        let shown: String = s.chars().take(60).collect();
        Status::invalid_argument(format!("order_id {shown:?} is not a UUID"))
    })
}

#[tonic::async_trait]
impl Payment for TypedPayment {
    async fn charge_card(
        &self,
        request: Request<ChargeCardRequest>,
    ) -> Result<Response<ChargeCardReply>, Status> {
        let (metadata, _, r) = request.into_parts();
        let command = ChargeCard {
            order_id: order_id(&r.order_id)?,
            amount_cents: r.amount_cents,
            card: r.card,
        };
        let Charged {
            order_id,
            amount_cents,
        } = self.dispatch(&metadata, &command).await?;
        Ok(Response::new(ChargeCardReply {
            order_id: order_id.to_string(),
            amount_cents,
        }))
    }

    async fn refund_payment(
        &self,
        request: Request<RefundPaymentRequest>,
    ) -> Result<Response<RefundPaymentReply>, Status> {
        let (metadata, _, r) = request.into_parts();
        let command = RefundPayment {
            order_id: order_id(&r.order_id)?,
        };
        let Refunded {
            order_id,
            amount_cents,
        } = self.dispatch(&metadata, &command).await?;
        Ok(Response::new(RefundPaymentReply {
            order_id: order_id.to_string(),
            amount_cents,
        }))
    }
}
