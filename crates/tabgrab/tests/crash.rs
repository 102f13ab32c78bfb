//! Consumer crash test: a process handling a group's events is killed with SIGKILL at random
//! moments; after restarts, every published event has been handled at least once.
//!
//! The child is this test binary itself, re-executed with `--exact` on an ignored test and an
//! environment variable naming its bus directory; it runs a subscription whose handler
//! appends each handled offset to a side file before acknowledging it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Context, Publisher, Subscription};

const CHILD_ENV: &str = "TABGRAB_CRASH_CONSUMER_DIR";
const EVENTS: u64 = 2_000;

#[derive(Serialize, Deserialize, Message)]
#[message(type = "test.work.queued.v1", event)]
struct Work {
    n: u64,
}

fn side_file(dir: &Path) -> std::path::PathBuf {
    dir.join("handled.txt")
}

#[tokio::test]
#[ignore = "child process of consumer_killed_with_sigkill_loses_no_event"]
async fn crash_consumer_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let bus = EmbeddedBus::open(dir.join("bus")).unwrap();
    let side = std::sync::Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(side_file(&dir))
            .unwrap(),
    ));
    let _sub = Subscription::builder(&bus, "work", "workers")
        .commit_interval(Duration::from_millis(5))
        .handle(move |w: Work, _ctx: Context| {
            let side = std::sync::Arc::clone(&side);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                writeln!(side.lock().unwrap(), "{}", w.n)?;
                Ok(())
            }
        })
        .start()
        .unwrap();
    // Runs until killed.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

fn handled(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(side_file(dir))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_with_sigkill_loses_no_event() {
    let seed: u64 = std::env::var("TABGRAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (set TABGRAB_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
        let publisher = Publisher::new(&bus, "work", "/test").unwrap();
        for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(500) {
            let batch: Vec<_> = chunk
                .iter()
                .map(|n| {
                    publisher
                        .envelope(&Work { n: *n }, format!("s{}", n % 8))
                        .unwrap()
                })
                .collect();
            publisher.publish_batch(&batch).await.unwrap();
        }
        bus.close().await.unwrap();
    }

    let exe = std::env::current_exe().unwrap();
    let mut kills = 0;
    for _ in 0..8 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_consumer_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(60..200)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }

    // Restart in-process and finish the work.
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let committed_before = bus
        .topic("work")
        .unwrap()
        .consumer_offset("workers")
        .unwrap()
        .unwrap_or(0);
    let after_restart = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sub = {
        let after_restart = std::sync::Arc::clone(&after_restart);
        Subscription::builder(&bus, "work", "workers")
            .handle(move |w: Work, _ctx: Context| {
                let after_restart = std::sync::Arc::clone(&after_restart);
                async move {
                    after_restart.lock().unwrap().push(w.n);
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub.lag() > 0 {
        assert!(Instant::now() < deadline, "restarted group did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();

    let before: BTreeSet<u64> = handled(dir.path()).into_iter().collect();
    let after: BTreeSet<u64> = after_restart.lock().unwrap().iter().copied().collect();
    let all: BTreeSet<u64> = before.union(&after).copied().collect();
    let missing: Vec<u64> = (0..EVENTS).filter(|n| !all.contains(n)).collect();
    println!(
        "{kills} kills; handled before the restart {}, committed offset then {committed_before}, handled after {}",
        before.len(),
        after.len()
    );
    assert!(
        missing.is_empty(),
        "events never handled: {:?}",
        &missing[..missing.len().min(10)]
    );
    assert!(
        committed_before <= before.len() as u64 + 1,
        "a committed offset never runs ahead of handled work"
    );
    assert!(
        (committed_before..EVENTS).all(|n| after.contains(&n)),
        "everything from the committed offset is redelivered"
    );
}
