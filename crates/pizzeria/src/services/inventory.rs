//! Inventory: reserves the ingredients of every accepted order, and puts back those of
//! cancelled orders.
//!
//! It reacts to `OrderAccepted` by taking one unit of each ingredient of each pizza from the
//! [`Stock`], all or nothing, and publishing `IngredientsReserved`; if anything is short it
//! takes nothing and publishes `IngredientsMissing` with the names. It reacts to
//! `OrderCancelled` by putting the order's ingredients back and publishing
//! `IngredientsReleased`, *at most once* and only if it had reserved them. When an order is
//! delivered its ingredients are eaten: inventory forgets the order, so its memory is bounded
//! by the orders in flight.
//!
//! State is kept in memory for now; a durable store and an inbox come later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Context, HandlerError, Publisher, Subscription};
use uuid::Uuid;

use super::lock;
use crate::menu::{self, MENU};
use crate::messages::{
    IngredientsMissing, IngredientsReleased, IngredientsReserved, OrderAccepted, OrderCancelled,
    OrderDelivered, TOPIC, registry,
};

/// The consumer group of inventory.
pub const GROUP: &str = "inventory";
/// The CloudEvents source of inventory's events.
pub const SOURCE: &str = "/pizzeria/inventory";
/// Units of each ingredient in a [`Stock::generous`] stock: more than any run uses.
pub const GENEROUS: u64 = 1_000_000_000;

/// Units on the shelf per ingredient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stock {
    /// Units per ingredient name; an ingredient absent here has none.
    levels: HashMap<&'static str, u64>,
}

impl Stock {
    /// [`GENEROUS`] units of every ingredient on the menu.
    pub fn generous() -> Stock {
        Stock {
            levels: menu::ingredients()
                .into_iter()
                .map(|i| (i, GENEROUS))
                .collect(),
        }
    }

    /// This stock with `units` of `ingredient` (a menu ingredient name).
    pub fn with(mut self, ingredient: &'static str, units: u64) -> Stock {
        self.levels.insert(ingredient, units);
        self
    }

    /// Units of `ingredient` on the shelf.
    pub fn level(&self, ingredient: &str) -> u64 {
        self.levels.get(ingredient).copied().unwrap_or(0)
    }

    /// Takes `needs` if all of it is there; otherwise takes nothing and names what is short.
    pub(crate) fn take(&mut self, needs: &[(&'static str, u64)]) -> Result<(), Vec<String>> {
        let missing: Vec<String> = needs
            .iter()
            .filter(|(i, n)| self.level(i) < *n)
            .map(|(i, _)| (*i).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        for (i, n) in needs {
            if let Some(level) = self.levels.get_mut(i) {
                *level -= n;
            }
        }
        Ok(())
    }

    /// Puts `needs` back on the shelf.
    pub(crate) fn put_back(&mut self, needs: &[(&'static str, u64)]) {
        for (i, n) in needs {
            *self.levels.entry(i).or_default() += n;
        }
    }
}

/// Inventory's counters, for the run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InventoryStats {
    /// Orders whose ingredients were reserved.
    pub reserved: u64,
    /// Orders refused for missing ingredients.
    pub missing: u64,
    /// Orders whose ingredients were put back.
    pub released: u64,
}

/// The inventory service: a cheap-to-clone handle.
#[derive(Clone)]
pub struct Inventory {
    /// Shared state.
    inner: Arc<Inner>,
}

struct Inner {
    /// Publishes inventory's outcomes.
    publisher: Publisher,
    /// The shelf.
    stock: Mutex<Stock>,
    /// The pizzas (menu indices) of each order whose ingredients are set aside and not yet
    /// eaten or put back: what a release returns. A few bytes per order in flight.
    reserved: Mutex<HashMap<Uuid, Box<[u8]>>>,
    /// Counters: reserved, missing, released.
    stats: [AtomicU64; 3],
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("stats", &self.stats())
            .finish()
    }
}

/// The ingredients of `pizzas` (menu indices), one unit per pizza that uses each.
pub(crate) fn needs(pizzas: &[u8]) -> Vec<(&'static str, u64)> {
    let mut needs: Vec<(&'static str, u64)> = Vec::new();
    for &p in pizzas {
        let Some(pizza) = MENU.get(usize::from(p)) else {
            continue;
        };
        for ingredient in pizza.ingredients {
            match needs.iter_mut().find(|(i, _)| i == ingredient) {
                Some((_, n)) => *n += 1,
                None => needs.push((ingredient, 1)),
            }
        }
    }
    needs
}

impl Inventory {
    /// An inventory with `stock` on its shelf, publishing to the pizzeria topic of `bus`.
    pub fn new(bus: &EmbeddedBus, stock: Stock) -> Result<Inventory, tabgrab::Error> {
        Ok(Inventory {
            inner: Arc::new(Inner {
                publisher: Publisher::new(bus, TOPIC, SOURCE)?,
                stock: Mutex::new(stock),
                reserved: Mutex::new(HashMap::new()),
                stats: Default::default(),
            }),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> InventoryStats {
        let s = &self.inner.stats;
        InventoryStats {
            reserved: s[0].load(Ordering::Relaxed),
            missing: s[1].load(Ordering::Relaxed),
            released: s[2].load(Ordering::Relaxed),
        }
    }

    /// Units of `ingredient` on the shelf now.
    pub fn level(&self, ingredient: &str) -> u64 {
        lock(&self.inner.stock).level(ingredient)
    }

    /// Starts inventory's consumer group.
    pub fn subscribe(&self, bus: &EmbeddedBus) -> Result<Subscription, tabgrab::Error> {
        let (a, b, c) = (self.clone(), self.clone(), self.clone());
        Subscription::builder(bus, TOPIC, GROUP)
            .known(&registry())
            .handle(move |e: OrderAccepted, ctx: Context| {
                let inventory = a.clone();
                async move { inventory.reserve(e, &ctx).await }
            })
            .handle(move |e: OrderCancelled, ctx: Context| {
                let inventory = b.clone();
                async move { inventory.release(e.order_id, &ctx).await }
            })
            .handle(move |e: OrderDelivered, _ctx: Context| {
                let inventory = c.clone();
                async move {
                    lock(&inventory.inner.reserved).remove(&e.order_id);
                    Ok(())
                }
            })
            .start()
    }

    async fn reserve(&self, e: OrderAccepted, ctx: &Context) -> Result<(), HandlerError> {
        if lock(&self.inner.reserved).contains_key(&e.order_id) {
            return Ok(()); // a redelivery: already reserved
        }
        let mut pizzas = Vec::with_capacity(e.pizzas.len());
        for name in &e.pizzas {
            let Some(index) = MENU.iter().position(|p| p.name == name) else {
                // No retry can make an unknown pizza known: straight to dead letters.
                return Err(HandlerError::permanent(format!(
                    "order {} asks for {name:?}, which is not on the menu ({})",
                    e.order_id,
                    menu::names()
                )));
            };
            pizzas.push(u8::try_from(index).unwrap_or(u8::MAX));
        }
        let needs = needs(&pizzas);
        let taken = lock(&self.inner.stock).take(&needs);
        match taken {
            Ok(()) => {
                let event = IngredientsReserved {
                    order_id: e.order_id,
                };
                if let Err(error) = self
                    .inner
                    .publisher
                    .publish_caused(&event, ctx.envelope())
                    .await
                {
                    lock(&self.inner.stock).put_back(&needs);
                    return Err(error.into());
                }
                lock(&self.inner.reserved).insert(e.order_id, pizzas.into_boxed_slice());
                self.inner.stats[0].fetch_add(1, Ordering::Relaxed);
            }
            Err(missing) => {
                let event = IngredientsMissing {
                    order_id: e.order_id,
                    missing,
                };
                self.inner
                    .publisher
                    .publish_caused(&event, ctx.envelope())
                    .await?;
                self.inner.stats[1].fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn release(&self, order_id: Uuid, ctx: &Context) -> Result<(), HandlerError> {
        let Some(pizzas) = lock(&self.inner.reserved).get(&order_id).cloned() else {
            return Ok(()); // nothing reserved, or already released
        };
        let event = IngredientsReleased { order_id };
        self.inner
            .publisher
            .publish_caused(&event, ctx.envelope())
            .await?;
        lock(&self.inner.stock).put_back(&needs(&pizzas));
        lock(&self.inner.reserved).remove(&order_id);
        self.inner.stats[2].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_is_taken_all_or_nothing() {
        let mut stock = Stock::generous().with(menu::RARE_INGREDIENT, 1);
        let tartufo = u8::try_from(MENU.iter().position(|p| p.name == "tartufo").unwrap()).unwrap();
        let two = needs(&[tartufo, tartufo]);
        assert_eq!(
            stock.take(&two),
            Err(vec![menu::RARE_INGREDIENT.to_owned()])
        );
        assert_eq!(
            stock.level("dough"),
            GENEROUS,
            "nothing taken when something is short"
        );
        let one = needs(&[tartufo]);
        assert_eq!(stock.take(&one), Ok(()));
        assert_eq!(stock.level(menu::RARE_INGREDIENT), 0);
        stock.put_back(&one);
        assert_eq!(stock.level(menu::RARE_INGREDIENT), 1);
    }
}
