//! `pizzeria run --style calls`: every service in this process, each on its own port, or
//! each in a process of its own (`--services spawn`), and simulated customers over real HTTP.
//!
//! The same seeded customers as the events style ([`crate::run`]) post to the front desk, C
//! at a time; each POST ends when the front desk has heard from payment, inventory, the
//! kitchen and delivery. Payment, inventory and delivery keep their state in the run's store
//! (`effects.sqlite` in the data directory, or `--store`; with `--services spawn`, a file per
//! service), restocked at the start as in the events style. The summary has the events
//! style's shape: "delivered" is an order answered `201` (paid, baked and delivered), "failed"
//! an order refused for a business reason (declined card, missing ingredients, with the same
//! reasons), "rejected" any other failure; refunds and releases are the compensations payment
//! and inventory confirmed; latency is from the POST to its answer. There are no events and
//! no dead letters in this style, so those lines read 0.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use tokio_util::sync::CancellationToken;

use super::front_desk::Refusal;
use super::{Backoffice, Peers, ServiceName, service_router};
use crate::error::{Error, ErrorKind};
use crate::menu::RARE_INGREDIENT;
use crate::run::{Latency, Placement, RunConfig, Summary, customer, open_store, peak_rss_mib};
use crate::services::Stock;

/// The back-office services, in the order of [`Peers`]' URLs.
const BACK_OFFICE: [ServiceName; 4] = [
    ServiceName::Payment,
    ServiceName::Inventory,
    ServiceName::Kitchen,
    ServiceName::Delivery,
];

/// How one POST ended.
enum Ended {
    /// 201.
    Made,
    /// A business refusal, with the reason.
    Failed(String),
    /// Anything else, with what happened.
    Rejected(String),
}

async fn bind() -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::new(ErrorKind::Io, "cannot bind a service on 127.0.0.1").with_source(e))
}

fn addr_of(listener: &tokio::net::TcpListener) -> Result<String, Error> {
    listener
        .local_addr()
        .map(|a| format!("http://{a}"))
        .map_err(|e| Error::new(ErrorKind::Io, "cannot read a service's address").with_source(e))
}

/// Runs the restaurant in the call style; see the module docs.
pub async fn run(config: RunConfig) -> Result<Summary, Error> {
    let started = Instant::now();
    let truffles = config.truffles.unwrap_or(config.orders / 25);
    let stock = Stock::generous().with(RARE_INGREDIENT, truffles);
    let stop = CancellationToken::new();
    let mut servers = Vec::new();
    let mut children = None;
    let urls = match config.placement {
        Placement::InProcess => {
            // Every service's durable state; each run is a new day: the shelf is restocked.
            let store = open_store(&config, "effects").await?;
            store.restock(&stock).await?;
            let office = Backoffice::new(store, stock, config.ovens, config.bake_time);
            let mut urls = Vec::new();
            for name in BACK_OFFICE {
                let listener = bind().await?;
                urls.push(addr_of(&listener)?);
                let router = service_router(name, &office).ok_or_else(|| {
                    Error::new(ErrorKind::Usage, "no router for a back-office service")
                })?;
                servers.push(tokio::spawn(tabgrab::call::serve(
                    listener,
                    router,
                    stop.clone().cancelled_owned(),
                )));
            }
            urls
        }
        Placement::Spawn => {
            let spawned =
                crate::run::Children::start(&config, &stock, crate::run::Wiring::Calls).await?;
            let urls = spawned.urls();
            children = Some(spawned);
            urls
        }
        Placement::External => {
            return Err(Error::new(
                ErrorKind::Usage,
                "the call style's front desk needs the services' URLs (see `pizzeria run --help`)",
            ));
        }
    };
    let [payment_url, inventory_url, kitchen_url, delivery_url] = <[String; 4]>::try_from(urls)
        .map_err(|_| Error::new(ErrorKind::Usage, "four services expected"))?;
    let peers = Peers {
        payment: payment_url,
        inventory: inventory_url,
        kitchen: kitchen_url,
        delivery: delivery_url,
        order_timeout: Duration::from_secs(30),
        pool: config.concurrency,
        tls: None,
        token: None,
    };
    let waiter = peers.waiter();
    let listener = bind().await?;
    let front_url = addr_of(&listener)?;
    if let Ok(addr) = listener.local_addr() {
        crate::run::announce(addr, false);
    }
    servers.push(tokio::spawn(tabgrab::call::serve(
        listener,
        crate::http::app(waiter.clone()),
        stop.clone().cancelled_owned(),
    )));

    let driven = tokio::time::timeout(config.deadline, drive(&config, &front_url)).await;
    // Compensations still being retried finish (or give up) before the services stop.
    let unsettled = waiter.undone.settle(Duration::from_secs(35)).await;
    let abandoned = waiter.undone.abandoned.load(Ordering::Relaxed);
    if unsettled > 0 || abandoned > 0 {
        eprintln!(
            "{abandoned} compensations gave up and {unsettled} were still being retried: \
             their money or ingredients were not given back"
        );
    }
    stop.cancel();
    if let Some(children) = children {
        children.shutdown().await?;
    }
    for server in servers {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Error::new(ErrorKind::Io, "a service's server failed").with_source(e));
            }
            Err(e) => {
                return Err(
                    Error::new(ErrorKind::Io, "a service's server task failed").with_source(e)
                );
            }
        }
    }
    let (ends, latency) = driven.map_err(|_| {
        Error::new(
            ErrorKind::Deadline,
            format!(
                "deadline of {} s exceeded before every order was answered; raise --deadline-secs",
                config.deadline.as_secs()
            ),
        )
    })??;

    let mut delivered = 0;
    let mut failed = 0;
    let mut rejected = 0;
    let mut failed_by_reason = BTreeMap::new();
    let mut first_rejection = None;
    for end in ends {
        match end {
            Ended::Made => delivered += 1,
            Ended::Failed(reason) => {
                failed += 1;
                *failed_by_reason.entry(reason).or_default() += 1;
            }
            Ended::Rejected(why) => {
                rejected += 1;
                first_rejection.get_or_insert(why);
            }
        }
    }
    if let Some(why) = &first_rejection {
        tracing::warn!(rejected, first = %why, "some orders were not answered");
    }
    if delivered + failed == 0 && config.orders > 0 {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "the front desk made none of {} orders; first failure: {}",
                config.orders,
                first_rejection.as_deref().unwrap_or("none")
            ),
        ));
    }
    let wall = started.elapsed().as_secs_f64();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(Summary {
        style: config.style,
        seed: config.seed,
        orders: config.orders,
        accepted: delivered + failed,
        rejected,
        delivered,
        failed,
        failed_by_reason,
        refunds: waiter.undone.refunds.load(Ordering::Relaxed),
        releases: waiter.undone.releases.load(Ordering::Relaxed),
        events_published: 0,
        correlation_records: None,
        timeouts: None,
        dead_letters: 0,
        wall_time_s: wall,
        orders_per_s: if wall > 0.0 {
            (delivered + failed) as f64 / wall
        } else {
            0.0
        },
        latency: Latency {
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: latency.max() as f64 / 1000.0,
        },
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Posts every customer's order and collects how each ended and how long it took.
async fn drive(config: &RunConfig, front_url: &str) -> Result<(Vec<Ended>, Histogram<u64>), Error> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot build the HTTP client").with_source(e))?;
    let url = format!("{front_url}/orders");
    let mut rng = StdRng::seed_from_u64(config.seed);
    let decline_rate = config.decline_rate.clamp(0.0, 1.0);
    let mut latency = Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| Error::new(ErrorKind::Usage, "cannot make a histogram").with_source(e))?;
    let mut posts = futures::stream::iter(0..config.orders)
        .map(move |i| customer(i, &mut rng, decline_rate))
        .map(|request| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let sent = Instant::now();
                let end = place(&client, &url, &request).await;
                (sent.elapsed(), end)
            }
        })
        .buffer_unordered(config.concurrency.max(1));
    let mut ends = Vec::with_capacity(usize::try_from(config.orders).unwrap_or(0));
    while let Some((took, end)) = posts.next().await {
        if !matches!(end, Ended::Rejected(_)) {
            latency.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
        ends.push(end);
    }
    Ok((ends, latency))
}

async fn place(client: &reqwest::Client, url: &str, request: &crate::order::OrderRequest) -> Ended {
    let response = match client.post(url).json(request).send().await {
        Ok(response) => response,
        Err(e) => return Ended::Rejected(format!("POST /orders failed: {e}")),
    };
    let status = response.status();
    if status == reqwest::StatusCode::CREATED {
        return Ended::Made;
    }
    match response.json::<Refusal>().await {
        Ok(Refusal {
            reason: Some(reason),
            ..
        }) => Ended::Failed(reason),
        Ok(refusal) => {
            Ended::Rejected(format!("POST /orders answered {status}: {}", refusal.error))
        }
        Err(_) => Ended::Rejected(format!(
            "POST /orders answered {status} without a JSON body"
        )),
    }
}
