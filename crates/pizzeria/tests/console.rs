//! `pizzeria console` as a process, on a data directory holding dead letters: pages list and
//! show them with every field escaped (a message's `<script>` renders as text, in headless
//! Chromium too), redrive and purge are refused with 403 without the operator token or with
//! a wrong one, and done with it (the dead letter is then gone and the event back on its
//! topic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

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
use tabgrab::{Envelope, Message};

const TOPIC: &str = pizzeria::messages::TOPIC;
const TOKEN: &str = "open-sesame-7f3a";
/// What a hostile publisher puts where the console shows text.
const HOSTILE: &str = "<script>document.title='pwned'</script>";

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(type = "test.leaflet.dropped.v1", event)]
struct Leaflet {
    text: String,
}

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
/// lists the requests waiting for replies, with their claim and the node holding it, and the
/// replies tallied as late, duplicate or forged, escaped like everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_requests_in_flight() {
    use tabgrab::messaging::store::{PendingRequest, ReplyKey, Tally};
    use tabgrab::messaging::{CorrelationStore as _, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    EmbeddedBus::open(dir.path())
        .unwrap()
        .close()
        .await
        .unwrap();
    let store = SqliteStore::open(dir.path().join("correlation.db"))
        .await
        .unwrap()
        .node("node-7 <i>");
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
    for tally in [Tally::Late, Tally::Forged, Tally::Late] {
        store.tally(tally).await.unwrap();
    }
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
    assert!(
        home.contains(" by node-7 &lt;i&gt;)"),
        "the node holding the claim, escaped: {home}"
    );
    assert!(home.contains("2 late, 0 duplicate, 1 forged"), "{home}");
    assert!(!home.contains(HOSTILE), "a request type is escaped: {home}");
    stop(child);
}

/// The pizzeria's menu without the tartufo: the recipes of an inventory that has not learned
/// it yet.
fn recipes_without_tartufo() -> Vec<String> {
    pizzeria::menu::MENU
        .iter()
        .map(|p| p.name.to_owned())
        .filter(|name| name != "tartufo")
        .collect()
}

/// The events of `ty` the pizzeria topic holds about `order`.
async fn events_about(bus: &Bus, ty: &str, order: uuid::Uuid) -> Vec<Envelope> {
    let topic = tabgrab::Topic::new(TOPIC).unwrap();
    let order = order.to_string();
    let mut all = bus.backend().read_all(&topic).await.unwrap();
    all.retain(|e| e.ty == ty && e.subject.as_deref() == Some(order.as_str()));
    all
}

/// The acceptance scenario of the console, in headless Chromium, on a running pizzeria:
/// orders flow while the page's throughput moves; an inventory that does not know the
/// tartufo's recipe dead-letters the one order that asks for it; the page shows that dead
/// letter with its reason; once an inventory that knows the recipe runs, a click on redrive
/// (with the operator token, after a confirmation) sends the order on, and it is delivered
/// exactly once: one charge in the ledger (payment's inbox absorbed the redriven copy), one
/// reservation, one `OrderDelivered`.
async fn poison_order_redriven_in_a_browser(bus: Bus, engine: &str) {
    use pizzeria::order::OrderRequest;
    use pizzeria::services::front_desk::OrderStatus;
    use pizzeria::services::{Inventory, Pizzeria, Settings, Stock, Store, inventory};
    use tokio_util::sync::CancellationToken;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::sqlite(dir.path().join("effects.sqlite"))
        .await
        .unwrap();
    let mut restaurant =
        Pizzeria::start_with(bus.clone(), Settings::default(), store.clone()).unwrap();
    // Inventory is the older release.
    assert!(restaurant.stop_group(inventory::GROUP).await.unwrap());
    restaurant.inventory = Inventory::new(store.clone(), Stock::generous())
        .with_recipes(&recipes_without_tartufo())
        .unwrap();
    assert!(
        restaurant
            .restart_group(bus.clone(), inventory::GROUP)
            .unwrap()
    );
    restaurant.ready().await.unwrap();

    // The console, mounted by this "service" on a port of its own.
    let groups = ["front-desk", "payment", "inventory", "kitchen", "delivery"];
    let stop = CancellationToken::new();
    let router = tabgrab::console::Console::new(&bus)
        .topic(TOPIC, &groups)
        .operator_token(TOKEN)
        .stop_streams_on(stop.clone())
        .router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );

    // Customers order margheritas, one every 20 ms, while the test looks.
    let desk = restaurant.front_desk.clone();
    let customers = CancellationToken::new();
    let flow = {
        let (desk, customers) = (desk.clone(), customers.clone());
        tokio::spawn(async move {
            let mut taken = Vec::new();
            while !customers.is_cancelled() {
                let order = OrderRequest {
                    customer: "Ada".into(),
                    pizzas: vec!["margherita".into()],
                    card: "4111111111111111".into(),
                }
                .validate()
                .unwrap();
                taken.push(desk.take_order(order).await.unwrap());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            taken
        })
    };
    let poison = OrderRequest {
        customer: "Bea".into(),
        pizzas: vec!["margherita".into(), "tartufo".into()],
        card: "4111111111111111".into(),
    }
    .validate()
    .unwrap();
    let poison = desk.take_order(poison).await.unwrap();

    let browser = webdriver::Browser::start().await;
    browser.open(&format!("{url}/")).await;
    // Throughput moves: the topic's rate shows a number above zero, twice in a row.
    let rate_id = format!("rate-{TOPIC}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let rate = browser
            .css(&format!("[id='{rate_id}']"), Duration::from_secs(10))
            .await;
        let text = browser.text(&rate).await;
        if text.parse::<f64>().is_ok_and(|r| r > 0.0) {
            seen.push(text);
            if seen.len() == 2 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{engine}: the page's throughput did not move: {seen:?}\n{}",
            browser.text_of_page().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let overview = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("console-overview-{engine}.png"));
    browser.screenshot(&overview).await;
    println!(
        "{engine}: screenshot of the live overview at {}",
        overview.display()
    );
    let members = browser
        .css("[id='members-pizzeria-payment']", Duration::from_secs(1))
        .await;
    // NATS pull consumers do not register their members.
    let expected = if engine == "nats" { "unknown" } else { "1" };
    assert_eq!(browser.text(&members).await, expected, "{engine}: members");
    let delivery_rate = browser
        .css("[id='rate-pizzeria-delivery']", Duration::from_secs(1))
        .await;
    assert!(
        browser.text(&delivery_rate).await.parse::<f64>().is_ok(),
        "{engine}: a group's rate is a number"
    );

    // The poison order is a dead letter, with its reason, on the dead letters' page.
    let list = format!("{url}/topics/{TOPIC}/dead-letters");
    let row = "//tr[td[contains(., 'whose recipe this inventory does not know')]]";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        browser.open(&list).await;
        if browser.has_xpath(row).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{engine}: no dead letter for the poison order:\n{}",
            browser.text_of_page().await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let reason = browser
        .text(&browser.xpath(row, Duration::ZERO).await)
        .await;
    assert!(
        reason.contains(&poison.to_string()) && reason.contains("\"tartufo\""),
        "{engine}: {reason}"
    );
    assert!(reason.contains("pizzeria.order.accepted.v1"), "{reason}");
    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("console-dead-letter-{engine}.png"));
    browser.screenshot(&shot).await;
    println!(
        "{engine}: screenshot of the dead letter at {}",
        shot.display()
    );
    assert_ne!(
        store_status(&desk, poison).await,
        Some(OrderStatus::Delivered)
    );

    // The cause is fixed: an inventory that knows the tartufo replaces the old one.
    assert!(restaurant.stop_group(inventory::GROUP).await.unwrap());
    restaurant.inventory = Inventory::new(store.clone(), Stock::generous());
    assert!(
        restaurant
            .restart_group(bus.clone(), inventory::GROUP)
            .unwrap()
    );
    restaurant.ready().await.unwrap();

    // Redrive, as an operator: the token, the button, the confirmation.
    let token = browser.css("#token", Duration::from_secs(5)).await;
    browser.type_into(&token, TOKEN).await;
    let button = browser
        .xpath(
            &format!("{row}//form[contains(@action, '/redrive')]/button"),
            Duration::from_secs(5),
        )
        .await;
    browser.click(&button).await;
    let asked = browser.accept_dialog(Duration::from_secs(10)).await;
    assert_eq!(asked, "Redrive this event?");
    let note = browser.css("#note", Duration::from_secs(30)).await;
    assert!(browser.text(&note).await.ends_with(" redriven"), "{engine}");
    assert!(
        !browser.has_xpath(row).await,
        "{engine}: the redriven dead letter is no longer open"
    );

    // Delivered, exactly once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store_status(&desk, poison).await != Some(OrderStatus::Delivered) {
        assert!(
            Instant::now() < deadline,
            "{engine}: the redriven order was not delivered: {:?}",
            desk.order(poison).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    customers.cancel();
    let taken = flow.await.unwrap();
    if let Err(e) = restaurant.settle(Duration::from_secs(60)).await {
        let mut broker = Vec::new();
        for g in groups {
            broker.push((g, bus.lag(TOPIC, g).await));
        }
        panic!(
            "{engine}: {e}; the engine says {broker:?}; stats {:?}",
            restaurant.stats()
        );
    }
    let cause = events_cause(&bus, poison).await;
    let effects = store.effects().await.unwrap();
    let of_poison: Vec<&(String, String)> = effects.iter().filter(|(_, c)| *c == cause).collect();
    assert_eq!(
        of_poison,
        [
            &("payment:charge".to_owned(), cause.clone()),
            &("inventory:reserve".to_owned(), cause.clone())
        ],
        "{engine}: one charge and one reservation for the redriven order"
    );
    let mut unique = effects.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        effects.len(),
        "{engine}: an effect applied twice"
    );
    assert!(
        store.stats().await.unwrap().payment.duplicates >= 1,
        "{engine}: payment saw the redriven copy and changed nothing"
    );
    for ty in [
        "pizzeria.payment.collected.v1",
        "pizzeria.ingredients.reserved.v1",
        "pizzeria.order.delivered.v1",
    ] {
        assert_eq!(
            events_about(&bus, ty, poison).await.len(),
            1,
            "{engine}: {ty}"
        );
    }
    for order in &taken {
        assert_eq!(
            store_status(&desk, *order).await,
            Some(OrderStatus::Delivered),
            "{engine}: every other order is delivered"
        );
    }
    println!(
        "{engine}: {} orders flowed; the poison order was dead-lettered, redriven from the \
         browser and delivered once",
        taken.len()
    );

    browser.close().await;
    stop.cancel();
    server.await.unwrap().unwrap();
    restaurant.shutdown().await.unwrap();
}

/// Where the front desk's view says `order` stands.
async fn store_status(
    desk: &pizzeria::services::FrontDesk,
    order: uuid::Uuid,
) -> Option<pizzeria::services::front_desk::OrderStatus> {
    desk.order(order).await.unwrap().map(|v| v.status)
}

/// The id of `order`'s `OrderAccepted` (the cause of payment's and inventory's effects).
async fn events_cause(bus: &Bus, order: uuid::Uuid) -> String {
    let accepted = events_about(bus, "pizzeria.order.accepted.v1", order).await;
    // The original and its redriven copy: the same id.
    assert_eq!(accepted.len(), 2, "{accepted:?}");
    assert_eq!(accepted[0].id, accepted[1].id);
    accepted[0].id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_order_is_redriven_from_a_browser_on_the_embedded_bus() {
    if !webdriver::require() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedBus::open(dir.path()).unwrap();
    poison_order_redriven_in_a_browser(Bus::from(&embedded), "embedded").await;
    embedded.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_order_is_redriven_from_a_browser_on_nats() {
    if !webdriver::require() || !tabgrab_testkit::services::require("NATS", "127.0.0.1:4222") {
        return;
    }
    let namespace = format!("console-{}", uuid::Uuid::now_v7().simple());
    let connection =
        pizzeria::namespace::connect(&format!("nats://127.0.0.1:4222?namespace={namespace}"))
            .await
            .unwrap();
    poison_order_redriven_in_a_browser(connection.bus().clone(), "nats").await;
    connection.clean_up().await.unwrap();
}

/// On RabbitMQ (a queue per group) the list offers "redrive to <group>": with the token, the
/// event goes to the group that gave up on it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_a_dead_letter_is_redriven_to_its_group_alone() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    let namespace = format!("console-{}", uuid::Uuid::now_v7().simple());
    let connection = pizzeria::namespace::connect(&format!(
        "amqp://guest:guest@127.0.0.1:5672/%2f?namespace={namespace}"
    ))
    .await
    .unwrap();
    let bus = connection.bus().clone();
    let fixed = Arc::new(AtomicBool::new(false));
    let (failing_seen, other_seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failing = {
        let (fixed, seen) = (Arc::clone(&fixed), Arc::clone(&failing_seen));
        Subscription::builder(&bus, TOPIC, "leaflets")
            .handle(move |_l: Leaflet, _ctx: Context| {
                let (fixed, seen) = (Arc::clone(&fixed), Arc::clone(&seen));
                async move {
                    if !fixed.load(Ordering::SeqCst) {
                        return Err(HandlerError::permanent("the printer is out of ink"));
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    let other = {
        let seen = Arc::clone(&other_seen);
        Subscription::builder(&bus, TOPIC, "archive")
            .handle(move |_l: Leaflet, _ctx: Context| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    failing.ready().await.unwrap();
    other.ready().await.unwrap();
    Publisher::new(&bus, TOPIC, "/test")
        .unwrap()
        .publish(
            &Leaflet {
                text: "sale".into(),
            },
            "leaflet-1",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while failing.stats().dead_lettered < 1 || other_seen.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < deadline, "{:?}", failing.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let router = tabgrab::console::Console::new(&bus)
        .topic(TOPIC, &["leaflets", "archive"])
        .operator_token(TOKEN)
        .router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(axum::serve(listener, router).into_future());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let list = http
        .get(format!("{url}/topics/{TOPIC}/dead-letters"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        list.contains("<button>redrive to leaflets</button>"),
        "{list}"
    );
    let at = list.find("/dead-letters/").unwrap() + "/dead-letters/".len();
    let id = list[at..].split('"').next().unwrap().to_owned();
    fixed.store(true, Ordering::SeqCst);
    let done = http
        .post(format!(
            "{url}/topics/{TOPIC}/dead-letters/{id}/redrive-group"
        ))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status().as_u16(), 303, "{:?}", done.text().await);
    let deadline = Instant::now() + Duration::from_secs(30);
    while failing_seen.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < deadline, "the group did not get its event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    failing.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
    assert_eq!(
        other_seen.load(Ordering::SeqCst),
        1,
        "the archive saw it once"
    );
    assert!(bus.dead_letters(TOPIC).await.unwrap().is_empty());
    server.abort();
    connection.clean_up().await.unwrap();
}
