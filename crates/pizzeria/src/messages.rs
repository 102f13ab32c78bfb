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
use tabgrab::{Event, Message, Registry};
use uuid::Uuid;

/// The topic every pizzeria event is published to.
pub const TOPIC: &str = "pizzeria";

/// Implements `Message` and `Event` for an event struct with its versioned type name.
macro_rules! event {
    ($ty:ident, $name:literal) => {
        impl Message for $ty {
            const TYPE: &'static str = $name;
        }
        impl Event for $ty {}
    };
}

/// The front desk took an order: the customer has been answered "accepted".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
event!(OrderAccepted, "pizzeria.order.accepted.v1");

/// The front desk gave up on an order; payment and inventory compensate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: Uuid,
    /// Why, in words the customer may read (`payment declined: …`, `ingredients missing: …`).
    pub reason: String,
}
event!(OrderCancelled, "pizzeria.order.cancelled.v1");

/// Payment charged the card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCollected {
    /// The order.
    pub order_id: Uuid,
    /// What was charged, so a refund returns exactly that.
    pub amount_cents: u64,
}
event!(PaymentCollected, "pizzeria.payment.collected.v1");

/// Payment could not charge the card; nothing was collected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    /// The order.
    pub order_id: Uuid,
    /// Why the card was declined.
    pub reason: String,
}
event!(PaymentDeclined, "pizzeria.payment.declined.v1");

/// Payment gave the money of a cancelled order back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    /// The order.
    pub order_id: Uuid,
    /// What was returned: the amount collected.
    pub amount_cents: u64,
}
event!(PaymentRefunded, "pizzeria.payment.refunded.v1");

/// Inventory set the order's ingredients aside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngredientsReserved {
    /// The order.
    pub order_id: Uuid,
}
event!(IngredientsReserved, "pizzeria.ingredients.reserved.v1");

/// Inventory lacks some ingredients of the order; nothing was reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngredientsMissing {
    /// The order.
    pub order_id: Uuid,
    /// The ingredients short, by name.
    pub missing: Vec<String>,
}
event!(IngredientsMissing, "pizzeria.ingredients.missing.v1");

/// Inventory put the ingredients of a cancelled order back on the shelf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngredientsReleased {
    /// The order.
    pub order_id: Uuid,
}
event!(IngredientsReleased, "pizzeria.ingredients.released.v1");

/// The bell: the kitchen took the order's pizzas out of the oven.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PizzaReady {
    /// The order.
    pub order_id: Uuid,
}
event!(PizzaReady, "pizzeria.pizza.ready.v1");

/// Delivery handed the pizzas to the customer: the order is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDelivered {
    /// The order.
    pub order_id: Uuid,
}
event!(OrderDelivered, "pizzeria.order.delivered.v1");

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
