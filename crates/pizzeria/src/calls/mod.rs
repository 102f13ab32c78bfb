//! The pizzeria in the **call** style: the front desk calls payment, inventory and the kitchen
//! and answers the customer when they have answered.
//!
//! Each service is a set of typed handlers ([`PaymentDesk`], [`Storeroom`], [`Ovens`]) served
//! by tabgrab's call server over HTTP and gRPC on one port (payment also serves its typed
//! proto service, [`grpc`]); the front desk ([`front_desk`]) calls them through tabgrab's
//! client stack (deadline, retries with the order id as idempotency key, circuit breaker,
//! bulkhead). The domain rules are the events style's (a card ending in 0000 is declined; the
//! truffle runs out), so the two styles' summaries compare.
//!
//! What this style does to the system, compared with events: the customer waits for the
//! whole chain (latency is the sum of the hops and the bake), and a service that is down
//! fails the order at once (the breaker makes that fast) instead of the order waiting in a
//! log until the service is back.
//!
//! Services run in one process ([`run`]) or as separate processes
//! (`pizzeria service payment --listen 127.0.0.1:PORT`, see [`serve_service`]).

pub mod front_desk;
pub mod grpc;
pub mod inventory;
pub mod kitchen;
pub mod payment;
pub mod run;

use std::future::Future;
use std::time::Duration;

use tabgrab::call::Client;
use tabgrab::call::breaker::BreakerConfig;
use tabgrab::call::http::HttpTransport;

pub use front_desk::Waiter;
pub use inventory::Storeroom;
pub use kitchen::Ovens;
pub use payment::PaymentDesk;

use crate::error::{Error, ErrorKind};
use crate::services::Stock;

/// A service of the call style, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    /// Payment: `ChargeCard`, `RefundPayment` (HTTP, generic gRPC, typed gRPC).
    Payment,
    /// Inventory: `ReserveIngredients`, `ReleaseIngredients`.
    Inventory,
    /// The kitchen: `PlaceTicket`.
    Kitchen,
    /// The front desk: `POST /orders`, calling the three others (give their URLs).
    FrontDesk,
}

/// Where the front desk finds the other services, and how long an order may take.
#[derive(Clone, Debug)]
pub struct Peers {
    /// Payment's base URL, `http://host:port`.
    pub payment: String,
    /// Inventory's base URL.
    pub inventory: String,
    /// The kitchen's base URL.
    pub kitchen: String,
    /// The deadline of one order.
    pub order_timeout: Duration,
    /// Idle connections kept per service.
    pub pool: usize,
}

impl Peers {
    /// The front desk's clients of the three services, each behind tabgrab's client stack
    /// with its default circuit breaker.
    pub fn waiter(&self) -> Waiter {
        self.waiter_with(BreakerConfig::default())
    }

    /// [`Peers::waiter`] with each client's circuit breaker set to `breaker` (the lab sets
    /// its open period explicitly, since it bounds how soon calls recover after an outage).
    pub fn waiter_with(&self, breaker: BreakerConfig) -> Waiter {
        let client = |name: &str, url: &str| {
            Client::builder(
                HttpTransport::builder(url)
                    .pool_max_idle_per_host(self.pool)
                    .build(),
            )
            .service_name(name)
            .source("/pizzeria/front-desk")
            .default_timeout(self.order_timeout)
            .breaker(breaker)
            .build()
        };
        Waiter {
            payment: client("payment", &self.payment),
            inventory: client("inventory", &self.inventory),
            kitchen: client("kitchen", &self.kitchen),
            order_timeout: self.order_timeout,
            orders: Default::default(),
        }
    }
}

/// What a back-office service needs to start.
#[derive(Clone, Debug)]
pub struct Backroom {
    /// The kitchen's ovens.
    pub ovens: usize,
    /// Time in the oven.
    pub bake_time: Duration,
    /// The storeroom's shelf.
    pub stock: Stock,
}

/// The router of one back-office service (payment, inventory, kitchen).
pub fn service_router(
    name: ServiceName,
    payment: &PaymentDesk,
    storeroom: &Storeroom,
    ovens: &Ovens,
) -> Option<axum::Router> {
    Some(match name {
        ServiceName::Payment => {
            let handlers = payment.handlers();
            tabgrab::call::router(handlers.clone())
                .merge(grpc::TypedPayment::new(handlers).router())
        }
        ServiceName::Inventory => tabgrab::call::router(storeroom.handlers()),
        ServiceName::Kitchen => tabgrab::call::router(ovens.handlers()),
        ServiceName::FrontDesk => return None,
    })
}

/// Runs one service on `listener` until `shutdown` (the `pizzeria service` command).
pub async fn serve_service(
    name: ServiceName,
    listener: tokio::net::TcpListener,
    backroom: Backroom,
    peers: Option<Peers>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let router = match name {
        ServiceName::FrontDesk => {
            let peers = peers.ok_or_else(|| {
                Error::new(
                    ErrorKind::Usage,
                    "the front desk needs --payment, --inventory and --kitchen URLs",
                )
            })?;
            front_desk::app(peers.waiter())
        }
        other => {
            let payment = PaymentDesk::new();
            let storeroom = Storeroom::new(backroom.stock);
            let ovens = Ovens::new(backroom.ovens, backroom.bake_time);
            service_router(other, &payment, &storeroom, &ovens)
                .ok_or_else(|| Error::new(ErrorKind::Usage, "no router for this service"))?
        }
    };
    tabgrab::call::serve(listener, router, shutdown)
        .await
        .map_err(|e| Error::new(ErrorKind::Io, "the service's server failed").with_source(e))
}
