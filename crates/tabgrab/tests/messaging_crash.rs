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
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::messaging::{Outcome, ReplyContext, Requester, Responder, SendOptions, SqliteStore};

const CHILD_ENV: &str = "TABGRAB_CRASH_REQUESTER_DIR";
const REQUESTS: usize = 100;
const GROUP: &str = "front-desk";
const TOPIC: &str = "payment";

#[derive(Serialize, Deserialize, Message)]
#[message(type = "test.payment.charge.v1", command, response = Charged)]
struct Charge {
    n: usize,
}
#[derive(Debug, Serialize, Deserialize)]
struct Charged {
    n: usize,
}

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
        .on_reply(TOPIC, |_o: Outcome<Charge>, _ctx| async move {
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
            .on_reply(TOPIC, move |outcome: Outcome<Charge>, ctx: ReplyContext| {
                let n = outcome.ok().map(|c| c.n);
                let context: serde_json::Value = ctx.context().clone();
                handled.lock().unwrap().push((
                    ctx.request_id().to_owned(),
                    n.unwrap_or(usize::MAX),
                    context["n"].as_u64().unwrap_or(u64::MAX) as usize,
                ));
                async { Ok(()) }
            })
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
    // Let the completions land, and any duplicate show up, before judging.
    while node.stats().replied < REQUESTS as u64 {
        assert!(Instant::now() < deadline, "not every reply was completed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

const BUSY_ENV: &str = "TABGRAB_CRASH_BUSY_REQUESTER_DIR";
const BUSY_REQUESTS: usize = 400;
/// Short, so that claims held by the killed process lapse quickly.
const LEASE: Duration = Duration::from_millis(300);
/// Short enough that a request the kill caught between its store insert and its publish
/// (never acknowledged, never answered) ends as timed out within the test.
const BUSY_TIMEOUT: Duration = Duration::from_secs(4);

/// `n replied` or `n timed_out`, from the request's context.
fn line(outcome: &Outcome<Charge>, ctx: &ReplyContext) -> String {
    let n = ctx.context_as::<usize>().unwrap_or(usize::MAX);
    match outcome {
        Outcome::Replied(Ok(c)) if c.n == n => format!("{n} replied"),
        Outcome::TimedOut => format!("{n} timed_out"),
        other => format!("{n} wrong {other:?}"),
    }
}

/// Appends `line` to `file` (the write reaches the page cache before the call returns, so
/// it survives a SIGKILL of this process).
fn append(file: &Mutex<std::fs::File>, line: &str) {
    writeln!(file.lock().unwrap(), "{line}").unwrap();
}

fn open_append(path: &std::path::Path) -> Arc<Mutex<std::fs::File>> {
    Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of requester_killed_while_handling_replies_ends_every_request_once"]
async fn crash_busy_requester_child() {
    let Ok(dir) = std::env::var(BUSY_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let bus = EmbeddedBus::open(dir.join("bus")).unwrap();
    let handled = open_append(&dir.join("handled-child.txt"));
    let requester = Requester::builder(&bus, GROUP)
        .store(SqliteStore::open(dir.join("correlation.db")).await.unwrap())
        .lease(LEASE)
        .on_reply(TOPIC, move |o: Outcome<Charge>, ctx: ReplyContext| {
            let handled = Arc::clone(&handled);
            async move {
                // Handling takes a while, so that the kill lands inside some handlers.
                tokio::time::sleep(Duration::from_millis(2)).await;
                append(&handled, &line(&o, &ctx));
                Ok(())
            }
        })
        .start()
        .unwrap();
    let _responder = Responder::builder(&bus, TOPIC, "payment")
        .handle(|c: Charge, _ctx| async move { Ok(Charged { n: c.n }) })
        .start()
        .unwrap();
    let sent = open_append(&dir.join("sent.txt"));
    for n in 0..BUSY_REQUESTS {
        requester
            .send(
                &Charge { n },
                SendOptions::default()
                    .timeout(BUSY_TIMEOUT)
                    .context(serde_json::json!(n)),
            )
            .await
            .unwrap();
        append(&sent, &n.to_string());
    }
    // Runs until killed.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

fn numbers(path: &std::path::Path) -> Vec<usize> {
    lines(path)
        .iter()
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The requester is killed while replies are being handled: some handlers ran, some were
/// running, some replies were not read yet. After a restart on the same directory and store,
/// every acknowledged request ends replied (none lost, none pending, none timed out), and a
/// reply handler runs twice for a request only if the kill interrupted it (at-least-once
/// invocation; the store records exactly one completion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requester_killed_while_handling_replies_ends_every_request_once() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args([
            "--exact",
            "crash_busy_requester_child",
            "--ignored",
            "--nocapture",
        ])
        .env(BUSY_ENV, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the child is well into handling replies.
    let deadline = Instant::now() + Duration::from_secs(60);
    while numbers(&dir.path().join("handled-child.txt")).len() < 60 {
        assert!(
            Instant::now() < deadline,
            "the child handled too few replies"
        );
        assert!(child.try_wait().unwrap().is_none(), "the child exited");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let acked: BTreeSet<usize> = numbers(&dir.path().join("sent.txt")).into_iter().collect();
    let before = lines(&dir.path().join("handled-child.txt"));
    assert!(
        acked.len() < BUSY_REQUESTS,
        "the kill came before all sends (else rerun)"
    );

    // Restart: same group, same store, same bus directory, responder included.
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let after: Arc<Mutex<Vec<String>>> = Arc::default();
    let node = {
        let after = Arc::clone(&after);
        Requester::builder(&bus, GROUP)
            .store(
                SqliteStore::open(dir.path().join("correlation.db"))
                    .await
                    .unwrap(),
            )
            .lease(LEASE)
            .on_reply(TOPIC, move |o: Outcome<Charge>, ctx: ReplyContext| {
                after.lock().unwrap().push(line(&o, &ctx));
                async { Ok(()) }
            })
            .start()
            .unwrap()
    };
    let responder = Responder::builder(&bus, TOPIC, "payment")
        .handle(|c: Charge, _ctx| async move { Ok(Charged { n: c.n }) })
        .start()
        .unwrap();
    // Quiescence: nothing pending or claimed in the store (a request the kill left
    // unpublished ends as timed out at its deadline, BUSY_TIMEOUT after its send).
    let deadline = Instant::now() + BUSY_TIMEOUT + Duration::from_secs(30);
    loop {
        let counts = node.store().counts().await.unwrap();
        if counts.pending == 0 && counts.in_progress == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests left unfinished: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = node.store().counts().await.unwrap();
    let after = after.lock().unwrap().clone();
    let mut times: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for l in before.iter().chain(after.iter()) {
        let n: usize = l.split(' ').next().unwrap().parse().unwrap();
        times.entry(n).or_default().push(l.clone());
    }
    let replied = |n: &usize| {
        times
            .get(n)
            .is_some_and(|ls| ls.iter().all(|l| l.ends_with(" replied")))
    };
    let lost: Vec<usize> = acked.iter().filter(|n| !replied(n)).copied().collect();
    let twice: Vec<usize> = times
        .iter()
        .filter(|(_, ls)| ls.len() > 1)
        .map(|(n, _)| *n)
        .collect();
    let unacked: Vec<&Vec<String>> = times
        .iter()
        .filter(|(n, _)| !acked.contains(n))
        .map(|(_, ls)| ls)
        .collect();
    println!(
        "acked {}, handled before the kill {}, after {}, handled twice {:?}, unacknowledged {:?}, store {counts:?}",
        acked.len(),
        before.len(),
        after.len(),
        twice,
        unacked
    );
    assert!(
        lost.is_empty(),
        "acknowledged requests not replied: {lost:?}"
    );
    assert!(
        unacked.len() <= 1,
        "sends are sequential: at most one was cut short by the kill"
    );
    assert!(
        times.values().flatten().all(|l| !l.contains("wrong")),
        "every reply matches its request's context"
    );
    assert_eq!(
        (counts.replied + counts.timed_out) as usize,
        times.len(),
        "one completion per request in the store"
    );
    assert!(
        times.values().all(|ls| ls.len() <= 2),
        "a handler runs at most twice around one kill"
    );
    assert!(
        twice.len() <= 64,
        "only handlers interrupted by the kill run again: {twice:?}"
    );
    node.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
}
