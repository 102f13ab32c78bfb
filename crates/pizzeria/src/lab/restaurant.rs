//! One restaurant, in one style, that the lab can take a service out of and put back.
//!
//! The lab needs the same four things from every style: a front desk URL to post orders to,
//! a way to stop a service and start it again while customers keep ordering, the counters
//! that answer "is a response expected" (response messages, correlation records, timeouts),
//! and a way to learn when each accepted order ended. [`Restaurant`] gives them over the
//! real pizzeria of each style, so what the lab measures is what `pizzeria run` runs:
//!
//! | style | "stop the kitchen" means | its orders meanwhile |
//! |---|---|---|
//! | calls | the kitchen's HTTP server is shut down (its port refuses connections) | the front desk's call fails, so `POST /orders` is refused, after compensation |
//! | messaging | the kitchen's responder group is stopped | `PlaceTicket` requests wait in the kitchen's topic; the replies come after restart |
//! | events | the kitchen's consumer group is stopped | `PaymentCollected` / `IngredientsReserved` wait in the log |
//!
//! Restarting uses the same service state (ovens, stock, books): only the process's
//! attention is taken away, as when a service is redeployed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::messaging::{CorrelationStore, SqliteStore};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::calls::{Ovens, PaymentDesk, Peers, ServiceName, Storeroom, front_desk, service_router};
use crate::error::{Error, ErrorKind};
use crate::messaging::front_desk::FrontDesk as MessagingDesk;
use crate::messaging::services::{self as responders, Services};
use crate::run::Style;
use crate::services::front_desk::{Outcome, Terminal};
use crate::services::{Pizzeria, Settings, Stock};

/// A service the lab takes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Down {
    /// The kitchen (the slow, essential one).
    Kitchen,
    /// Payment (the first one every order needs).
    Payment,
}

impl Down {
    /// Its name in the report.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Down::Kitchen => "kitchen",
            Down::Payment => "payment",
        }
    }
}

/// How the restaurant is equipped.
#[derive(Clone, Debug)]
pub(crate) struct Kit {
    /// Ovens in the kitchen.
    pub(crate) ovens: usize,
    /// Time in the oven.
    pub(crate) bake_time: Duration,
    /// Messaging: how long a request waits for its reply (must exceed any outage).
    pub(crate) request_timeout: Duration,
    /// Calls: the deadline of one order.
    pub(crate) order_timeout: Duration,
}

/// What answers "is a response expected", counted since the restaurant opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Messages or events put on the bus (0 for calls: they use no bus).
    pub(crate) bus_messages: u64,
    /// Response messages: records on reply topics (messaging), HTTP responses the services
    /// sent to the front desk (calls), records on any `replies.*` topic (events).
    pub(crate) responses: u64,
    /// Correlation records written (only a requester writes them).
    pub(crate) correlation_records: u64,
    /// Requests that ended as timed out (messaging); calls count theirs from the answers.
    pub(crate) timeouts: u64,
}

/// A call-style back-office service: its address, its stop switch and its server task.
struct CallServer {
    name: ServiceName,
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

enum Inner {
    Events {
        bus: EmbeddedBus,
        pizzeria: Option<Pizzeria>,
        first_offset: u64,
    },
    Messaging {
        bus: EmbeddedBus,
        store: Arc<dyn CorrelationStore>,
        services: Option<Services>,
        desk: MessagingDesk,
    },
    Calls {
        payment: PaymentDesk,
        storeroom: Storeroom,
        ovens: Ovens,
        servers: Vec<CallServer>,
        responses: Arc<AtomicU64>,
    },
}

/// A running restaurant in one style; see the module docs.
pub(crate) struct Restaurant {
    /// `http://host:port/orders` of the front desk.
    pub(crate) orders_url: String,
    inner: Inner,
    /// Orders that ended, as the front desk learns it (events, messaging).
    watcher: Option<mpsc::UnboundedReceiver<Terminal>>,
    /// The front desk's server.
    front: (CancellationToken, JoinHandle<Result<(), Error>>),
}

fn bus_error(what: &str) -> impl FnOnce(tabgrab::Error) -> Error + '_ {
    move |e| Error::new(ErrorKind::Bus, what.to_owned()).with_source(e)
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot listen on {addr}")).with_source(e))
}

fn local(listener: &tokio::net::TcpListener) -> Result<SocketAddr, Error> {
    listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot read a listening address").with_source(e))
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Plenty of everything: the lab's orders fail only for what it does to them.
fn stock() -> Stock {
    Stock::generous().with(crate::menu::RARE_INGREDIENT, 1_000_000)
}

impl Restaurant {
    /// Opens the restaurant of `style` with its data under `dir`.
    pub(crate) async fn open(style: Style, kit: &Kit, dir: &Path) -> Result<Restaurant, Error> {
        let listener = bind(any_port()).await?;
        let front_addr = local(&listener)?;
        let stop = CancellationToken::new();
        let (inner, watcher, task): (_, _, JoinHandle<Result<(), Error>>) = match style {
            Style::Events => {
                let bus = EmbeddedBus::open(dir).map_err(bus_error("cannot open the bus"))?;
                let settings = Settings {
                    ovens: kit.ovens,
                    bake_time: kit.bake_time,
                    stock: stock(),
                };
                let pizzeria = Pizzeria::start(&bus, settings)?;
                let watcher = pizzeria.front_desk.watch();
                let first_offset = pizzeria.log_end();
                let task = tokio::spawn(crate::http::serve(
                    listener,
                    pizzeria.front_desk.clone(),
                    stop.clone().cancelled_owned(),
                ));
                let task = tokio::spawn(async move {
                    task.await
                        .map_err(|e| Error::new(ErrorKind::Io, "server task").with_source(e))?
                        .map_err(|e| Error::new(ErrorKind::Io, "front desk").with_source(e))
                });
                (
                    Inner::Events {
                        bus,
                        pizzeria: Some(pizzeria),
                        first_offset,
                    },
                    Some(watcher),
                    task,
                )
            }
            Style::Messaging => {
                let bus = EmbeddedBus::open(dir).map_err(bus_error("cannot open the bus"))?;
                let store: Arc<dyn CorrelationStore> = Arc::new(
                    SqliteStore::open(dir.join("correlation.db"))
                        .await
                        .map_err(bus_error("cannot open the correlation store"))?,
                );
                let services = Services::start(&bus, stock(), kit.ovens, kit.bake_time)
                    .map_err(bus_error("cannot start the services"))?;
                let desk = MessagingDesk::start(&bus, Arc::clone(&store), kit.request_timeout)
                    .map_err(bus_error("cannot start the front desk"))?;
                let watcher = desk.watch();
                let task = tokio::spawn(crate::messaging::http::serve(
                    listener,
                    desk.clone(),
                    stop.clone().cancelled_owned(),
                ));
                let task = tokio::spawn(async move {
                    task.await
                        .map_err(|e| Error::new(ErrorKind::Io, "server task").with_source(e))?
                        .map_err(|e| Error::new(ErrorKind::Io, "front desk").with_source(e))
                });
                (
                    Inner::Messaging {
                        bus,
                        store,
                        services: Some(services),
                        desk,
                    },
                    Some(watcher),
                    task,
                )
            }
            Style::Calls => {
                let payment = PaymentDesk::new();
                let storeroom = Storeroom::new(stock());
                let ovens = Ovens::new(kit.ovens, kit.bake_time);
                let responses = Arc::new(AtomicU64::new(0));
                let mut servers = Vec::new();
                for name in [
                    ServiceName::Payment,
                    ServiceName::Inventory,
                    ServiceName::Kitchen,
                ] {
                    let mut server = CallServer {
                        name,
                        addr: any_port(),
                        stop: CancellationToken::new(),
                        task: None,
                    };
                    start_call_server(&mut server, &payment, &storeroom, &ovens, &responses)
                        .await?;
                    servers.push(server);
                }
                let url = |name| {
                    servers
                        .iter()
                        .find(|s| s.name == name)
                        .map(|s| format!("http://{}", s.addr))
                        .unwrap_or_default()
                };
                let peers = Peers {
                    payment: url(ServiceName::Payment),
                    inventory: url(ServiceName::Inventory),
                    kitchen: url(ServiceName::Kitchen),
                    order_timeout: kit.order_timeout,
                    pool: 256,
                };
                let serve = tabgrab::call::serve(
                    listener,
                    front_desk::app(peers.waiter()),
                    stop.clone().cancelled_owned(),
                );
                let task = tokio::spawn(async move {
                    serve
                        .await
                        .map_err(|e| Error::new(ErrorKind::Io, "front desk").with_source(e))
                });
                (
                    Inner::Calls {
                        payment,
                        storeroom,
                        ovens,
                        servers,
                        responses,
                    },
                    None,
                    task,
                )
            }
        };
        Ok(Restaurant {
            orders_url: format!("http://{front_addr}/orders"),
            inner,
            watcher,
            front: (stop, task),
        })
    }

    /// Takes `service` down; see the module docs for what that means per style.
    pub(crate) async fn stop(&mut self, service: Down) -> Result<(), Error> {
        match &mut self.inner {
            Inner::Events { pizzeria, .. } => {
                if let Some(p) = pizzeria.as_mut() {
                    p.stop_group(group(service)).await?;
                }
            }
            Inner::Messaging { services, .. } => {
                if let Some(s) = services.as_mut() {
                    s.stop(topic(service)).await?;
                }
            }
            Inner::Calls { servers, .. } => {
                if let Some(server) = servers.iter_mut().find(|s| s.name == call_name(service)) {
                    server.stop.cancel();
                    if let Some(task) = server.task.take() {
                        let _ = task.await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts `service` back, with the state it had.
    pub(crate) async fn restart(&mut self, service: Down) -> Result<(), Error> {
        match &mut self.inner {
            Inner::Events { bus, pizzeria, .. } => {
                if let Some(p) = pizzeria.as_mut() {
                    p.restart_group(bus, group(service))?;
                }
            }
            Inner::Messaging { bus, services, .. } => {
                if let Some(s) = services.as_mut() {
                    s.restart(bus, topic(service))?;
                }
            }
            Inner::Calls {
                payment,
                storeroom,
                ovens,
                servers,
                responses,
            } => {
                if let Some(server) = servers.iter_mut().find(|s| s.name == call_name(service)) {
                    server.stop = CancellationToken::new();
                    start_call_server(server, payment, storeroom, ovens, responses).await?;
                }
            }
        }
        Ok(())
    }

    /// The counters so far; see [`Counters`].
    pub(crate) fn counters(&self) -> Result<Counters, Error> {
        Ok(match &self.inner {
            Inner::Events {
                bus,
                pizzeria,
                first_offset,
            } => Counters {
                bus_messages: pizzeria
                    .as_ref()
                    .map_or(0, |p| p.log_end().saturating_sub(*first_offset)),
                responses: reply_records(bus)?,
                correlation_records: 0,
                timeouts: 0,
            },
            Inner::Messaging { bus, desk, .. } => {
                let stats = desk.stats();
                let mut bus_messages = 0;
                for topic in [
                    responders::PAYMENT,
                    responders::INVENTORY,
                    responders::KITCHEN,
                ] {
                    bus_messages += bus
                        .topic(topic)
                        .map_err(bus_error("cannot open a topic"))?
                        .end_offset();
                }
                let responses = reply_records(bus)?;
                Counters {
                    bus_messages: bus_messages + responses,
                    responses,
                    correlation_records: stats.records_written,
                    timeouts: stats.timed_out,
                }
            }
            Inner::Calls { responses, .. } => Counters {
                bus_messages: 0,
                responses: responses.load(Ordering::Relaxed),
                correlation_records: 0,
                timeouts: 0,
            },
        })
    }

    /// Waits until every order of `accepted` has ended (as the front desk learns it), or
    /// `deadline`; returns when each ended and whether it was made (delivered, confirmed).
    /// Calls end on their answer, so there is nothing to wait for.
    pub(crate) async fn ends(
        &mut self,
        accepted: &HashSet<Uuid>,
        deadline: Instant,
    ) -> HashMap<Uuid, (Instant, bool)> {
        let mut ends = HashMap::new();
        let Some(watcher) = self.watcher.as_mut() else {
            return ends;
        };
        while accepted.iter().any(|id| !ends.contains_key(id)) {
            match tokio::time::timeout_at(deadline.into(), watcher.recv()).await {
                Ok(Some(terminal)) => {
                    let made = matches!(terminal.outcome, Outcome::Delivered);
                    ends.insert(terminal.order_id, (terminal.at, made));
                }
                Ok(None) | Err(_) => break,
            }
        }
        ends
    }

    /// Waits until nothing is in progress behind the front desk (the compensations too),
    /// up to `limit`; best effort, the figures are read after.
    pub(crate) async fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        match &self.inner {
            Inner::Events { pizzeria, .. } => {
                if let Some(p) = pizzeria {
                    let _ = p.settle(limit).await;
                }
            }
            Inner::Messaging { store, .. } => {
                while Instant::now() < deadline {
                    match store.counts().await {
                        Ok(c) if c.pending + c.in_progress == 0 => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Err(_) => break,
                    }
                }
            }
            Inner::Calls { .. } => {}
        }
    }

    /// Shuts everything down in order.
    pub(crate) async fn close(self) -> Result<(), Error> {
        self.front.0.cancel();
        let served = self.front.1.await;
        match self.inner {
            Inner::Events {
                bus, mut pizzeria, ..
            } => {
                if let Some(p) = pizzeria.take() {
                    p.shutdown().await?;
                }
                bus.close()
                    .await
                    .map_err(bus_error("cannot close the bus"))?;
            }
            Inner::Messaging {
                bus,
                mut services,
                desk,
                ..
            } => {
                desk.shutdown()
                    .await
                    .map_err(bus_error("the front desk did not stop"))?;
                if let Some(s) = services.take() {
                    s.shutdown()
                        .await
                        .map_err(bus_error("the services did not stop"))?;
                }
                bus.close()
                    .await
                    .map_err(bus_error("cannot close the bus"))?;
            }
            Inner::Calls { servers, .. } => {
                for mut server in servers {
                    server.stop.cancel();
                    if let Some(task) = server.task.take() {
                        let _ = task.await;
                    }
                }
            }
        }
        served
            .map_err(|e| Error::new(ErrorKind::Io, "the front desk's task failed").with_source(e))?
    }
}

/// Starts (or restarts, on the same address) one call-style service.
async fn start_call_server(
    server: &mut CallServer,
    payment: &PaymentDesk,
    storeroom: &Storeroom,
    ovens: &Ovens,
    responses: &Arc<AtomicU64>,
) -> Result<(), Error> {
    // A restart binds the port it had; the listener of the stopped server is closed, but
    // give the OS a moment if the port is not free yet.
    let deadline = Instant::now() + Duration::from_secs(2);
    let listener = loop {
        match bind(server.addr).await {
            Ok(listener) => break listener,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    server.addr = local(&listener)?;
    let counter = Arc::clone(responses);
    let router = service_router(server.name, payment, storeroom, ovens)
        .ok_or_else(|| Error::new(ErrorKind::Usage, "no router for a back-office service"))?
        .layer(tower::util::MapResponseLayer::new(
            move |response: axum::response::Response| {
                counter.fetch_add(1, Ordering::Relaxed);
                response
            },
        ));
    server.task = Some(tokio::spawn(tabgrab::call::serve(
        listener,
        router,
        server.stop.clone().cancelled_owned(),
    )));
    Ok(())
}

/// Records on every `replies.*` topic of the bus: the response messages of request-response
/// messaging, found by reading the bus rather than trusting a counter.
fn reply_records(bus: &EmbeddedBus) -> Result<u64, Error> {
    let dir = bus.dir().join("topics");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("replies.") && !name.contains(".dead") {
            total += bus
                .topic(&name)
                .map_err(bus_error("cannot open a reply topic"))?
                .end_offset();
        }
    }
    Ok(total)
}

fn group(service: Down) -> &'static str {
    match service {
        Down::Kitchen => crate::services::kitchen::GROUP,
        Down::Payment => crate::services::payment::GROUP,
    }
}

fn topic(service: Down) -> &'static str {
    match service {
        Down::Kitchen => responders::KITCHEN,
        Down::Payment => responders::PAYMENT,
    }
}

fn call_name(service: Down) -> ServiceName {
    match service {
        Down::Kitchen => ServiceName::Kitchen,
        Down::Payment => ServiceName::Payment,
    }
}
