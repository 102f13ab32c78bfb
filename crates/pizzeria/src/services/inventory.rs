//! Inventory: reserves the ingredients of every accepted order, and puts back those of
//! cancelled orders.
//!
//! It reacts to `OrderAccepted` by taking one unit of each ingredient of each pizza from the
//! [`Stock`], all or nothing, and publishing `IngredientsReserved`; if anything is short it
//! takes nothing and publishes `IngredientsMissing` with the names. It reacts to
//! `OrderCancelled` by putting the order's ingredients back and publishing
//! `IngredientsReleased`, *at most once* and only if it had reserved them. A delivered
//! order's ingredients are eaten: they stay reserved.
//!
//! Its state is durable, in the [`Store`]: the shelf's levels, and a `reserve` or `release`
//! row per order. Each event is handled in one transaction that records the event's id in
//! inventory's inbox, takes (or puts back) the stock, writes the row and stages the outcome
//! in the outbox: a redelivered `OrderAccepted` reserves nothing a second time, and a
//! cancellation that overtook its `OrderAccepted` makes the late one reserve nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tabgrab::backend::Bus;
use tabgrab::event::{Context, HandlerError, Subscription};
use tokio::sync::OnceCell;

use super::store::{Store, kind};
use crate::error::{Error, ErrorKind};
use crate::menu::{self, MENU};
use crate::messages::{
    IngredientsMissing, IngredientsReleased, IngredientsReserved, OrderAccepted, OrderCancelled,
    TOPIC, registry,
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

    /// Every ingredient with its units.
    pub(crate) fn levels(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.levels.iter().map(|(i, n)| (*i, *n))
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
    /// The shelf; its store also holds the reservations, the inbox and the outbox.
    shelf: Shelf,
    /// Counters: reserved, missing, released (committed in this process).
    stats: [AtomicU64; 3],
    /// The pizzas whose recipes it knows (`None`: the whole menu).
    recipes: Option<Vec<&'static str>>,
}

/// A store's shelf and the stock it opens with, put on the shelf once per process at the
/// first use (a store that already has levels keeps them: see [`Store::open_shelf`]). The
/// events style's [`Inventory`] and the back office's storeroom both keep one.
#[derive(Debug)]
pub(crate) struct Shelf {
    /// The shelf's store.
    store: Store,
    /// What the shelf holds at opening, if the store has no levels yet.
    opening: Stock,
    /// Set once the opening stock is on the store's shelf.
    shelved: OnceCell<()>,
}

impl Shelf {
    /// The shelf of `store`, opening with `opening`.
    pub(crate) fn new(store: Store, opening: Stock) -> Shelf {
        Shelf {
            store,
            opening,
            shelved: OnceCell::new(),
        }
    }

    /// The store, with the opening stock on its shelf.
    pub(crate) async fn open(&self) -> Result<&Store, tabgrab::Error> {
        self.shelved
            .get_or_try_init(|| self.store.open_shelf(&self.opening))
            .await?;
        Ok(&self.store)
    }

    /// Units of `ingredient` on the shelf now.
    pub(crate) async fn level(&self, ingredient: &str) -> Result<u64, tabgrab::Error> {
        self.open().await?.level(ingredient).await
    }
}

impl InventoryStats {
    /// The counters reserved, missing, released.
    pub(crate) fn load(counters: &[AtomicU64; 3]) -> InventoryStats {
        InventoryStats {
            reserved: counters[0].load(Ordering::Relaxed),
            missing: counters[1].load(Ordering::Relaxed),
            released: counters[2].load(Ordering::Relaxed),
        }
    }
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
    /// An inventory keeping its shelf and reservations in `store`, whose shelf holds `stock`
    /// at opening (a store that already has levels keeps them: see [`Store::open_shelf`]);
    /// its events are published by the store's relay.
    pub fn new(store: Store, stock: Stock) -> Inventory {
        Inventory {
            inner: Arc::new(Inner {
                shelf: Shelf::new(store, stock),
                stats: Default::default(),
                recipes: None,
            }),
        }
    }

    /// This inventory knowing the recipes of `pizzas` only (menu names), as an older release
    /// that has not learned a new pizza yet: an order for another pizza fails for good and
    /// becomes a dead letter naming it, to redrive once an inventory that knows it runs.
    /// Refuses a name that is not on the menu. Call before [`Inventory::subscribe`].
    pub fn with_recipes(self, pizzas: &[String]) -> Result<Inventory, Error> {
        let mut known = Vec::with_capacity(pizzas.len());
        for name in pizzas {
            let Some(pizza) = menu::pizza(name.trim()) else {
                return Err(Error::new(
                    ErrorKind::Usage,
                    format!("--recipes: {name:?} is not on the menu ({})", menu::names()),
                ));
            };
            known.push(pizza.name);
        }
        let inner = Inner {
            shelf: Shelf::new(
                self.inner.shelf.store.clone(),
                self.inner.shelf.opening.clone(),
            ),
            stats: Default::default(),
            recipes: Some(known),
        };
        Ok(Inventory {
            inner: Arc::new(inner),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> InventoryStats {
        InventoryStats::load(&self.inner.stats)
    }

    /// Units of `ingredient` on the shelf now.
    pub async fn level(&self, ingredient: &str) -> Result<u64, tabgrab::Error> {
        self.inner.shelf.level(ingredient).await
    }

    /// Starts inventory's consumer group.
    pub fn subscribe(&self, bus: &Bus) -> Result<Subscription, tabgrab::Error> {
        Subscription::builder(bus, TOPIC, GROUP)
            .known(&registry())
            .handle_with(
                self.clone(),
                |inventory, e: OrderAccepted, ctx| async move { inventory.reserve(e, &ctx).await },
            )
            .handle_with(
                self.clone(),
                |inventory, e: OrderCancelled, ctx| async move { inventory.release(e, &ctx).await },
            )
            .start()
    }

    /// Reserves the order's ingredients (or reports what is missing), once.
    async fn reserve(&self, e: OrderAccepted, ctx: &Context) -> Result<(), HandlerError> {
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
            if let Some(known) = &self.inner.recipes
                && !known.contains(&name.as_str())
            {
                // Not until an inventory that knows the recipe runs: a dead letter to redrive.
                return Err(HandlerError::permanent(format!(
                    "order {} asks for {name:?}, whose recipe this inventory does not know \
                     (it knows {}); run an inventory that knows it, then redrive this event",
                    e.order_id,
                    known.join(", ")
                )));
            }
            pizzas.push(u8::try_from(index).unwrap_or(u8::MAX));
        }
        let store = self.inner.shelf.open().await?;
        let needs = needs(&pizzas);
        let cause = ctx.envelope();
        let order = e.order_id.to_string();
        let Some(mut unit) = store.begin_once(GROUP, cause).await? else {
            return Ok(()); // a duplicate: reserved (or found missing) already
        };
        if unit.lock_order(GROUP, &order, false).await? {
            unit.commit().await?; // cancelled before this late OrderAccepted
            return Ok(());
        }
        let missing = unit.take(&needs).await?;
        if missing.is_empty() {
            unit.reservation(&order, kind::RESERVE, &pizzas, cause)
                .await?;
            let event = IngredientsReserved {
                order_id: e.order_id,
            };
            unit.stage(SOURCE, &event, cause).await?;
            unit.commit().await?;
            self.inner.stats[0].fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // Something is short: take nothing. Undo the partial take in a fresh transaction.
        unit.rollback().await?;
        let Some(mut unit) = store.begin_once(GROUP, cause).await? else {
            return Ok(());
        };
        if unit.lock_order(GROUP, &order, false).await? {
            unit.commit().await?;
            return Ok(());
        }
        let event = IngredientsMissing {
            order_id: e.order_id,
            missing,
        };
        unit.stage(SOURCE, &event, cause).await?;
        unit.commit().await?;
        self.inner.stats[1].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Puts the order's ingredients back if they were reserved and not released yet.
    async fn release(&self, e: OrderCancelled, ctx: &Context) -> Result<(), HandlerError> {
        let store = self.inner.shelf.open().await?;
        let cause = ctx.envelope();
        let order = e.order_id.to_string();
        let Some(mut unit) = store.begin_once(GROUP, cause).await? else {
            return Ok(());
        };
        unit.lock_order(GROUP, &order, true).await?;
        let Some(pizzas) = unit.releasable(&order).await? else {
            unit.commit().await?; // nothing reserved, or released already
            return Ok(());
        };
        unit.put_back(&needs(&pizzas)).await?;
        unit.reservation(&order, kind::RELEASE, &pizzas, cause)
            .await?;
        let event = IngredientsReleased {
            order_id: e.order_id,
        };
        unit.stage(SOURCE, &event, cause).await?;
        unit.commit().await?;
        self.inner.stats[2].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
