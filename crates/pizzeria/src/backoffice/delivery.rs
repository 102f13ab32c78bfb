//! Delivery: answers `DeliverOrder` by bringing the pizzas to the customer, once per order
//! (a row in its store: a repeated command finds it and delivers nothing twice).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tabgrab::HandlerError;

use crate::commands::{DeliverOrder, Delivered};
use crate::services::store::Store;

/// The delivery service: its deliveries in a store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Courier {
    /// The deliveries.
    store: Store,
    /// Orders this process delivered.
    delivered: Arc<AtomicU64>,
}

impl Courier {
    /// A delivery service keeping its deliveries in `store`.
    pub fn new(store: Store) -> Courier {
        Courier {
            store,
            delivered: Arc::default(),
        }
    }

    /// Orders this process delivered.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Delivers the order, once.
    pub async fn deliver(&self, d: &DeliverOrder) -> Result<Delivered, HandlerError> {
        if self.store.deliver_order(&d.order_id.to_string()).await? {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Delivered {
            order_id: d.order_id,
        })
    }
}
