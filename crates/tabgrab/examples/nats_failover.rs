//! What a node failure of a three-node NATS cluster costs tabgrab's events in latency, and
//! whether it costs anything else.
//!
//! Starts a three-node cluster (nats-server from `TABGRAB_NATS_SERVER`, every stream with three
//! replicas), one `Subscription` and one `Publisher` through the cluster's URL list, and
//! publishes at a fixed rate (default 500 events/s) for 30 s in three phases of 10 s:
//! **before** the fault, **during** it (at its start one node is SIGKILLed) and **after** (at
//! its start the node is restarted). Which node is killed is the experiment:
//!
//! - `leader`: the topic stream's leader (the node whose replica takes the publishes), which
//!   is not the node the client is connected to (when it is, the run says so);
//! - `client`: the node the client is connected to (it must reconnect), when that node is not
//!   the leader;
//! - `follower`: a node that is neither.
//!
//! Per phase it prints the publish latency (publish call to the durable acknowledgement,
//! retries included) and the publish-to-handler latency, p50 / p99 / max, the longest time
//! without any acknowledged publish, and at the end whether every acknowledged event was
//! handled (a missing one would be a lost event) and how many were handled twice.
//!
//! Run: `cargo run --release -p tabgrab --example nats_failover -- [leader|client|follower]
//! [RATE]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::Bus;
use tabgrab::event::{Context, Publisher, Subscription};
use tabgrab_testkit::nats_server::{NatsCluster, NatsOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Serialize, Deserialize, Message)]
#[message(type = "bench.failover.tick.v1", event)]
struct Tick {
    n: u64,
    sent_us: u64,
}

const PHASES: [&str; 3] = ["before", "during", "after"];
const PHASE: Duration = Duration::from_secs(10);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(0))
        .unwrap_or(0)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// p50 / p99 / max in milliseconds.
fn summary(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "{:.1} / {:.1} / {:.1}",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

/// The name of the server a raw monitoring request through `url` reports as the stream's
/// leader, and the name of the server that client is connected to.
async fn roles(url: &str, stream: &str) -> Result<(String, String), BoxError> {
    let addrs = url
        .split(',')
        .map(str::parse::<async_nats::ServerAddr>)
        .collect::<Result<Vec<_>, _>>()?;
    let client = async_nats::connect(addrs).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut info = js.get_stream(stream).await?;
    let leader = info
        .info()
        .await?
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .ok_or("the stream has no leader")?;
    Ok((leader, client.server_info().server_name))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let victim = args.first().map_or("leader", String::as_str).to_owned();
    if !["leader", "client", "follower"].contains(&victim.as_str()) {
        return Err(format!("unknown node to kill {victim:?}: leader, client or follower").into());
    }
    let rate: u64 = match args.get(1) {
        Some(r) => r
            .parse()
            .map_err(|_| format!("RATE {r:?} is not a number"))?,
        None => 500,
    };
    let mut cluster = NatsCluster::start(3, NatsOptions::default())?;
    // The client connects through the first node only, so "the client's node" is known; its
    // reconnect then uses the servers the cluster advertises.
    let first = cluster.nodes[0].url();
    let url = format!("{first}?replicas=3");
    let bus = Bus::connect(&url).await?;
    let topic = "failover";
    let publisher = Publisher::new(&bus, topic, "/bench")?;
    let handled: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let e2e: Arc<Mutex<[Histogram<u64>; 3]>> =
        Arc::new(Mutex::new([histogram(), histogram(), histogram()]));
    let started = Instant::now();
    let phase_of = move |at: Instant| {
        let i = (at.saturating_duration_since(started).as_secs() / PHASE.as_secs()) as usize;
        i.min(2)
    };
    let sub = {
        let handled = Arc::clone(&handled);
        let e2e = Arc::clone(&e2e);
        Subscription::builder(&bus, topic, "bench")
            .handle(move |t: Tick, _ctx: Context| {
                let latency = now_us().saturating_sub(t.sent_us);
                *handled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(t.n)
                    .or_default() += 1;
                let phase = phase_of(Instant::now());
                let _ = e2e.lock().map(|mut h| h[phase].saturating_record(latency));
                futures::future::ready(Ok(()))
            })
            .start()?
    };
    sub.ready().await?;
    let stream = format!("TABGRAB_{topic}");
    let (leader, connected) = roles(&first, &stream).await?;
    let names: Vec<String> = (1..=3).map(|i| format!("n{i}")).collect();
    let target = match victim.as_str() {
        "leader" => leader.clone(),
        "client" => connected.clone(),
        _ => names
            .iter()
            .find(|n| **n != leader && **n != connected)
            .cloned()
            .unwrap_or_else(|| names[2].clone()),
    };
    let index = names
        .iter()
        .position(|n| *n == target)
        .ok_or_else(|| format!("no node named {target}"))?;
    println!(
        "3-node cluster of {}, R3 stream; stream leader {leader}, client on {connected}; \
         killing {target} ({victim}{}); {rate} events/s, {} s per phase",
        cluster.nodes[0].binary_path().display(),
        if leader == connected {
            ", which is both the leader and the client's node"
        } else {
            ""
        },
        PHASE.as_secs()
    );

    // The publishers: one task per event at the fixed rate, each recording its latency.
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let publish_lat: Arc<Mutex<[Histogram<u64>; 3]>> =
        Arc::new(Mutex::new([histogram(), histogram(), histogram()]));
    let last_ack = Arc::new(Mutex::new(started));
    let longest_gap = Arc::new(Mutex::new(Duration::ZERO));
    let total = rate * PHASE.as_secs() * 3;
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut killed = false;
    let mut restarted = false;
    for n in 0..total {
        ticker.tick().await;
        let phase = phase_of(Instant::now());
        if phase >= 1 && !killed {
            cluster.nodes[index].kill()?;
            println!(
                "{:>5.1} s: killed {target}",
                started.elapsed().as_secs_f64()
            );
            killed = true;
        }
        if phase >= 2 && !restarted {
            cluster.nodes[index].restart()?;
            println!(
                "{:>5.1} s: restarted {target}",
                started.elapsed().as_secs_f64()
            );
            restarted = true;
        }
        let publisher = publisher.clone();
        let (acked, failed, publish_lat) = (
            Arc::clone(&acked),
            Arc::clone(&failed),
            Arc::clone(&publish_lat),
        );
        let (last_ack, longest_gap) = (Arc::clone(&last_ack), Arc::clone(&longest_gap));
        tasks.spawn(async move {
            let sent = Instant::now();
            let tick = Tick {
                n,
                sent_us: now_us(),
            };
            match publisher.publish(&tick, format!("s{}", n % 64)).await {
                Ok(_) => {
                    let now = Instant::now();
                    let _ = publish_lat.lock().map(|mut h| {
                        h[phase].saturating_record(
                            u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX),
                        )
                    });
                    if let (Ok(mut last), Ok(mut gap)) = (last_ack.lock(), longest_gap.lock())
                        && now > *last
                    {
                        *gap = (*gap).max(now.duration_since(*last));
                        *last = now;
                    }
                    let _ = acked.lock().map(|mut a| a.push(n));
                }
                Err(e) => {
                    let _ = failed.lock().map(|mut f| f.push(format!("event {n}: {e}")));
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing = {
            let handled = handled.lock().unwrap_or_else(|e| e.into_inner());
            acked.iter().filter(|n| !handled.contains_key(n)).count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let handled = handled.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let missing = acked.iter().filter(|n| !handled.contains_key(n)).count();
    let twice = handled.values().filter(|c| **c > 1).count();
    let failed = failed.lock().map(|f| f.clone()).unwrap_or_default();
    println!(
        "\n| phase | publish latency p50 / p99 / max (ms) | publish-to-handler p50 / p99 / max (ms) |"
    );
    println!("|---|---|---|");
    let table: Vec<String> = {
        let publish_lat = publish_lat.lock().unwrap_or_else(|e| e.into_inner());
        let e2e = e2e.lock().unwrap_or_else(|e| e.into_inner());
        PHASES
            .iter()
            .enumerate()
            .map(|(i, phase)| {
                format!(
                    "| {phase} | {} | {} |",
                    summary(&publish_lat[i]),
                    summary(&e2e[i])
                )
            })
            .collect()
    };
    for row in table {
        println!("{row}");
    }
    println!(
        "\nkilled: {victim} ({target}); published {total}, acknowledged {}, failed {}, \
         acknowledged but never handled {missing}, handled twice {twice}; longest time \
         without an acknowledged publish {:.0} ms",
        acked.len(),
        failed.len(),
        longest_gap
            .lock()
            .map(|g| g.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    );
    for f in failed.iter().take(5) {
        println!("  {f}");
    }
    sub.shutdown().await?;
    bus.delete_topic(topic).await?;
    if missing > 0 {
        return Err(format!("{missing} acknowledged events were never handled").into());
    }
    Ok(())
}
