//! The call style: the whole run adds up; a failing service is named and compensated; the
//! payment service answers a Rust tonic client, Python's grpcio and curl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use pizzeria::calls::front_desk::{Placed, Refusal};
use pizzeria::calls::grpc::proto::ChargeCardRequest;
use pizzeria::calls::grpc::proto::payment_client::PaymentClient;
use pizzeria::calls::{Peers, ServiceName, service_router};
use pizzeria::menu::RARE_INGREDIENT;
use pizzeria::run::{RunConfig, Style, run};
use pizzeria::services::{Stock, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The four back-office services on free ports, over one store in memory; stopped when
/// `stop` is cancelled.
struct Backoffice {
    office: pizzeria::backoffice::Backoffice,
    urls: Vec<String>,
    stop: CancellationToken,
}

impl std::ops::Deref for Backoffice {
    type Target = pizzeria::backoffice::Backoffice;
    fn deref(&self) -> &Self::Target {
        &self.office
    }
}

async fn backoffice(truffles: u64, with_kitchen: bool) -> Backoffice {
    let office = pizzeria::backoffice::Backoffice::new(
        Store::memory(),
        Stock::generous().with(RARE_INGREDIENT, truffles),
        4,
        Duration::from_millis(1),
    );
    let stop = CancellationToken::new();
    let mut urls = Vec::new();
    for name in [
        ServiceName::Payment,
        ServiceName::Inventory,
        ServiceName::Kitchen,
        ServiceName::Delivery,
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        if name == ServiceName::Kitchen && !with_kitchen {
            continue; // the kitchen is down: its port refuses connections
        }
        let router = service_router(name, &office).unwrap();
        tokio::spawn(tabgrab::call::serve(
            listener,
            router,
            stop.clone().cancelled_owned(),
        ));
    }
    Backoffice { office, urls, stop }
}

async fn front_desk(b: &Backoffice) -> String {
    let peers = Peers {
        payment: b.urls[0].clone(),
        inventory: b.urls[1].clone(),
        kitchen: b.urls[2].clone(),
        delivery: b.urls[3].clone(),
        order_timeout: Duration::from_secs(5),
        pool: 8,
        tls: None,
        token: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tabgrab::call::serve(
        listener,
        pizzeria::http::app(peers.waiter()),
        b.stop.clone().cancelled_owned(),
    ));
    url
}

fn order(pizzas: &[&str], card: &str) -> serde_json::Value {
    json!({ "customer": "ada", "pizzas": pizzas, "card": card })
}

#[tokio::test]
async fn a_run_in_the_call_style_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RunConfig::new(300, dir.path());
    config.style = Style::Calls;
    let summary = run(config).await.unwrap();
    assert_eq!(summary.style, Style::Calls);
    assert_eq!(summary.accepted, 300);
    assert_eq!(summary.rejected, 0);
    assert_eq!(summary.delivered + summary.failed, 300);
    let missing = summary
        .failed_by_reason
        .iter()
        .filter(|(r, _)| r.starts_with("ingredients missing"))
        .map(|(_, n)| n)
        .sum::<u64>();
    // Every order refused for missing ingredients had been charged: refunded once each.
    assert_eq!(summary.refunds, missing);
    assert!(summary.render().contains("pizzeria run, style calls"));
}

#[tokio::test]
async fn orders_are_made_refused_and_compensated() {
    let b = backoffice(1, true).await;
    let url = format!("{}/orders", front_desk(&b).await);
    let http = reqwest::Client::new();

    let made = http
        .post(&url)
        .json(&order(&["tartufo"], "4242424242424242"))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let placed: Placed = made.json().await.unwrap();
    assert_eq!(placed.status, "delivered");
    assert_eq!(placed.amount_cents, 2400);

    let declined = http
        .post(&url)
        .json(&order(&["margherita"], "4000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(declined.status(), 402);
    let refusal: Refusal = declined.json().await.unwrap();
    assert_eq!(refusal.service.as_deref(), Some("payment"));
    assert_eq!(
        refusal.reason.as_deref(),
        Some("payment declined: card ending in 0000 refused by the bank")
    );

    // The one truffle is gone: inventory refuses, and the charge is refunded.
    let short = http
        .post(&url)
        .json(&order(&["tartufo"], "4242424242424242"))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 409);
    let refusal: Refusal = short.json().await.unwrap();
    assert_eq!(refusal.service.as_deref(), Some("inventory"));
    assert_eq!(
        refusal.reason.as_deref(),
        Some("ingredients missing: truffle")
    );
    assert_eq!(b.payment.stats().refunded, 1);
    assert_eq!(b.storeroom.level(RARE_INGREDIENT).await.unwrap(), 0);

    // GET /orders/{id} tells each order's fate, as the POST's answer did.
    let state = |id: uuid::Uuid| {
        let http = http.clone();
        let url = format!("{url}/{id}");
        async move {
            let answer = http.get(&url).send().await.unwrap();
            (
                answer.status(),
                answer.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, made) = state(placed.order_id).await;
    assert_eq!(status, 200);
    assert_eq!(made["status"], "delivered", "{made}");
    assert_eq!(made["amount_cents"], 2400, "{made}");
    let (_, short) = state(refusal.order_id.unwrap()).await;
    assert_eq!(short["status"], "cancelled", "{short}");
    assert_eq!(short["reason"], "ingredients missing: truffle", "{short}");
    let (status, unknown) = state(uuid::Uuid::now_v7()).await;
    assert_eq!(status, 404, "{unknown}");
    let bad = http.get(format!("{url}/not-an-id")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    b.stop.cancel();
}

#[tokio::test]
async fn a_kitchen_that_is_down_is_named_and_the_order_is_undone() {
    let b = backoffice(10, false).await;
    let url = format!("{}/orders", front_desk(&b).await);
    let http = reqwest::Client::new();
    let before = b.storeroom.level("basil").await.unwrap();
    let answer = http
        .post(&url)
        .json(&order(&["margherita"], "4242424242424242"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    let refusal: Refusal = answer.json().await.unwrap();
    assert_eq!(refusal.service.as_deref(), Some("kitchen"));
    assert!(refusal.error.contains("kitchen"), "{}", refusal.error);
    assert!(refusal.error.contains("unavailable"), "{}", refusal.error);
    assert_eq!(b.payment.stats().refunded, 1, "the charge was refunded");
    assert_eq!(
        b.storeroom.stats().released,
        1,
        "the ingredients were released"
    );
    assert_eq!(b.storeroom.level("basil").await.unwrap(), before);
    let state: serde_json::Value = http
        .get(format!("{url}/{}", refusal.order_id.unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["status"], "failed", "{state}");
    assert!(
        state["reason"].as_str().unwrap().contains("kitchen"),
        "{state}"
    );
    b.stop.cancel();
}

#[tokio::test]
async fn a_tonic_client_calls_the_typed_payment_service() {
    let b = backoffice(1, true).await;
    let mut client = PaymentClient::connect(b.urls[0].clone()).await.unwrap();
    let order_id = uuid::Uuid::now_v7().to_string();
    let reply = client
        .charge_card(ChargeCardRequest {
            order_id: order_id.clone(),
            amount_cents: 900,
            card: "**** 4242".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.order_id, order_id);
    assert_eq!(reply.amount_cents, 900);
    let declined = client
        .charge_card(ChargeCardRequest {
            order_id: uuid::Uuid::now_v7().to_string(),
            amount_cents: 900,
            card: "**** 0000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(declined.code(), tonic::Code::FailedPrecondition);
    let rejection: tabgrab::Rejection = serde_json::from_slice(declined.details()).unwrap();
    assert_eq!(rejection.code, pizzeria::commands::CARD_DECLINED);
    b.stop.cancel();
}

/// The Python with grpcio that `.ci/run` prepares, or `None` (skipped loudly unless
/// `TABGRAB_REQUIRE_SERVICES=1`).
fn python_with_grpcio() -> Option<std::path::PathBuf> {
    tabgrab_testkit::python::with("grpc, grpc_tools", "grpcio and grpcio-tools")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_the_payment_service() {
    let Some(python) = python_with_grpcio() else {
        return;
    };
    let b = backoffice(1, true).await;
    let target = b.urls[0].trim_start_matches("http://").to_owned();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(python)
        .arg(dir.join("tests/grpc_client.py"))
        .arg(dir.join("proto"))
        .arg(&target)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("charged 2100"), "{stdout}");
    assert!(stdout.contains("declined: FAILED_PRECONDITION"), "{stdout}");
    assert!(stdout.contains("malformed: INVALID_ARGUMENT"), "{stdout}");
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    assert_eq!(b.payment.stats().collected, 1);
    b.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_calls_the_http_endpoint() {
    let curl = "/usr/bin/curl";
    if !std::path::Path::new(curl).exists() {
        let reason = "curl is not installed at /usr/bin/curl";
        assert!(
            !tabgrab_testkit::services::required(),
            "{reason}, and TABGRAB_REQUIRE_SERVICES=1 requires it"
        );
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let b = backoffice(1, true).await;
    let order_id = uuid::Uuid::now_v7();
    let run = |body: String| {
        let url = format!("{}/commands/pizzeria.payment.charge-card.v1", b.urls[0]);
        async move {
            let out = tokio::process::Command::new(curl)
                .args([
                    "-sS",
                    "-w",
                    "\n%{http_code}",
                    "-H",
                    "content-type: application/json",
                    "-d",
                ])
                .arg(body)
                .arg(url)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let ok =
        run(json!({"order_id": order_id, "amount_cents": 900, "card": "**** 4242"}).to_string())
            .await;
    assert!(ok.ends_with("\n200"), "{ok}");
    assert!(ok.contains("\"amount_cents\":900"), "{ok}");
    let bad = run("{\"order_id\": 7}".to_owned()).await;
    assert!(bad.ends_with("\n400"), "{bad}");
    assert!(bad.contains("invalid_payload"), "{bad}");
    let declined = run(
        json!({"order_id": uuid::Uuid::now_v7(), "amount_cents": 900, "card": "**** 0000"})
            .to_string(),
    )
    .await;
    assert!(declined.ends_with("\n422"), "{declined}");
    assert!(declined.contains("payment.card-declined"), "{declined}");
    b.stop.cancel();
}

/// A `pizzeria service …` child process, killed on drop.
struct Child(std::process::Child, String);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_service(args: &[&str]) -> Child {
    spawn_service_with(args, &[])
}

/// `pizzeria service <args>` with `envs` set (and the call token unset otherwise).
fn spawn_service_with(args: &[&str], envs: &[(&str, &str)]) -> Child {
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pizzeria"))
        .arg("service")
        .args(args)
        .env_remove(pizzeria::calls::TOKEN_VAR)
        .env_remove("PIZZERIA_BUS")
        // State in memory: nothing written next to the tests.
        .env("PIZZERIA_STORE", "memory")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .rsplit_once(" listening on ")
        .map(|(_, url)| url.to_owned())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    Child(child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_as_separate_processes() {
    let payment = spawn_service(&["payment"]);
    let inventory = spawn_service(&["inventory"]);
    let kitchen = spawn_service(&["kitchen", "--bake-ms", "1"]);
    let delivery = spawn_service(&["delivery"]);
    let front = spawn_service(&[
        "front-desk",
        "--payment",
        &payment.1,
        "--inventory",
        &inventory.1,
        "--kitchen",
        &kitchen.1,
        "--delivery",
        &delivery.1,
    ]);
    let http = reqwest::Client::new();
    let made = http
        .post(format!("{}/orders", front.1))
        .json(&order(&["diavola", "funghi"], "4242424242424242"))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let placed: Placed = made.json().await.unwrap();
    assert_eq!(placed.amount_cents, 2300);
    drop(kitchen);
    let failed = http
        .post(format!("{}/orders", front.1))
        .json(&order(&["marinara"], "4242424242424242"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 503);
    let refusal: Refusal = failed.json().await.unwrap();
    assert_eq!(refusal.service.as_deref(), Some("kitchen"));
}

#[tokio::test]
async fn the_front_desk_answers_400_for_a_body_that_is_not_an_order() {
    let b = backoffice(10, true).await;
    let url = format!("{}/orders", front_desk(&b).await);
    let http = reqwest::Client::new();
    let bodies = [
        // An unknown field, a field of the wrong type, a missing field, not JSON.
        json!({ "customer": "ada", "pizzas": ["margherita"], "card": "4242424242424242", "tip": 1 })
            .to_string(),
        json!({ "customer": 5, "pizzas": ["margherita"], "card": "4242424242424242" }).to_string(),
        json!({ "customer": "ada" }).to_string(),
        "{\"customer\":".to_owned(),
    ];
    for body in bodies {
        let answer = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{body}");
        let refusal: Refusal = answer.json().await.unwrap();
        assert!(refusal.order_id.is_none());
    }
    let answer = http
        .post(&url)
        .header("content-type", "text/plain")
        .body(order(&["margherita"], "4242424242424242").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 415);
    assert_eq!(b.payment.stats().collected, 0, "nothing reached payment");
    b.stop.cancel();
}

#[tokio::test]
async fn commands_out_of_their_bounds_are_refused_on_http_and_grpc() {
    let b = backoffice(10, true).await;
    let http = reqwest::Client::new();
    let post = |service: usize, ty: &str, body: serde_json::Value| {
        http.post(format!("{}/commands/{ty}", b.urls[service]))
            .json(&body)
            .send()
    };
    let order_id = uuid::Uuid::now_v7();
    let pizzas = vec!["margherita"; 10_000];
    let refused = [
        (
            0,
            "pizzeria.payment.charge-card.v1",
            json!({"order_id": order_id, "amount_cents": u64::MAX, "card": "**** 4242"}),
        ),
        (
            0,
            "pizzeria.payment.charge-card.v1",
            json!({"order_id": order_id, "amount_cents": 0, "card": "**** 4242"}),
        ),
        (
            0,
            "pizzeria.payment.charge-card.v1",
            json!({"order_id": order_id, "amount_cents": 900, "card": "4242424242424242"}),
        ),
        (
            1,
            "pizzeria.inventory.reserve-ingredients.v1",
            json!({"order_id": order_id, "pizzas": pizzas}),
        ),
        (
            1,
            "pizzeria.inventory.reserve-ingredients.v1",
            json!({"order_id": order_id, "pizzas": ["hawaii"]}),
        ),
        (
            2,
            "pizzeria.kitchen.place-ticket.v1",
            json!({"order_id": order_id, "pizzas": pizzas}),
        ),
        (
            2,
            "pizzeria.kitchen.place-ticket.v1",
            json!({"order_id": order_id, "pizzas": []}),
        ),
    ];
    for (service, ty, body) in refused {
        let answer = post(service, ty, body).await.unwrap();
        assert_eq!(answer.status(), 400, "{ty}");
        let error: tabgrab::call::http::ErrorBody = answer.json().await.unwrap();
        assert_eq!(error.kind, "invalid_payload", "{ty}");
    }
    assert_eq!(b.payment.stats().collected, 0);
    assert_eq!(b.storeroom.stats().reserved, 0);
    // A charge of one order for another amount is a conflict, not the first charge again.
    let charge = |amount: u64| {
        post(
            0,
            "pizzeria.payment.charge-card.v1",
            json!({"order_id": order_id, "amount_cents": amount, "card": "**** 4242"}),
        )
    };
    assert_eq!(charge(900).await.unwrap().status(), 200);
    assert_eq!(charge(900).await.unwrap().status(), 200);
    assert_eq!(charge(100).await.unwrap().status(), 409);
    assert_eq!(b.payment.stats().collected, 1);
    // The typed gRPC service answers INVALID_ARGUMENT, for bounds and for bytes that are not
    // protobuf alike.
    let mut client = PaymentClient::connect(b.urls[0].clone()).await.unwrap();
    let status = client
        .charge_card(ChargeCardRequest {
            order_id: uuid::Uuid::now_v7().to_string(),
            amount_cents: u64::MAX,
            card: "**** 4242".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .charge_card(ChargeCardRequest {
            order_id: order_id.to_string(),
            amount_cents: 2_000,
            card: "**** 4242".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert_eq!(grpc_status_of_garbage(&b.urls[0]).await, "3");
    b.stop.cancel();
}

/// The `grpc-status` of a ChargeCard whose bytes are no protobuf message.
async fn grpc_status_of_garbage(base: &str) -> String {
    use http_body_util::BodyExt as _;
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // One uncompressed 4-byte frame: a tag with wire type 7, which does not exist.
    let frame: &[u8] = &[0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
    let request = http::Request::post(format!("{base}/pizzeria.payment.v1.Payment/ChargeCard"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(frame)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or_else(|| headers.get("grpc-status").cloned())
        .expect("a grpc-status");
    status.to_str().unwrap().to_owned()
}

/// The call style between machines: the back-office services over mutual TLS, requiring the
/// call token; the front desk over TLS, with its client certificate and the token. A foreign
/// client (Python's ssl and urllib) orders over TLS; a front desk without the token gets its
/// order refused (the services answer 401), and a caller without a client certificate is
/// refused by payment itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_talk_over_mutual_tls_with_a_token() {
    let Some(python) = tabgrab_testkit::python::with("ssl, urllib.request", "python3") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (ca, cert, key) = (
        path(&certs.ca),
        path(&certs.server_cert),
        path(&certs.server_key),
    );
    let (client_cert, client_key) = (path(&certs.client_cert), path(&certs.client_key));
    let token = [(pizzeria::calls::TOKEN_VAR, "call-token-5d1e")];
    let server_tls = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-client-ca",
        ca.as_str(),
    ];
    let back = |name: &str| {
        let mut args = vec![name];
        args.extend(server_tls);
        spawn_service_with(&args, &token)
    };
    let (payment, inventory, kitchen) = (back("payment"), back("inventory"), back("kitchen"));
    let delivery = back("delivery");
    assert!(payment.1.starts_with("https://"), "{}", payment.1);
    let front_args = |with_token: bool| {
        let args = vec![
            "front-desk".to_owned(),
            "--payment".to_owned(),
            payment.1.clone(),
            "--inventory".to_owned(),
            inventory.1.clone(),
            "--kitchen".to_owned(),
            kitchen.1.clone(),
            "--delivery".to_owned(),
            delivery.1.clone(),
            "--peer-ca".to_owned(),
            ca.clone(),
            "--peer-cert".to_owned(),
            client_cert.clone(),
            "--peer-key".to_owned(),
            client_key.clone(),
            "--tls-cert".to_owned(),
            cert.clone(),
            "--tls-key".to_owned(),
            key.clone(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_service_with(&args, if with_token { &token } else { &[] })
    };
    let front = front_args(true);
    let tokenless = front_args(false);
    let script = r#"
import json, ssl, sys, urllib.error, urllib.request
ca, front, tokenless, payment = sys.argv[1:5]
context = ssl.create_default_context(cafile=ca)
order = json.dumps({"customer": "Ada", "pizzas": ["diavola"], "card": "4242424242424242"}).encode()
def post(url, body, headers={"content-type": "application/json"}):
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=20) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except Exception as e:
        return 0, type(e).__name__
print(json.dumps([post(front + "/orders", order), post(tokenless + "/orders", order),
                  post(payment + "/queries/pizzeria.payment.charge-card.v1", b"{}")]))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, &ca, &front.1, &tokenless.1, &payment.1])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<(u16, String)> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answers[0].0, 201, "over TLS, with the token: {answers:?}");
    assert!(
        answers[0].1.contains("\"amount_cents\":1200"),
        "{answers:?}"
    );
    assert_ne!(answers[1].0, 201, "without the token: {answers:?}");
    assert!(answers[1].1.contains("unauthenticated"), "{answers:?}");
    assert_eq!(
        answers[2].0, 0,
        "no client certificate: refused by TLS: {answers:?}"
    );
}
