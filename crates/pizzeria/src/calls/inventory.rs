//! Inventory, call style: handles `ReserveIngredients` (all or nothing) and
//! `ReleaseIngredients`, idempotent per order, with the events style's [`Stock`]. A
//! reservation out of its bounds (no pizza, more than an order may have, a name not on the
//! menu: [`ReserveIngredients::check`]) is refused as invalid input, not reserved in part.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tabgrab::Rejection;
use tabgrab::call::{HandlerError, Handlers};
use uuid::Uuid;

use crate::commands::{
    INGREDIENTS_MISSING, Missing, ReleaseIngredients, Released, ReserveIngredients, Reserved,
};
use crate::menu::MENU;
use crate::services::inventory::{InventoryStats, needs};
use crate::services::{Stock, lock};

/// The inventory service's state: a cheap-to-clone handle.
#[derive(Clone, Debug)]
pub struct Storeroom {
    /// The shelf.
    stock: Arc<Mutex<Stock>>,
    /// The pizzas (menu indices) of each order whose ingredients are set aside.
    reserved: Arc<Mutex<HashMap<Uuid, Box<[u8]>>>>,
    /// Reserved, missing, released.
    stats: Arc<[AtomicU64; 3]>,
}

impl Storeroom {
    /// A storeroom with `stock` on its shelf.
    pub fn new(stock: Stock) -> Storeroom {
        Storeroom {
            stock: Arc::new(Mutex::new(stock)),
            reserved: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> InventoryStats {
        InventoryStats {
            reserved: self.stats[0].load(Ordering::Relaxed),
            missing: self.stats[1].load(Ordering::Relaxed),
            released: self.stats[2].load(Ordering::Relaxed),
        }
    }

    /// Units of `ingredient` on the shelf now.
    pub fn level(&self, ingredient: &str) -> u64 {
        lock(&self.stock).level(ingredient)
    }

    /// Sets aside the ingredients of an order, all or nothing.
    pub fn reserve(&self, r: &ReserveIngredients) -> Result<Reserved, Rejection> {
        let reserved = Reserved {
            order_id: r.order_id,
        };
        if lock(&self.reserved).contains_key(&r.order_id) {
            return Ok(reserved);
        }
        let pizzas: Vec<u8> = r
            .pizzas
            .iter()
            .filter_map(|name| MENU.iter().position(|p| p.name == name))
            .filter_map(|i| u8::try_from(i).ok())
            .collect();
        let needs = needs(&pizzas);
        match lock(&self.stock).take(&needs) {
            Ok(()) => {}
            Err(missing) => {
                self.stats[1].fetch_add(1, Ordering::Relaxed);
                let message = missing.join(", ");
                let rejection = Rejection::new(INGREDIENTS_MISSING, message);
                return Err(rejection
                    .clone()
                    .with_details(&Missing {
                        ingredients: missing,
                    })
                    .unwrap_or(rejection));
            }
        }
        lock(&self.reserved).insert(r.order_id, pizzas.into_boxed_slice());
        self.stats[0].fetch_add(1, Ordering::Relaxed);
        Ok(reserved)
    }

    /// Puts an order's reserved ingredients back, at most once.
    pub fn release(&self, r: &ReleaseIngredients) -> Released {
        let pizzas = lock(&self.reserved).remove(&r.order_id);
        let released = match pizzas {
            Some(pizzas) => {
                lock(&self.stock).put_back(&needs(&pizzas));
                self.stats[2].fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        };
        Released {
            order_id: r.order_id,
            released,
        }
    }

    /// Forgets an order whose pizzas were made: its ingredients are eaten.
    pub fn consumed(&self, order_id: Uuid) {
        lock(&self.reserved).remove(&order_id);
    }

    /// The handlers of inventory's commands.
    pub fn handlers(&self) -> Handlers {
        Handlers::new()
            .handle_with(
                self.clone(),
                |desk, r: ReserveIngredients, _ctx| async move {
                    r.check()
                        .map_err(|invalid| HandlerError::invalid(invalid.0))?;
                    Ok(desk.reserve(&r)?)
                },
            )
            .handle_with(
                self.clone(),
                |desk, r: ReleaseIngredients, _ctx| async move { Ok(desk.release(&r)) },
            )
    }
}
