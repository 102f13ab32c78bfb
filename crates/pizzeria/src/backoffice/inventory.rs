//! Inventory: answers `ReserveIngredients` (all or nothing) and `ReleaseIngredients`, once per
//! order, from the shelf and the reservations in its store, with the events style's recipes.
//! A reservation out of its bounds (no pizza, more than an order may have, a name not on the
//! menu: [`ReserveIngredients::check`]) is refused as invalid input, not reserved in part; one
//! that arrives after its order's release is refused with [`ORDER_CANCELLED`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tabgrab::{Envelope, HandlerError, Rejection};

use crate::commands::{
    INGREDIENTS_MISSING, Missing, ORDER_CANCELLED, ReleaseIngredients, Released,
    ReserveIngredients, Reserved,
};
use crate::menu::MENU;
use crate::services::Stock;
use crate::services::inventory::{InventoryStats, Shelf};
use crate::services::store::{Reservation, Store};

/// The inventory service: its shelf and reservations in a store. Cheap to clone; clones
/// share them.
#[derive(Clone, Debug)]
pub struct Storeroom {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The shelf; its store also holds the reservations.
    shelf: Shelf,
    /// Reserved, missing, released by this process.
    stats: [AtomicU64; 3],
}

impl Storeroom {
    /// An inventory keeping its shelf in `store`, which holds `stock` at opening (a store
    /// that already has levels keeps them, as after a restart; a run restocks it first).
    pub fn new(store: Store, stock: Stock) -> Storeroom {
        Storeroom {
            inner: Arc::new(Inner {
                shelf: Shelf::new(store, stock),
                stats: Default::default(),
            }),
        }
    }

    /// What this process reserved, found missing and released.
    pub fn stats(&self) -> InventoryStats {
        InventoryStats::load(&self.inner.stats)
    }

    /// Units of `ingredient` on the shelf now.
    pub async fn level(&self, ingredient: &str) -> Result<u64, tabgrab::Error> {
        self.inner.shelf.level(ingredient).await
    }

    /// Reserves the order's ingredients once, all or nothing.
    pub async fn reserve(
        &self,
        r: &ReserveIngredients,
        cause: &Envelope,
    ) -> Result<Reserved, HandlerError> {
        r.check()
            .map_err(|invalid| HandlerError::invalid(invalid.0))?;
        let store = self.inner.shelf.open().await?;
        // Checked above: every name is on the menu.
        let pizzas: Vec<u8> = r
            .pizzas
            .iter()
            .filter_map(|name| MENU.iter().position(|p| p.name == name))
            .filter_map(|i| u8::try_from(i).ok())
            .collect();
        let order = r.order_id.to_string();
        match store.reserve_order(&order, &pizzas, cause).await? {
            Reservation::Reserved { now } => {
                if now {
                    self.inner.stats[0].fetch_add(1, Ordering::Relaxed);
                }
                Ok(Reserved {
                    order_id: r.order_id,
                })
            }
            Reservation::Missing(missing) => {
                self.inner.stats[1].fetch_add(1, Ordering::Relaxed);
                let refusal = Rejection::new(INGREDIENTS_MISSING, missing.join(", "));
                Err(HandlerError::rejected(
                    refusal
                        .clone()
                        .with_details(&Missing {
                            ingredients: missing,
                        })
                        .unwrap_or(refusal),
                ))
            }
            Reservation::Cancelled => Err(HandlerError::rejected(Rejection::new(
                ORDER_CANCELLED,
                format!(
                    "order {} was released before this reservation arrived; nothing was taken",
                    r.order_id
                ),
            ))),
        }
    }

    /// Puts the order's ingredients back once, if they were reserved; a later reservation
    /// of it takes nothing.
    pub async fn release(
        &self,
        r: &ReleaseIngredients,
        cause: &Envelope,
    ) -> Result<Released, HandlerError> {
        let store = self.inner.shelf.open().await?;
        let (released, now) = store.release_order(&r.order_id.to_string(), cause).await?;
        if now {
            self.inner.stats[2].fetch_add(1, Ordering::Relaxed);
        }
        Ok(Released {
            order_id: r.order_id,
            released,
        })
    }
}
