//! The pizzeria's services in the event-driven style, each a consumer group on one topic,
//! and [`Pizzeria`], which starts them all in one process.
//!
//! | service | reacts to | publishes |
//! |---|---|---|
//! | [`front_desk`] | every outcome | `OrderAccepted`, `OrderCancelled` |
//! | [`payment`] | `OrderAccepted`, `OrderCancelled` | `PaymentCollected`, `PaymentDeclined`, `PaymentRefunded` |
//! | [`inventory`] | `OrderAccepted`, `OrderCancelled` | `IngredientsReserved`, `IngredientsMissing`, `IngredientsReleased` |
//! | [`kitchen`] | `PaymentCollected` and `IngredientsReserved`, `OrderCancelled` | `PizzaReady` |
//! | [`delivery`] | `PizzaReady` | `OrderDelivered` |
//!
//! Every event is published as an effect of the event it reacts to, so its `causationid`
//! names that event and its `correlationid` is the id of the order's `OrderAccepted`: one
//! order's events form one conversation in the log.
//!
//! # What is durable
//! Every service keeps what its acknowledgements depend on in a [`Store`] (SQLite next to
//! the embedded bus, PostgreSQL when several processes share it), written before the event
//! is acknowledged, and stages the events it publishes in the store's outbox in the same
//! transaction; the store's relay publishes them. Payment and inventory record each event in
//! their group's inbox with their effect (a ledger row; a reservation and the stock it takes),
//! so payment charges once per order and inventory reserves once even when an event is
//! delivered again, and refunds and releases happen at most once, across crashes. The
//! kitchen keeps its rail there (an order's two halves survive a crash between them) and
//! rings one bell per order; delivery delivers once per bell; the front desk keeps its view
//! of every order there, and cancels an order once. Nothing a service acknowledged is known
//! only to its memory.

pub mod delivery;
pub mod front_desk;
pub mod inventory;
pub mod kitchen;
pub mod payment;
pub mod store;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tabgrab::backend::Bus;
use tabgrab::event::{Subscription, SubscriptionStats};

use crate::error::{Error, ErrorKind};
use crate::messages::TOPIC;
pub use delivery::Delivery;
pub use front_desk::FrontDesk;
pub use inventory::{Inventory, Stock};
pub use kitchen::Kitchen;
pub use payment::Payment;
pub use store::{Store, StoreRelay};

/// How the restaurant is equipped.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Ovens in the kitchen: how many orders bake at once.
    pub ovens: usize,
    /// How long an order bakes.
    pub bake_time: Duration,
    /// What is on inventory's shelf at opening.
    pub stock: Stock,
}

impl Default for Settings {
    /// 16 ovens, 2 ms per bake, a generous stock.
    fn default() -> Settings {
        Settings {
            ovens: 16,
            bake_time: Duration::from_millis(2),
            stock: Stock::generous(),
        }
    }
}

/// Every service of the restaurant, running in this process on one bus.
#[derive(Debug)]
pub struct Pizzeria {
    /// The front desk, to serve HTTP and to watch orders end.
    pub front_desk: FrontDesk,
    /// Payment, for its counters.
    pub payment: Payment,
    /// Inventory, for its counters and stock.
    pub inventory: Inventory,
    /// The kitchen, for its counters.
    pub kitchen: Kitchen,
    /// Delivery, for its counters.
    pub delivery: Delivery,
    /// Every service's durable state, for its counters, its audit and the order view.
    pub store: Store,
    /// Publishes what payment and inventory staged in the store's outbox.
    relay: StoreRelay,
    /// The running consumer groups, by group name, stopped by [`Pizzeria::shutdown`].
    subscriptions: Vec<(&'static str, Subscription)>,
    /// The embedded bus, to count the topic's events (0 on a broker).
    embedded: Option<tabgrab::backend::embedded::EmbeddedBus>,
    /// The bus, to ask the engine itself how far each group is behind ([`Pizzeria::settle`]).
    bus: Bus,
}

impl Pizzeria {
    /// Adds every consumer group of the restaurant to `health`'s readiness checks.
    pub fn check_health(&self, health: &tabgrab::telemetry::Health) {
        for (_, subscription) in &self.subscriptions {
            health.subscription(subscription);
        }
    }

    /// Starts every service on `bus`, with their state in a private store in memory
    /// ([`Store::memory`]: the same transactions, not durable; use [`Pizzeria::start_with`]
    /// for a durable one). Each group resumes from its committed
    /// offset. Must be called inside a tokio runtime.
    /// `bus` is a [`Bus`] (any engine) or an `&EmbeddedBus`.
    pub fn start(bus: impl Into<Bus>, settings: Settings) -> Result<Pizzeria, tabgrab::Error> {
        Pizzeria::start_with(bus, settings, Store::memory())
    }

    /// Starts every service on `bus`, with their state in `store`, and the store's relay.
    /// Must be called inside a tokio runtime.
    pub fn start_with(
        bus: impl Into<Bus>,
        settings: Settings,
        store: Store,
    ) -> Result<Pizzeria, tabgrab::Error> {
        let bus = &bus.into();
        let front_desk = FrontDesk::new(bus, store.clone())?;
        let payment = Payment::new(store.clone());
        let inventory = Inventory::new(store.clone(), settings.stock);
        let relay = store.relay(bus);
        let kitchen = Kitchen::new(store.clone(), settings.ovens, settings.bake_time);
        let delivery = Delivery::new(store.clone());
        let subscriptions = vec![
            (front_desk::GROUP, front_desk.subscribe(bus)?),
            (payment::GROUP, payment.subscribe(bus)?),
            (inventory::GROUP, inventory.subscribe(bus)?),
            (kitchen::GROUP, kitchen.subscribe(bus)?),
            (delivery::GROUP, delivery.subscribe(bus)?),
        ];
        Ok(Pizzeria {
            front_desk,
            payment,
            inventory,
            kitchen,
            delivery,
            store,
            relay,
            subscriptions,
            embedded: bus.as_embedded().cloned(),
            bus: bus.clone(),
        })
    }

    /// The counters of every group, by group name.
    pub fn stats(&self) -> Vec<(&'static str, SubscriptionStats)> {
        self.subscriptions
            .iter()
            .map(|(name, s)| (*name, s.stats()))
            .collect()
    }

    /// Events in the topic's log so far (its end offset; 0 on a broker).
    pub fn log_end(&self) -> u64 {
        self.embedded
            .as_ref()
            .and_then(|bus| bus.end_offset(TOPIC).ok())
            .unwrap_or(0)
    }

    /// Whether every group has handled every event in the topic.
    pub fn caught_up(&self) -> bool {
        self.subscriptions.iter().all(|(_, s)| s.lag() == 0)
    }

    /// Whether the engine itself counts nothing left for any group. A member's own lag
    /// comes from its last delivery: an event published a moment ago (a redrive, another
    /// process's publish) that a broker has not delivered yet is not in it.
    async fn engine_caught_up(&self) -> bool {
        for (name, _) in &self.subscriptions {
            if let Ok(Some(lag)) = self.bus.lag(TOPIC, name).await
                && lag > 0
            {
                return false;
            }
        }
        true
    }

    /// Waits until every group has joined the bus (at once on the embedded bus).
    pub async fn ready(&self) -> Result<(), tabgrab::Error> {
        for (_, s) in &self.subscriptions {
            s.ready().await?;
        }
        Ok(())
    }

    /// Waits until every group has handled every event and the outbox is empty, so that the
    /// compensations caused by the last events have run too. Fails after `timeout`, naming
    /// the groups behind.
    pub async fn settle(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut settled_checks = 0;
        loop {
            if self.caught_up()
                && self.store.pending().await.map_err(|e| {
                    Error::new(ErrorKind::Bus, "cannot read the outbox").with_source(e)
                })? == 0
            {
                // Twice in a row, a poll apart: a handler may be about to publish.
                settled_checks += 1;
                if settled_checks >= 2 && self.engine_caught_up().await {
                    return Ok(());
                }
            } else {
                settled_checks = 0;
            }
            if Instant::now() >= deadline {
                let behind: Vec<String> = self
                    .subscriptions
                    .iter()
                    .filter(|(_, s)| s.lag() > 0)
                    .map(|(name, s)| format!("{name} ({} behind)", s.lag()))
                    .collect();
                return Err(Error::new(
                    ErrorKind::Deadline,
                    format!(
                        "the services did not catch up with the log within {:.1} s: {}",
                        timeout.as_secs_f64(),
                        behind.join(", ")
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops one service's consumer group (`kitchen::GROUP`, `payment::GROUP`, …): its
    /// events wait in the log until [`Pizzeria::restart_group`]. Returns whether it was
    /// running. The lab uses this to take a service down while customers keep ordering.
    pub async fn stop_group(&mut self, group: &str) -> Result<bool, tabgrab::Error> {
        let Some(i) = self
            .subscriptions
            .iter()
            .position(|(name, _)| *name == group)
        else {
            return Ok(false);
        };
        let (_, subscription) = self.subscriptions.swap_remove(i);
        subscription.shutdown().await?;
        Ok(true)
    }

    /// Starts a group stopped by [`Pizzeria::stop_group`] again on `bus`, with the same
    /// service state; it resumes from its committed offset. Returns whether it was stopped.
    /// `bus` is a [`Bus`] or an `&EmbeddedBus`.
    pub fn restart_group(
        &mut self,
        bus: impl Into<Bus>,
        group: &str,
    ) -> Result<bool, tabgrab::Error> {
        let bus = &bus.into();
        if self.subscriptions.iter().any(|(name, _)| *name == group) {
            return Ok(false);
        }
        let (name, subscription) = match group {
            front_desk::GROUP => (front_desk::GROUP, self.front_desk.subscribe(bus)?),
            payment::GROUP => (payment::GROUP, self.payment.subscribe(bus)?),
            inventory::GROUP => (inventory::GROUP, self.inventory.subscribe(bus)?),
            kitchen::GROUP => (kitchen::GROUP, self.kitchen.subscribe(bus)?),
            delivery::GROUP => (delivery::GROUP, self.delivery.subscribe(bus)?),
            _ => return Ok(false),
        };
        self.subscriptions.push((name, subscription));
        Ok(true)
    }

    /// Stops every group (stops reading, lets running handlers finish, commits offsets),
    /// then the relay (what it has not published yet stays in a durable store's outbox, and
    /// is published by the next relay).
    pub async fn shutdown(self) -> Result<(), tabgrab::Error> {
        let mut first_error = None;
        for (_, subscription) in self.subscriptions {
            if let Err(e) = subscription.shutdown().await {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.relay.shutdown().await {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Locks a mutex, recovering the data if a panic poisoned it (every critical section in the
/// services leaves its state consistent).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
