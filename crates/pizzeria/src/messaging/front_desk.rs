//! The front desk of the messaging style: takes an order, sends `ChargeCard` and
//! `ReserveIngredients` as request messages, answers the customer 202 at once, and moves the
//! order on as replies or timeouts arrive.
//!
//! | outcome | next |
//! |---|---|
//! | charged and reserved | send `PlaceTicket` |
//! | baked | send `DeliverOrder` |
//! | delivered | the order is **delivered** |
//! | declined, missing, refused, or any step timed out | the order **failed**, with the reason; once payment and inventory have both answered (or timed out), compensate: `RefundPayment` unless the card was declined, `ReleaseIngredients` unless the ingredients were missing |
//!
//! A charge or a reservation that timed out is compensated too: its request may still be
//! waiting in the topic of a service that is down, and the compensation, handled after it or
//! before it, undoes it or stops it (payment and inventory refuse a command for an order they
//! already refunded or released). The summary counts the compensations whose answers said
//! money or ingredients went back.
//!
//! Each request carries the order id as its context and subject: the reply handler finds the
//! order from the stored request, whichever node runs it. The order view itself is kept in
//! memory, as in the event-driven style's front desk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::event::HandlerError;
use tabgrab::messaging::{
    CorrelationStore, Outcome, ReplyContext, Requester, RequesterStats, SendOptions,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::services::{DELIVERY, INVENTORY, KITCHEN, PAYMENT};
use crate::commands::{
    CARD_DECLINED, ChargeCard, DeliverOrder, INGREDIENTS_MISSING, PlaceTicket, RefundPayment,
    ReleaseIngredients, ReserveIngredients,
};
use crate::order::ValidOrder;
use crate::services::front_desk::{Outcome as End, Terminal};
use crate::services::lock;

/// The requester group of the front desk (its replies come on `replies.front-desk-messaging`).
pub const GROUP: &str = "front-desk-messaging";

/// Where an order stands, as `GET /orders/{id}` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Requests sent, not every answer in.
    Pending,
    /// Paid, reserved, baked and delivered.
    Delivered,
    /// Refused or timed out; see the reason.
    Failed,
}

/// The answer to `GET /orders/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// The order.
    pub order_id: Uuid,
    /// Where it stands.
    pub status: Status,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether payment charged the card.
    pub paid: bool,
    /// Whether inventory set the ingredients aside.
    pub reserved: bool,
    /// Whether the kitchen baked it.
    pub baked: bool,
    /// Whether delivery brought it to the customer.
    pub delivered: bool,
}

/// How payment or inventory answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// Charged, or reserved.
    Done,
    /// Refused: the card was declined, the ingredients are missing (nothing to undo).
    Refused,
    /// No answer in time: the command may still be handled, so it is undone too.
    TimedOut,
}

/// One order's state.
#[derive(Debug)]
struct Order {
    pizzas: Vec<String>,
    paid: Option<Answer>,
    reserved: Option<Answer>,
    baked: bool,
    delivered: bool,
    ticket_sent: bool,
    delivery_sent: bool,
    compensated: bool,
    reason: Option<String>,
}

impl Order {
    fn status(&self) -> Status {
        if self.reason.is_some() {
            Status::Failed
        } else if self.delivered {
            Status::Delivered
        } else {
            Status::Pending
        }
    }
}

/// What to do after an order changed.
enum Next {
    Nothing,
    Ticket(Vec<String>),
    Deliver,
    Compensate { refund: bool, release: bool },
}

struct Inner {
    orders: Mutex<HashMap<Uuid, Order>>,
    watcher: Mutex<Option<mpsc::UnboundedSender<Terminal>>>,
    requester: Mutex<Option<Requester>>,
    timeout: Duration,
    /// Orders refunded and released, as payment's and inventory's answers said.
    refunds: AtomicU64,
    releases: AtomicU64,
}

/// The messaging front desk: a cheap-to-clone handle for the HTTP server and reply handlers.
#[derive(Clone)]
pub struct FrontDesk {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FrontDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDesk").finish_non_exhaustive()
    }
}

/// The order id in a request's context.
fn order_of(ctx: &ReplyContext) -> Result<Uuid, HandlerError> {
    ctx.context_as::<Uuid>().map_err(HandlerError::permanent)
}

impl FrontDesk {
    /// Starts the front desk's requester on `bus` (a [`Bus`] of any engine, or an
    /// `&EmbeddedBus`) with `store`; requests time out after `timeout`. On a broker, wait
    /// for [`FrontDesk::ready`] before taking orders.
    pub fn start(
        bus: impl Into<Bus>,
        store: Arc<dyn CorrelationStore>,
        timeout: Duration,
    ) -> Result<FrontDesk, tabgrab::Error> {
        let desk = FrontDesk {
            inner: Arc::new(Inner {
                orders: Mutex::new(HashMap::new()),
                watcher: Mutex::new(None),
                requester: Mutex::new(None),
                timeout,
                refunds: AtomicU64::new(0),
                releases: AtomicU64::new(0),
            }),
        };
        let requester = Requester::builder(bus.into(), GROUP)
            .shared_store(store)
            .default_timeout(timeout)
            .sweep_interval(Duration::from_millis(50))
            .on_reply_with(
                PAYMENT,
                desk.clone(),
                |desk, o: Outcome<ChargeCard>, ctx| async move {
                    let order = order_of(&ctx)?;
                    let (answer, reason) = match o {
                        Outcome::Replied(Ok(_)) => (Answer::Done, None),
                        Outcome::Replied(Err(r)) if r.code == CARD_DECLINED => (
                            Answer::Refused,
                            Some(format!("payment declined: {}", r.message)),
                        ),
                        Outcome::Replied(Err(r)) => (
                            Answer::Refused,
                            Some(format!("payment refused: {}", r.message)),
                        ),
                        Outcome::TimedOut => {
                            (Answer::TimedOut, Some("payment timed out".to_owned()))
                        }
                    };
                    desk.step(order, |o| o.paid = Some(answer), reason).await
                },
            )
            .on_reply_with(
                INVENTORY,
                desk.clone(),
                |desk, o: Outcome<ReserveIngredients>, ctx| async move {
                    let order = order_of(&ctx)?;
                    let (answer, reason) = match o {
                        Outcome::Replied(Ok(_)) => (Answer::Done, None),
                        Outcome::Replied(Err(r)) if r.code == INGREDIENTS_MISSING => (
                            Answer::Refused,
                            Some(format!("ingredients missing: {}", r.message)),
                        ),
                        Outcome::Replied(Err(r)) => (
                            Answer::Refused,
                            Some(format!("inventory refused: {}", r.message)),
                        ),
                        Outcome::TimedOut => {
                            (Answer::TimedOut, Some("inventory timed out".to_owned()))
                        }
                    };
                    desk.step(order, |o| o.reserved = Some(answer), reason)
                        .await
                },
            )
            .on_reply_with(
                KITCHEN,
                desk.clone(),
                |desk, o: Outcome<PlaceTicket>, ctx| async move {
                    let order = order_of(&ctx)?;
                    let (ok, reason) = match o {
                        Outcome::Replied(Ok(_)) => (true, None),
                        Outcome::Replied(Err(r)) => {
                            (false, Some(format!("kitchen refused: {}", r.message)))
                        }
                        Outcome::TimedOut => (false, Some("kitchen timed out".to_owned())),
                    };
                    desk.step(order, |o| o.baked = ok, reason).await
                },
            )
            .on_reply_with(
                DELIVERY,
                desk.clone(),
                |desk, o: Outcome<DeliverOrder>, ctx| async move {
                    let order = order_of(&ctx)?;
                    let (ok, reason) = match o {
                        Outcome::Replied(Ok(_)) => (true, None),
                        Outcome::Replied(Err(r)) => {
                            (false, Some(format!("delivery refused: {}", r.message)))
                        }
                        Outcome::TimedOut => (false, Some("delivery timed out".to_owned())),
                    };
                    desk.step(order, |o| o.delivered = ok, reason).await
                },
            )
            .on_reply_with(
                PAYMENT,
                desk.clone(),
                |desk, o: Outcome<RefundPayment>, _ctx| async move {
                    match o {
                        Outcome::Replied(Ok(r)) if r.amount_cents > 0 => {
                            desk.inner.refunds.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::TimedOut => tracing::warn!(
                            "a refund timed out; it waits in payment's topic and is done when \
                             payment handles it, unseen here"
                        ),
                        _ => {}
                    }
                    Ok(())
                },
            )
            .on_reply_with(
                INVENTORY,
                desk.clone(),
                |desk, o: Outcome<ReleaseIngredients>, _ctx| async move {
                    match o {
                        Outcome::Replied(Ok(r)) if r.released => {
                            desk.inner.releases.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::TimedOut => tracing::warn!(
                            "a release timed out; it waits in inventory's topic and is done when \
                             inventory handles it, unseen here"
                        ),
                        _ => {}
                    }
                    Ok(())
                },
            )
            .start()?;
        *lock(&desk.inner.requester) = Some(requester);
        Ok(desk)
    }

    /// The requester (for its stats and shutdown).
    pub fn requester(&self) -> Option<Requester> {
        lock(&self.inner.requester).clone()
    }

    /// Waits until the requester's group has joined its reply topic (at once on the
    /// embedded bus; on RabbitMQ a reply published before the queue exists is refused).
    pub async fn ready(&self) -> Result<(), tabgrab::Error> {
        match self.requester() {
            Some(requester) => requester.ready().await,
            None => Ok(()),
        }
    }

    /// This node's requester counters.
    pub fn stats(&self) -> RequesterStats {
        self.requester().map(|r| r.stats()).unwrap_or_default()
    }

    /// Orders refunded and orders released, as payment's and inventory's answers to this
    /// node's compensations said.
    pub fn compensations(&self) -> (u64, u64) {
        (
            self.inner.refunds.load(Ordering::Relaxed),
            self.inner.releases.load(Ordering::Relaxed),
        )
    }

    /// Reports every order that ends (confirmed or failed) on the returned channel.
    pub fn watch(&self) -> mpsc::UnboundedReceiver<Terminal> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.inner.watcher) = Some(tx);
        rx
    }

    /// Takes an order: records it, sends `ChargeCard` and `ReserveIngredients`, returns its
    /// id once both requests are stored and published.
    pub async fn take_order(&self, order: ValidOrder) -> Result<Uuid, tabgrab::Error> {
        let order_id = Uuid::now_v7();
        let requester = self.requester().ok_or_else(|| {
            tabgrab::Error::new(tabgrab::ErrorKind::Closed, "the front desk is closed")
        })?;
        lock(&self.inner.orders).insert(
            order_id,
            Order {
                pizzas: order.pizzas.clone(),
                paid: None,
                reserved: None,
                baked: false,
                delivered: false,
                ticket_sent: false,
                delivery_sent: false,
                compensated: false,
                reason: None,
            },
        );
        let options = || self.options(order_id);
        let charge = ChargeCard {
            order_id,
            amount_cents: order.amount_cents,
            card: order.masked_card.clone(),
        };
        let reserve = ReserveIngredients {
            order_id,
            pizzas: order.pizzas,
        };
        let sent = futures::try_join!(
            requester.send(&charge, options()),
            requester.send(&reserve, options())
        );
        if let Err(e) = sent {
            // Not accepted: forget it (a request that did go out ends as timed out, unseen).
            lock(&self.inner.orders).remove(&order_id);
            return Err(e);
        }
        Ok(order_id)
    }

    fn options(&self, order_id: Uuid) -> SendOptions {
        SendOptions::default()
            .timeout(self.inner.timeout)
            .context(serde_json::json!(order_id))
            .subject(order_id.to_string())
    }

    /// The view of one order.
    pub fn order(&self, order_id: Uuid) -> Option<OrderView> {
        lock(&self.inner.orders).get(&order_id).map(|o| OrderView {
            order_id,
            status: o.status(),
            reason: o.reason.clone(),
            paid: o.paid == Some(Answer::Done),
            reserved: o.reserved == Some(Answer::Done),
            baked: o.baked,
            delivered: o.delivered,
        })
    }

    /// Applies one outcome to an order and sends what follows from it.
    async fn step(
        &self,
        order_id: Uuid,
        apply: impl FnOnce(&mut Order),
        failure: Option<String>,
    ) -> Result<(), HandlerError> {
        let (next, ended) = {
            let mut orders = lock(&self.inner.orders);
            let Some(order) = orders.get_mut(&order_id) else {
                tracing::warn!(%order_id, "an outcome for an order this front desk does not know");
                return Ok(());
            };
            let was = order.status();
            apply(order);
            if let Some(reason) = failure
                && order.reason.is_none()
            {
                order.reason = Some(reason);
            }
            let answered = order.paid.is_some() && order.reserved.is_some();
            let next = if order.reason.is_some() {
                if answered && !order.compensated {
                    order.compensated = true;
                    Next::Compensate {
                        refund: order.paid != Some(Answer::Refused),
                        release: order.reserved != Some(Answer::Refused),
                    }
                } else {
                    Next::Nothing
                }
            } else if order.paid == Some(Answer::Done)
                && order.reserved == Some(Answer::Done)
                && !order.ticket_sent
            {
                order.ticket_sent = true;
                Next::Ticket(order.pizzas.clone())
            } else if order.baked && !order.delivery_sent {
                order.delivery_sent = true;
                Next::Deliver
            } else {
                Next::Nothing
            };
            let now = order.status();
            let ended = (was == Status::Pending && now != Status::Pending).then(|| match now {
                Status::Failed => End::Cancelled(order.reason.clone().unwrap_or_default()),
                _ => End::Delivered,
            });
            (next, ended)
        };
        if let Some(outcome) = ended
            && let Some(tx) = lock(&self.inner.watcher).as_ref()
        {
            let _ = tx.send(Terminal {
                order_id,
                outcome,
                at: Instant::now(),
            });
        }
        let Some(requester) = self.requester() else {
            return Ok(());
        };
        match next {
            Next::Nothing => {}
            Next::Ticket(pizzas) => {
                let sent = requester
                    .send(&PlaceTicket { order_id, pizzas }, self.options(order_id))
                    .await;
                if let Err(e) = sent {
                    // Not sent: let the redelivered reply try again.
                    if let Some(order) = lock(&self.inner.orders).get_mut(&order_id) {
                        order.ticket_sent = false;
                    }
                    return Err(e.into());
                }
            }
            Next::Deliver => {
                let sent = requester
                    .send(&DeliverOrder { order_id }, self.options(order_id))
                    .await;
                if let Err(e) = sent {
                    // Not sent: let the redelivered reply try again.
                    if let Some(order) = lock(&self.inner.orders).get_mut(&order_id) {
                        order.delivery_sent = false;
                    }
                    return Err(e.into());
                }
            }
            Next::Compensate { refund, release } => {
                if refund {
                    requester
                        .send(&RefundPayment { order_id }, self.options(order_id))
                        .await?;
                }
                if release {
                    requester
                        .send(&ReleaseIngredients { order_id }, self.options(order_id))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Stops the requester (pending requests stay in the store).
    pub async fn shutdown(&self) -> Result<(), tabgrab::Error> {
        let requester = lock(&self.inner.requester).take();
        if let Some(requester) = requester {
            requester.shutdown().await?;
        }
        Ok(())
    }
}

/// The messaging style's front desk: it accepts an order once its requests are stored and
/// sent.
impl crate::http::Desk for FrontDesk {
    type View = OrderView;

    async fn place(&self, order: ValidOrder) -> axum::response::Response {
        crate::http::accepted_once_recorded(self.take_order(order).await, "the order's requests")
    }

    async fn view(&self, id: Uuid) -> Result<Option<OrderView>, tabgrab::Error> {
        Ok(self.order(id))
    }
}
