//! Dead letters that the NATS server decides: a message that no consumer survives is
//! dead-lettered from the server's `MAX_DELIVERIES` advisory, kept in a stream until a member
//! takes it; a message another client terminates with a reason is captured with that reason
//! (nats-server 2.10+); tabgrab's own terminations are not captured a second time.
//!
//! Each scenario runs on the shared Debian 2.9 server (127.0.0.1:4222) and on a recent
//! nats-server of the test's own (`TABGRAB_NATS_SERVER`, PyPI's 2.15), so the capability
//! flags are checked against both.
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::Bus;
use tabgrab::backend::nats::stream_name;
use tabgrab::event::{Context, DeadLetter, HandlerError, Publisher, Subscription};
use tabgrab_testkit::nats_server::{NatsOptions, NatsServer};

const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Message)]
#[message(type = "deadletters.ticket.placed.v1", event)]
struct Ticket {
    order: String,
}

/// A server to run on: the shared one, or one of the test's own (kept alive with it).
struct Server {
    url: String,
    _own: Option<NatsServer>,
}

fn shared() -> Option<Server> {
    tabgrab_testkit::services::require("NATS (JetStream)", "127.0.0.1:4222").then(|| Server {
        url: "nats://127.0.0.1:4222".into(),
        _own: None,
    })
}

fn recent() -> Option<Server> {
    let binary = tabgrab_testkit::nats_server::require()?;
    if !NatsServer::supports_sync_always(&binary) {
        eprintln!("SKIPPED: {} is older than 2.10", binary.display());
        return None;
    }
    let server = NatsServer::start(NatsOptions::default()).unwrap();
    Some(Server {
        url: server.url(),
        _own: Some(server),
    })
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

type Seen = Arc<Mutex<Vec<String>>>;

/// Starts a member of `group` that records what it handles.
async fn member(bus: &Bus, topic: &str, group: &str, seen: &Seen) -> Subscription {
    let seen = Arc::clone(seen);
    let sub = Subscription::builder(bus, topic, group)
        .max_deliveries(2)
        .max_redeliveries(2)
        .ack_wait(Duration::from_millis(300))
        .handle(move |t: Ticket, _ctx: Context| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(t.order);
                Ok(())
            }
        })
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    sub
}

/// Waits until `topic` has `n` dead letters.
async fn dead_letters(bus: &Bus, topic: &str, n: usize) -> Vec<DeadLetter> {
    let start = Instant::now();
    loop {
        let letters = bus.dead_letters(topic).await.unwrap();
        if letters.len() >= n {
            return letters;
        }
        assert!(start.elapsed() < DEADLINE, "dead letters: {letters:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The group's durable consumer, pulled by a raw client that plays a crashing consumer.
async fn raw_consumer(url: &str, topic: &str, group: &str) -> consumer::PullConsumer {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = js.get_stream(stream_name(topic)).await.unwrap();
    stream.get_consumer(group).await.unwrap()
}

async fn crashed_consumers_are_dead_lettered_by_the_server(server: Server) {
    let bus = Bus::connect(&server.url).await.unwrap();
    assert!(bus.capabilities().broker_max_deliveries);
    let topic = unique("crash");
    let seen: Seen = Arc::default();
    // The group exists (max 2 deliveries), then no tabgrab member runs.
    member(&bus, &topic, "kitchen", &seen)
        .await
        .shutdown()
        .await
        .unwrap();
    let receipt = Publisher::new(&bus, &topic, "/test")
        .unwrap()
        .publish(
            &Ticket {
                order: "o-1".into(),
            },
            "o-1",
        )
        .await
        .unwrap();
    // Two consumers take it and die without a word (never ack): the server gives up.
    let raw = raw_consumer(&server.url, &topic, "kitchen").await;
    let mut deliveries = 0;
    let start = Instant::now();
    while deliveries < 2 {
        assert!(start.elapsed() < DEADLINE, "{deliveries} deliveries");
        let mut batch = raw
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(message)) = batch.next().await {
            deliveries = message.info().unwrap().delivered;
        }
    }
    // A member starts later and finds the server's record: a dead letter, and no delivery.
    let sub = member(&bus, &topic, "kitchen", &seen).await;
    let letters = dead_letters(&bus, &topic, 1).await;
    let letter = &letters[0];
    assert_eq!(letter.reason, "max_deliveries");
    assert_eq!(letter.attempts, 2);
    assert_eq!(letter.group, "kitchen");
    assert_eq!(letter.offset, receipt.offset);
    assert_eq!(letter.message_id.as_deref(), Some(receipt.id.as_str()));
    assert_eq!(letter.subject.as_deref(), Some("o-1"));
    assert!(
        letter.error.contains("does not know the last error"),
        "{}",
        letter.error
    );
    assert!(!letter.original().unwrap().is_empty());
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    sub.shutdown().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}

async fn a_termination_by_another_client_is_captured_with_its_reason(server: Server) {
    let bus = Bus::connect(&server.url).await.unwrap();
    let topic = unique("term");
    if !bus.capabilities().captures_terminations {
        // nats-server 2.9: `+TERM <reason>` is not understood there, so there is no reason
        // to capture; the flag says so.
        let client = async_nats::connect(&server.url).await.unwrap();
        assert!(client.server_info().version.starts_with("2.9"));
        return;
    }
    let seen: Seen = Arc::default();
    member(&bus, &topic, "payment", &seen)
        .await
        .shutdown()
        .await
        .unwrap();
    let receipt = Publisher::new(&bus, &topic, "/test")
        .unwrap()
        .publish(
            &Ticket {
                order: "o-2".into(),
            },
            "o-2",
        )
        .await
        .unwrap();
    // A worker written without tabgrab gives up on it, saying why.
    let client = async_nats::connect(&server.url).await.unwrap();
    let raw = raw_consumer(&server.url, &topic, "payment").await;
    let mut batch = raw
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let message = batch.next().await.unwrap().unwrap();
    client
        .publish(
            message.reply.clone().unwrap(),
            "+TERM the payment provider refused the card".into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let sub = member(&bus, &topic, "payment", &seen).await;
    let letters = dead_letters(&bus, &topic, 1).await;
    let letter = &letters[0];
    assert_eq!(letter.reason, "terminated");
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.message_id.as_deref(), Some(receipt.id.as_str()));
    assert!(
        letter
            .error
            .contains("the payment provider refused the card"),
        "{}",
        letter.error
    );
    assert!(seen.lock().unwrap().is_empty());
    sub.shutdown().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}

/// tabgrab dead-letters a failing event itself (with the handler's error) and then
/// terminates it; the server's advisory of that termination is taken and makes no second
/// dead letter.
async fn own_terminations_are_not_captured_twice(server: Server) {
    let bus = Bus::connect(&server.url).await.unwrap();
    let topic = unique("own");
    let sub = Subscription::builder(&bus, &topic, "oven")
        .max_deliveries(2)
        .backoff(tabgrab::retry::Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(10),
        })
        .handle(|_t: Ticket, _ctx: Context| async move {
            Err(HandlerError::transient("the oven is on fire"))
        })
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    Publisher::new(&bus, &topic, "/test")
        .unwrap()
        .publish(
            &Ticket {
                order: "o-3".into(),
            },
            "o-3",
        )
        .await
        .unwrap();
    let letters = dead_letters(&bus, &topic, 1).await;
    assert_eq!(letters[0].reason, "max_deliveries");
    assert!(letters[0].error.contains("on fire"), "{}", letters[0].error);
    if bus.capabilities().captures_terminations {
        // Wait until the capture has taken the termination's advisory.
        let js = jetstream::new(async_nats::connect(&server.url).await.unwrap());
        let adv = format!(
            "TABGRAB_ADV_{}",
            tabgrab::backend::nats::topic_token(&topic)
        );
        let start = Instant::now();
        loop {
            let mut stream = js.get_stream(&adv).await.unwrap();
            let left = stream.info().await.unwrap().state.messages;
            let mut capture: consumer::PullConsumer =
                stream.get_consumer("tabgrab-capture").await.unwrap();
            let taken = capture.info().await.unwrap().ack_floor.stream_sequence;
            if left == 0 && taken >= 1 {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "the advisory was not taken");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(bus.dead_letters(&topic).await.unwrap().len(), 1);
    sub.shutdown().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}

macro_rules! on_both_servers {
    ($($scenario:ident),*) => {
        mod shared_2_9 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(server) = super::shared() else { return };
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$scenario(server))
                        .await
                        .expect("did not finish in 60 s");
                }
            )*
        }
        mod recent {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(server) = super::recent() else { return };
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$scenario(server))
                        .await
                        .expect("did not finish in 60 s");
                }
            )*
        }
    };
}

/// A group whose consumer exists already (made by an older tabgrab without `max_deliver`,
/// or by a member with other options) takes the settings of the member that joins.
async fn an_existing_consumer_takes_the_joining_members_settings(server: Server) {
    let bus = Bus::connect(&server.url).await.unwrap();
    let topic = unique("update");
    let seen: Seen = Arc::default();
    // The stream exists once a member has joined; then the consumer is replaced by one as an
    // old tabgrab made it: no max_deliver, no backoff, a 30 s ack wait.
    member(&bus, &topic, "kitchen", &seen)
        .await
        .shutdown()
        .await
        .unwrap();
    let js = jetstream::new(async_nats::connect(&server.url).await.unwrap());
    let stream = js.get_stream(stream_name(&topic)).await.unwrap();
    stream.delete_consumer("kitchen").await.unwrap();
    let old: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("kitchen".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            filter_subject: format!("tabgrab.{topic}.>"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(old.cached_info().config.max_deliver, -1);
    let sub = member(&bus, &topic, "kitchen", &seen).await;
    let mut now: consumer::PullConsumer = stream.get_consumer("kitchen").await.unwrap();
    let config = &now.info().await.unwrap().config;
    assert_eq!(config.max_deliver, 2, "{config:?}");
    assert_eq!(config.ack_wait, Duration::from_millis(300), "{config:?}");
    assert_eq!(
        config.backoff,
        vec![Duration::from_millis(300)],
        "{config:?}"
    );
    // And it still works: an event published now is handled.
    let publisher = Publisher::new(&bus, &topic, "/deadletters").unwrap();
    publisher
        .publish(
            &Ticket {
                order: "o-9".into(),
            },
            "o-9",
        )
        .await
        .unwrap();
    let start = Instant::now();
    while !seen.lock().unwrap().contains(&"o-9".to_owned()) {
        assert!(start.elapsed() < DEADLINE, "the event was not handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}

on_both_servers!(
    crashed_consumers_are_dead_lettered_by_the_server,
    an_existing_consumer_takes_the_joining_members_settings,
    a_termination_by_another_client_is_captured_with_its_reason,
    own_terminations_are_not_captured_twice
);
