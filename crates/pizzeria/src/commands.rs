//! The pizzeria's commands: what the front desk asks of the other services in the call and
//! messaging styles, with the answer each expects.
//!
//! The event-driven style ([`messages`](crate::messages)) has no commands: the front desk
//! states a fact and the others react. Here the front desk *asks* and waits for the answer,
//! over a call (HTTP, gRPC) or a request message on the bus. A refusal is a
//! [`Rejection`](tabgrab::Rejection) with one of the codes below, so the caller branches on
//! the code, never on a message string.
//!
//! | command | to | answer | refusal code |
//! |---|---|---|---|
//! | [`ChargeCard`] | payment | [`Charged`] | [`CARD_DECLINED`] |
//! | [`RefundPayment`] | payment | [`Refunded`] | – |
//! | [`ReserveIngredients`] | inventory | [`Reserved`] | [`INGREDIENTS_MISSING`] (details: [`Missing`]) |
//! | [`ReleaseIngredients`] | inventory | [`Released`] | – |
//! | [`PlaceTicket`] | kitchen | [`Baked`] (when the pizzas leave the oven) | – |
//! | [`DeliverOrder`] | delivery | [`Delivered`] | – |
//!
//! A charge or a reservation of an order that was refunded or released before it (the
//! compensation overtook it) is refused with [`ORDER_CANCELLED`] and takes nothing.
//!
//! Every command names its order, and every service handles a repeated command for the same
//! order as the same command (a retry after a lost answer charges once, reserves once): that
//! is what lets the caller retry commands safely with the order id as idempotency key.
//!
//! Every command also has bounds that its service checks before acting ([`ChargeCard::check`]
//! and the others): the services are reachable by anyone who can reach their port, not only
//! by the front desk that validated the order, and a charge of `u64::MAX` cents or a ticket of
//! 10,000 pizzas must be refused as invalid input, not acted on. The bounds are the order's
//! ([`MAX_PIZZAS`], the menu) and what follows from them
//! ([`MAX_CHARGE_CENTS`]).

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use uuid::Uuid;

use crate::menu::{self, MENU};
use crate::order::{MAX_PIZZAS, MIN_PIZZAS};

/// The largest charge: the most pizzas an order may have, each the dearest on the menu.
pub const MAX_CHARGE_CENTS: u64 = MAX_PIZZAS as u64 * dearest_price();

const fn dearest_price() -> u64 {
    let mut i = 0;
    let mut max = 0;
    while i < MENU.len() {
        if MENU[i].price_cents > max {
            max = MENU[i].price_cents;
        }
        i += 1;
    }
    max
}

/// Why a command is out of its bounds: names the field and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidCommand(pub String);

impl std::fmt::Display for InvalidCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidCommand {}

/// The pizzas of a command: 1 to [`MAX_PIZZAS`], each on the menu.
fn check_pizzas(pizzas: &[String]) -> Result<(), InvalidCommand> {
    if !(MIN_PIZZAS..=MAX_PIZZAS).contains(&pizzas.len()) {
        return Err(InvalidCommand(format!(
            "pizzas: an order has {MIN_PIZZAS} to {MAX_PIZZAS} pizzas, got {}",
            pizzas.len()
        )));
    }
    if let Some(unknown) = pizzas.iter().find(|name| menu::pizza(name).is_none()) {
        let shown: String = unknown.chars().take(40).collect();
        return Err(InvalidCommand(format!(
            "pizzas: {shown:?} is not on the menu; the menu has {}",
            menu::names()
        )));
    }
    Ok(())
}

/// Refusal code of [`ChargeCard`]: the bank refused the card.
pub const CARD_DECLINED: &str = "payment.card-declined";
/// Refusal code of [`ReserveIngredients`]: some ingredients are short; details: [`Missing`].
pub const INGREDIENTS_MISSING: &str = "inventory.ingredients-missing";
/// Refusal code of [`ChargeCard`] and [`ReserveIngredients`]: the order was refunded or
/// released before this command arrived, so it takes nothing.
pub const ORDER_CANCELLED: &str = "order.cancelled";

/// Charge the order's price to the customer's card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.payment.charge-card.v1", command, response = Charged)]
pub struct ChargeCard {
    /// The order; also the idempotency key: a second charge of one order is the first.
    pub order_id: Uuid,
    /// The price to charge.
    pub amount_cents: u64,
    /// The card, masked to its last four digits (`**** 1234`), as the front desk keeps it.
    pub card: String,
}

/// Payment's answer to [`ChargeCard`]: the money is collected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charged {
    /// The order.
    pub order_id: Uuid,
    /// What was collected.
    pub amount_cents: u64,
}

impl ChargeCard {
    /// The bounds: 1 to [`MAX_CHARGE_CENTS`] cents, the card masked as `**** 1234`.
    pub fn check(&self) -> Result<(), InvalidCommand> {
        if !(1..=MAX_CHARGE_CENTS).contains(&self.amount_cents) {
            return Err(InvalidCommand(format!(
                "amount_cents: a charge is 1 to {MAX_CHARGE_CENTS} cents, got {}",
                self.amount_cents
            )));
        }
        let masked = self
            .card
            .strip_prefix("**** ")
            .is_some_and(|last4| last4.len() == 4 && last4.bytes().all(|b| b.is_ascii_digit()));
        if !masked {
            return Err(InvalidCommand(
                "card: the card travels masked, as \"**** \" and its last four digits".into(),
            ));
        }
        Ok(())
    }
}

/// Give back what was collected for an order (a compensation: the order could not be made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.payment.refund.v1", command, response = Refunded)]
pub struct RefundPayment {
    /// The order.
    pub order_id: Uuid,
}

/// Payment's answer to [`RefundPayment`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refunded {
    /// The order.
    pub order_id: Uuid,
    /// What the order has been refunded, by this command or an earlier copy of it (0:
    /// nothing was collected); a repeated refund answers the same and returns nothing twice.
    pub amount_cents: u64,
}

/// Set aside the ingredients of an order's pizzas, all or nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.inventory.reserve-ingredients.v1", command, response = Reserved)]
pub struct ReserveIngredients {
    /// The order; also the idempotency key.
    pub order_id: Uuid,
    /// The pizzas by menu name.
    pub pizzas: Vec<String>,
}

/// Inventory's answer to [`ReserveIngredients`]: everything is set aside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    /// The order.
    pub order_id: Uuid,
}

impl ReserveIngredients {
    /// The bounds: 1 to [`MAX_PIZZAS`] pizzas, each on the menu.
    pub fn check(&self) -> Result<(), InvalidCommand> {
        check_pizzas(&self.pizzas)
    }
}

/// The details of an [`INGREDIENTS_MISSING`] refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// The ingredients short, by name.
    pub ingredients: Vec<String>,
}

/// Put an order's reserved ingredients back on the shelf (a compensation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.inventory.release-ingredients.v1", command, response = Released)]
pub struct ReleaseIngredients {
    /// The order.
    pub order_id: Uuid,
}

/// Inventory's answer to [`ReleaseIngredients`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The order.
    pub order_id: Uuid,
    /// Whether the order's ingredients are back on the shelf, by this command or an earlier
    /// copy of it (false: nothing was reserved).
    pub released: bool,
}

/// Bake an order that is paid and whose ingredients are reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.kitchen.place-ticket.v1", command, response = Baked)]
pub struct PlaceTicket {
    /// The order; also the idempotency key.
    pub order_id: Uuid,
    /// The pizzas by menu name.
    pub pizzas: Vec<String>,
}

/// The kitchen's answer to [`PlaceTicket`]: the pizzas are out of the oven.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baked {
    /// The order.
    pub order_id: Uuid,
}

/// Bring a baked order to its customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.delivery.deliver-order.v1", command, response = Delivered)]
pub struct DeliverOrder {
    /// The order; also the idempotency key: it is delivered once.
    pub order_id: Uuid,
}

/// Delivery's answer to [`DeliverOrder`]: the customer has the pizzas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The order.
    pub order_id: Uuid,
}

impl PlaceTicket {
    /// The bounds: 1 to [`MAX_PIZZAS`] pizzas, each on the menu.
    pub fn check(&self) -> Result<(), InvalidCommand> {
        check_pizzas(&self.pizzas)
    }
}

#[cfg(test)]
mod tests {
    use tabgrab::MessageType;

    use super::*;

    #[test]
    fn command_names_are_versioned_and_distinct() {
        let names = [
            ChargeCard::TYPE,
            RefundPayment::TYPE,
            ReserveIngredients::TYPE,
            ReleaseIngredients::TYPE,
            PlaceTicket::TYPE,
            DeliverOrder::TYPE,
        ];
        for name in names {
            assert_eq!(MessageType::parse(name).unwrap().version(), 1, "{name}");
        }
        let distinct: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
        const { assert!(<ChargeCard as tabgrab::Request>::IS_COMMAND) };
    }

    #[test]
    fn commands_out_of_their_bounds_are_refused() {
        let charge = |amount_cents: u64, card: &str| ChargeCard {
            order_id: Uuid::nil(),
            amount_cents,
            card: card.into(),
        };
        assert!(charge(900, "**** 4242").check().is_ok());
        assert!(charge(MAX_CHARGE_CENTS, "**** 4242").check().is_ok());
        for bad in [
            charge(0, "**** 4242"),
            charge(MAX_CHARGE_CENTS + 1, "**** 4242"),
            charge(u64::MAX, "**** 4242"),
            charge(900, "4111111111111111"),
            charge(900, "**** 42"),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let ticket = |pizzas: Vec<String>| PlaceTicket {
            order_id: Uuid::nil(),
            pizzas,
        };
        assert!(ticket(vec!["margherita".into()]).check().is_ok());
        assert!(ticket(Vec::new()).check().is_err());
        assert!(ticket(vec!["margherita".into(); 10_000]).check().is_err());
        assert!(ticket(vec!["hawaii".into()]).check().is_err());
        assert_eq!(MAX_CHARGE_CENTS, 10 * 2400);
    }
}
