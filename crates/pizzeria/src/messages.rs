//! The pizzeria's events: the facts its services publish to one another, with versioned names.
//!
//! Every event is about one order and is published with the order id as its envelope
//! `subject`, so each consumer group sees one order's events in the order they were
//! published, while different orders are handled in parallel. All events go to one topic,
//! [`TOPIC`]; every service is a consumer group on it and skips the types it does not handle
//! (they are declared with [`registry`], so they are *known*, not dead-lettered as unknown).
//!
//! The names follow `pizzeria.<noun>.<verb>.v<major>`: a reader that knows `v1` refuses a
//! `v2` instead of guessing, so a breaking change gets a new version and both can coexist.
//! These events are the event-driven half of the vocabulary table in `DESIGN.md`; the
//! commands (`ChargeCard`, `ReserveIngredients`, …) of the call and messaging styles come with
//! those styles.

use serde::{Deserialize, Serialize};
use tabgrab::{Message, Registry};
use uuid::Uuid;

/// The topic every pizzeria event is published to.
pub const TOPIC: &str = "pizzeria";

/// The front desk took an order: the customer has been answered "accepted".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.order.accepted.v1", event)]
pub struct OrderAccepted {
    /// The order, also the envelope subject.
    pub order_id: Uuid,
    /// Who ordered, for the delivery.
    pub customer: String,
    /// The pizzas by menu name; inventory reserves their ingredients.
    pub pizzas: Vec<String>,
    /// The price the customer was told, which payment charges.
    pub amount_cents: u64,
    /// The card as the front desk keeps it: masked to its last four digits (`**** 1234`),
    /// because a full card number has no business in a durable log. Payment decides on it;
    /// a real system would carry a token from a payment provider instead.
    pub card: String,
}

/// The front desk gave up on an order; payment and inventory compensate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.order.cancelled.v1", event)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: Uuid,
    /// Why, in words the customer may read (`payment declined: …`, `ingredients missing: …`).
    pub reason: String,
}

/// Payment charged the card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.payment.collected.v1", event)]
pub struct PaymentCollected {
    /// The order.
    pub order_id: Uuid,
    /// What was charged, so a refund returns exactly that.
    pub amount_cents: u64,
}

/// Payment could not charge the card; nothing was collected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.payment.declined.v1", event)]
pub struct PaymentDeclined {
    /// The order.
    pub order_id: Uuid,
    /// Why the card was declined.
    pub reason: String,
}

/// Payment gave the money of a cancelled order back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.payment.refunded.v1", event)]
pub struct PaymentRefunded {
    /// The order.
    pub order_id: Uuid,
    /// What was returned: the amount collected.
    pub amount_cents: u64,
}

/// Inventory set the order's ingredients aside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.ingredients.reserved.v1", event)]
pub struct IngredientsReserved {
    /// The order.
    pub order_id: Uuid,
}

/// Inventory lacks some ingredients of the order; nothing was reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.ingredients.missing.v1", event)]
pub struct IngredientsMissing {
    /// The order.
    pub order_id: Uuid,
    /// The ingredients short, by name.
    pub missing: Vec<String>,
}

/// Inventory put the ingredients of a cancelled order back on the shelf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.ingredients.released.v1", event)]
pub struct IngredientsReleased {
    /// The order.
    pub order_id: Uuid,
}

/// The bell: the kitchen took the order's pizzas out of the oven.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.pizza.ready.v1", event)]
pub struct PizzaReady {
    /// The order.
    pub order_id: Uuid,
}

/// Delivery handed the pizzas to the customer: the order is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.order.delivered.v1", event)]
pub struct OrderDelivered {
    /// The order.
    pub order_id: Uuid,
}

/// Every pizzeria event type, so each service knows (and skips) the ones it does not handle.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register::<OrderAccepted>()
        .register::<OrderCancelled>()
        .register::<PaymentCollected>()
        .register::<PaymentDeclined>()
        .register::<PaymentRefunded>()
        .register::<IngredientsReserved>()
        .register::<IngredientsMissing>()
        .register::<IngredientsReleased>()
        .register::<PizzaReady>()
        .register::<OrderDelivered>();
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabgrab::MessageType;

    #[test]
    fn every_event_name_is_versioned_and_registered() {
        let registry = registry();
        for name in [
            OrderAccepted::TYPE,
            OrderCancelled::TYPE,
            PaymentCollected::TYPE,
            PaymentDeclined::TYPE,
            PaymentRefunded::TYPE,
            IngredientsReserved::TYPE,
            IngredientsMissing::TYPE,
            IngredientsReleased::TYPE,
            PizzaReady::TYPE,
            OrderDelivered::TYPE,
        ] {
            let parsed = MessageType::parse(name).unwrap();
            assert_eq!(parsed.version(), 1, "{name}");
            assert!(name.starts_with("pizzeria."), "{name}");
            assert!(registry.contains(name), "{name}");
        }
    }
}
