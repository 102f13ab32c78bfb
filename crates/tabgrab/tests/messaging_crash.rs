//! Requester crash test: a requester process sends 100 requests and is killed with SIGKILL
//! before any reply comes; another node of the same group, started afterwards on the same
//! bus directory and correlation store, receives every reply and hands each to the reply
//! handler exactly once.
//!
//! The child is this test binary itself, re-executed with `--exact` on an ignored test and an
//! environment variable naming the shared directory. It appends each acknowledged request id
//! to `sent.txt`, then writes `done` and waits to be killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::messaging::{Outcome, ReplyContext, Requester, Responder, SendOptions, SqliteStore};
use tabgrab::{Message, request};

const CHILD_ENV: &str = "TABGRAB_CRASH_REQUESTER_DIR";
const REQUESTS: usize = 100;
const GROUP: &str = "front-desk";
const TOPIC: &str = "payment";

#[derive(Serialize, Deserialize)]
struct Charge {
    n: usize,
}
#[derive(Debug, Serialize, Deserialize)]
struct Charged {
    n: usize,
}
impl Message for Charge {
    const TYPE: &'static str = "test.payment.charge.v1";
}
impl tabgrab::Command for Charge {
    type Response = Charged;
}
request!(command Charge);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of requester_killed_with_sigkill_loses_no_reply"]
async fn crash_requester_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let bus = EmbeddedBus::open(dir.join("bus")).unwrap();
    let requester = Requester::builder(&bus, GROUP)
        .store(SqliteStore::open(dir.join("correlation.db")).await.unwrap())
        .on_reply::<Charge, _, _>(TOPIC, |_o: Outcome<Charged>, _ctx| async move {
            panic!("no reply can reach the child: the responder is down");
        })
        .start()
        .unwrap();
    let mut sent = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sent.txt"))
        .unwrap();
    for n in 0..REQUESTS {
        let id = requester
            .send(
                &Charge { n },
                SendOptions::default()
                    .timeout(Duration::from_secs(120))
                    .context(serde_json::json!({ "n": n })),
            )
            .await
            .unwrap();
        writeln!(sent, "{id}").unwrap();
    }
    sent.sync_all().unwrap();
    std::fs::write(dir.join("done"), b"done").unwrap();
    // Runs until killed.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requester_killed_with_sigkill_loses_no_reply() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args([
            "--exact",
            "crash_requester_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("done").exists() {
        assert!(
            Instant::now() < deadline,
            "the child did not send its requests in time"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child exited before being killed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let sent: Vec<String> = std::fs::read_to_string(dir.path().join("sent.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(sent.len(), REQUESTS);

    // Another node of the group, on the same bus directory and store, and the responder.
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let handled: Arc<Mutex<Vec<(String, usize, usize)>>> = Arc::default();
    let node = {
        let handled = Arc::clone(&handled);
        Requester::builder(&bus, GROUP)
            .store(
                SqliteStore::open(dir.path().join("correlation.db"))
                    .await
                    .unwrap(),
            )
            .on_reply::<Charge, _, _>(
                TOPIC,
                move |outcome: Outcome<Charged>, ctx: ReplyContext| {
                    let n = outcome.ok().map(|c| c.n);
                    let context: serde_json::Value = ctx.context().clone();
                    handled.lock().unwrap().push((
                        ctx.request_id().to_owned(),
                        n.unwrap_or(usize::MAX),
                        context["n"].as_u64().unwrap_or(u64::MAX) as usize,
                    ));
                    async { Ok(()) }
                },
            )
            .start()
            .unwrap()
    };
    let responder = Responder::builder(&bus, TOPIC, "payment")
        .handle(|c: Charge, _ctx| async move { Ok(Charged { n: c.n }) })
        .start()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while handled.lock().unwrap().len() < REQUESTS {
        assert!(Instant::now() < deadline, "not every reply was handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let any duplicate show up before judging.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let handled = handled.lock().unwrap().clone();
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, n, context_n) in &handled {
        *times.entry(id.as_str()).or_default() += 1;
        assert_eq!(n, context_n, "the reply matches the stored context of {id}");
    }
    let expected: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = times.keys().copied().collect();
    assert_eq!(
        got, expected,
        "every request sent by the killed node got its reply"
    );
    assert!(
        times.values().all(|&t| t == 1),
        "each reply was handed over exactly once: {times:?}"
    );
    let stats = node.stats();
    assert_eq!(
        (stats.replied, stats.timed_out, stats.duplicate),
        (100, 0, 0)
    );
    let counts = node.store().counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.in_progress, counts.replied),
        (0, 0, 100)
    );
    println!(
        "killed the requester after {REQUESTS} sends; the new node handled {} replies once each",
        handled.len()
    );
    node.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
}
