//! `pizzeria dead-letters` as an operator uses it: list with filters, show one, redrive and
//! purge (with `--dry-run`), and a bulk redrive killed with SIGKILL in the middle, then run
//! again, which loses no dead letter and changes no event's id (so an inbox applies each
//! once).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::processes::pizzeria;
use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Context, HandlerError, Publisher, Subscription};
use tabgrab::{Envelope, Message};

const TOPIC: &str = "parcels";
const GROUP: &str = "sorter";

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(type = "test.parcel.sent.v1", event)]
struct Parcel {
    n: u32,
}

/// Deliveries the sorter handled: (event id, `redrivenfrom`).
type Handled = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// The sorter: gives up on every parcel (a permanent error) until `fixed`.
fn sorter(bus: &Bus, fixed: &Arc<AtomicBool>, handled: &Handled) -> Subscription {
    let (fixed, handled) = (Arc::clone(fixed), Arc::clone(handled));
    Subscription::builder(bus, TOPIC, GROUP)
        .handle(move |_p: Parcel, ctx: Context| {
            let (fixed, handled) = (Arc::clone(&fixed), Arc::clone(&handled));
            async move {
                if !fixed.load(Ordering::SeqCst) {
                    return Err(HandlerError::permanent("no sorting belt for parcels"));
                }
                let e = ctx.envelope();
                handled.lock().unwrap().push((
                    e.id.clone(),
                    e.extensions.get(tabgrab::event::REDRIVEN_FROM).cloned(),
                ));
                Ok(())
            }
        })
        .start()
        .unwrap()
}

/// Publishes `n` parcels (and, if `junk`, bytes that are no event) and waits until the
/// sorter dead-lettered them all; returns the parcels' ids.
async fn dead_letter_parcels(dir: &Path, n: u32, junk: bool) -> HashSet<String> {
    let embedded = EmbeddedBus::open(dir).unwrap();
    let bus = Bus::from(&embedded);
    let sub = sorter(&bus, &Arc::default(), &Handled::default());
    sub.ready().await.unwrap();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
    let envelopes: Vec<Envelope> = (0..n)
        .map(|i| {
            Envelope::new("/test", &Parcel { n: i })
                .unwrap()
                .with_subject(format!("parcel-{i}"))
        })
        .collect();
    for chunk in envelopes.chunks(100) {
        publisher.publish_batch(chunk).await.unwrap();
    }
    let expected = u64::from(n) + u64::from(junk);
    if junk {
        bus.publish_raw(
            TOPIC,
            Some("junk"),
            Bytes::from_static(b"<script>alert(1)</script>"),
        )
        .await
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while sub.stats().dead_lettered < expected {
        assert!(Instant::now() < deadline, "{:?}", sub.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sub.shutdown().await.unwrap();
    embedded.close().await.unwrap();
    envelopes.into_iter().map(|e| e.id).collect()
}

fn dead_letters(dir: &Path, args: &[&str]) -> Output {
    pizzeria()
        .args(["dead-letters", "--topic", TOPIC, "--data-dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn open_letters(dir: &Path) -> Vec<tabgrab::event::KeptLetter> {
    common::open_dead_letters(dir, TOPIC).await
}

async fn open_ids(dir: &Path) -> Vec<String> {
    open_letters(dir).await.into_iter().map(|k| k.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_redrive_and_purge_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let parcels = dead_letter_parcels(dir.path(), 3, true).await;
    let listed = stdout(&dead_letters(dir.path(), &[]));
    assert!(
        listed.starts_with("4 dead letters in topic parcels:"),
        "{listed}"
    );
    let by_reason = stdout(&dead_letters(
        dir.path(),
        &["list", "--reason", "permanent_error"],
    ));
    assert!(by_reason.starts_with("3 dead letters"), "{by_reason}");
    let ids = open_ids(dir.path()).await;
    let open = open_letters(dir.path()).await;
    let junk = open.iter().find(|k| k.letter.message_id.is_none()).unwrap();
    let parcel = open.iter().find(|k| k.letter.message_id.is_some()).unwrap();

    // Shown in full, and a message's markup is shown as text, not interpreted.
    let shown = stdout(&dead_letters(dir.path(), &["show", &parcel.id]));
    assert!(shown.contains("reason        permanent_error"), "{shown}");
    assert!(shown.contains("no sorting belt"), "{shown}");
    assert!(shown.contains(r#"data        {"n":"#), "{shown}");
    let shown_junk = stdout(&dead_letters(dir.path(), &["show", &junk.id]));
    assert!(
        shown_junk.contains("<script>alert(1)</script>"),
        "{shown_junk}"
    );

    // A dry run changes nothing and says which cannot be redriven.
    let dry = stdout(&dead_letters(
        dir.path(),
        &["redrive", "--all", "--dry-run"],
    ));
    assert!(
        dry.contains(&format!("cannot redrive {}", junk.id)),
        "{dry}"
    );
    assert!(dry.contains("would redrive 3 of 4"), "{dry}");
    assert_eq!(open_ids(dir.path()).await, ids);
    // The embedded log delivers a topic's records to every group: no redrive to one group.
    let to_group = dead_letters(dir.path(), &["redrive", "--all", "--to-group"]);
    assert!(!to_group.status.success());
    let said = String::from_utf8_lossy(&to_group.stderr);
    assert!(
        said.contains("--to-group needs an engine with a queue per group"),
        "{said}"
    );
    assert_eq!(open_ids(dir.path()).await, ids);

    // Redriving everything redrives what can be, keeps the rest listed and says so.
    let all = dead_letters(dir.path(), &["redrive", "--all"]);
    assert_eq!(all.status.code(), Some(1), "{all:?}");
    let text = String::from_utf8_lossy(&all.stdout);
    assert!(text.contains("3 of 4 dead letters redriven"), "{text}");
    assert_eq!(open_ids(dir.path()).await, vec![junk.id.clone()]);
    let purged = stdout(&dead_letters(dir.path(), &["purge", &junk.id]));
    assert!(purged.contains("1 of 1 dead letters purged"), "{purged}");
    assert!(stdout(&dead_letters(dir.path(), &[])).contains("no dead letters"));

    // An id that is not open is a usage error, not a silent success.
    let gone = dead_letters(dir.path(), &["purge", &junk.id]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no open dead letter"));

    // The sorter, fixed, gets the three parcels again with their own ids.
    every_parcel_arrives(dir.path(), &parcels, 0).await;
}

/// The sorter, fixed, receives every parcel of `parcels` redriven with its own id; at most
/// one twice per kill of the redriving process (the one it had published and not settled
/// yet: the same event, which an inbox applies once).
async fn every_parcel_arrives(dir: &Path, parcels: &HashSet<String>, kills: usize) {
    let handled = Handled::default();
    let embedded = EmbeddedBus::open(dir).unwrap();
    let bus = Bus::from(&embedded);
    let sub = sorter(&bus, &Arc::new(AtomicBool::new(true)), &handled);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids: HashSet<String> = handled
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        if ids.len() == parcels.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} parcels arrived",
            ids.len(),
            parcels.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sub.shutdown().await.unwrap();
    embedded.close().await.unwrap();
    let handled = handled.lock().unwrap();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for (id, from) in handled.iter() {
        assert!(parcels.contains(id), "an event with a new id: {id}");
        assert!(from.is_some(), "a redriven event names its dead letter");
        *copies.entry(id).or_default() += 1;
    }
    let twice = copies.values().filter(|&&c| c > 1).count();
    println!(
        "{} deliveries of {} parcels; {twice} delivered twice (redriven before the kill, not \
         yet settled): same id, one effect with an inbox",
        handled.len(),
        parcels.len()
    );
    assert!(
        twice <= kills,
        "only a redrive in flight at a kill repeats: {twice} twice after {kills} kills"
    );
}

/// SIGKILL in the middle of a bulk redrive of 1,000 dead letters, then the redrive again:
/// every parcel reaches the sorter with its own id (none lost), what was redriven twice is
/// the same event (an inbox applies it once), and no dead letter is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_killed_in_the_middle_and_run_again_loses_nothing() {
    const N: u32 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let parcels = dead_letter_parcels(dir.path(), N, false).await;
    // Kill later each time until the kill lands in the middle (some redriven, some not).
    let (mut killed_with_left, mut kills) = (None, 0);
    for delay_ms in [25_u64, 50, 100, 200, 400, 800, 1600] {
        kills += 1;
        let mut child = pizzeria()
            .args(["dead-letters", "--topic", TOPIC, "--data-dir"])
            .arg(dir.path())
            .args(["redrive", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            !finished,
            "the redrive finished within {delay_ms} ms: use more dead letters"
        );
        let left = open_ids(dir.path()).await.len();
        if left < N as usize {
            killed_with_left = Some(left);
            break;
        }
    }
    let left = killed_with_left.expect("no kill landed after the redrive had begun");
    println!("killed with {left} of {N} dead letters left");
    let again = stdout(&dead_letters(dir.path(), &["redrive", "--all"]));
    assert!(
        again.contains(&format!("{left} of {left} dead letters redriven")),
        "{again}"
    );
    assert!(open_ids(dir.path()).await.is_empty());

    every_parcel_arrives(dir.path(), &parcels, kills).await;
}

/// A `pizzeria console` process, killed when dropped.
struct Console(std::process::Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TOKEN: &str = "console-token-31b";

/// `pizzeria console` on `dir`'s log with the operator token; its base URL.
fn console(dir: &Path) -> (Console, String) {
    use std::io::{BufRead as _, BufReader};
    let mut child = pizzeria()
        .args(["console", "--listen", "127.0.0.1:0", "--topic"])
        .arg(format!("{TOPIC}:{GROUP}"))
        .arg("--data-dir")
        .arg(dir)
        .env(pizzeria::console::TOKEN_VAR, TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("console on ")
        .unwrap_or_else(|| panic!("{first}"))
        .trim_end_matches('/')
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    (Console(child), url)
}

/// The console's "redrive all" of 1,000 dead letters, with the console process killed
/// (SIGKILL) in the middle, then asked again of a new console: every parcel reaches the
/// sorter with its own id, at most the one in flight at the kill twice (an inbox applies it
/// once), and no dead letter is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_killed_in_the_middle_of_a_redrive_loses_nothing() {
    const N: u32 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let parcels = dead_letter_parcels(dir.path(), N, false).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redrive_all = |url: String| {
        let http = http.clone();
        async move {
            http.post(format!("{url}/topics/{TOPIC}/dead-letters"))
                .form(&[("token", TOKEN)])
                .send()
                .await
        }
    };
    // Kill later each time until the kill lands in the middle (some redriven, some not).
    let (mut killed_with_left, mut kills) = (None, 0);
    for delay_ms in [25_u64, 50, 100, 200, 400, 800, 1600] {
        kills += 1;
        let (mut running, url) = console(dir.path());
        let request = tokio::spawn(redrive_all(url));
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        assert!(
            !request.is_finished(),
            "the redrive finished within {delay_ms} ms: use more dead letters"
        );
        running.0.kill().unwrap();
        running.0.wait().unwrap();
        assert!(
            request.await.unwrap().is_err(),
            "no answer from a killed console"
        );
        let left = open_ids(dir.path()).await.len();
        if left < N as usize {
            killed_with_left = Some(left);
            break;
        }
    }
    let left = killed_with_left.expect("no kill landed after the redrive had begun");
    println!("console killed with {left} of {N} dead letters left");
    let (running, url) = console(dir.path());
    let done = redrive_all(url).await.unwrap();
    assert_eq!(done.status().as_u16(), 303);
    let to = done.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        to.contains(&format!(
            "note={left}%20of%20{left}%20dead%20letters%20redriven"
        )),
        "{to}"
    );
    drop(running);
    assert!(open_ids(dir.path()).await.is_empty());

    every_parcel_arrives(dir.path(), &parcels, kills).await;
}
