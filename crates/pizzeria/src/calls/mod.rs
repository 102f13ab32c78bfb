//! The pizzeria in the **call** style: the front desk calls payment, inventory, the kitchen
//! and delivery and answers the customer when they have answered.
//!
//! Each service is the [`backoffice`](crate::backoffice)'s ([`PaymentDesk`], [`Storeroom`],
//! [`Ovens`], [`Courier`]), its commands served as typed handlers ([`handlers`]) by tabgrab's
//! call server over HTTP and gRPC on one port (payment also serves its typed proto service,
//! [`grpc`]); payment, inventory and delivery keep their state in a durable store, answering a
//! repeated command (same order) as the first. The front desk ([`front_desk`]) calls them
//! through tabgrab's client stack (deadline, retries with the order id as idempotency key,
//! circuit breaker, bulkhead). The domain rules are the events style's (a card ending in 0000
//! is declined; the truffle runs out), so the styles' summaries compare.
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
pub mod handlers;
pub mod run;

use std::future::Future;
use std::time::Duration;

use tabgrab::call::Client;
use tabgrab::call::breaker::BreakerConfig;
use tabgrab::call::http::HttpTransport;
use tabgrab::call::{BearerTokens, ClientTls, ServerTls};

pub use crate::backoffice::{Backoffice, Courier, Ovens, PaymentDesk, Storeroom};
pub use front_desk::Waiter;

use crate::error::{Error, ErrorKind};

/// A service of the call style, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    /// Payment: `ChargeCard`, `RefundPayment` (HTTP, generic gRPC, typed gRPC).
    Payment,
    /// Inventory: `ReserveIngredients`, `ReleaseIngredients`.
    Inventory,
    /// The kitchen: `PlaceTicket`.
    Kitchen,
    /// Delivery: `DeliverOrder`.
    Delivery,
    /// The front desk: `POST /orders`, calling the four others (give their URLs).
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
    /// Delivery's base URL.
    pub delivery: String,
    /// The deadline of one order.
    pub order_timeout: Duration,
    /// Idle connections kept per service.
    pub pool: usize,
    /// TLS for `https://` peers (their CA, and a client certificate for mutual TLS).
    pub tls: Option<ClientTls>,
    /// The bearer token the services require ([`TOKEN_VAR`]), if they do.
    pub token: Option<String>,
}

/// The environment variable holding the token that the back-office services require of
/// their callers and the front desk sends (not a flag: a flag shows in `ps`).
pub const TOKEN_VAR: &str = "PIZZERIA_CALL_TOKEN";

/// The principal the services see for a call made with [`TOKEN_VAR`]'s token.
pub const CALLER: &str = "front-desk";

/// The authenticator of the back-office services when [`TOKEN_VAR`] holds a token.
pub fn required_token() -> Option<BearerTokens> {
    let token = std::env::var(TOKEN_VAR).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| BearerTokens::new().token(token, CALLER))
}

/// The call style's TLS, from files: a server certificate and key (and a client CA for
/// mutual TLS), or a client's trusted CA (and its certificate and key).
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert: Option<std::path::PathBuf>,
    /// The server's key (PEM).
    pub key: Option<std::path::PathBuf>,
    /// The CA the server requires client certificates of (mutual TLS).
    pub client_ca: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// The server's TLS, if a certificate and key are given; a usage error if only one is.
    pub fn server(&self) -> Result<Option<ServerTls>, Error> {
        let tls = match (&self.cert, &self.key, &self.client_ca) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), None) => ServerTls::from_files(cert, key),
            (Some(cert), Some(key), Some(ca)) => ServerTls::mutual_from_files(cert, key, ca),
            _ => {
                return Err(Error::new(
                    ErrorKind::Usage,
                    "--tls-cert and --tls-key go together (and --tls-client-ca needs both)",
                ));
            }
        };
        tls.map(Some)
            .map_err(|e| Error::new(ErrorKind::Usage, "the server's TLS files").with_source(e))
    }
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
            let mut transport = HttpTransport::builder(url).pool_max_idle_per_host(self.pool);
            if let Some(tls) = &self.tls {
                transport = transport.tls(tls.clone());
            }
            if let Some(token) = &self.token {
                transport = transport.bearer_token(token);
            }
            Client::builder(transport.build())
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
            delivery: client("delivery", &self.delivery),
            order_timeout: self.order_timeout,
            orders: Default::default(),
            undone: Default::default(),
        }
    }
}

/// The router of one back-office service (payment, inventory, kitchen, delivery); `None` for
/// the front desk.
pub fn service_router(name: ServiceName, office: &Backoffice) -> Option<axum::Router> {
    service_router_with(name, office, None)
}

/// [`service_router`] whose handlers require `auth` of every caller, if given.
fn service_router_with(
    name: ServiceName,
    office: &Backoffice,
    auth: Option<BearerTokens>,
) -> Option<axum::Router> {
    let guarded = |handlers: tabgrab::call::Handlers| match &auth {
        Some(auth) => handlers.authenticate(auth.clone()),
        None => handlers,
    };
    Some(match name {
        ServiceName::Payment => {
            let handlers = guarded(office.payment.handlers());
            tabgrab::call::router(handlers.clone())
                .merge(grpc::TypedPayment::new(handlers).router())
        }
        ServiceName::Inventory => tabgrab::call::router(guarded(office.storeroom.handlers())),
        ServiceName::Kitchen => tabgrab::call::router(guarded(office.ovens.handlers())),
        ServiceName::Delivery => tabgrab::call::router(guarded(office.courier.handlers())),
        ServiceName::FrontDesk => return None,
    })
}

/// Runs one service on `listener` until `shutdown` (the `pizzeria service` command).
pub async fn serve_service(
    name: ServiceName,
    listener: tokio::net::TcpListener,
    office: Option<Backoffice>,
    peers: Option<Peers>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    serve_service_with(name, listener, office, peers, shutdown, None).await
}

/// [`serve_service`] over TLS when `tls` is given; the back-office services require
/// [`TOKEN_VAR`]'s token when it is set.
pub async fn serve_service_with(
    name: ServiceName,
    listener: tokio::net::TcpListener,
    office: Option<Backoffice>,
    peers: Option<Peers>,
    shutdown: impl Future<Output = ()> + Send,
    tls: Option<ServerTls>,
) -> Result<(), Error> {
    let router = match name {
        ServiceName::FrontDesk => {
            let peers = peers.ok_or_else(|| {
                Error::new(
                    ErrorKind::Usage,
                    "the front desk needs --payment, --inventory, --kitchen and --delivery URLs",
                )
            })?;
            crate::http::app(peers.waiter())
        }
        other => {
            let office = office.ok_or_else(|| {
                Error::new(ErrorKind::Usage, "a back-office service needs its store")
            })?;
            service_router_with(other, &office, required_token())
                .ok_or_else(|| Error::new(ErrorKind::Usage, "no router for this service"))?
        }
    };
    let served = match tls {
        Some(tls) => {
            let config = tabgrab::call::ServeConfig::default();
            tabgrab::call::serve_tls(listener, router, shutdown, config, tls).await
        }
        None => tabgrab::call::serve(listener, router, shutdown).await,
    };
    served.map_err(|e| Error::new(ErrorKind::Io, "the service's server failed").with_source(e))
}
