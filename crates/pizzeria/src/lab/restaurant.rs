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
//!
//! On a broker the messaging and events styles run in the trial's namespace (see
//! [`crate::namespace`]): a stopped group's durable consumer (NATS) or quorum queue
//! (RabbitMQ) keeps what arrives meanwhile, and the namespace's topics are deleted when
//! the restaurant closes. Response messages are then the publishes the broker acknowledged
//! on reply topics, counted by the namespace; on the embedded bus they are read from the log.
//!
//! Every front desk is served with [`super::load::timed`], so each answer says when the
//! front desk received the order and when it answered (its own work, see `response.rs`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::call::breaker::{BreakerConfig, CircuitState};
use tabgrab::messaging::{CorrelationStore, SqliteStore};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::calls::{Backoffice, Peers, ServiceName, service_router};
use crate::error::{Error, ErrorKind};
use crate::messaging::front_desk::FrontDesk as MessagingDesk;
use crate::messaging::services::{self as responders, Services};
use crate::namespace::Connection;
use crate::run::Style;
use crate::services::front_desk::{Outcome, Terminal};
use crate::services::{Pizzeria, Settings, Stock, Store};

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
    /// Calls: the front desk's circuit breakers (one per service).
    pub(crate) breaker: BreakerConfig,
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

/// The bus of one trial: the embedded log in its directory, or the trial's namespace on a
/// broker.
enum Wire {
    Embedded(EmbeddedBus),
    Broker(Connection),
}

impl Wire {
    async fn open(dir: &Path, url: Option<&str>) -> Result<Wire, Error> {
        Ok(match url {
            None => {
                Wire::Embedded(EmbeddedBus::open(dir).map_err(bus_error("cannot open the bus"))?)
            }
            Some(url) => Wire::Broker(crate::namespace::connect(url).await?),
        })
    }

    fn bus(&self) -> Bus {
        match self {
            Wire::Embedded(bus) => Bus::from(bus),
            Wire::Broker(connection) => connection.bus().clone(),
        }
    }

    /// Response messages so far: records on `replies.*` topics.
    fn responses(&self) -> Result<u64, Error> {
        match self {
            Wire::Embedded(bus) => reply_records(bus),
            Wire::Broker(c) => Ok(c
                .published(|t| t.starts_with("replies.") && !t.ends_with(".dead-letters"))
                .unwrap_or(0)),
        }
    }

    /// Closes the embedded bus, or deletes the namespace's topics.
    async fn close(self) -> Result<(), Error> {
        match self {
            Wire::Embedded(bus) => bus.close().await.map_err(bus_error("cannot close the bus")),
            Wire::Broker(connection) => connection.clean_up().await.map(|_| ()),
        }
    }
}

enum Inner {
    Events {
        bus: Wire,
        pizzeria: Option<Pizzeria>,
        first_offset: u64,
    },
    Messaging {
        bus: Wire,
        store: Arc<dyn CorrelationStore>,
        services: Option<Services>,
        desk: MessagingDesk,
    },
    Calls {
        office: Backoffice,
        servers: Vec<CallServer>,
        responses: Arc<AtomicU64>,
        /// Transitions of the front desk's breaker per service, recorded as they happen.
        breakers: Vec<(ServiceName, Transitions)>,
    },
}

/// A breaker's transitions with their instants.
type Transitions = Arc<std::sync::Mutex<Vec<(Instant, CircuitState)>>>;

/// Records every transition of `client`'s breaker until the client is dropped.
fn record_breaker(client: &tabgrab::call::Client) -> Transitions {
    let log: Transitions = Arc::default();
    let mut changes = client.breaker().subscribe();
    let into = Arc::clone(&log);
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let state = *changes.borrow_and_update();
            crate::services::lock(&into).push((Instant::now(), state));
        }
    });
    log
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
    /// Opens the restaurant of `style` with its data under `dir`, on the broker `bus` (a URL
    /// with the trial's namespace) or, without one, on an embedded bus in `dir`.
    pub(crate) async fn open(
        style: Style,
        kit: &Kit,
        dir: &Path,
        bus: Option<&str>,
    ) -> Result<Restaurant, Error> {
        let listener = bind(any_port()).await?;
        let front_addr = local(&listener)?;
        let stop = CancellationToken::new();
        let (inner, watcher, task): (_, _, JoinHandle<Result<(), Error>>) = match style {
            Style::Events => {
                let bus = Wire::open(dir, bus).await?;
                let settings = Settings {
                    ovens: kit.ovens,
                    bake_time: kit.bake_time,
                    stock: stock(),
                };
                let pizzeria = Pizzeria::start(bus.bus(), settings)?;
                pizzeria.ready().await?;
                let watcher = pizzeria.front_desk.watch();
                let first_offset = pizzeria.log_end();
                let task = serve_front(
                    listener,
                    crate::http::app(pizzeria.front_desk.clone()),
                    stop.clone(),
                );
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
                let bus = Wire::open(dir, bus).await?;
                let store: Arc<dyn CorrelationStore> = Arc::new(
                    SqliteStore::open(dir.join("correlation.db"))
                        .await
                        .map_err(bus_error("cannot open the correlation store"))?,
                );
                let office = Backoffice::new(Store::memory(), stock(), kit.ovens, kit.bake_time);
                let services = Services::start(bus.bus(), office)
                    .map_err(bus_error("cannot start the services"))?;
                let desk = MessagingDesk::start(bus.bus(), Arc::clone(&store), kit.request_timeout)
                    .map_err(bus_error("cannot start the front desk"))?;
                services
                    .ready()
                    .await
                    .map_err(bus_error("the services did not join the bus"))?;
                desk.ready()
                    .await
                    .map_err(bus_error("the front desk did not join the bus"))?;
                let watcher = desk.watch();
                let task = serve_front(listener, crate::http::app(desk.clone()), stop.clone());
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
                let office = Backoffice::new(Store::memory(), stock(), kit.ovens, kit.bake_time);
                let responses = Arc::new(AtomicU64::new(0));
                let mut servers = Vec::new();
                for name in [
                    ServiceName::Payment,
                    ServiceName::Inventory,
                    ServiceName::Kitchen,
                    ServiceName::Delivery,
                ] {
                    let mut server = CallServer {
                        name,
                        addr: any_port(),
                        stop: CancellationToken::new(),
                        task: None,
                    };
                    start_call_server(&mut server, &office, &responses).await?;
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
                    delivery: url(ServiceName::Delivery),
                    order_timeout: kit.order_timeout,
                    pool: 256,
                    tls: None,
                    token: None,
                };
                let waiter = peers.waiter_with(kit.breaker);
                let breakers = vec![
                    (ServiceName::Payment, record_breaker(&waiter.payment)),
                    (ServiceName::Kitchen, record_breaker(&waiter.kitchen)),
                ];
                let task = serve_front(listener, crate::http::app(waiter), stop.clone());
                (
                    Inner::Calls {
                        office,
                        servers,
                        responses,
                        breakers,
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
                    p.restart_group(bus.bus(), group(service))?;
                }
            }
            Inner::Messaging { bus, services, .. } => {
                if let Some(s) = services.as_mut() {
                    s.restart(bus.bus(), topic(service))?;
                }
            }
            Inner::Calls {
                office,
                servers,
                responses,
                ..
            } => {
                if let Some(server) = servers.iter_mut().find(|s| s.name == call_name(service)) {
                    server.stop = CancellationToken::new();
                    start_call_server(server, office, responses).await?;
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
                bus_messages: match bus {
                    Wire::Embedded(_) => pizzeria
                        .as_ref()
                        .map_or(0, |p| p.log_end().saturating_sub(*first_offset)),
                    Wire::Broker(c) => c.published(|t| !t.ends_with(".dead-letters")).unwrap_or(0),
                },
                responses: bus.responses()?,
                correlation_records: 0,
                timeouts: 0,
            },
            Inner::Messaging { bus, desk, .. } => {
                let stats = desk.stats();
                let responses = bus.responses()?;
                let mut bus_messages = 0;
                match bus {
                    Wire::Embedded(bus) => {
                        for topic in [
                            responders::PAYMENT,
                            responders::INVENTORY,
                            responders::KITCHEN,
                        ] {
                            bus_messages += bus
                                .end_offset(topic)
                                .map_err(bus_error("cannot open a topic"))?;
                        }
                    }
                    Wire::Broker(c) => {
                        bus_messages = c
                            .published(|t| {
                                !t.ends_with(".dead-letters") && !t.starts_with("replies.")
                            })
                            .unwrap_or(0);
                    }
                }
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

    /// Calls: the recorded transitions of the front desk's breaker for `service`; empty for
    /// the other styles.
    pub(crate) fn breaker_transitions(&self, service: Down) -> Vec<(Instant, CircuitState)> {
        match &self.inner {
            Inner::Calls { breakers, .. } => breakers
                .iter()
                .find(|(name, _)| *name == call_name(service))
                .map(|(_, log)| crate::services::lock(log).clone())
                .unwrap_or_default(),
            _ => Vec::new(),
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
                bus.close().await?;
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
                bus.close().await?;
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

/// Serves a front desk's `router`, stamped with the desk timing, until `stop`.
fn serve_front(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> JoinHandle<Result<(), Error>> {
    let serve = tabgrab::call::serve(listener, super::load::timed(router), stop.cancelled_owned());
    tokio::spawn(async move {
        serve
            .await
            .map_err(|e| Error::new(ErrorKind::Io, "the front desk's server failed").with_source(e))
    })
}

/// Starts (or restarts, on the same address) one call-style service.
async fn start_call_server(
    server: &mut CallServer,
    office: &Backoffice,
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
    let router = service_router(server.name, office)
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
                .end_offset(&name)
                .map_err(bus_error("cannot open a reply topic"))?;
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
