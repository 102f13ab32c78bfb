//! The messaging style: the front desk sends `ChargeCard`, `ReserveIngredients` and
//! `PlaceTicket` as request messages through the bus, answers the customer `202` at once,
//! and updates the order as replies or timeouts arrive.
//!
//! This is the style for recipients that are often down or only speak messaging: the
//! customer never waits for payment or the kitchen, and a request whose answer never comes
//! ends as a timeout, with the order failed and compensated, instead of hanging. Its price
//! is the correlation state: every request is written to the SQLite correlation store in
//! the run's data directory (`correlation.db`) before it is sent, so a reply can reach the
//! front desk after a restart; the summary shows how many records were written and how many
//! requests timed out. Payment, inventory and delivery keep their state in the run's store
//! (`effects.sqlite`, or `--store`), as in the other styles.
//!
//! On a broker (`--bus`), the services run in this process, as child processes
//! (`--services spawn`: `pizzeria service <name> --style messaging`, each with a store file
//! of its own) or elsewhere (`--services external`).
//!
//! | module | concept |
//! |---|---|
//! | [`front_desk`] | the requester: orders, their steps and compensations |
//! | [`services`] | payment, inventory, the kitchen and delivery as responders |
//! | [`crate::http`] | `POST /orders` and `GET /orders/{id}`, the one app of every style |

pub mod front_desk;
pub mod services;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::read_dead_letters;
use tabgrab::messaging::{CorrelationStore, SqliteStore};
use tokio_util::sync::CancellationToken;

use crate::backoffice::Backoffice;
use crate::error::{Error, ErrorKind};
use crate::menu::RARE_INGREDIENT;
use crate::namespace::Connection;
use crate::run::{
    Children, Counts, Placement, RunConfig, Style, Summary, Wiring, bind_front_desk, drive,
    open_store,
};
use crate::services::Stock;
use front_desk::FrontDesk;
use services::Services;

/// The topics of the style: four request topics and the front desk's reply topic.
fn topics() -> Vec<String> {
    let mut topics: Vec<String> = services::TOPICS.iter().map(|t| (*t).to_owned()).collect();
    topics.push(format!("replies.{}", front_desk::GROUP));
    topics
}

fn bus_error(what: &str, e: tabgrab::Error) -> Error {
    Error::new(ErrorKind::Bus, what.to_owned()).with_source(e)
}

/// Records appended to the style's topics, and dead letters of them, so far.
fn tally_topics(bus: &EmbeddedBus) -> Result<(u64, u64), Error> {
    let mut appended = 0;
    let mut dead = 0;
    for topic in topics() {
        appended += bus
            .end_offset(&topic)
            .map_err(|e| bus_error("cannot open a topic", e))?;
        dead += read_dead_letters(bus, &topic)
            .map_err(|e| bus_error("cannot read dead letters", e))?
            .len() as u64;
    }
    Ok((appended, dead))
}

/// The bus of a messaging run: the embedded log in the data directory, or a broker.
enum Wire {
    /// The embedded log: counts are read from its topics.
    Embedded(EmbeddedBus),
    /// A broker (maybe in a namespace): counts are the publishes it acknowledged.
    Broker(Connection),
}

impl Wire {
    fn bus(&self) -> Bus {
        match self {
            Wire::Embedded(bus) => Bus::from(bus),
            Wire::Broker(connection) => connection.bus().clone(),
        }
    }

    /// Messages published on the style's topics, and dead letters, so far.
    fn tally(&self) -> Result<(u64, u64), Error> {
        match self {
            Wire::Embedded(bus) => tally_topics(bus),
            Wire::Broker(connection) => {
                let dead = |t: &str| t.ends_with(".dead-letters");
                Ok((
                    connection.published(|t| !dead(t)).unwrap_or(0),
                    connection.published(dead).unwrap_or(0),
                ))
            }
        }
    }

    /// Closes the embedded bus, or deletes a namespace's topics on a broker unless they
    /// belong to services started elsewhere (`keep`).
    async fn close(self, keep: bool) -> Result<(), Error> {
        match self {
            Wire::Embedded(bus) => bus
                .close()
                .await
                .map_err(|e| bus_error("the bus did not close cleanly", e)),
            Wire::Broker(_) if keep => Ok(()),
            Wire::Broker(connection) => connection.clean_up().await.map(|_| ()),
        }
    }
}

/// Runs the restaurant in the messaging style; see the module docs and [`crate::run`].
///
/// With `config.bus` (`nats://…`, `amqp://…`, maybe with `?namespace=…`) the requests and
/// replies travel through that broker, and the services run where `config.placement` says;
/// the correlation store stays `correlation.db` in the data directory (one requester node). A
/// namespace's topics are deleted at the end, unless the services run elsewhere
/// (`--services external`: the topics are theirs).
pub async fn run(config: RunConfig) -> Result<Summary, Error> {
    let started = Instant::now();
    let wire = match &config.bus {
        Some(url) => {
            let connection = crate::namespace::connect(url).await?;
            if let Ok(report) = connection.bus().report().await {
                eprintln!("bus: {report}");
            }
            Wire::Broker(connection)
        }
        None => Wire::Embedded(EmbeddedBus::open(&config.data_dir).map_err(|e| {
            Error::new(
                ErrorKind::Bus,
                format!(
                    "cannot open the data directory {}",
                    config.data_dir.display()
                ),
            )
            .with_source(e)
        })?),
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot make {}", config.data_dir.display()),
        )
        .with_source(e)
    })?;
    let store: Arc<dyn CorrelationStore> = Arc::new(
        SqliteStore::open(config.data_dir.join("correlation.db"))
            .await
            .map_err(|e| bus_error("cannot open the correlation store", e))?,
    );
    let bus = wire.bus();
    let (appended_before, dead_before) = wire.tally()?;
    let truffles = config.truffles.unwrap_or(config.orders / 25);
    let stock = Stock::generous().with(RARE_INGREDIENT, truffles);
    let (services, children) = match (config.placement, &config.bus) {
        (Placement::InProcess, _) => {
            // Every service's durable state; each run is a new day: the shelf is restocked.
            let store = open_store(&config, "effects").await?;
            store.restock(&stock).await?;
            let office = Backoffice::new(store, stock, config.ovens, config.bake_time);
            let services = Services::start(&bus, office)
                .map_err(|e| bus_error("cannot start the services", e))?;
            services
                .ready()
                .await
                .map_err(|e| bus_error("the services did not join the bus", e))?;
            (Some(services), None)
        }
        (Placement::Spawn, Some(url)) => {
            let wiring = Wiring::Bus(url.clone(), Style::Messaging);
            (None, Some(Children::start(&config, &stock, wiring).await?))
        }
        (Placement::External, Some(_)) => (None, None),
        // Refused before the run started (`run::check_placement`).
        (_, None) => {
            return Err(Error::new(
                ErrorKind::Usage,
                "services in other processes share a broker: give --bus",
            ));
        }
    };
    let desk = FrontDesk::start(&bus, Arc::clone(&store), config.request_timeout)
        .map_err(|e| bus_error("cannot start the front desk", e))?;
    desk.ready()
        .await
        .map_err(|e| bus_error("the front desk did not join the bus", e))?;
    let watcher = desk.watch();

    let (listener, addr) = bind_front_desk().await?;
    crate::run::announce(addr, false);
    let stop = CancellationToken::new();
    let server = tokio::spawn(crate::http::serve(
        listener,
        desk.clone(),
        stop.clone().cancelled_owned(),
    ));

    let driven = drive(&config, addr, watcher, started).await;

    stop.cancel();
    let served = server.await;
    // Settle: let the compensations (refunds, releases) be answered before stopping.
    let settled = match &driven {
        Ok(_) => settle(&store, Duration::from_secs(30)).await,
        Err(_) => Ok(()),
    };
    let stats = desk.stats();
    let (refunds, releases) = desk.compensations();
    let stopped_desk = desk.shutdown().await;
    let stopped_services = match services {
        Some(services) => services.shutdown().await,
        None => Ok(()),
    };
    if let Some(children) = children {
        children.shutdown().await?;
    }
    let (appended_after, dead_after) = wire.tally()?;
    let closed = wire.close(config.placement == Placement::External).await;

    let tally = driven?;
    settled?;
    match served {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(
                Error::new(ErrorKind::Io, "the front desk's HTTP server failed").with_source(e),
            );
        }
        Err(e) => {
            return Err(
                Error::new(ErrorKind::Io, "the front desk's HTTP server task failed")
                    .with_source(e),
            );
        }
    }
    stopped_desk.map_err(|e| bus_error("the front desk did not stop cleanly", e))?;
    stopped_services.map_err(|e| bus_error("the services did not stop cleanly", e))?;
    closed?;

    Ok(tally.into_summary(
        &config,
        started,
        Counts {
            refunds,
            releases,
            events_published: appended_after.saturating_sub(appended_before),
            dead_letters: dead_after.saturating_sub(dead_before),
            correlation_records: Some(stats.records_written),
            timeouts: Some(stats.timed_out),
        },
    ))
}

/// Waits until the correlation store holds no pending or in-progress request.
async fn settle(store: &Arc<dyn CorrelationStore>, limit: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    loop {
        let counts = store
            .counts()
            .await
            .map_err(|e| bus_error("cannot read the correlation store", e))?;
        if counts.pending + counts.in_progress == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Deadline,
                format!(
                    "{} requests were still pending {} s after the last order ended",
                    counts.pending + counts.in_progress,
                    limit.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
