//! Payment, inventory and the kitchen as responders: each handles its commands from a topic
//! of its own and answers the front desk with a reply message.
//!
//! The domain rules are those of the event-driven services: a card ending in
//! [`DECLINED_SUFFIX`] is declined, ingredients come from the same [`Stock`] all or nothing,
//! and the kitchen bakes in a limited number of ovens. Requests are delivered at least once,
//! so every handler treats a repeated command for an order as the same command: a second
//! charge answers the first charge, a refund or release happens at most once.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tabgrab::backend::Bus;
use tabgrab::messaging::Responder;
use tabgrab::{HandlerError, Rejection};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::commands::{
    Baked, CARD_DECLINED, ChargeCard, Charged, INGREDIENTS_MISSING, Missing, PlaceTicket,
    RefundPayment, Refunded, ReleaseIngredients, Released, ReserveIngredients, Reserved,
};
use crate::menu::MENU;
use crate::services::inventory::{Stock, needs};
use crate::services::lock;
use crate::services::payment::DECLINED_SUFFIX;

/// Payment's request topic (and responder group).
pub const PAYMENT: &str = "payment";
/// Inventory's request topic (and responder group).
pub const INVENTORY: &str = "inventory";
/// The kitchen's request topic (and responder group).
pub const KITCHEN: &str = "kitchen";

/// What the responders did, for the run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Refunds that returned money.
    pub refunds: u64,
    /// Releases that put ingredients back.
    pub releases: u64,
    /// Orders baked.
    pub baked: u64,
}

#[derive(Default)]
struct Counters {
    refunds: AtomicU64,
    releases: AtomicU64,
    baked: AtomicU64,
}

/// The three responders, running.
pub struct Services {
    responders: Vec<Responder>,
    counters: Arc<Counters>,
    /// How to start each responder again (by topic), over the same state: the lab stops a
    /// service and restarts it to measure what its absence does.
    factories: Vec<(&'static str, Factory)>,
    /// The topic of each running responder, in the order of `responders`.
    running: Vec<&'static str>,
}

/// Starts one responder on a bus.
type Factory = Arc<dyn Fn(&Bus) -> Result<Responder, tabgrab::Error> + Send + Sync>;

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

/// Menu indices of pizzas by name (unknown names are skipped: the front desk validated them).
fn indices(pizzas: &[String]) -> Vec<u8> {
    pizzas
        .iter()
        .filter_map(|name| MENU.iter().position(|p| p.name == name))
        .filter_map(|i| u8::try_from(i).ok())
        .collect()
}

impl Services {
    /// Starts payment, inventory and the kitchen on `bus` (a [`Bus`] of any engine, or an
    /// `&EmbeddedBus`). On a broker, wait for [`Services::ready`] before the first request.
    pub fn start(
        bus: impl Into<Bus>,
        stock: Stock,
        ovens: usize,
        bake_time: Duration,
    ) -> Result<Services, tabgrab::Error> {
        let bus = &bus.into();
        let counters = Arc::new(Counters::default());
        // Payment: amount charged per order (None: declined), and refunded orders.
        let charged: Arc<Mutex<HashMap<Uuid, Option<u64>>>> = Arc::default();
        let payment_factory: Factory = {
            let counters = Arc::clone(&counters);
            Arc::new(move |bus: &Bus| {
                let charge_book = Arc::clone(&charged);
                let refund_book = Arc::clone(&charged);
                let refund_counters = Arc::clone(&counters);
                Responder::builder(bus, PAYMENT, PAYMENT)
                    .handle(move |c: ChargeCard, _ctx| {
                        let answer = {
                            let mut book = lock(&charge_book);
                            let entry = book.entry(c.order_id).or_insert_with(|| {
                                (!c.card.ends_with(DECLINED_SUFFIX)).then_some(c.amount_cents)
                            });
                            match entry {
                                Some(cents) => Ok(Charged {
                                    order_id: c.order_id,
                                    amount_cents: *cents,
                                }),
                                None => Err(Rejection::new(
                                    CARD_DECLINED,
                                    format!("card ending in {DECLINED_SUFFIX} refused by the bank"),
                                )),
                            }
                        };
                        async move { answer.map_err(HandlerError::rejected) }
                    })
                    .handle(move |r: RefundPayment, _ctx| {
                        // Take the amount out of the book: a second refund finds nothing.
                        let cents = lock(&refund_book)
                            .get_mut(&r.order_id)
                            .and_then(Option::take)
                            .unwrap_or(0);
                        if cents > 0 {
                            refund_counters.refunds.fetch_add(1, Ordering::Relaxed);
                        }
                        async move {
                            Ok(Refunded {
                                order_id: r.order_id,
                                amount_cents: cents,
                            })
                        }
                    })
                    .start()
            })
        };
        let payment = payment_factory(bus)?;
        // Inventory: the shelf, and what each order holds.
        let shelf = Arc::new(Mutex::new((
            stock,
            HashMap::<Uuid, Vec<(&'static str, u64)>>::new(),
        )));
        let inventory_factory: Factory = {
            let counters = Arc::clone(&counters);
            Arc::new(move |bus: &Bus| {
                let reserve_shelf = Arc::clone(&shelf);
                let release_shelf = Arc::clone(&shelf);
                let release_counters = Arc::clone(&counters);
                Responder::builder(bus, INVENTORY, INVENTORY)
                    .handle(move |r: ReserveIngredients, _ctx| {
                        let answer = {
                            let mut guard = lock(&reserve_shelf);
                            let (stock, held) = &mut *guard;
                            match held.entry(r.order_id) {
                                Entry::Occupied(_) => Ok(Reserved {
                                    order_id: r.order_id,
                                }),
                                Entry::Vacant(slot) => {
                                    let wanted = needs(&indices(&r.pizzas));
                                    match stock.take(&wanted) {
                                        Ok(()) => {
                                            slot.insert(wanted);
                                            Ok(Reserved {
                                                order_id: r.order_id,
                                            })
                                        }
                                        Err(missing) => {
                                            let refusal = Rejection::new(
                                                INGREDIENTS_MISSING,
                                                format!(
                                                    "ingredients missing: {}",
                                                    missing.join(", ")
                                                ),
                                            );
                                            Err(refusal
                                                .clone()
                                                .with_details(&Missing {
                                                    ingredients: missing,
                                                })
                                                .unwrap_or(refusal))
                                        }
                                    }
                                }
                            }
                        };
                        async move { answer.map_err(HandlerError::rejected) }
                    })
                    .handle(move |r: ReleaseIngredients, _ctx| {
                        let released = {
                            let mut guard = lock(&release_shelf);
                            let (stock, held) = &mut *guard;
                            match held.get_mut(&r.order_id) {
                                Some(wanted) if !wanted.is_empty() => {
                                    stock.put_back(wanted);
                                    wanted.clear();
                                    true
                                }
                                _ => false,
                            }
                        };
                        if released {
                            release_counters.releases.fetch_add(1, Ordering::Relaxed);
                        }
                        async move {
                            Ok(Released {
                                order_id: r.order_id,
                                released,
                            })
                        }
                    })
                    .start()
            })
        };
        let inventory = inventory_factory(bus)?;
        // The kitchen: ovens, and the orders already baked (a repeated ticket is not rebaked).
        let ovens = Arc::new(Semaphore::new(ovens.max(1)));
        let baked: Arc<Mutex<std::collections::HashSet<Uuid>>> = Arc::default();
        let kitchen_factory: Factory = {
            let counters = Arc::clone(&counters);
            Arc::new(move |bus: &Bus| {
                let counters = Arc::clone(&counters);
                let ovens = Arc::clone(&ovens);
                let baked = Arc::clone(&baked);
                Responder::builder(bus, KITCHEN, KITCHEN)
                    .concurrency(256)
                    .handle(move |t: PlaceTicket, _ctx| {
                        let ovens = Arc::clone(&ovens);
                        let baked = Arc::clone(&baked);
                        let counters = Arc::clone(&counters);
                        async move {
                            if !lock(&baked).contains(&t.order_id) {
                                let _oven = ovens.acquire().await.map_err(|_| {
                                    Rejection::new("kitchen.closed", "the kitchen is closing")
                                })?;
                                tokio::time::sleep(bake_time).await;
                                if lock(&baked).insert(t.order_id) {
                                    counters.baked.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(Baked {
                                order_id: t.order_id,
                            })
                        }
                    })
                    .start()
            })
        };
        let kitchen = kitchen_factory(bus)?;
        Ok(Services {
            responders: vec![payment, inventory, kitchen],
            counters,
            factories: vec![
                (PAYMENT, payment_factory),
                (INVENTORY, inventory_factory),
                (KITCHEN, kitchen_factory),
            ],
            running: vec![PAYMENT, INVENTORY, KITCHEN],
        })
    }

    /// Stops the responder of `topic` (payment, inventory or the kitchen): its requests wait
    /// in the topic until [`Services::restart`]. Returns whether one was running.
    pub async fn stop(&mut self, topic: &str) -> Result<bool, tabgrab::Error> {
        let Some(i) = self.running.iter().position(|t| *t == topic) else {
            return Ok(false);
        };
        self.running.swap_remove(i);
        self.responders.swap_remove(i).shutdown().await?;
        Ok(true)
    }

    /// Starts the responder of `topic` again on `bus`, over the same state (stock, book,
    /// ovens); it resumes from its group's committed offset. Returns whether `topic` is one
    /// of the three and was stopped.
    pub fn restart(&mut self, bus: impl Into<Bus>, topic: &str) -> Result<bool, tabgrab::Error> {
        let bus = &bus.into();
        if self.running.contains(&topic) {
            return Ok(false);
        }
        let Some((name, factory)) = self.factories.iter().find(|(t, _)| *t == topic) else {
            return Ok(false);
        };
        self.responders.push(factory(bus)?);
        self.running.push(name);
        Ok(true)
    }

    /// Waits until every running responder has joined the bus (at once on the embedded
    /// bus; on RabbitMQ a request published before its queue exists would be refused).
    pub async fn ready(&self) -> Result<(), tabgrab::Error> {
        for responder in &self.responders {
            responder.ready().await?;
        }
        Ok(())
    }

    /// What the responders did so far.
    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            refunds: self.counters.refunds.load(Ordering::Relaxed),
            releases: self.counters.releases.load(Ordering::Relaxed),
            baked: self.counters.baked.load(Ordering::Relaxed),
        }
    }

    /// Requests not yet handled, over all three topics.
    pub fn lag(&self) -> u64 {
        self.responders.iter().map(Responder::lag).sum()
    }

    /// Requests skipped because their deadline had passed.
    pub fn expired(&self) -> u64 {
        self.responders.iter().map(|r| r.stats().expired).sum()
    }

    /// Stops the responders.
    pub async fn shutdown(self) -> Result<(), tabgrab::Error> {
        for responder in self.responders {
            responder.shutdown().await?;
        }
        Ok(())
    }
}
