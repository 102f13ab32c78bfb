//! `pizzeria service <name> --bus <url>`: one service of the restaurant in this process, on a
//! bus that several processes share (NATS, RabbitMQ), in the events style or, with
//! `--style messaging`, as the responder of its request topic. (The call style's services,
//! `--listen`, are served by [`crate::calls::serve_service`].)
//!
//! Each service is its consumer group (a responder group in the messaging style), so starting a service twice makes two members that
//! share its events (the kitchen's tickets are then shared through PostgreSQL:
//! `--kitchen-db`), and payment's or inventory's members share their state through a
//! PostgreSQL `--store`. The process prints `ready <name> <pid>` once its group has joined, then
//! a `status` line whenever its counters move, and stops on SIGINT or SIGTERM (running
//! handlers finish; what they did not finish is redelivered to another member).

use std::time::Duration;

use tabgrab::event::Subscription;

use crate::error::{Error, ErrorKind};
use crate::menu::RARE_INGREDIENT;
use crate::services::{Delivery, Inventory, Kitchen, Payment, Stock, Store};

/// The services that run on their own. In the events and messaging styles the front desk runs
/// with `pizzeria run`, which takes the customers' orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    /// Call style: takes `POST /orders` and calls the others (give their URLs); in the other
    /// styles the front desk runs with `pizzeria run`.
    FrontDesk,
    /// Charges cards, refunds cancelled orders.
    Payment,
    /// Reserves and releases ingredients.
    Inventory,
    /// Bakes paid and reserved orders.
    Kitchen,
    /// Delivers ready pizzas.
    Delivery,
}

impl ServiceName {
    /// The name as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Payment => "payment",
            ServiceName::Inventory => "inventory",
            ServiceName::Kitchen => "kitchen",
            ServiceName::Delivery => "delivery",
            ServiceName::FrontDesk => "front-desk",
        }
    }

    /// The same service in the call style, if it has one.
    pub fn call_style(self) -> Option<crate::calls::ServiceName> {
        match self {
            ServiceName::Payment => Some(crate::calls::ServiceName::Payment),
            ServiceName::Inventory => Some(crate::calls::ServiceName::Inventory),
            ServiceName::Kitchen => Some(crate::calls::ServiceName::Kitchen),
            ServiceName::FrontDesk => Some(crate::calls::ServiceName::FrontDesk),
            ServiceName::Delivery => Some(crate::calls::ServiceName::Delivery),
        }
    }
}

/// How to run one service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Which service.
    pub name: ServiceName,
    /// Events (a consumer group) or messaging (a responder); not calls.
    pub style: crate::run::Style,
    /// The bus URL (`nats://host:port`).
    pub bus: String,
    /// Kitchen: ovens.
    pub ovens: usize,
    /// Kitchen: time in the oven.
    pub bake_time: Duration,
    /// Kitchen: PostgreSQL URL of the shared rail (needed when several kitchens run); the
    /// kitchen's store, as `store` is.
    pub kitchen_db: Option<String>,
    /// Inventory: truffles in stock (`None`: plenty).
    pub truffles: Option<u64>,
    /// Inventory: the only pizzas whose recipes it knows (`None`: the whole menu).
    pub recipes: Option<Vec<String>>,
    /// Where the service's state is (`sqlite:PATH`, `postgres://…`, `memory`); `None`:
    /// `sqlite:./pizzeria-data/<service>.sqlite`.
    pub store: Option<String>,
    /// Readiness checks the service adds its bus and consumer group to.
    pub health: tabgrab::telemetry::Health,
}

fn bus_error(what: &str) -> impl FnOnce(tabgrab::Error) -> Error + '_ {
    move |e| Error::new(ErrorKind::Bus, what.to_owned()).with_source(e)
}

/// Runs the service until `shutdown` completes.
pub async fn serve(
    config: ServiceConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let name = config.name.as_str();
    // Through the pizzeria's connect, so that `?namespace=` works as for `pizzeria run`.
    let bus = crate::namespace::connect(&config.bus).await?.bus().clone();
    config.health.bus(&bus);
    if let Ok(report) = bus.report().await {
        eprintln!("{name}: {report}");
    }
    if config.name == ServiceName::FrontDesk {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "in the {} style the front desk runs with `pizzeria run --style {} --bus .. --services external`",
                config.style.as_str(),
                config.style.as_str()
            ),
        ));
    }
    if config.style == crate::run::Style::Messaging {
        return respond(config, bus, shutdown).await;
    }
    // Several kitchens share one store through PostgreSQL (`--kitchen-db` names it, as
    // `--store` does).
    let store = open(
        config.name,
        match (config.name, &config.kitchen_db) {
            (ServiceName::Kitchen, Some(db)) => Some(db.clone()),
            _ => config.store.clone(),
        },
    )
    .await?;
    let relay = store.relay(&bus);
    let mut kitchen = None;
    let subscription: Subscription = match config.name {
        ServiceName::Payment => Payment::new(store.clone()).subscribe(&bus)?,
        ServiceName::Inventory => {
            let mut inventory = Inventory::new(store.clone(), opening_stock(config.truffles));
            if let Some(recipes) = &config.recipes {
                inventory = inventory.with_recipes(recipes)?;
            }
            inventory.subscribe(&bus)?
        }
        ServiceName::Kitchen => {
            let k = Kitchen::new(store.clone(), config.ovens, config.bake_time);
            let s = k.subscribe(&bus)?;
            kitchen = Some(k);
            s
        }
        ServiceName::Delivery => Delivery::new(store.clone()).subscribe(&bus)?,
        ServiceName::FrontDesk => unreachable!("refused above"),
    };
    config.health.subscription(&subscription);
    subscription
        .ready()
        .await
        .map_err(bus_error("the service's group did not join"))?;
    report_until(name, shutdown, || async {
        let stats = subscription.stats();
        let in_oven = kitchen.as_ref().map_or(0, Kitchen::in_oven);
        let duplicates = store.stats().await.map_or(0, |s| s.duplicates());
        format!(
            "status {name} acked={} retries={} dead_lettered={} in_oven={in_oven} duplicates={duplicates}",
            stats.acked, stats.retries, stats.dead_lettered
        )
    })
    .await;
    subscription
        .shutdown()
        .await
        .map_err(bus_error("the service did not stop cleanly"))?;
    relay
        .shutdown()
        .await
        .map_err(bus_error("the outbox relay did not stop cleanly"))?;
    println!("stopped {name}");
    Ok(())
}

/// Opens `name`'s store at `url`, by default `sqlite:./pizzeria-data/<name>.sqlite`: every
/// service keeps what its answers and acknowledgements depend on there.
pub(crate) async fn open(name: ServiceName, url: Option<String>) -> Result<Store, Error> {
    let name = name.as_str();
    let url = url.unwrap_or_else(|| format!("sqlite:./pizzeria-data/{name}.sqlite"));
    let store = Store::open(&url).await.map_err(|e| {
        Error::new(
            ErrorKind::Bus,
            format!(
                "cannot open the {name} store {}",
                tabgrab::SecretUrl::new(url.as_str())
            ),
        )
        .with_source(e)
    })?;
    eprintln!("{name}: state in {}", store.url());
    Ok(store)
}

/// The back office of one service of the call or messaging style: payment, inventory and
/// delivery answer from their store at `url` (see [`open`]); the kitchen keeps no state.
pub(crate) async fn office(
    name: ServiceName,
    url: Option<String>,
    truffles: Option<u64>,
    ovens: usize,
    bake_time: Duration,
) -> Result<crate::backoffice::Backoffice, Error> {
    let store = match name {
        ServiceName::Kitchen => Store::memory(),
        _ => open(name, url).await?,
    };
    Ok(crate::backoffice::Backoffice::new(
        store,
        opening_stock(truffles),
        ovens,
        bake_time,
    ))
}

/// The opening stock of an inventory: `truffles` of the rare ingredient, plenty of the rest.
fn opening_stock(truffles: Option<u64>) -> Stock {
    match truffles {
        Some(n) => Stock::generous().with(RARE_INGREDIENT, n),
        None => Stock::generous(),
    }
}

/// The messaging style: the service answers the requests of its topic until `shutdown`.
async fn respond(
    config: ServiceConfig,
    bus: tabgrab::backend::Bus,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    use crate::messaging::services::{DELIVERY, INVENTORY, KITCHEN, PAYMENT, Services};
    let name = config.name.as_str();
    let topic = match config.name {
        ServiceName::Payment => PAYMENT,
        ServiceName::Inventory => INVENTORY,
        ServiceName::Kitchen => KITCHEN,
        ServiceName::Delivery => DELIVERY,
        ServiceName::FrontDesk => {
            return Err(Error::new(
                ErrorKind::Usage,
                "the front desk is no responder",
            ));
        }
    };
    let office = office(
        config.name,
        config.store.clone(),
        config.truffles,
        config.ovens,
        config.bake_time,
    )
    .await?;
    let services = Services::start_only(&bus, office, &[topic])
        .map_err(bus_error("cannot start the responder"))?;
    services
        .ready()
        .await
        .map_err(bus_error("the responder did not join the bus"))?;
    report_until(name, shutdown, || async {
        let (replied, rejected, expired) = services
            .responder_stats()
            .iter()
            .fold((0, 0, 0), |(a, b, c), (_, s)| {
                (a + s.replied, b + s.rejected, c + s.expired)
            });
        format!(
            "status {name} replied={replied} rejected={rejected} expired={expired} lag={}",
            services.lag()
        )
    })
    .await;
    services
        .shutdown()
        .await
        .map_err(bus_error("the responder did not stop cleanly"))?;
    println!("stopped {name}");
    Ok(())
}

/// Prints `ready <name> <pid>`, then the line `status` makes whenever it changes (looked at
/// every 100 ms), until `shutdown` completes.
async fn report_until<F, Fut>(
    name: &str,
    shutdown: impl std::future::Future<Output = ()>,
    mut status: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    println!("ready {name} {}", std::process::id());
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let line = status().await;
        if line != last {
            println!("{line}");
            last = line;
        }
    }
}

/// Set (to `1`) by `pizzeria run --services spawn` on its children, whose stdin is a pipe from
/// the run: when the run dies, even by SIGKILL, the pipe closes and the child stops as on
/// SIGTERM, instead of living on as an orphan that holds its port and its consumer group.
pub const PARENT_PIPE_VAR: &str = "PIZZERIA_PARENT_PIPE";

/// Completes on SIGINT or SIGTERM, or when the parent run is gone ([`PARENT_PIPE_VAR`]).
pub async fn signal() {
    let parent_gone = async {
        if std::env::var(PARENT_PIPE_VAR).is_ok_and(|v| v == "1") {
            parent_gone().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = os_signal() => {}
        () = parent_gone => eprintln!("the run that started this service is gone: stopping"),
    }
}

/// Completes when stdin reaches its end (or fails): the parent's end of the pipe closed.
/// Read on a thread of its own, not tokio's blocking pool, which the runtime would wait for
/// at exit (a read of stdin that never ends would then keep the process alive).
async fn parent_gone() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Completes on SIGINT or SIGTERM.
async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
