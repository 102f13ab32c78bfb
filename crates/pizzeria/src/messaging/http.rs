//! The messaging front desk's HTTP API: `POST /orders` answers `202` with the order id as
//! soon as its requests are stored and sent; `GET /orders/{id}` shows `pending`,
//! `confirmed` or `failed` with the reason. Refusals are JSON `{"error": "…"}`, as in the
//! event-driven style's API ([`crate::http`]).

use std::future::Future;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use uuid::Uuid;

use super::front_desk::FrontDesk;
use crate::http::{Accepted, ErrorBody, MAX_BODY_BYTES};
use crate::order::OrderRequest;

/// The router: `POST /orders`, `GET /orders/{id}`.
pub fn app(front_desk: FrontDesk) -> Router {
    Router::new()
        .route(
            "/orders",
            post(place_order).layer(axum::middleware::from_fn(crate::http::traced)),
        )
        .route("/orders/{id}", get(order_status))
        .fallback(|| async {
            refuse(
                StatusCode::NOT_FOUND,
                "no such resource; the front desk serves POST /orders and GET /orders/{id}",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(front_desk)
}

/// Serves [`app`] on `listener` until `shutdown` completes, through tabgrab's call server (its
/// timeouts and connection limit: [`tabgrab::call::server`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    front_desk: FrontDesk,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tabgrab::call::serve(listener, app(front_desk), shutdown).await
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: error.into(),
        }),
    )
        .into_response()
}

async fn place_order(
    State(desk): State<FrontDesk>,
    body: Result<Json<OrderRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => {
            return refuse(
                crate::http::body_refusal_status(&rejection),
                format!("the body is not a valid order: {}", rejection.body_text()),
            );
        }
    };
    let order = match request.validate() {
        Ok(order) => order,
        Err(invalid) => return refuse(StatusCode::BAD_REQUEST, invalid.0),
    };
    match desk.take_order(order).await {
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
            tracing::error!(%error, "could not send an order's requests");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the order's requests could not be recorded, so it was not accepted; try again: {error}"
                ),
            )
        }
    }
}

async fn order_status(State(desk): State<FrontDesk>, Path(id): Path<String>) -> Response {
    let Ok(order_id) = Uuid::parse_str(&id) else {
        let shown: String = id.chars().take(60).collect();
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no order {shown:?}: order ids are UUIDs, as returned by POST /orders"),
        );
    };
    match desk.order(order_id) {
        Some(view) => Json(view).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            format!("no order {order_id} at this front desk"),
        ),
    }
}
