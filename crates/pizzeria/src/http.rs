//! The front desk's HTTP API, one app for the three styles: customers `POST /orders` and ask
//! `GET /orders/{id}`.
//!
//! [`app`] builds the router from a [`Desk`] (the events style's
//! [`FrontDesk`](crate::services::FrontDesk), the messaging style's
//! [`FrontDesk`](crate::messaging::front_desk::FrontDesk), the call style's
//! [`Waiter`](crate::calls::front_desk::Waiter)), so tests drive it with
//! `tower::ServiceExt::oneshot` and need no socket; [`serve`] runs it on a listener the caller
//! bound (port 0 in tests) until a shutdown future completes, then lets open requests finish.
//! What every style shares is here: the routes, the body limit, the refusal of a body that is
//! not an order and of an order that breaks a rule, the order's trace, the order ids. What
//! differs is the answer to a valid order: the events and messaging styles accept it (`202`)
//! as soon as it is recorded, the call style answers when the services have (see
//! [`crate::calls::front_desk`] for its statuses).
//!
//! Every refusal is JSON with an `error` that says what to fix (`{"error": "…"}`; the call
//! style adds `service`, `reason` and `order_id` where it has them):
//!
//! | request | answer |
//! |---|---|
//! | a valid order | events, messaging: `202 Accepted`, `{"order_id", "status_url"}` and a `Location` header; calls: `201 Created` once made |
//! | a body that is not JSON, or not an order | `400`, naming the problem (line and column) |
//! | an order that breaks a rule (menu, 1–10 pizzas, customer, card) | `400`, naming the rule |
//! | a body over 64 KiB | `413` |
//! | a body without `content-type: application/json` | `415` |
//! | the bus cannot record the order | `503`: nothing was accepted, try again |
//! | `GET` of an id that is not a UUID | `400` |
//! | `GET` of an order the front desk does not know | `404` |
//! | the front desk cannot read its store | `503` |
//!
//! `202` and not `201` in the events and messaging styles: the order is accepted, not done.
//! The status URL shows its progress.

use std::future::Future;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::{OrderRequest, ValidOrder};

/// The largest request body accepted: an order is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The answer to an accepted order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The new order's id.
    pub order_id: Uuid,
    /// Where to follow it: `/orders/{order_id}`.
    pub status_url: String,
}

/// The body of every refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong and what to do.
    pub error: String,
}

/// A front desk of any style, behind the one HTTP API.
pub trait Desk: Clone + Send + Sync + 'static {
    /// What `GET /orders/{id}` shows of an order.
    type View: Serialize + Send;

    /// Takes an order that keeps every rule, and answers the customer.
    fn place(&self, order: ValidOrder) -> impl Future<Output = Response> + Send;

    /// The view of order `id`: `None` when this desk does not know it, an error when it
    /// cannot read its orders.
    fn view(
        &self,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Self::View>, tabgrab::Error>> + Send;

    /// Which orders this desk knows, for the `404` of one it does not.
    fn knows(&self) -> String {
        "at this front desk".to_owned()
    }
}

/// The answer of a desk that accepts an order once it is recorded (the events and messaging
/// styles): `202 Accepted` with its status URL, or `503` when `what` could not be recorded.
pub(crate) fn accepted_once_recorded(
    recorded: Result<Uuid, tabgrab::Error>,
    what: &str,
) -> Response {
    match recorded {
        Ok(order_id) => {
            let status_url = format!("/orders/{order_id}");
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, status_url.clone())],
                Json(Accepted {
                    order_id,
                    status_url,
                }),
            )
                .into_response()
        }
        Err(error) => {
            tracing::error!(%error, "could not record {what}");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{what} could not be recorded, so the order was not accepted; try again: {error}"
                ),
            )
        }
    }
}

/// The front desk's router: `POST /orders`, `GET /orders/{id}`.
pub fn app<D: Desk>(desk: D) -> Router {
    Router::new()
        .route(
            "/orders",
            post(place_order::<D>).layer(axum::middleware::from_fn(traced)),
        )
        .route("/orders/{id}", get(order_status::<D>))
        .fallback(|| async {
            refuse(
                StatusCode::NOT_FOUND,
                "no such resource; the front desk serves POST /orders and GET /orders/{id}",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(desk)
}

/// Runs a `POST /orders` in a span of its own, the root of the order's trace: what the front
/// desk sends (an event, requests, calls) carries it to every service that handles the order
/// (docs/observability.md). Every style's front desk uses it.
pub(crate) async fn traced(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let span = tracing::info_span!(
        "POST /orders",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/orders",
        http.response.status_code = tracing::field::Empty,
    );
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// Serves [`app`] on `listener` until `shutdown` completes, then waits for open requests;
/// through tabgrab's call server, whose timeouts and connection limit keep idle and slow sockets
/// from taking it down ([`tabgrab::call::server`]).
pub async fn serve<D: Desk>(
    listener: tokio::net::TcpListener,
    desk: D,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tabgrab::call::serve(listener, app(desk), shutdown).await
}

/// A JSON refusal.
pub(crate) fn refuse(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: error.into(),
        }),
    )
        .into_response()
}

async fn place_order<D: Desk>(
    State(desk): State<D>,
    body: Result<Json<OrderRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return refuse_body(&rejection),
    };
    match request.validate() {
        Ok(order) => desk.place(order).await,
        Err(invalid) => refuse(StatusCode::BAD_REQUEST, invalid.0),
    }
}

/// The status of a body axum's `Json` refused: 413 and 415 as axum found them, 400 for
/// anything else. axum answers 422 for JSON of the wrong shape (a missing or unknown field),
/// but to the customer that is a body that is not an order, which every front desk's API
/// documents as 400.
pub(crate) fn body_refusal_status(rejection: &JsonRejection) -> StatusCode {
    match rejection.status() {
        s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Turns axum's JSON rejection into our JSON refusal with a clear message.
fn refuse_body(rejection: &JsonRejection) -> Response {
    match body_refusal_status(rejection) {
        StatusCode::PAYLOAD_TOO_LARGE => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {} KiB",
                MAX_BODY_BYTES / 1024
            ),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the order as JSON with the header content-type: application/json",
        ),
        _ => refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not a valid order ({}); expected {{\"customer\": string, \"pizzas\": [menu names], \"card\": digits}}",
                rejection.body_text()
            ),
        ),
    }
}

async fn order_status<D: Desk>(State(desk): State<D>, Path(id): Path<String>) -> Response {
    let Ok(order_id) = Uuid::parse_str(&id) else {
        let shown: String = id.chars().take(60).collect();
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "{shown:?} is not an order id: order ids are UUIDs, as returned by POST /orders"
            ),
        );
    };
    match desk.view(order_id).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => refuse(
            StatusCode::NOT_FOUND,
            format!("no order {order_id} {}", desk.knows()),
        ),
        Err(error) => {
            tracing::error!(%error, "could not read an order");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the front desk cannot read its orders right now; try again",
            )
        }
    }
}
