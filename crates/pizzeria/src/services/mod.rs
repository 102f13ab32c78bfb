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
//! Payment and inventory also react to `OrderDelivered`, only to forget the order: that keeps
//! their memory bounded by the orders in flight rather than by every order ever taken.
//!
//! Every event is published with `publish_caused`, so its `causationid` names the event it
//! reacts to and its `correlationid` is the id of the order's `OrderAccepted`: one order's
//! events form one conversation in the log. Services keep their state in memory for this
//! style's first version; durable state and an idempotent inbox come with the `store` module.

pub mod delivery;
pub mod front_desk;
pub mod inventory;
pub mod kitchen;
pub mod payment;

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
    /// The running consumer groups, by group name, stopped by [`Pizzeria::shutdown`].
    subscriptions: Vec<(&'static str, Subscription)>,
    /// The topic's log (embedded bus), to tell when every group has caught up with it; on a
    /// broker the groups' lag says it.
    log: Option<tabgrab_log::Log>,
}

impl Pizzeria {
    /// Starts every service on `bus`. Each group resumes from its committed offset. Must be
    /// called inside a tokio runtime.
    /// `bus` is a [`Bus`] (any engine) or an `&EmbeddedBus`.
    pub fn start(bus: impl Into<Bus>, settings: Settings) -> Result<Pizzeria, tabgrab::Error> {
        let bus = &bus.into();
        let front_desk = FrontDesk::new(bus)?;
        let payment = Payment::new(bus)?;
        let inventory = Inventory::new(bus, settings.stock)?;
        let kitchen = Kitchen::new(bus, settings.ovens, settings.bake_time)?;
        let delivery = Delivery::new(bus)?;
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
            subscriptions,
            log: match bus.as_embedded() {
                Some(embedded) => Some(embedded.topic(TOPIC)?),
                None => None,
            },
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
        self.log.as_ref().map_or(0, tabgrab_log::Log::end_offset)
    }

    /// Whether every group has handled every event in the topic.
    pub fn caught_up(&self) -> bool {
        let Some(log) = &self.log else {
            return self.subscriptions.iter().all(|(_, s)| s.lag() == 0);
        };
        let end = log.end_offset();
        self.subscriptions.iter().all(|(_, s)| s.watermark() >= end) && log.end_offset() == end
    }

    /// Waits until every group has joined the bus (at once on the embedded bus).
    pub async fn ready(&self) -> Result<(), tabgrab::Error> {
        for (_, s) in &self.subscriptions {
            s.ready().await?;
        }
        Ok(())
    }

    /// Waits until every group has handled every event, so that the compensations caused by
    /// the last events have run too. Fails after `timeout`, naming the groups behind.
    pub async fn settle(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut settled_checks = 0;
        loop {
            if self.caught_up() {
                // Twice in a row, a poll apart: a handler may be about to publish.
                settled_checks += 1;
                if settled_checks >= 2 {
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

    /// Stops every group: stops reading, lets running handlers finish, commits offsets.
    pub async fn shutdown(self) -> Result<(), tabgrab::Error> {
        let mut first_error = None;
        for (_, subscription) in self.subscriptions {
            if let Err(e) = subscription.shutdown().await {
                first_error.get_or_insert(e);
            }
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
