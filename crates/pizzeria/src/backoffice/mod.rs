//! The back office of the two styles in which the front desk *asks*: payment, inventory, the
//! kitchen and delivery as they answer the [`commands`](crate::commands), whatever carries
//! them. The call style ([`crate::calls`]) serves them as call handlers over HTTP and gRPC;
//! the messaging style ([`crate::messaging`]) as responders on the bus. Both run this code.
//!
//! | service | answers | state |
//! |---|---|---|
//! | [`PaymentDesk`] | `ChargeCard`, `RefundPayment` | the ledger, in a [`Store`] |
//! | [`Storeroom`] | `ReserveIngredients`, `ReleaseIngredients` | the shelf and the reservations, in a store |
//! | [`Ovens`] | `PlaceTicket` | none: a number of ovens and a bake time |
//! | [`Courier`] | `DeliverOrder` | the deliveries, in a store |
//!
//! The stores are the events style's (the same tables, SQLite or PostgreSQL), so the effects
//! are as durable and as idempotent: a command may come twice (a client's retry, a request
//! redelivered after a crash) and a compensation may overtake what it undoes, and each
//! service answers from its tables in one transaction (see the store's `commands` module).
//! Nothing a service answered is known only to its memory, so a service killed with SIGKILL
//! and started again on its store charges, reserves and delivers nothing twice.
//!
//! Every command is checked against its bounds ([`ChargeCard::check`](crate::commands::ChargeCard::check)
//! and the others) before anything else: the services can be reached by more than the front
//! desk that validated the order.

mod delivery;
mod inventory;
mod kitchen;
mod payment;

pub use delivery::Courier;
pub use inventory::Storeroom;
pub use kitchen::Ovens;
pub use payment::PaymentDesk;

use std::time::Duration;

use crate::services::{Stock, Store};

/// The four services together, over one store (one process, as `pizzeria run` starts them).
#[derive(Clone, Debug)]
pub struct Backoffice {
    /// Payment.
    pub payment: PaymentDesk,
    /// Inventory.
    pub storeroom: Storeroom,
    /// The kitchen.
    pub ovens: Ovens,
    /// Delivery.
    pub courier: Courier,
}

impl Backoffice {
    /// Payment, inventory (whose new shelf holds `stock`) and delivery keeping their state in
    /// `store`, and a kitchen of `ovens` ovens baking for `bake_time`.
    pub fn new(store: Store, stock: Stock, ovens: usize, bake_time: Duration) -> Backoffice {
        Backoffice {
            payment: PaymentDesk::new(store.clone()),
            storeroom: Storeroom::new(store.clone(), stock),
            ovens: Ovens::new(ovens, bake_time),
            courier: Courier::new(store),
        }
    }
}
