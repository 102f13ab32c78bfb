//! The kill test of the call and messaging styles (the events style's is `chaos.rs`): every
//! service runs as a process of its own with its state in a SQLite file, customers order,
//! and payment and then inventory are killed with SIGKILL mid-run and started again on
//! their files. At the end:
//! - every order has ended: answered (calls) or delivered or failed (messaging);
//! - nothing was done twice: the ledger and the reservations pass their audit (at most one
//!   charge, refund, reservation and release per order, no undoing without the deed);
//! - nothing was lost or kept: the orders still charged are exactly the delivered ones, and
//!   so are the orders still holding ingredients (every failed order was refunded and
//!   released, whatever moment the kill hit).
//!
//! Where a kill lands is up to the moment, so the test also repeats commands on purpose
//! around each restart, as a retrying client or a redelivery would: a charge (reservation)
//! made before the kill and asked again after it is answered from the file and not made
//! twice, a refund (release) asked twice is done once and answered the same, and one that
//! comes before its charge (reservation) stops it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::processes::{Service, pizzeria};
use futures::StreamExt as _;
use pizzeria::commands::{
    ChargeCard, ORDER_CANCELLED, RefundPayment, ReleaseIngredients, ReserveIngredients,
};
use pizzeria::services::Store;
use pizzeria::services::store::Audit;
use serde_json::{Value, json};
use tabgrab::Request;
use tabgrab::call::http::HttpTransport;
use tabgrab::call::{CallOptions, Client};
use tabgrab::messaging::{MemoryStore, Requester, SendOptions};
use uuid::Uuid;

/// Orders per test.
const ORDERS: usize = 240;
/// Truffles on the shelf: some tartufo orders find none, and are refunded.
const TRUFFLES: &str = "8";

/// The `--store` argument of `name`'s SQLite file in `dir`.
fn store_of(dir: &Path, name: &str) -> String {
    format!("sqlite:{}", dir.join(format!("{name}.sqlite")).display())
}

/// Customer `i`'s order: every 16th card is declined, every 10th order is a tartufo.
fn order(i: usize) -> Value {
    let card = if i % 16 == 5 {
        "4000000000000000"
    } else {
        "4242424242424242"
    };
    let pizzas = if i % 10 == 3 {
        vec!["tartufo"]
    } else {
        vec!["margherita", "diavola"]
    };
    json!({ "customer": format!("c{i}"), "pizzas": pizzas, "card": card })
}

/// Reads the ledger and the reservations of the stores in `dir`.
async fn audits(dir: &Path) -> (Audit, Audit) {
    let payment = Store::open(&store_of(dir, "payment")).await.unwrap();
    let inventory = Store::open(&store_of(dir, "inventory")).await.unwrap();
    (
        payment.audit().await.unwrap(),
        inventory.audit().await.unwrap(),
    )
}

/// Waits (40 s at most: the front desk retries a compensation for its order timeout) until
/// the orders still charged and still holding ingredients are the `delivered` ones, then
/// checks the audits.
async fn money_and_shelf_add_up(dir: &Path, delivered: u64) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (payment, inventory) = audits(dir).await;
        assert!(payment.violations.is_empty(), "{:?}", payment.violations);
        assert!(
            inventory.violations.is_empty(),
            "{:?}",
            inventory.violations
        );
        let charged = payment.charged - payment.refunded;
        let held = inventory.reserved - inventory.released;
        if charged == delivered && held == delivered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} orders delivered, but {charged} still charged ({payment:?}) and \
             {held} still holding ingredients ({inventory:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks payment and inventory directly, as a client of the style would.
enum Asker {
    /// Over HTTP, at these base URLs.
    Calls { payment: String, inventory: String },
    /// Over the bus.
    Bus(Requester),
}

impl Asker {
    /// Sends `command` to `service` (`payment` or `inventory`); a refusal is its code.
    async fn ask<R: Request>(&self, service: &str, command: &R) -> Result<R::Response, String> {
        match self {
            Asker::Calls { payment, inventory } => {
                let url = if service == "payment" {
                    payment
                } else {
                    inventory
                };
                // A client of its own each time: the service behind it may have restarted.
                let client = Client::builder(HttpTransport::builder(url).build()).build();
                let options = CallOptions::timeout(Duration::from_secs(10))
                    .idempotency_key(Uuid::now_v7().to_string());
                client
                    .call_with(command, options)
                    .await
                    .map_err(|e| e.rejection().map_or(e.to_string(), |r| r.code.clone()))
            }
            Asker::Bus(requester) => requester
                .request(
                    command,
                    SendOptions::default().timeout(Duration::from_secs(20)),
                )
                .await
                .map_err(|e| e.rejection().map_or(e.to_string(), |r| r.code.clone())),
        }
    }
}

/// The orders the test asks about itself: charged before payment's kill, refunded after it;
/// refunded before any charge; the same for inventory.
struct Repeats {
    charged: Uuid,
    refunded_first: Uuid,
    reserved: Uuid,
    released_first: Uuid,
}

const CARD: &str = "**** 4242";

impl Repeats {
    fn new() -> Repeats {
        Repeats {
            charged: Uuid::now_v7(),
            refunded_first: Uuid::now_v7(),
            reserved: Uuid::now_v7(),
            released_first: Uuid::now_v7(),
        }
    }

    fn charge(order_id: Uuid) -> ChargeCard {
        ChargeCard {
            order_id,
            amount_cents: 900,
            card: CARD.to_owned(),
        }
    }

    fn reserve(order_id: Uuid) -> ReserveIngredients {
        ReserveIngredients {
            order_id,
            pizzas: vec!["margherita".to_owned()],
        }
    }

    /// Before payment is killed: a charge.
    async fn before_payment_dies(&self, asker: &Asker) {
        let charged = asker.ask("payment", &Repeats::charge(self.charged)).await;
        assert_eq!(charged.unwrap().amount_cents, 900);
    }

    /// After payment restarted: the charge again, its refund twice, a refund before a charge.
    async fn after_payment_restarts(&self, asker: &Asker) {
        let again = asker.ask("payment", &Repeats::charge(self.charged)).await;
        assert_eq!(
            again.unwrap().amount_cents,
            900,
            "the first charge's answer"
        );
        for _ in 0..2 {
            let refund = RefundPayment {
                order_id: self.charged,
            };
            let refunded = asker.ask("payment", &refund).await.unwrap();
            assert_eq!(
                refunded.amount_cents, 900,
                "refunded once, answered the same"
            );
        }
        let early = RefundPayment {
            order_id: self.refunded_first,
        };
        assert_eq!(asker.ask("payment", &early).await.unwrap().amount_cents, 0);
        let late = asker
            .ask("payment", &Repeats::charge(self.refunded_first))
            .await;
        assert_eq!(
            late.map(|c| c.amount_cents),
            Err(ORDER_CANCELLED.to_owned())
        );
    }

    /// Before inventory is killed: a reservation.
    async fn before_inventory_dies(&self, asker: &Asker) {
        let reserved = asker
            .ask("inventory", &Repeats::reserve(self.reserved))
            .await;
        assert!(reserved.is_ok(), "{reserved:?}");
    }

    /// After inventory restarted: the reservation again, its release twice, a release before
    /// a reservation.
    async fn after_inventory_restarts(&self, asker: &Asker) {
        let again = asker
            .ask("inventory", &Repeats::reserve(self.reserved))
            .await;
        assert!(again.is_ok(), "{again:?}");
        for _ in 0..2 {
            let release = ReleaseIngredients {
                order_id: self.reserved,
            };
            assert!(asker.ask("inventory", &release).await.unwrap().released);
        }
        let early = ReleaseIngredients {
            order_id: self.released_first,
        };
        assert!(!asker.ask("inventory", &early).await.unwrap().released);
        let late = asker
            .ask("inventory", &Repeats::reserve(self.released_first))
            .await;
        assert_eq!(late.map(drop), Err(ORDER_CANCELLED.to_owned()));
    }
}

/// Kills `service` (SIGKILL) and starts it again with the same arguments.
fn kill_and_restart(service: Service, args: &[&str]) -> Service {
    let name = service.name;
    service.kill();
    Service::respawn(name, args, Duration::from_secs(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_killed_payment_and_inventory_processes_lose_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let args = |name: &str, listen: &str| -> Vec<String> {
        let mut args = vec![
            "--listen".to_owned(),
            listen.to_owned(),
            "--store".to_owned(),
            store_of(dir.path(), name),
            "--truffles".to_owned(),
            TRUFFLES.to_owned(),
            "--bake-ms".to_owned(),
            "2".to_owned(),
        ];
        if name == "front-desk" {
            args.truncate(2);
        }
        args
    };
    let start = |name: &'static str, listen: &str, extra: &[&str]| {
        let mut all = args(name, listen);
        all.extend(extra.iter().map(|s| (*s).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        Service::spawn(name, &all)
    };
    let mut payment = start("payment", "127.0.0.1:0", &[]);
    let mut inventory = start("inventory", "127.0.0.1:0", &[]);
    let kitchen = start("kitchen", "127.0.0.1:0", &[]);
    let delivery = start("delivery", "127.0.0.1:0", &[]);
    let urls = [
        payment.url(),
        inventory.url(),
        kitchen.url(),
        delivery.url(),
    ]
    .map(str::to_owned);
    let front = start(
        "front-desk",
        "127.0.0.1:0",
        &[
            "--payment",
            &urls[0],
            "--inventory",
            &urls[1],
            "--kitchen",
            &urls[2],
            "--delivery",
            &urls[3],
            "--order-timeout-ms",
            "10000",
        ],
    );
    let orders_url = format!("{}/orders", front.url());
    let http = reqwest::Client::new();
    let asker = Asker::Calls {
        payment: urls[0].clone(),
        inventory: urls[1].clone(),
    };
    let repeats = Repeats::new();
    let mut answers = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let (http, url) = (http.clone(), orders_url.clone());
            async move {
                let answer = http.post(&url).json(&order(i)).send().await.unwrap();
                let status = answer.status().as_u16();
                let body: Value = answer.json().await.unwrap();
                (status, body)
            }
        })
        .buffer_unordered(8);
    let mut made = Vec::new();
    let mut by_status = std::collections::BTreeMap::<u16, u64>::new();
    let mut answered = 0;
    while let Some((status, body)) = answers.next().await {
        answered += 1;
        *by_status.entry(status).or_default() += 1;
        assert!(
            [201, 402, 409, 502, 503, 504].contains(&status),
            "{status}: {body}"
        );
        if status == 201 {
            made.push(body["order_id"].as_str().unwrap().to_owned());
        }
        // Kill payment a quarter of the way in and inventory halfway, each restarted at once
        // on its address and its file, while the other orders keep coming.
        if answered == ORDERS / 4 {
            repeats.before_payment_dies(&asker).await;
            let listen = urls[0].trim_start_matches("http://").to_owned();
            let restart = args("payment", &listen);
            let restart: Vec<&str> = restart.iter().map(String::as_str).collect();
            payment = kill_and_restart(payment, &restart);
            repeats.after_payment_restarts(&asker).await;
        }
        if answered == ORDERS / 2 {
            repeats.before_inventory_dies(&asker).await;
            let listen = urls[1].trim_start_matches("http://").to_owned();
            let restart = args("inventory", &listen);
            let restart: Vec<&str> = restart.iter().map(String::as_str).collect();
            inventory = kill_and_restart(inventory, &restart);
            repeats.after_inventory_restarts(&asker).await;
        }
    }
    eprintln!("answers by status: {by_status:?}");
    assert_eq!(answered, ORDERS);
    assert!(
        by_status.contains_key(&402),
        "a declined card: {by_status:?}"
    );
    assert!(
        by_status.contains_key(&409),
        "a missing truffle: {by_status:?}"
    );
    assert!(made.len() > ORDERS / 2, "{by_status:?}");
    // Every order made is delivered, as the front desk says.
    for id in &made {
        let view: Value = http
            .get(format!("{orders_url}/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(view["status"], "delivered", "{view}");
    }
    money_and_shelf_add_up(dir.path(), made.len() as u64).await;
    drop((front, payment, inventory, kitchen, delivery));
}

/// The messaging style on `bus` (a broker URL): four responder processes, and `pizzeria run
/// --services external` as the front desk.
async fn messaging_kill_test(engine: &str, bus: &str) {
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("killed{}", uuid::Uuid::now_v7().simple());
    let sep = if bus.contains('?') { '&' } else { '?' };
    let url = format!("{bus}{sep}namespace={namespace}");
    let args = |name: &str| -> Vec<String> {
        [
            "--style",
            "messaging",
            "--bus",
            &url,
            "--store",
            &store_of(dir.path(), name),
            "--truffles",
            TRUFFLES,
            "--bake-ms",
            "2",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let start = |name: &'static str| {
        let all = args(name);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        Service::spawn(name, &all)
    };
    let mut payment = start("payment");
    let mut inventory = start("inventory");
    let kitchen = start("kitchen");
    let delivery = start("delivery");
    let connection = pizzeria::namespace::connect(&url).await.unwrap();
    let requester = Requester::builder(connection.bus().clone(), "kill-test")
        .store(MemoryStore::new())
        .route::<ChargeCard>("payment")
        .route::<RefundPayment>("payment")
        .route::<ReserveIngredients>("inventory")
        .route::<ReleaseIngredients>("inventory")
        .start()
        .unwrap();
    requester.ready().await.unwrap();
    let asker = Asker::Bus(requester);
    let repeats = Repeats::new();
    let run = pizzeria()
        .args([
            "run",
            "--style",
            "messaging",
            "--services",
            "external",
            "--orders",
            &ORDERS.to_string(),
            "--concurrency",
            "8",
            "--truffles",
            TRUFFLES,
            "--json",
            "--data-dir",
        ])
        .arg(dir.path().join("front-desk"))
        .env("PIZZERIA_BUS", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill payment once it has answered a quarter of the orders' charges, inventory once it
    // has answered half of the reservations; each restarts at once on its file.
    let kill_when = |service: &mut Service, replied: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while service.figure("replied") + service.figure("rejected") < replied {
            assert!(
                Instant::now() < deadline,
                "{} answered too little",
                service.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    kill_when(&mut payment, ORDERS as u64 / 4);
    repeats.before_payment_dies(&asker).await;
    let restart = args("payment");
    let restart: Vec<&str> = restart.iter().map(String::as_str).collect();
    let payment = kill_and_restart(payment, &restart);
    repeats.after_payment_restarts(&asker).await;
    kill_when(&mut inventory, ORDERS as u64 / 2);
    repeats.before_inventory_dies(&asker).await;
    let restart = args("inventory");
    let restart: Vec<&str> = restart.iter().map(String::as_str).collect();
    let inventory = kill_and_restart(inventory, &restart);
    repeats.after_inventory_restarts(&asker).await;

    let output = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{engine}: {stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("{engine}: {summary}");
    assert_eq!(summary["accepted"], ORDERS, "{summary}");
    let delivered = summary["delivered"].as_u64().unwrap();
    assert_eq!(
        delivered + summary["failed"].as_u64().unwrap(),
        ORDERS as u64,
        "{summary}"
    );
    assert_eq!(
        summary["timeouts"], 0,
        "nothing waited out its deadline: {summary}"
    );
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    money_and_shelf_add_up(dir.path(), delivered).await;
    if let Asker::Bus(requester) = asker {
        requester.shutdown().await.unwrap();
    }
    drop((payment, inventory, kitchen, delivery));
    connection.clean_up().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messaging_on_nats_killed_payment_and_inventory_processes_lose_and_repeat_nothing() {
    if !tabgrab_testkit::services::require("NATS", "127.0.0.1:4222") {
        return;
    }
    // A killed member's unacknowledged requests go to the next one after 2 s.
    messaging_kill_test("nats", "nats://127.0.0.1:4222?ack_wait_ms=2000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messaging_on_rabbitmq_killed_payment_and_inventory_processes_lose_and_repeat_nothing() {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    messaging_kill_test("rabbitmq", "amqp://guest:guest@127.0.0.1:5672/%2f").await;
}

/// The PIDs of `parent`'s children, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: the fields after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` still runs (a zombie, dead and not yet reaped, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Kills (SIGKILL) the processes still alive of these PIDs when dropped.
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.iter().filter(|p| alive(**p)) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// `pizzeria run --services spawn` killed with SIGKILL (its children get no SIGTERM from it)
/// leaves no service running: each child sees the pipe from its parent close and stops.
#[test]
fn the_children_of_a_killed_run_stop() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut run = pizzeria()
        .args([
            "run",
            "--style",
            "calls",
            "--services",
            "spawn",
            "--orders",
            "10000000",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The run announces its front desk once every child is ready.
    let stderr = run.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let announced = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("front desk: ") || l.contains("orders accepted"));
    assert!(announced, "the run never announced its front desk");
    let children = children_of(run.id());
    // Should this test fail, the children do not outlive it.
    let _reaper = Reaper(children.clone());
    assert_eq!(
        children.len(),
        4,
        "payment, inventory, kitchen, delivery: {children:?}"
    );
    run.kill().unwrap();
    run.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while children.iter().any(|pid| alive(*pid)) {
        assert!(
            Instant::now() < deadline,
            "still running 15 s after their run was killed: {:?}",
            children.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
