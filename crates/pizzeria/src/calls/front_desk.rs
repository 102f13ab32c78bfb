//! The front desk, call style: `POST /orders` calls payment, inventory and the kitchen in turn
//! and answers the customer when they have answered.
//!
//! | outcome | answer |
//! |---|---|
//! | charged, reserved, baked | `201 Created`, `{"order_id", "status": "ready", "amount_cents"}` |
//! | the card is declined | `402`, `{"error", "service": "payment", "reason": "payment declined: …"}` |
//! | ingredients are missing (the charge is refunded) | `409`, `service: "inventory"`, `reason: "ingredients missing: …"` |
//! | a service failed, timed out, is down or its breaker is open (what was done is compensated) | `503` or `504`, naming the service |
//! | a body that is not an order, an invalid order, too large or not JSON | `400`, `413`, `415`: the one app of every style ([`crate::http`]) |
//!
//! Every command carries the order id as idempotency key, so the client stack may retry it
//! (the services treat a repeat as the first). Compensations (refund, release) get their own
//! fresh deadline: they must run even when the order's own budget is spent.
//!
//! `GET /orders/{id}` tells where an order stands (`charging`, `reserving`, `baking`, then
//! `ready`, `cancelled` with the reason, or `failed` naming the service): the answer to the
//! `POST` is the order's fate in this style, and the front desk remembers the last
//! [`REMEMBERED`] orders of this process, in memory (in this style payment, inventory and
//! the kitchen keep their state in memory too; the events style keeps all of it durable).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tabgrab::ErrorKind;
use tabgrab::call::{CallError, CallOptions, Client};
use uuid::Uuid;

use crate::commands::{
    CARD_DECLINED, ChargeCard, INGREDIENTS_MISSING, PlaceTicket, RefundPayment, ReleaseIngredients,
    ReserveIngredients,
};
use crate::order::ValidOrder;

/// The answer to an order that was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The order's id.
    pub order_id: Uuid,
    /// `ready`: paid, and the pizzas are out of the oven.
    pub status: String,
    /// What was charged.
    pub amount_cents: u64,
}

/// The body of every refusal of the call-style front desk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What went wrong, naming the failing service, and what to do.
    pub error: String,
    /// The service that failed or refused, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Why the order was cancelled, for a business refusal (a declined card, missing
    /// ingredients), in the events style's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The order's id, once one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
}

/// How many orders the call-style front desk remembers for `GET /orders/{id}`.
pub const REMEMBERED: usize = 100_000;

/// Where an order stands, for `GET /orders/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// The order's id.
    pub order_id: Uuid,
    /// `charging`, `reserving`, `baking`, `ready`, `cancelled` or `failed`.
    pub status: String,
    /// What was (or is to be) charged.
    pub amount_cents: u64,
    /// Why it was cancelled, or which service failed and what was undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The orders this process took, the oldest forgotten first.
#[derive(Debug, Default)]
pub struct OrderBook {
    states: HashMap<Uuid, OrderState>,
    order: VecDeque<Uuid>,
}

impl OrderBook {
    fn set(&mut self, order_id: Uuid, amount_cents: u64, status: &str, reason: Option<String>) {
        let state = OrderState {
            order_id,
            status: status.to_owned(),
            amount_cents,
            reason,
        };
        if self.states.insert(order_id, state).is_none() {
            self.order.push_back(order_id);
            if self.order.len() > REMEMBERED
                && let Some(oldest) = self.order.pop_front()
            {
                self.states.remove(&oldest);
            }
        }
    }
}

/// The front desk's clients of the three services.
#[derive(Clone, Debug)]
pub struct Waiter {
    /// Payment's client.
    pub payment: Client,
    /// Inventory's client.
    pub inventory: Client,
    /// The kitchen's client.
    pub kitchen: Client,
    /// The deadline of one order (all its calls), and of each compensation.
    pub order_timeout: Duration,
    /// The orders taken, for `GET /orders/{id}`.
    pub orders: Arc<Mutex<OrderBook>>,
}

impl Waiter {
    fn note(&self, order_id: Uuid, amount_cents: u64, status: &str, reason: Option<String>) {
        self.orders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set(order_id, amount_cents, status, reason);
    }

    /// Where order `order_id` stands, if this process took it (and has not forgotten it).
    pub fn order(&self, order_id: Uuid) -> Option<OrderState> {
        self.orders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .states
            .get(&order_id)
            .cloned()
    }
}

fn refuse(status: StatusCode, refusal: Refusal) -> Response {
    (status, Json(refusal)).into_response()
}

/// The status and refusal for a call that failed for another reason than a business refusal
/// (noted in the order book).
fn failed(
    waiter: &Waiter,
    service: &str,
    order_id: Uuid,
    amount: u64,
    e: &CallError,
    undone: &str,
) -> Response {
    let (status, advice) = match e.kind() {
        ErrorKind::DeadlineExceeded | ErrorKind::Timeout => {
            (StatusCode::GATEWAY_TIMEOUT, "try again")
        }
        // Not the customer's doing, and trying again changes nothing: the front desk's
        // credentials (PIZZERIA_CALL_TOKEN, its TLS files) need fixing.
        ErrorKind::Unauthenticated | ErrorKind::PermissionDenied | ErrorKind::Protocol => (
            StatusCode::BAD_GATEWAY,
            "the front desk cannot call it as configured",
        ),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "try again"),
    };
    let error = format!("{service} failed, so the order was not made{undone}; {advice}: {e}");
    waiter.note(order_id, amount, "failed", Some(error.clone()));
    refuse(
        status,
        Refusal {
            error,
            service: Some(service.to_owned()),
            reason: None,
            order_id: Some(order_id),
        },
    )
}

/// The call style's front desk: it answers an order when payment, inventory and the kitchen
/// have.
impl crate::http::Desk for Waiter {
    type View = OrderState;

    async fn place(&self, order: ValidOrder) -> Response {
        place_order(self, order).await
    }

    async fn view(&self, id: Uuid) -> Result<Option<OrderState>, tabgrab::Error> {
        Ok(self.order(id))
    }

    fn knows(&self) -> String {
        format!(
            "at this front desk: it remembers the last {REMEMBERED} orders it took since it \
             started"
        )
    }
}

/// Calls payment, inventory and the kitchen in turn for `order`, compensating what was done
/// when one fails or refuses.
async fn place_order(waiter: &Waiter, order: ValidOrder) -> Response {
    let order_id = Uuid::now_v7();
    let amount = order.amount_cents;
    waiter.note(order_id, amount, "charging", None);
    let options = CallOptions::timeout(waiter.order_timeout).idempotency_key(order_id.to_string());
    let compensation =
        || CallOptions::timeout(waiter.order_timeout).idempotency_key(format!("undo-{order_id}"));

    // 1. Payment.
    let charge = ChargeCard {
        order_id,
        amount_cents: order.amount_cents,
        card: order.masked_card.clone(),
    };
    if let Err(e) = waiter.payment.call_with(&charge, options.clone()).await {
        if let Some(r) = e.rejection().filter(|r| r.code == CARD_DECLINED) {
            let reason = format!("payment declined: {}", r.message);
            waiter.note(order_id, amount, "cancelled", Some(reason.clone()));
            return refuse(
                StatusCode::PAYMENT_REQUIRED,
                Refusal {
                    error: format!("payment refused the card: {}", r.message),
                    service: Some("payment".to_owned()),
                    reason: Some(reason),
                    order_id: Some(order_id),
                },
            );
        }
        // The charge may have happened with its answer lost: refund to be sure.
        let _ = waiter
            .payment
            .call_with(&RefundPayment { order_id }, compensation())
            .await;
        return failed(waiter, "payment", order_id, amount, &e, "");
    }
    waiter.note(order_id, amount, "reserving", None);

    // 2. Inventory.
    let reserve = ReserveIngredients {
        order_id,
        pizzas: order.pizzas.clone(),
    };
    if let Err(e) = waiter.inventory.call_with(&reserve, options.clone()).await {
        let refund = waiter
            .payment
            .call_with(&RefundPayment { order_id }, compensation())
            .await;
        if let Some(r) = e.rejection().filter(|r| r.code == INGREDIENTS_MISSING) {
            let reason = format!("ingredients missing: {}", r.message);
            waiter.note(order_id, amount, "cancelled", Some(reason.clone()));
            return refuse(
                StatusCode::CONFLICT,
                Refusal {
                    error: format!(
                        "inventory is short of {}; the charge was {}",
                        r.message,
                        if refund.is_ok() {
                            "refunded"
                        } else {
                            "NOT refunded (payment failed)"
                        }
                    ),
                    service: Some("inventory".to_owned()),
                    reason: Some(reason),
                    order_id: Some(order_id),
                },
            );
        }
        let _ = waiter
            .inventory
            .call_with(&ReleaseIngredients { order_id }, compensation())
            .await;
        return failed(
            waiter,
            "inventory",
            order_id,
            amount,
            &e,
            " and the charge was refunded",
        );
    }
    waiter.note(order_id, amount, "baking", None);

    // 3. Kitchen.
    let ticket = PlaceTicket {
        order_id,
        pizzas: order.pizzas,
    };
    if let Err(e) = waiter.kitchen.call_with(&ticket, options).await {
        let _ = waiter
            .payment
            .call_with(&RefundPayment { order_id }, compensation())
            .await;
        let _ = waiter
            .inventory
            .call_with(&ReleaseIngredients { order_id }, compensation())
            .await;
        return failed(
            waiter,
            "kitchen",
            order_id,
            amount,
            &e,
            "; the charge was refunded and the ingredients released",
        );
    }
    waiter.note(order_id, amount, "ready", None);
    (
        StatusCode::CREATED,
        Json(Placed {
            order_id,
            status: "ready".to_owned(),
            amount_cents: order.amount_cents,
        }),
    )
        .into_response()
}
