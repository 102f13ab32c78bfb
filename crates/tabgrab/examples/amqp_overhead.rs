//! tabgrab on RabbitMQ beside raw lapin, in one run, on the same server (127.0.0.1:5672).
//!
//! - **events/s**: 256 concurrent publishers publish N events (persistent, publisher confirms,
//!   each publish awaited for its confirm) into a durable quorum queue while one consumer
//!   handles and acks them; the time runs from the first publish until the last is handled.
//!   tabgrab: `Publisher::publish` + `Subscription`. Raw: `basic_publish` + confirm, and a
//!   `basic_consume` stream acking each delivery.
//! - **publish-to-handler p50 / p99** at a fixed 1,000 events/s for 3 s, on the same queue
//!   after the throughput phase (from just before the publish to the start of the handler;
//!   the publish is confirmed, so the time includes the quorum queue's commit).
//! - **request-reply round trips/s**, 32 callers: tabgrab's `Requester::request` (in-memory
//!   store; request and reply each a confirmed publish into a quorum queue) beside raw lapin
//!   RPC (a request queue, `reply_to` a durable reply queue, `correlation_id`, confirms).
//!
//! Each raw baseline runs twice: bare, and carrying what a tabgrab message carries (the
//! CloudEvents `ce-*` headers and AMQP properties, written by tabgrab's own
//! `backend::amqp::encode`), so that the wire format's own cost is told apart from tabgrab's.
//!
//! tabgrab runs in both CloudEvents content modes: structured (the default), beside bare
//! lapin, and binary (`?wire=binary`), beside lapin carrying the same headers.
//!
//! Run: `cargo run --release -p tabgrab --example amqp_overhead [-- EVENTS]` (default 20,000;
//! a quarter as many round trips). Each figure is measured twice, alternating with raw lapin.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::Bus;
use tabgrab::event::{Context, Publisher, Subscription};
use tabgrab::messaging::{MemoryStore, Requester, Responder, SendOptions};
use tokio::sync::oneshot;

/// The baselines "with the same headers" carry what tabgrab sends in binary mode.
const BINARY: tabgrab::wire::ContentMode = tabgrab::wire::ContentMode::Binary;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PUBLISHERS: u64 = 256;
const CALLERS: u64 = 32;
const PAD: usize = 150;

#[derive(Serialize, Deserialize, Message)]
#[message(type = "bench.tick.sent.v1", event)]
struct Tick {
    n: u64,
    /// Microseconds since the epoch just before the publish; 0 in the throughput phase.
    sent_us: u64,
    pad: String,
}

/// Events per second in the latency phase.
const RATE: u64 = 1000;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(0))
        .unwrap_or(0)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

type Latency = Arc<std::sync::Mutex<Histogram<u64>>>;

fn record(latency: &Latency, sent_us: u64) {
    if sent_us > 0 {
        let _ = latency
            .lock()
            .map(|mut h| h.saturating_record(now_us().saturating_sub(sent_us)));
    }
}

/// Publishes RATE/s for 3 s with `publish(sent_us, i)`, waits until the handler count
/// reaches `base + published`; returns p50 and p99 of the latencies recorded meanwhile.
async fn fixed_rate<F, Fut>(
    publish: F,
    handled: &AtomicU64,
    base: u64,
    latency: &Latency,
) -> Result<(u64, u64), BoxError>
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let _ = latency.lock().map(|mut h| h.reset());
    let total = RATE * 3;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut tasks = Vec::new();
    for i in 0..total {
        tick.tick().await;
        tasks.push(tokio::spawn(publish(now_us(), base + i)));
    }
    for t in tasks {
        t.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while handled.load(Ordering::Relaxed) < base + total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let h = latency.lock().map_err(|_| "poisoned")?;
    Ok((h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
}

/// Throughput and latency of one side.
struct Row {
    events_per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

#[derive(Serialize, Deserialize, Message)]
#[message(type = "bench.ping.send.v1", query, response = u64)]
struct Ping {
    n: u64,
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn fan<F, Fut>(n: u64, workers: u64, work: F) -> Result<(), BoxError>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send,
{
    let mut tasks = Vec::new();
    for w in 0..workers {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                work(i).await?;
                i += workers;
            }
            Ok::<(), BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn tabgrab_events(url: &str, n: u64) -> Result<Row, BoxError> {
    let bus = Bus::connect(url).await?;
    let topic = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let handled = Arc::new(AtomicU64::new(0));
    let latency: Latency = Arc::new(std::sync::Mutex::new(histogram()));
    let sub = {
        let handled = Arc::clone(&handled);
        let latency = Arc::clone(&latency);
        Subscription::builder(&bus, &topic, "bench")
            .concurrency(256)
            .max_in_flight(1000)
            .handle(move |t: Tick, _ctx: Context| {
                let handled = Arc::clone(&handled);
                let latency = Arc::clone(&latency);
                async move {
                    record(&latency, t.sent_us);
                    handled.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .start()?
    };
    sub.ready().await?;
    let publisher = Publisher::new(&bus, &topic, "/bench")?;
    let publish = move |sent_us: u64, i: u64| {
        let publisher = publisher.clone();
        async move {
            let tick = Tick {
                n: i,
                sent_us,
                pad: "x".repeat(PAD),
            };
            publisher.publish(&tick, format!("s{}", i % 1024)).await?;
            Ok::<(), BoxError>(())
        }
    };
    let start = Instant::now();
    fan(n, PUBLISHERS, {
        let publish = publish.clone();
        move |i| publish(0, i)
    })
    .await?;
    while handled.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let events_per_s = n as f64 / start.elapsed().as_secs_f64();
    let (p50_us, p99_us) = fixed_rate(publish, &handled, n, &latency).await?;
    sub.shutdown().await?;
    bus.delete_topic(&topic).await?;
    Ok(Row {
        events_per_s,
        p50_us,
        p99_us,
    })
}

/// Raw lapin events; with `ce_headers`, each message carries what a tabgrab event carries
/// (the CloudEvents headers and AMQP properties, written by tabgrab's own encoder).
async fn raw_events(n: u64, ce_headers: bool) -> Result<Row, BoxError> {
    let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consume = conn.create_channel().await?;
    let queue = format!("raw-bench-{}", uuid::Uuid::now_v7().simple());
    consume
        .queue_declare(queue.as_str().into(), durable(), quorum())
        .await?;
    consume.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let handled = Arc::new(AtomicU64::new(0));
    let latency: Latency = Arc::new(std::sync::Mutex::new(histogram()));
    let reader = {
        let handled = Arc::clone(&handled);
        let latency = Arc::clone(&latency);
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                if let Ok(t) = serde_json::from_slice::<Tick>(&d.data) {
                    record(&latency, t.sent_us);
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                handled.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let q = queue.clone();
    let publish = move |sent_us: u64, i: u64| {
        let publish = publish.clone();
        let q = q.clone();
        async move {
            let tick = Tick {
                n: i,
                sent_us,
                pad: "x".repeat(PAD),
            };
            let (properties, body) = if ce_headers {
                let mut envelope = tabgrab::Envelope::new("/bench", &tick)?;
                envelope.subject = Some(format!("s{}", i % 1024));
                tabgrab::backend::amqp::encode(&tabgrab::Codec::default(), &envelope, BINARY, None)?
            } else {
                (
                    BasicProperties::default().with_delivery_mode(2),
                    serde_json::to_vec(&tick)?.into(),
                )
            };
            publish
                .basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?
                .await?;
            Ok::<(), BoxError>(())
        }
    };
    let start = Instant::now();
    fan(n, PUBLISHERS, {
        let publish = publish.clone();
        move |i| publish(0, i)
    })
    .await?;
    while handled.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let events_per_s = n as f64 / start.elapsed().as_secs_f64();
    let (p50_us, p99_us) = fixed_rate(publish, &handled, n, &latency).await?;
    reader.abort();
    consume
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(Row {
        events_per_s,
        p50_us,
        p99_us,
    })
}

async fn tabgrab_request_reply(url: &str, n: u64) -> Result<f64, BoxError> {
    let bus = Bus::connect(url).await?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let topic = format!("ping-{id}");
    let group = format!("bench-{id}");
    let responder = Responder::builder(&bus, &topic, "ping")
        .concurrency(256)
        .handle(|p: Ping, _ctx| async move { Ok(p.n) })
        .start()?;
    responder.ready().await?;
    let requester = Requester::builder(&bus, &group)
        .store(MemoryStore::new())
        .route::<Ping>(&topic)
        .concurrency(256)
        .start()?;
    requester.ready().await?;
    let start = Instant::now();
    let r = requester.clone();
    fan(n, CALLERS, move |i| {
        let r = r.clone();
        async move {
            r.request(
                &Ping { n: i },
                SendOptions::default().timeout(Duration::from_secs(30)),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    requester.shutdown().await?;
    responder.shutdown().await?;
    bus.delete_topic(&topic).await?;
    bus.delete_topic(&format!("replies.{group}")).await?;
    Ok(rate)
}

/// Raw lapin RPC: durable request and reply queues, confirms both ways, correlation ids.
/// With `ce_headers`, requests and replies carry what tabgrab's carry (CloudEvents headers and
/// AMQP properties, written by tabgrab's own encoder).
async fn raw_request_reply(n: u64, ce_headers: bool) -> Result<f64, BoxError> {
    let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (requests, replies) = (format!("raw-req-{id}"), format!("raw-rep-{id}"));
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.queue_declare(requests.as_str().into(), durable(), quorum())
        .await?;
    ch.queue_declare(replies.as_str().into(), durable(), quorum())
        .await?;
    // Responder.
    let rch = conn.create_channel().await?;
    rch.confirm_select(ConfirmSelectOptions::default()).await?;
    rch.basic_qos(256, BasicQosOptions::default()).await?;
    let mut incoming = rch
        .basic_consume(
            requests.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let responder = {
        let rch = rch.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = incoming.next().await {
                let rch = rch.clone();
                tokio::spawn(async move {
                    let reply_to = d.properties.reply_to().clone().unwrap_or_else(|| "".into());
                    let correlation = d.properties.correlation_id().clone();
                    let mut props = BasicProperties::default().with_delivery_mode(2);
                    if ce_headers {
                        // What a tabgrab reply carries.
                        let mut reply = tabgrab::Envelope::raw(
                            "/bench/ping",
                            "tabgrab.reply.v1",
                            d.data.clone().into(),
                        );
                        let correlation = correlation.as_ref().map(|c| c.to_string());
                        reply.correlationid.clone_from(&correlation);
                        reply.causationid = correlation;
                        reply
                            .extensions
                            .insert("requesttype".into(), Ping::TYPE.into());
                        reply.extensions.insert("responder".into(), "ping".into());
                        if let Ok((p, _)) = tabgrab::backend::amqp::encode(
                            &tabgrab::Codec::default(),
                            &reply,
                            BINARY,
                            None,
                        ) {
                            props = p;
                        }
                    } else if let Some(c) = correlation {
                        props = props.with_correlation_id(c);
                    }
                    if let Ok(confirm) = rch
                        .basic_publish(
                            "".into(),
                            reply_to,
                            BasicPublishOptions::default(),
                            &d.data,
                            props,
                        )
                        .await
                    {
                        let _ = confirm.await;
                    }
                    let _ = d.acker.ack(BasicAckOptions::default()).await;
                });
            }
        })
    };
    // Reply consumer: hands replies to waiters by correlation id.
    let waiters: Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
    let cch = conn.create_channel().await?;
    cch.basic_qos(256, BasicQosOptions::default()).await?;
    let mut replies_in = cch
        .basic_consume(
            replies.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let reader = {
        let waiters = Arc::clone(&waiters);
        tokio::spawn(async move {
            while let Some(Ok(d)) = replies_in.next().await {
                if let Some(c) = d.properties.correlation_id()
                    && let Ok(mut w) = waiters.lock()
                    && let Some(tx) = w.remove(c.as_str())
                {
                    let _ = tx.send(());
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
        })
    };
    let start = Instant::now();
    let (req_q, rep_q) = (requests.clone(), replies.clone());
    fan(n, CALLERS, move |i| {
        let (ch, waiters, req_q, rep_q) = (
            ch.clone(),
            Arc::clone(&waiters),
            req_q.clone(),
            rep_q.clone(),
        );
        async move {
            let correlation = uuid::Uuid::now_v7().to_string();
            let (tx, rx) = oneshot::channel();
            waiters
                .lock()
                .map_err(|_| "poisoned")?
                .insert(correlation.clone(), tx);
            let body = serde_json::to_vec(&Ping { n: i })?;
            let properties = if ce_headers {
                // What a tabgrab request carries.
                let mut request = tabgrab::Envelope::raw("/bench", Ping::TYPE, body.clone().into());
                request.correlationid = Some(correlation.clone());
                request.replyto = Some(rep_q.clone());
                request.deadline = Some(time::OffsetDateTime::now_utc() + Duration::from_secs(30));
                tabgrab::backend::amqp::encode(&tabgrab::Codec::default(), &request, BINARY, None)?
                    .0
            } else {
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_reply_to(rep_q.as_str().into())
                    .with_correlation_id(correlation.as_str().into())
            };
            ch.basic_publish(
                "".into(),
                req_q.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?
            .await?;
            tokio::time::timeout(Duration::from_secs(30), rx).await??;
            Ok(())
        }
    })
    .await?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    responder.abort();
    reader.abort();
    let ch = conn.create_channel().await?;
    ch.queue_delete(requests.as_str().into(), QueueDeleteOptions::default())
        .await?;
    ch.queue_delete(replies.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(rate)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let rr = n / 4;
    println!(
        "RabbitMQ at 127.0.0.1:5672: {n} events ({PUBLISHERS} publishers, {PAD}-byte pad), {rr} round trips ({CALLERS} callers)"
    );
    // Twice, alternating, one row per round: RabbitMQ's own throughput swings between runs
    // (quorum-queue commits), so one pair alone says little.
    println!(
        "| figure | round | tabgrab (structured, the default) | raw lapin | ratio | tabgrab, `?wire=binary` | raw + the same headers | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let binary_url = format!("{URL}?wire=binary");
    for round in 1..=2 {
        let raw = raw_events(n, false).await?;
        let raw_ce = raw_events(n, true).await?;
        let ours = tabgrab_events(URL, n).await?;
        let ours_bin = tabgrab_events(&binary_url, n).await?;
        let raw_rr = raw_request_reply(rr, false).await?;
        let raw_ce_rr = raw_request_reply(rr, true).await?;
        let ours_rr = tabgrab_request_reply(URL, rr).await?;
        let ours_bin_rr = tabgrab_request_reply(&binary_url, rr).await?;
        println!(
            "| events/s (confirmed publish + handle, quorum queue) | {round} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} |",
            ours.events_per_s,
            raw.events_per_s,
            ours.events_per_s / raw.events_per_s,
            ours_bin.events_per_s,
            raw_ce.events_per_s,
            ours_bin.events_per_s / raw_ce.events_per_s
        );
        println!(
            "| publish-to-handler p50 at {RATE}/s (µs) | {round} | {} | {} | | {} | {} | |",
            ours.p50_us, raw.p50_us, ours_bin.p50_us, raw_ce.p50_us
        );
        println!(
            "| publish-to-handler p99 at {RATE}/s (µs) | {round} | {} | {} | | {} | {} | |",
            ours.p99_us, raw.p99_us, ours_bin.p99_us, raw_ce.p99_us
        );
        println!(
            "| request-reply round trips/s | {round} | {ours_rr:.0} | {raw_rr:.0} | {:.2} | {ours_bin_rr:.0} | {raw_ce_rr:.0} | {:.2} |",
            ours_rr / raw_rr,
            ours_bin_rr / raw_ce_rr
        );
    }
    Ok(())
}
