//! A member process that stops (SIGTERM) gives back what it holds at once, on every broker:
//! the next member handles it within a few seconds, not after the broker's ack wait (30 s).
//!
//! It did not on NATS: the member's `-NAK`s (and last acks) were queued in the client's write
//! buffer when the process exited, so the server heard nothing and redelivered only after the
//! ack wait. The child is this test binary itself, re-executed on an ignored test with the
//! bus URL and topic in its environment: it joins the group with a handler that holds every
//! delivery until shutdown, reports how many it holds, and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::Bus;
use tabgrab::event::{Context, HandlerError, Publisher, Subscription};

const CHILD_URL: &str = "TABGRAB_STOP_CHILD_URL";
const CHILD_TOPIC: &str = "TABGRAB_STOP_CHILD_TOPIC";
const GROUP: &str = "stoppers";
const EVENTS: u32 = 40;
/// Events published while the member stops.
const MORE: u32 = 400;
/// The ack wait of the groups: a redelivery after it would fail the test's bound.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How soon the next member must have everything the stopped one held.
const BOUND: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.stop.job.v1", event)]
struct Job {
    n: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_stopping_member_process_gives_back_what_it_holds_at_once"]
async fn stopping_member_child() {
    let (Ok(url), Ok(topic)) = (std::env::var(CHILD_URL), std::env::var(CHILD_TOPIC)) else {
        return;
    };
    let bus = Bus::connect(&url).await.unwrap();
    let holding = Arc::new(AtomicUsize::new(0));
    let sub = {
        let holding = Arc::clone(&holding);
        Subscription::builder(&bus, &topic, GROUP)
            .ack_wait(ACK_WAIT)
            .handle(move |_: Job, ctx: Context| {
                let holding = Arc::clone(&holding);
                async move {
                    holding.fetch_add(1, Ordering::Relaxed);
                    ctx.shutdown_requested().await;
                    Err(HandlerError::transient("stopping"))
                }
            })
            .start()
            .unwrap()
    };
    sub.ready().await.unwrap();
    println!("ready");
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    let mut reported = 0;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let now = holding.load(Ordering::Relaxed);
        if now != reported {
            println!("holding {now}");
            reported = now;
        }
    }
    sub.shutdown().await.unwrap();
    println!("stopped");
    // At once, as a service's `main` returning does: what `shutdown` settled must already be
    // on the wire, not queued in a client task that dies with the runtime.
    std::process::exit(0);
}

async fn stop_and_hand_over(url: &str) {
    let bus = Bus::connect(url).await.unwrap();
    let topic = format!("stop-{}", uuid::Uuid::now_v7().simple());
    // The group exists before the events (RabbitMQ keeps events only for existing groups).
    let early = Subscription::builder(&bus, &topic, GROUP)
        .handle(|_: Job, _| async { Err(HandlerError::transient("not this one")) })
        .start()
        .unwrap();
    early.ready().await.unwrap();
    early.shutdown().await.unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stopping_member_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_TOPIC, &topic)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).expect("the child stopped talking");
            if what(&line) {
                return;
            }
        }
    };
    wait_for(&|l| l == "ready");
    let publisher = Publisher::new(&bus, &topic, "/test/stop").unwrap();
    for n in 0..EVENTS {
        publisher
            .publish(&Job { n }, format!("s{n}"))
            .await
            .unwrap();
    }
    // Every event is in the child's hands (running, or queued behind its concurrency).
    wait_for(&|l| {
        l.strip_prefix("holding ")
            .and_then(|n| n.parse::<u32>().ok())
            >= Some(10)
    });
    // More events keep coming while the member stops: some are in flight to it then.
    let more = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for n in EVENTS..EVENTS + MORE {
                publisher
                    .publish(&Job { n }, format!("s{n}"))
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for(&|l| l == "stopped");
    assert!(child.wait().unwrap().success());
    more.await.unwrap();

    let stopped = Instant::now();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let next = {
        let seen = Arc::clone(&seen);
        Subscription::builder(&bus, &topic, GROUP)
            .ack_wait(ACK_WAIT)
            .handle(move |job: Job, _| {
                seen.lock().unwrap().insert(job.n);
                async { Ok(()) }
            })
            .start()
            .unwrap()
    };
    next.ready().await.unwrap();
    while seen.lock().unwrap().len() < (EVENTS + MORE) as usize {
        assert!(
            stopped.elapsed() < BOUND,
            "{} of {} events reached the next member within {BOUND:?} of the stop",
            seen.lock().unwrap().len(),
            EVENTS + MORE
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "the next member had all {} events {:?} after the stop",
        EVENTS + MORE,
        stopped.elapsed()
    );
    next.shutdown().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_member_process_gives_back_what_it_holds_at_once_on_nats() {
    if !tabgrab_testkit::services::require("NATS (JetStream)", "127.0.0.1:4222") {
        return;
    }
    stop_and_hand_over("nats://127.0.0.1:4222").await;
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_member_process_gives_back_what_it_holds_at_once_on_rabbitmq() {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    stop_and_hand_over("amqp://guest:guest@127.0.0.1:5672/%2f").await;
}
