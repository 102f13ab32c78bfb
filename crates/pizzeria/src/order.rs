//! What a customer asks for (`POST /orders`), and the checks that turn it into an order.
//!
//! Validation lives here, not in the HTTP layer, so that every way of taking an order (HTTP
//! today, a message bus later) refuses the same bad requests with the same words. Each error
//! says what was wrong and what is allowed, because the reader is a customer's program.

use serde::{Deserialize, Serialize};

use crate::menu;

/// Fewest pizzas in one order.
pub const MIN_PIZZAS: usize = 1;
/// Most pizzas in one order: more is a catering job, not an order.
pub const MAX_PIZZAS: usize = 10;
/// Longest customer name, in characters.
pub const MAX_CUSTOMER_CHARS: usize = 100;

/// The body of `POST /orders`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// Who orders (1 to 100 characters).
    pub customer: String,
    /// Menu names of the pizzas, 1 to 10.
    pub pizzas: Vec<String>,
    /// The card number: 12 to 19 digits, nothing else.
    pub card: String,
}

/// An order that passed every check, priced, with the card masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidOrder {
    /// Who orders, trimmed.
    pub customer: String,
    /// Menu names of the pizzas.
    pub pizzas: Vec<String>,
    /// The sum of the pizzas' prices.
    pub amount_cents: u64,
    /// `**** ` and the card's last four digits.
    pub masked_card: String,
}

/// Why an order request was refused: a message for the customer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidOrder(pub String);

impl std::fmt::Display for InvalidOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidOrder {}

impl OrderRequest {
    /// Checks the request against the menu and the rules above; prices it.
    pub fn validate(&self) -> Result<ValidOrder, InvalidOrder> {
        let customer = self.customer.trim();
        if customer.is_empty() {
            return Err(InvalidOrder("customer must not be empty".into()));
        }
        if customer.chars().count() > MAX_CUSTOMER_CHARS {
            return Err(InvalidOrder(format!(
                "customer must be at most {MAX_CUSTOMER_CHARS} characters"
            )));
        }
        if !(MIN_PIZZAS..=MAX_PIZZAS).contains(&self.pizzas.len()) {
            return Err(InvalidOrder(format!(
                "an order needs {MIN_PIZZAS} to {MAX_PIZZAS} pizzas, got {}",
                self.pizzas.len()
            )));
        }
        let mut amount_cents = 0;
        for name in &self.pizzas {
            let Some(pizza) = menu::pizza(name) else {
                let shown: String = name.chars().take(40).collect();
                return Err(InvalidOrder(format!(
                    "unknown pizza {shown:?}; the menu has {}",
                    menu::names()
                )));
            };
            amount_cents += pizza.price_cents;
        }
        let card = &self.card;
        if !(12..=19).contains(&card.len()) || !card.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidOrder(
                "card must be 12 to 19 digits, without spaces or dashes".into(),
            ));
        }
        Ok(ValidOrder {
            customer: customer.to_owned(),
            pizzas: self.pizzas.clone(),
            amount_cents,
            masked_card: mask_card(card),
        })
    }
}

/// `**** ` followed by the last four characters of `card`.
pub fn mask_card(card: &str) -> String {
    let last4 = &card[card.len().saturating_sub(4)..];
    format!("**** {last4}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(customer: &str, pizzas: &[&str], card: &str) -> OrderRequest {
        OrderRequest {
            customer: customer.into(),
            pizzas: pizzas.iter().map(|s| (*s).to_owned()).collect(),
            card: card.into(),
        }
    }

    #[test]
    fn a_good_request_is_priced_and_its_card_masked() {
        let order = request(" Ada ", &["margherita", "tartufo"], "4111111111111111")
            .validate()
            .unwrap();
        assert_eq!(order.customer, "Ada");
        assert_eq!(order.amount_cents, 900 + 2400);
        assert_eq!(order.masked_card, "**** 1111");
    }

    #[test]
    fn each_rule_has_its_own_message() {
        let cases = [
            (request("", &["marinara"], "4111111111111111"), "customer"),
            (
                request("Ada", &[], "4111111111111111"),
                "1 to 10 pizzas, got 0",
            ),
            (
                request("Ada", &["marinara"; 11], "4111111111111111"),
                "got 11",
            ),
            (
                request("Ada", &["hawaii"], "4111111111111111"),
                "unknown pizza \"hawaii\"",
            ),
            (request("Ada", &["marinara"], "4111"), "12 to 19 digits"),
            (
                request("Ada", &["marinara"], "4111-1111-1111-1111"),
                "12 to 19 digits",
            ),
        ];
        for (req, expected) in cases {
            let err = req.validate().unwrap_err();
            assert!(err.0.contains(expected), "{err} should mention {expected}");
        }
    }
}
