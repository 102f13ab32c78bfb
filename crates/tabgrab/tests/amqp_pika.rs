//! A plain AMQP client tabgrab did not write (Python's pika 1.3.2, installed by `.ci/run`)
//! on either end of tabgrab's request-reply over RabbitMQ, with the AMQP RPC convention only
//! (`correlation_id`, `reply_to`, replies through the default exchange, no `ce-*` headers):
//! - pika asks, a tabgrab `Responder` answers: to pika's exclusive queue and to RabbitMQ's
//!   direct reply-to, each reply with pika's correlation id; a pika request without
//!   `reply_to` is dead-lettered with its reason.
//! - a tabgrab `Requester` asks, pika answers to the request's `reply_to`: the requester
//!   correlates the plain reply by its `correlation_id` and completes the request; a stray
//!   reply with a correlation id nobody sent is refused and dead-lettered.
//!
//! The peer is `tests/interop/amqp_peer.py`, run as a child process, killed by its PID when
//! the test ends (also on a failure); every wait is bounded.
#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tabgrab::backend::Bus;
use tabgrab::messaging::{MemoryStore, Requester, Responder, SendOptions};
use tabgrab::{Message, Rejection};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The bound of every wait on the peer or the bus.
const WAIT: Duration = Duration::from_secs(45);

#[derive(Serialize, Deserialize, Debug, Message)]
#[message(type = "test.menu.get-price.v1", query, response = u64)]
struct GetPrice {
    pizza: String,
}

#[derive(Serialize, Deserialize, Debug, Message)]
#[message(type = "test.menu.get-quote.v1", query, response = Quote)]
struct GetQuote {
    pizza: String,
}
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Quote {
    cents: u64,
    by: String,
}

/// The Python with pika (`None`: skipped, or a failure under `TABGRAB_REQUIRE_SERVICES=1`).
fn python() -> Option<PathBuf> {
    tabgrab_testkit::python::with("pika", "pika==1.3.2")
}

/// RabbitMQ and a Python with pika, or `None` (skipped with the reason printed).
fn services() -> Option<PathBuf> {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") {
        return None;
    }
    python()
}

/// The Python peer as a child process: its stdout lines as JSON, and a kill by PID on drop.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Peer {
    fn start(python: &PathBuf, args: &[&str]) -> Peer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/amqp_peer.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Python peer");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Peer {
            child,
            lines,
            stderr,
        }
    }

    /// The peer's next output line, waited for at most `WAIT` (off the runtime's threads).
    async fn line(&mut self) -> Value {
        let got = tokio::task::block_in_place(|| self.lines.recv_timeout(WAIT));
        match got {
            Ok(line) => {
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer printed {line:?}: {e}"))
            }
            Err(_) => panic!(
                "the peer printed nothing more within {WAIT:?}; stderr:\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// Waits (bounded) for the peer to exit, and asserts it succeeded.
    async fn succeeds(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "the peer failed ({status}); stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "the peer did not exit within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // By PID (Child::kill), whatever state the test ended in; then reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it gives `Some`, at most `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(t) = probe().await {
            return t;
        }
        assert!(started.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::now_v7().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pika_request_is_answered_by_a_tabgrab_responder_in_its_reply_queue() {
    let Some(python) = services() else { return };
    let bus = Bus::connect(URL).await.unwrap();
    assert!(bus.capabilities().reply_queues);
    let topic = unique("pika-menu");
    let responder = Responder::builder(&bus, &topic, "menu")
        .handle(|q: GetPrice, _ctx| async move {
            if q.pizza == "margherita" {
                Ok(900)
            } else {
                Err(Rejection::new("menu.unknown", "no such pizza").into())
            }
        })
        .start()
        .unwrap();
    responder.ready().await.unwrap();

    let mut peer = Peer::start(
        &python,
        &[
            "request",
            URL,
            &topic,
            GetPrice::TYPE,
            r#"{"pizza": "margherita"}"#,
            r#"{"ok": 900}"#,
        ],
    );
    // The peer checks each reply's body and correlation id itself; these are what it got.
    for how in ["exclusive", "direct"] {
        let reply = peer.line().await;
        assert_eq!(reply["reply_to"], how, "{reply}");
        assert_eq!(reply["body"], serde_json::json!({"ok": 900}));
        assert!(!reply["correlation_id"].as_str().unwrap().is_empty());
    }
    let bad = peer.line().await;
    let bad_id = bad["sent_without_reply_to"].as_str().unwrap().to_owned();
    peer.succeeds().await;

    // The request without reply_to: refused before the handler, dead-lettered with why.
    let letter = eventually("the request without reply_to in the dead letters", || {
        let (bus, topic) = (bus.clone(), topic.clone());
        async move { bus.dead_letters(&topic).await.unwrap().into_iter().next() }
    })
    .await;
    assert_eq!(letter.message_id.as_deref(), Some(bad_id.as_str()));
    assert_eq!(letter.message_type.as_deref(), Some(GetPrice::TYPE));
    assert!(letter.error.contains("without replyto"), "{letter:?}");
    // Counted once the broker confirmed the reply, which may be after pika had it.
    eventually("both replies counted", || {
        let stats = responder.stats();
        async move { ((stats.replied, stats.rejected) == (2, 0)).then_some(()) }
    })
    .await;

    responder.shutdown().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tabgrab_request_is_answered_by_a_pika_responder_and_a_stray_reply_is_refused() {
    let Some(python) = services() else { return };
    let bus = Bus::connect(URL).await.unwrap();
    let topic = unique("pika-kitchen");
    let group = unique("pika-desk");
    let mut peer = Peer::start(
        &python,
        &["respond", URL, &topic, r#"{"cents": 1250, "by": "pika"}"#],
    );
    // The peer's queue is bound: the request has somewhere to go.
    assert!(peer.line().await["ready"].is_string());

    let requester = Requester::builder(&bus, &group)
        .store(MemoryStore::new())
        .route::<GetQuote>(&topic)
        .start()
        .unwrap();
    requester.ready().await.unwrap();
    let reply_queue = requester
        .reply_to()
        .strip_prefix("/queues/")
        .expect("on RabbitMQ the reply address is the group's queue")
        .to_owned();
    let outcome = tokio::time::timeout(
        WAIT,
        requester.request(
            &GetQuote {
                pizza: "margherita".into(),
            },
            SendOptions::default().timeout(Duration::from_secs(30)),
        ),
    )
    .await
    .expect("the request ended within the bound")
    .unwrap();
    assert_eq!(
        outcome,
        Quote {
            cents: 1250,
            by: "pika".into()
        }
    );

    // What pika saw: the AMQP properties of a plain RPC request.
    let seen = peer.line().await;
    assert_eq!(seen["type"], GetQuote::TYPE);
    assert_eq!(seen["reply_to"], reply_queue.as_str());
    assert_eq!(seen["request"]["pizza"], "margherita");
    // Published in the bus's default content mode: structured, whose data pika read.
    assert_eq!(seen["content_type"], "application/cloudevents+json");
    let sent = peer.line().await;
    assert_eq!(sent["answered"], seen["correlation_id"]);
    let forged = sent["forged"].as_str().unwrap().to_owned();
    peer.succeeds().await;

    // The stray reply: counted as rejected and dead-lettered with its correlation id.
    let reply_topic = format!("replies.{group}");
    let letter = eventually("the stray reply in the dead letters", || {
        let (bus, reply_topic) = (bus.clone(), reply_topic.clone());
        async move {
            bus.dead_letters(&reply_topic)
                .await
                .unwrap()
                .into_iter()
                .next()
        }
    })
    .await;
    assert!(letter.error.contains(&forged), "{letter:?}");
    let stats = requester.stats();
    assert_eq!((stats.replied, stats.rejected), (1, 1), "{stats:?}");

    requester.shutdown().await.unwrap();
    bus.delete_topic(&reply_topic).await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}
