//! `pizzeria orders`: every order's fate, read back from the front desk's durable view.
//!
//! The front desk writes each fact it learns about an order (accepted, paid, reserved,
//! ready, delivered, cancelled, refunded, released…) to its store before it acknowledges the
//! event (see `services::front_desk`). This module reads that view back, so that after a
//! crash, a restart or a run on several processes a user can see what became of every order
//! without any service running, and check that every accepted order ended:
//!
//! - **delivered**, or **cancelled** with its money refunded (if it was taken) and its
//!   ingredients released (if they were set aside): the order *ended*;
//! - cancelled but still holding money or ingredients: its compensation is *pending*;
//! - anything else: *in progress*.
//!
//! [`Report::check`] fails when an order has not ended, which is what the chaos tests and
//! `pizzeria orders --check` assert after quiescence.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, ErrorKind};
use crate::services::Store;
use crate::services::front_desk::{IngredientsState, OrderStatus, OrderView, PaymentState};

/// Every order of the front desk's view in `store`, oldest first.
pub async fn views(store: &Store) -> Result<Vec<OrderView>, Error> {
    let rows = store.order_rows().await.map_err(|e| {
        Error::new(ErrorKind::Bus, "cannot read the orders from the store").with_source(e)
    })?;
    Ok(rows
        .iter()
        .filter_map(crate::services::front_desk::view_of_row)
        .collect())
}

/// One order, if the front desk's view in `store` has it.
pub async fn view(store: &Store, order_id: Uuid) -> Result<Option<OrderView>, Error> {
    let row = store
        .order_row(&order_id.to_string())
        .await
        .map_err(|e| Error::new(ErrorKind::Bus, "cannot read the order").with_source(e))?;
    Ok(row
        .as_ref()
        .and_then(crate::services::front_desk::view_of_row))
}

/// Where an order stands, for the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Delivered.
    Delivered,
    /// Cancelled, nothing left to give back.
    Cancelled,
    /// Cancelled, but money or ingredients are still held.
    CompensationPending,
    /// Not ended yet.
    InProgress,
}

impl Fate {
    /// The fate of `view`.
    pub fn of(view: &OrderView) -> Fate {
        match view.status {
            OrderStatus::Delivered => Fate::Delivered,
            OrderStatus::Cancelled => {
                let money = view.payment == Some(PaymentState::Collected);
                let stock = view.ingredients == Some(IngredientsState::Reserved);
                if money || stock {
                    Fate::CompensationPending
                } else {
                    Fate::Cancelled
                }
            }
            _ => Fate::InProgress,
        }
    }

    /// Whether the order ended.
    pub fn ended(self) -> bool {
        matches!(self, Fate::Delivered | Fate::Cancelled)
    }

    fn as_str(self) -> &'static str {
        match self {
            Fate::Delivered => "delivered",
            Fate::Cancelled => "cancelled",
            Fate::CompensationPending => "compensation pending",
            Fate::InProgress => "in progress",
        }
    }
}

/// The orders of a view, counted by fate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Orders by fate.
    pub by_fate: BTreeMap<Fate, u64>,
    /// The orders that have not ended.
    pub open: Vec<OrderView>,
    /// How many orders in all.
    pub orders: u64,
}

impl Report {
    /// Counts `views`.
    pub fn of(views: &[OrderView]) -> Report {
        let mut report = Report {
            orders: views.len() as u64,
            ..Report::default()
        };
        for view in views {
            let fate = Fate::of(view);
            *report.by_fate.entry(fate).or_default() += 1;
            if !fate.ended() {
                report.open.push(view.clone());
            }
        }
        report
    }

    /// Fails with the orders that have not ended, if any.
    pub fn check(&self) -> Result<(), Error> {
        if self.open.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<String> = self
            .open
            .iter()
            .take(10)
            .map(|v| format!("{} ({})", v.order_id, Fate::of(v).as_str()))
            .collect();
        if self.open.len() > ids.len() {
            ids.push(format!("and {} more", self.open.len() - ids.len()));
        }
        Err(Error::new(
            ErrorKind::Deadline,
            format!(
                "{} of {} orders have not ended: {}",
                self.open.len(),
                self.orders,
                ids.join(", ")
            ),
        ))
    }

    /// The counts as one line, and the open orders with their history.
    pub fn render(&self) -> String {
        let mut out = format!("{} orders", self.orders);
        for (fate, n) in &self.by_fate {
            let _ = write!(out, ", {n} {}", fate.as_str());
        }
        out.push('\n');
        for view in &self.open {
            out.push_str(&render_one(view));
        }
        out
    }
}

/// One order and its history, a step per line.
pub fn render_one(view: &OrderView) -> String {
    let mut out = format!(
        "order {}: {} ({} pizza{}, {}.{:02} €){}\n",
        view.order_id,
        Fate::of(view).as_str(),
        view.pizzas,
        if view.pizzas == 1 { "" } else { "s" },
        view.amount_cents / 100,
        view.amount_cents % 100,
        view.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    let steps = view.timestamps.steps();
    let first = steps.first().map_or(0, |(_, at)| *at);
    for (step, at) in steps {
        let _ = writeln!(out, "  {:>9}  +{} ms", step, at.saturating_sub(first));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::front_desk::Timestamps;

    fn view(status: OrderStatus, payment: Option<PaymentState>) -> OrderView {
        OrderView {
            order_id: Uuid::now_v7(),
            status,
            reason: None,
            pizzas: 1,
            amount_cents: 900,
            payment,
            ingredients: None,
            timestamps: Timestamps {
                accepted_at_ms: Some(1),
                ..Timestamps::default()
            },
        }
    }

    #[test]
    fn an_order_ends_delivered_or_cancelled_with_nothing_held() {
        let views = [
            view(OrderStatus::Delivered, Some(PaymentState::Collected)),
            view(OrderStatus::Cancelled, Some(PaymentState::Refunded)),
            view(OrderStatus::Cancelled, Some(PaymentState::Collected)),
            view(OrderStatus::Baking, Some(PaymentState::Collected)),
        ];
        let report = Report::of(&views);
        assert_eq!(report.by_fate[&Fate::Delivered], 1);
        assert_eq!(report.by_fate[&Fate::Cancelled], 1);
        assert_eq!(report.by_fate[&Fate::CompensationPending], 1);
        assert_eq!(report.by_fate[&Fate::InProgress], 1);
        assert_eq!(report.open.len(), 2);
        assert_eq!(
            report.check().map_err(|e| e.kind()),
            Err(ErrorKind::Deadline)
        );
        assert!(Report::of(&views[..2]).check().is_ok());
    }
}
