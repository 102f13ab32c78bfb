//! `pizzeria console` as a process, on a data directory holding dead letters: pages list and
//! show them with every field escaped (a message's `<script>` renders as text, in headless
//! Chromium too), redrive and purge are refused with 403 without the operator token or with
//! a wrong one, and done with it (the dead letter is then gone and the event back on its
//! topic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::processes::pizzeria;
use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Context, HandlerError, Publisher, Subscription};
use tabgrab::{Envelope, Event, Message};

const TOPIC: &str = pizzeria::messages::TOPIC;
const TOKEN: &str = "open-sesame-7f3a";
/// What a hostile publisher puts where the console shows text.
const HOSTILE: &str = "<script>document.title='pwned'</script>";

#[derive(Debug, Serialize, Deserialize)]
struct Leaflet {
    text: String,
}
impl Message for Leaflet {
    const TYPE: &'static str = "test.leaflet.dropped.v1";
}
impl Event for Leaflet {}

/// Two dead letters in `dir`: a leaflet whose data and subject carry markup (a handler's
/// permanent error quotes it too), and bytes that are no event.
async fn dead_letters(dir: &Path) {
    let embedded = EmbeddedBus::open(dir).unwrap();
    let bus = Bus::from(&embedded);
    let sub = Subscription::builder(&bus, TOPIC, "leaflets")
        .handle(|l: Leaflet, _ctx: Context| async move {
            Err::<(), _>(HandlerError::permanent(format!("cannot read {}", l.text)))
        })
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    let leaflet = Envelope::new(
        "/test",
        &Leaflet {
            text: HOSTILE.into(),
        },
    )
    .unwrap()
    .with_subject("<b>bold</b>");
    Publisher::new(&bus, TOPIC, "/test")
        .unwrap()
        .publish_envelope(&leaflet)
        .await
        .unwrap();
    bus.publish_raw(TOPIC, Some("junk"), Bytes::from(HOSTILE))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub.stats().dead_lettered < 2 {
        assert!(Instant::now() < deadline, "{:?}", sub.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sub.shutdown().await.unwrap();
    embedded.close().await.unwrap();
}

/// A `pizzeria console` process, killed when dropped (a failing test must not leave it
/// running, holding the test's output open).
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `pizzeria console` on `dir` with `token` (if any); its base URL.
fn console(dir: &Path, token: Option<&str>) -> (Running, String) {
    let mut command = pizzeria();
    command
        .args(["console", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove(pizzeria::console::TOKEN_VAR)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(token) = token {
        command.env(pizzeria::console::TOKEN_VAR, token);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = console_url(&mut lines);
    std::thread::spawn(move || for _ in lines {});
    (Running(Some(child)), url)
}

/// The console's base URL, from the first line a process printed (`console on http://…/`).
fn console_url(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> String {
    let first = lines.next().unwrap().unwrap();
    first
        .strip_prefix("console on ")
        .unwrap_or_else(|| panic!("{first}"))
        .trim_end_matches('/')
        .to_owned()
}

fn stop(mut running: Running) {
    let Some(mut child) = running.0.take() else {
        return;
    };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the console did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_escapes_what_it_shows_and_needs_the_token_to_act() {
    let dir = tempfile::tempdir().unwrap();
    dead_letters(dir.path()).await;
    let open = common::open_dead_letters(dir.path(), TOPIC).await;
    let leaflet = open.iter().find(|k| k.letter.message_id.is_some()).unwrap();
    let junk = open.iter().find(|k| k.letter.message_id.is_none()).unwrap();

    let (child, url) = console(dir.path(), Some(TOKEN));
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let response = http.get(path).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, home) = get(format!("{url}/")).await;
    assert_eq!(status, 200, "{home}");
    assert!(home.contains("2 open dead letters"), "{home}");
    assert!(
        home.contains("<td>payment</td>"),
        "the groups' lag is shown: {home}"
    );

    let list_url = format!("{url}/topics/{TOPIC}/dead-letters");
    let (status, list) = get(list_url.clone()).await;
    assert_eq!(status, 200);
    assert!(
        !list.contains(HOSTILE) && !list.contains("<b>bold"),
        "{list}"
    );
    assert!(list.contains("&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;"));
    assert!(list.contains("&lt;b&gt;bold&lt;/b&gt;"), "{list}");
    let (status, shown) = get(format!("{list_url}/{}", junk.id)).await;
    assert_eq!(status, 200);
    assert!(
        shown.contains("&lt;script&gt;") && !shown.contains(HOSTILE),
        "{shown}"
    );

    // Refused without the token, and with a wrong one.
    let post = |action: &'static str, id: String, token: Option<&'static str>| {
        let http = http.clone();
        let url = format!("{list_url}/{id}/{action}");
        async move {
            let mut request = http.post(url);
            if let Some(token) = token {
                request = request.form(&[("token", token)]);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, refused) = post("redrive", leaflet.id.clone(), None).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(post("purge", junk.id.clone(), Some("guess")).await.0, 403);
    let bearer = http
        .post(format!("{list_url}/{}/purge", junk.id))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status().as_u16(), 403);
    assert_eq!(
        get(list_url.clone()).await.1.matches("<tr><td><a").count(),
        2
    );

    // Done with the token: the redirect lands on the list, which says so.
    let (status, after) = post("redrive", leaflet.id.clone(), Some(TOKEN)).await;
    assert_eq!(status, 200, "{after}");
    assert!(after.contains("redriven"), "{after}");
    assert!(after.contains("1 open dead letters"), "{after}");
    let (status, page) = post("redrive", junk.id.clone(), Some(TOKEN)).await;
    assert_eq!(
        status, 422,
        "bytes that are no event cannot be redriven: {page}"
    );
    assert!(page.contains("purge it"), "{page}");
    let (status, after) = post("purge", junk.id.clone(), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(after.contains("0 open dead letters"), "{after}");
    let (status, _) = post("purge", junk.id.clone(), Some(TOKEN)).await;
    assert_eq!(status, 404, "settled already");
    let (status, _) = post("explode", junk.id.clone(), Some(TOKEN)).await;
    assert_eq!(status, 404, "an action the console does not have");
    stop(child);

    // The redriven leaflet is on its topic again, with its own id.
    let embedded = EmbeddedBus::open(dir.path()).unwrap();
    let bus = Bus::from(&embedded);
    let again = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&again);
    let sub = Subscription::builder(&bus, TOPIC, "leaflets")
        .handle(move |_l: Leaflet, ctx: Context| {
            seen.lock().unwrap().push(ctx.envelope().id.clone());
            async { Ok::<(), HandlerError>(()) }
        })
        .start()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while again.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sub.shutdown().await.unwrap();
    embedded.close().await.unwrap();
    assert_eq!(
        again.lock().unwrap().as_slice(),
        [leaflet.letter.message_id.clone().unwrap()]
    );
}

/// Without an operator token the console is read-only, whatever a request carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_console_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    dead_letters(dir.path()).await;
    let (child, url) = console(dir.path(), None);
    let http = reqwest::Client::new();
    let id = {
        // Listing needs the log; the console holds it open, so read the page instead.
        let list = http
            .get(format!("{url}/topics/{TOPIC}/dead-letters"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let at = list.find("/dead-letters/").unwrap() + "/dead-letters/".len();
        list[at..].split('"').next().unwrap().to_owned()
    };
    for token in ["", TOKEN] {
        let response = http
            .post(format!("{url}/topics/{TOPIC}/dead-letters/{id}/purge"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403);
        let text = response.text().await.unwrap();
        assert!(text.contains("no operator token configured"), "{text}");
    }
    stop(child);
}

/// Headless Chromium renders the list: the hostile script stays text (it would have renamed
/// the page), and a screenshot is kept (`PIZZERIA_CONSOLE_KEEP=<dir>` keeps it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_message_s_script_is_text() {
    if !browser::require() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    dead_letters(dir.path()).await;
    let (child, url) = console(dir.path(), Some(TOKEN));
    let page = format!("{url}/topics/{TOPIC}/dead-letters");
    let dom = browser::dump_dom(&page);
    assert!(
        dom.contains("<title>dead letters of pizzeria</title>"),
        "the page's title changed: a message's script ran? {dom}"
    );
    assert!(dom.contains("&lt;script&gt;document.title"), "{dom}");
    assert_eq!(dom.matches("<button>redrive</button>").count(), 2);
    let png = dir.path().join("console.png");
    browser::screenshot(&page, &png, "1400,700", 10_000);
    if let Some(keep) = std::env::var_os("PIZZERIA_CONSOLE_KEEP") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&png, Path::new(&keep).join("console.png")).unwrap();
    }
    stop(child);
}

/// `pizzeria run --console` serves the console from the running restaurant (the embedded log
/// has one writer): its five groups are there while orders flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_serves_its_console_while_it_lasts() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = pizzeria()
        .args([
            "run",
            "--orders",
            "3000",
            "--json",
            "--console",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove(pizzeria::console::TOKEN_VAR)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = console_url(&mut lines);
    // The run goes on for seconds after it printed the address.
    let home = reqwest::get(format!("{url}/")).await.unwrap();
    assert_eq!(home.status().as_u16(), 200);
    let home = home.text().await.unwrap();
    for group in ["front-desk", "payment", "inventory", "kitchen", "delivery"] {
        assert!(
            home.contains(&format!("<td>{group}</td>")),
            "{group}: {home}"
        );
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        rest[0],
        "read-only: set PIZZERIA_CONSOLE_TOKEN to allow redrive and purge"
    );
    let summary: serde_json::Value = serde_json::from_str(&rest[1..].join("\n")).unwrap();
    assert_eq!(
        summary["accepted"],
        summary["delivered"].as_u64().unwrap() + summary["failed"].as_u64().unwrap()
    );
    assert!(
        reqwest::get(format!("{url}/")).await.is_err(),
        "the console stops with the run"
    );
}

/// With the messaging style's correlation store (found in the data directory), the overview
/// lists the requests waiting for replies, with their claim, escaped like everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_requests_in_flight() {
    use tabgrab::messaging::store::{PendingRequest, ReplyKey};
    use tabgrab::messaging::{CorrelationStore as _, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    EmbeddedBus::open(dir.path())
        .unwrap()
        .close()
        .await
        .unwrap();
    let store = SqliteStore::open(dir.path().join("correlation.db"))
        .await
        .unwrap();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    for (id, ty) in [("req-1", "pizzeria.payment.charge.v1"), ("req-2", HOSTILE)] {
        store
            .insert(&PendingRequest {
                id: id.into(),
                group: "front-desk-messaging".into(),
                request_type: ty.into(),
                responder: "payment".into(),
                sent_ms: now - 5_000,
                deadline_ms: now + 60_000,
                context: serde_json::json!({}),
            })
            .await
            .unwrap();
    }
    let key = ReplyKey {
        id: "req-1",
        request_type: None,
        responder: None,
    };
    store.claim_reply(key, now, now + 30_000).await.unwrap();
    let (child, url) = console(dir.path(), None);
    let home = reqwest::get(format!("{url}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(home.contains("1 pending, 1 being finished"), "{home}");
    assert!(
        home.contains("<td>req-1</td>") && home.contains("<td>req-2</td>"),
        "{home}"
    );
    assert!(home.contains("replying (claim for"), "{home}");
    assert!(!home.contains(HOSTILE), "a request type is escaped: {home}");
    stop(child);
}
