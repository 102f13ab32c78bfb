//! The front desk, call style: `POST /orders` calls payment and inventory at once, then the
//! kitchen, then delivery, and answers the customer when they have answered.
//!
//! | outcome | answer |
//! |---|---|
//! | charged, reserved, baked, delivered | `201 Created`, `{"order_id", "status": "delivered", "amount_cents"}` |
//! | the card is declined (the ingredients are released) | `402`, `{"error", "service": "payment", "reason": "payment declined: …"}` |
//! | ingredients are missing (the charge is refunded) | `409`, `service: "inventory"`, `reason: "ingredients missing: …"` |
//! | a service failed, timed out, is down or its breaker is open (what was done is compensated) | `503` or `504`, naming the service |
//! | a body that is not an order, an invalid order, too large or not JSON | `400`, `413`, `415`: the one app of every style ([`crate::http`]) |
//!
//! Every command carries the order id as idempotency key, so the client stack may retry it
//! (the services treat a repeat as the first). Compensations (refund, release) get their own
//! fresh deadline: they must run even when the order's own budget is spent. One that is not
//! answered is tried again in the background, within another such deadline, until its
//! service answers (a service killed and restarting, a breaker that opened), so the customer
//! hears of the failure at once. A refund sent because the charge's answer was lost also
//! stops a charge still on its way (payment refuses a charge after the refund).
//!
//! `GET /orders/{id}` tells where an order stands (`charging` while payment and inventory
//! are asked, `baking`, `delivering`, then `delivered`, `cancelled` with the reason, or `failed` naming the
//! service): the answer to the `POST` is the order's fate in this style. Payment, inventory
//! and delivery keep their state durable; the front desk itself remembers the last
//! [`REMEMBERED`] orders of this process in memory, and a front desk that dies between a
//! failed step and its compensation leaves that compensation undone (the call style's price:
//! the events and messaging styles keep the order's next step in the log or the correlation
//! store).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tabgrab::ErrorKind;
use tabgrab::call::{CallError, CallOptions, Client};
use tabgrab::retry::Backoff;
use uuid::Uuid;

use crate::commands::{
    CARD_DECLINED, ChargeCard, DeliverOrder, INGREDIENTS_MISSING, PlaceTicket, RefundPayment,
    Refunded, ReleaseIngredients, Released, ReserveIngredients,
};
use crate::order::ValidOrder;

/// The answer to an order that was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The order's id.
    pub order_id: Uuid,
    /// `delivered`: paid, baked and brought to the customer.
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
    /// `charging`, `baking`, `delivering`, `delivered`, `cancelled` or `failed`.
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

/// The front desk's clients of the four services.
#[derive(Clone, Debug)]
pub struct Waiter {
    /// Payment's client.
    pub payment: Client,
    /// Inventory's client.
    pub inventory: Client,
    /// The kitchen's client.
    pub kitchen: Client,
    /// Delivery's client.
    pub delivery: Client,
    /// The deadline of one order (all its calls), and of each compensation.
    pub order_timeout: Duration,
    /// The orders taken, for `GET /orders/{id}`.
    pub orders: Arc<Mutex<OrderBook>>,
    /// Orders refunded and released, as payment and inventory answered the compensations.
    pub undone: Arc<Undone>,
}

/// The compensations a front desk saw done: what the run summary reports.
#[derive(Debug, Default)]
pub struct Undone {
    /// Orders whose charge was refunded.
    pub refunds: AtomicU64,
    /// Orders whose ingredients went back on the shelf.
    pub releases: AtomicU64,
    /// Compensations that were still not answered when their deadline passed.
    pub abandoned: AtomicU64,
    /// The compensations being retried in the background.
    pub tasks: tokio_util::task::TaskTracker,
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

impl Waiter {
    /// Calls `command` (a compensation) once, with a fresh [`Waiter::order_timeout`]; if its
    /// service does not answer, keeps calling it in the background until it does, within
    /// another such deadline (a service killed and restarting, a breaker that opened, still
    /// gets it), tracked in [`Undone::tasks`]. Returns whether it is done now.
    async fn undo<R>(&self, client: &Client, command: R, order_id: Uuid) -> bool
    where
        R: tabgrab::Request + Send + Sync + 'static,
        R::Response: Undoes,
    {
        let options = move |timeout: Duration| {
            CallOptions::timeout(timeout.max(Duration::from_millis(1)))
                .idempotency_key(format!("undo-{order_id}"))
        };
        match client
            .call_with(&command, options(self.order_timeout))
            .await
        {
            Ok(answer) => {
                answer.count(&self.undone);
                return true;
            }
            Err(e) if e.rejection().is_some() => {
                tracing::warn!(%order_id, error = %e, "a compensation was refused");
                return false;
            }
            Err(_) => {}
        }
        let (client, undone, timeout) =
            (client.clone(), Arc::clone(&self.undone), self.order_timeout);
        self.undone.tasks.spawn(async move {
            let deadline = Instant::now() + timeout;
            let backoff = Backoff {
                base: Duration::from_millis(20),
                max: Duration::from_millis(500),
            };
            for retry in 1.. {
                tokio::time::sleep(backoff.delay(retry)).await;
                let left = deadline.saturating_duration_since(Instant::now());
                match client.call_with(&command, options(left)).await {
                    Ok(answer) => return answer.count(&undone),
                    Err(e) if e.rejection().is_some() || Instant::now() >= deadline => {
                        undone.abandoned.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%order_id, error = %e, "a compensation was not done");
                        return;
                    }
                    Err(_) => {}
                }
            }
        });
        false
    }

    /// Refunds the order (whether or not it was charged: a refund also stops a late charge).
    async fn refund(&self, order_id: Uuid) -> bool {
        self.undo(&self.payment, RefundPayment { order_id }, order_id)
            .await
    }

    /// Releases the order's ingredients (whether or not they were reserved).
    async fn release(&self, order_id: Uuid) -> bool {
        self.undo(&self.inventory, ReleaseIngredients { order_id }, order_id)
            .await
    }
}

/// The answer of a compensation, counted in [`Undone`] when it gave something back.
trait Undoes {
    /// Counts this answer.
    fn count(&self, undone: &Undone);
}

impl Undoes for Refunded {
    fn count(&self, undone: &Undone) {
        if self.amount_cents > 0 {
            undone.refunds.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Undoes for Released {
    fn count(&self, undone: &Undone) {
        if self.released {
            undone.releases.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Undone {
    /// Waits (at most `limit`) for the compensations still being retried; returns how many
    /// were still running when it gave up.
    pub async fn settle(&self, limit: Duration) -> usize {
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
        self.tasks.len()
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

/// Calls payment and inventory at once, then the kitchen, then delivery for `order`,
/// compensating what was done when one fails or refuses.
async fn place_order(waiter: &Waiter, order: ValidOrder) -> Response {
    let order_id = Uuid::now_v7();
    let amount = order.amount_cents;
    waiter.note(order_id, amount, "charging", None);
    let options = CallOptions::timeout(waiter.order_timeout).idempotency_key(order_id.to_string());

    // 1. Payment and inventory at once (as both react to `OrderAccepted` in the events style).
    let charge = ChargeCard {
        order_id,
        amount_cents: order.amount_cents,
        card: order.masked_card.clone(),
    };
    let reserve = ReserveIngredients {
        order_id,
        pizzas: order.pizzas.clone(),
    };
    let (charged, reserved) = tokio::join!(
        waiter.payment.call_with(&charge, options.clone()),
        waiter.inventory.call_with(&reserve, options.clone())
    );
    if let Err(e) = step_failed(waiter, order_id, amount, charged.err(), reserved.err()).await {
        return e;
    }

    // 2. The kitchen, then 3. delivery: a failure of either undoes the charge and the
    // reservation.
    waiter.note(order_id, amount, "baking", None);
    let ticket = PlaceTicket {
        order_id,
        pizzas: order.pizzas,
    };
    let mut step = (
        "kitchen",
        waiter
            .kitchen
            .call_with(&ticket, options.clone())
            .await
            .map(drop),
    );
    if step.1.is_ok() {
        waiter.note(order_id, amount, "delivering", None);
        step = (
            "delivery",
            waiter
                .delivery
                .call_with(&DeliverOrder { order_id }, options)
                .await
                .map(drop),
        );
    }
    if let (service, Err(e)) = step {
        let refund = waiter.refund(order_id).await;
        let released = waiter.release(order_id).await;
        return failed(
            waiter,
            service,
            order_id,
            amount,
            &e,
            undone_words(refund, released),
        );
    }
    waiter.note(order_id, amount, "delivered", None);
    (
        StatusCode::CREATED,
        Json(Placed {
            order_id,
            status: "delivered".to_owned(),
            amount_cents: order.amount_cents,
        }),
    )
        .into_response()
}

/// The answer to an order whose charge or reservation failed (`Err`), after undoing the
/// other: a refund unless the card was declined, a release unless the ingredients were
/// missing (undoing one that failed without a refusal also stops it if it is still on its
/// way). `Ok` when both succeeded.
async fn step_failed(
    waiter: &Waiter,
    order_id: Uuid,
    amount: u64,
    charge: Option<CallError>,
    reserve: Option<CallError>,
) -> Result<(), Response> {
    if charge.is_none() && reserve.is_none() {
        return Ok(());
    }
    let refused = |e: &Option<CallError>, code: &str| {
        e.as_ref()
            .and_then(CallError::rejection)
            .filter(|r| r.code == code)
            .map(|r| r.message.clone())
    };
    let declined = refused(&charge, CARD_DECLINED);
    let missing = refused(&reserve, INGREDIENTS_MISSING);
    let (refunded, released) = tokio::join!(
        async {
            match declined {
                Some(_) => None,
                None => Some(waiter.refund(order_id).await),
            }
        },
        async {
            match missing {
                Some(_) => None,
                None => Some(waiter.release(order_id).await),
            }
        }
    );
    if let Some(message) = declined {
        let reason = format!("payment declined: {message}");
        waiter.note(order_id, amount, "cancelled", Some(reason.clone()));
        return Err(refuse(
            StatusCode::PAYMENT_REQUIRED,
            Refusal {
                error: format!("payment refused the card: {message}"),
                service: Some("payment".to_owned()),
                reason: Some(reason),
                order_id: Some(order_id),
            },
        ));
    }
    if let Some(message) = missing {
        let reason = format!("ingredients missing: {message}");
        waiter.note(order_id, amount, "cancelled", Some(reason.clone()));
        return Err(refuse(
            StatusCode::CONFLICT,
            Refusal {
                error: format!(
                    "inventory is short of {message}; the charge was {}",
                    if refunded == Some(true) {
                        "refunded"
                    } else {
                        "not refunded yet (the refund is being retried)"
                    }
                ),
                service: Some("inventory".to_owned()),
                reason: Some(reason),
                order_id: Some(order_id),
            },
        ));
    }
    let words = undone_words(refunded == Some(true), released == Some(true));
    match (charge, reserve) {
        (Some(e), _) => Err(failed(waiter, "payment", order_id, amount, &e, words)),
        (None, Some(e)) => Err(failed(waiter, "inventory", order_id, amount, &e, words)),
        (None, None) => Ok(()),
    }
}

/// What a failed order's answer says of its compensations.
fn undone_words(refunded: bool, released: bool) -> &'static str {
    match (refunded, released) {
        (true, true) => "; the charge was refunded and the ingredients released",
        (true, false) => "; the charge was refunded, the release is being retried",
        (false, true) => "; the ingredients were released, the refund is being retried",
        (false, false) => "; the refund and the release are being retried",
    }
}
