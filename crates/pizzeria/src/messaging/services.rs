//! Payment, inventory, the kitchen and delivery as responders: each handles its commands from
//! a topic of its own and answers the front desk with a reply message.
//!
//! The services are the [`backoffice`](crate::backoffice)'s, the same code the call style
//! serves over HTTP and gRPC: payment, inventory and delivery keep their state in a durable
//! store and answer a repeated command (a request redelivered after a crash) as the first.
//! A failure of the store is a transient [`HandlerError`](tabgrab::HandlerError): the request
//! is delivered again (the responder's rules of an event), not answered with a made-up refusal.
//!
//! In one process ([`Services::start`], `pizzeria run --style messaging`), or one service per
//! process ([`Services::start_only`], `pizzeria service <name> --style messaging --bus ..`):
//! each topic is a responder group, so a second process of a service shares its requests.

use tabgrab::backend::Bus;
use tabgrab::messaging::Responder;

use crate::backoffice::Backoffice;
use crate::commands::{
    ChargeCard, DeliverOrder, PlaceTicket, RefundPayment, ReleaseIngredients, ReserveIngredients,
};

/// Payment's request topic (and responder group).
pub const PAYMENT: &str = "payment";
/// Inventory's request topic (and responder group).
pub const INVENTORY: &str = "inventory";
/// The kitchen's request topic (and responder group).
pub const KITCHEN: &str = "kitchen";
/// Delivery's request topic (and responder group).
pub const DELIVERY: &str = "delivery";
/// Every request topic, in the order [`Services::start`] starts their responders.
pub const TOPICS: [&str; 4] = [PAYMENT, INVENTORY, KITCHEN, DELIVERY];

/// What the responders of this process did, for the run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Refunds that returned money.
    pub refunds: u64,
    /// Releases that put ingredients back.
    pub releases: u64,
    /// Orders baked.
    pub baked: u64,
    /// Orders delivered.
    pub delivered: u64,
}

/// The responders of this process, running.
pub struct Services {
    /// The back office they answer for (its state outlives a stopped responder).
    office: Backoffice,
    /// The running responders, with their topics.
    responders: Vec<(&'static str, Responder)>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field(
                "running",
                &self.responders.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Starts the responder of `topic` (one of [`TOPICS`]) for `office` on `bus`.
fn responder(bus: &Bus, office: &Backoffice, topic: &str) -> Result<Responder, tabgrab::Error> {
    let builder = Responder::builder(bus, topic, topic);
    match topic {
        PAYMENT => builder
            .handle_with(
                office.payment.clone(),
                |desk, c: ChargeCard, ctx| async move { desk.charge(&c, ctx.envelope()).await },
            )
            .handle_with(
                office.payment.clone(),
                |desk, r: RefundPayment, ctx| async move { desk.refund(&r, ctx.envelope()).await },
            )
            .start(),
        INVENTORY => {
            builder
                .handle_with(
                    office.storeroom.clone(),
                    |room, r: ReserveIngredients, ctx| async move {
                        room.reserve(&r, ctx.envelope()).await
                    },
                )
                .handle_with(
                    office.storeroom.clone(),
                    |room, r: ReleaseIngredients, ctx| async move {
                        room.release(&r, ctx.envelope()).await
                    },
                )
                .start()
        }
        // Orders bake side by side, up to the ovens' number; the rest wait for an oven.
        KITCHEN => builder
            .concurrency(256)
            .handle_with(
                office.ovens.clone(),
                |ovens, t: PlaceTicket, _ctx| async move { ovens.bake(&t).await },
            )
            .start(),
        DELIVERY => builder
            .concurrency(64)
            .handle_with(
                office.courier.clone(),
                |courier, d: DeliverOrder, _ctx| async move { courier.deliver(&d).await },
            )
            .start(),
        other => Err(tabgrab::Error::new(
            tabgrab::ErrorKind::NotFound,
            format!("no service answers on topic {other:?}; the topics are {TOPICS:?}"),
        )),
    }
}

impl Services {
    /// Starts all four responders on `bus` (a [`Bus`] of any engine, or an `&EmbeddedBus`).
    /// On a broker, wait for [`Services::ready`] before the first request.
    pub fn start(bus: impl Into<Bus>, office: Backoffice) -> Result<Services, tabgrab::Error> {
        Services::start_only(bus, office, &TOPICS)
    }

    /// Starts the responders of `topics` only (each one of [`TOPICS`]): a process of its own
    /// per service.
    pub fn start_only(
        bus: impl Into<Bus>,
        office: Backoffice,
        topics: &[&'static str],
    ) -> Result<Services, tabgrab::Error> {
        let bus = bus.into();
        let mut services = Services {
            office,
            responders: Vec::new(),
        };
        for topic in topics {
            let started = responder(&bus, &services.office, topic)?;
            services.responders.push((topic, started));
        }
        Ok(services)
    }

    /// Stops the responder of `topic`: its requests wait in the topic until
    /// [`Services::restart`]. Returns whether one was running.
    pub async fn stop(&mut self, topic: &str) -> Result<bool, tabgrab::Error> {
        let Some(i) = self.responders.iter().position(|(t, _)| *t == topic) else {
            return Ok(false);
        };
        self.responders.swap_remove(i).1.shutdown().await?;
        Ok(true)
    }

    /// Starts the responder of `topic` again on `bus`, over the same state; it resumes from
    /// its group's committed offset. Returns whether `topic` is one of [`TOPICS`] and was
    /// stopped.
    pub fn restart(&mut self, bus: impl Into<Bus>, topic: &str) -> Result<bool, tabgrab::Error> {
        let Some(name) = TOPICS.iter().find(|t| **t == topic) else {
            return Ok(false);
        };
        if self.responders.iter().any(|(t, _)| t == name) {
            return Ok(false);
        }
        let started = responder(&bus.into(), &self.office, name)?;
        self.responders.push((name, started));
        Ok(true)
    }

    /// Waits until every running responder has joined the bus (at once on the embedded
    /// bus; on RabbitMQ a request published before its queue exists would be refused).
    pub async fn ready(&self) -> Result<(), tabgrab::Error> {
        for (_, responder) in &self.responders {
            responder.ready().await?;
        }
        Ok(())
    }

    /// What the responders of this process did so far.
    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            refunds: self.office.payment.stats().refunded,
            releases: self.office.storeroom.stats().released,
            baked: self.office.ovens.baked(),
            delivered: self.office.courier.delivered(),
        }
    }

    /// The counters of every running responder, with its topic (the service process prints
    /// them).
    pub fn responder_stats(&self) -> Vec<(&'static str, tabgrab::messaging::ResponderStats)> {
        self.responders
            .iter()
            .map(|(t, r)| (*t, r.stats()))
            .collect()
    }

    /// Requests not yet handled, over the running responders.
    pub fn lag(&self) -> u64 {
        self.responders.iter().map(|(_, r)| r.lag()).sum()
    }

    /// Requests skipped because their deadline had passed.
    pub fn expired(&self) -> u64 {
        self.responders.iter().map(|(_, r)| r.stats().expired).sum()
    }

    /// Stops the responders.
    pub async fn shutdown(self) -> Result<(), tabgrab::Error> {
        for (_, responder) in self.responders {
            responder.shutdown().await?;
        }
        Ok(())
    }
}
