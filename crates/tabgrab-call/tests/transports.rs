//! The same handlers answer over HTTP and gRPC through the client stack; refusals come back
//! typed; the deadline travels to the server, which cancels the handler past it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tabgrab_call::grpc::GrpcTransport;
use tabgrab_call::http::HttpTransport;
use tabgrab_call::{CallOptions, Client};
use tabgrab_core::ErrorKind;

use common::{
    Add, Charge, Charged, Probe, Server, Slow, WhoAmI, eventually, handlers, with_whoami,
};

fn clients(server: &Server) -> Vec<(&'static str, Client)> {
    vec![
        (
            "http",
            Client::builder(HttpTransport::new(server.url()))
                .service_name("test")
                .build(),
        ),
        (
            "grpc",
            Client::builder(GrpcTransport::new(server.url()).unwrap())
                .service_name("test")
                .build(),
        ),
    ]
}

#[tokio::test]
async fn answers_and_refusals_over_both_transports() {
    let probe = Probe::default();
    let server = Server::start(handlers(&probe)).await;
    for (name, client) in clients(&server) {
        assert_eq!(client.call(&Add { n: 41 }).await.unwrap(), 42, "{name}");
        assert_eq!(
            client.call(&Charge { amount: 5 }).await.unwrap(),
            Charged { amount: 5 },
            "{name}"
        );
        let refused = client.call(&Charge { amount: 0 }).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Remote, "{name}: {refused}");
        let rejection = refused.rejection().expect("the rejection travels back");
        assert_eq!(rejection.code, "test.zero", "{name}");
        assert_eq!(rejection.message, "nothing to charge", "{name}");
        assert!(refused.to_string().contains("test.charge.v1"), "{refused}");
        assert!(refused.to_string().contains("service test"), "{refused}");
    }
    // Three calls per transport reached the handlers, and no more (a refusal is not retried).
    assert_eq!(probe.calls(), 6);
    server.stop().await;
}

#[tokio::test]
async fn the_deadline_travels_and_the_server_cancels_the_handler() {
    for transport in ["http", "grpc"] {
        let probe = Probe::default();
        let server = Server::start(handlers(&probe)).await;
        let client = clients(&server)
            .into_iter()
            .find(|(n, _)| *n == transport)
            .unwrap()
            .1;
        let started = tokio::time::Instant::now();
        let err = client
            .call_with(
                &Slow { ms: 10_000 },
                CallOptions::timeout(Duration::from_millis(200)),
            )
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            err.kind(),
            ErrorKind::DeadlineExceeded,
            "{transport}: {err}"
        );
        assert!(
            took < Duration::from_millis(700),
            "{transport}: took {took:?}"
        );
        // The server saw the same budget and dropped the handler's future.
        assert!(
            eventually(Duration::from_secs(3), || probe.cancelled() == 1).await,
            "{transport}: handler not cancelled"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_stranger_can_post_plain_json() {
    let probe = Probe::default();
    let server = Server::start(handlers(&probe)).await;
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("{}/queries/test.add.v1", server.url()))
        .header("content-type", "application/json")
        .body("{\"n\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "2");
    server.stop().await;
}

/// Clients of `url` over HTTP and gRPC with `tls`.
fn tls_clients(url: &str, tls: &tabgrab_call::ClientTls) -> Vec<(&'static str, Client)> {
    vec![
        (
            "http",
            Client::builder(HttpTransport::builder(url).tls(tls.clone()).build())
                .service_name("test")
                .build(),
        ),
        (
            "grpc",
            Client::builder(
                GrpcTransport::builder(url)
                    .tls(tls.clone())
                    .build()
                    .unwrap(),
            )
            .service_name("test")
            .build(),
        ),
    ]
}

/// Calls over TLS on both transports; a client that does not trust the server's CA fails
/// with a typed, unretried error naming the TLS failure, and reaches no handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_tls_and_a_client_that_does_not_trust_the_server() {
    use tabgrab_call::{ClientTls, ServerTls};
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = tabgrab_testkit::tls::certificates(stranger_dir.path()).unwrap();
    let probe = Probe::default();
    let tls = ServerTls::from_files(&certs.server_cert, &certs.server_key).unwrap();
    let server = Server::start_tls(handlers(&probe), tls).await;
    let trusted = ClientTls::trusting_file(&certs.ca).unwrap();
    for (name, client) in tls_clients(&server.url_tls(), &trusted) {
        assert_eq!(client.call(&Add { n: 1 }).await.unwrap(), 2, "{name}");
    }
    let untrusting = ClientTls::trusting_file(&stranger.ca).unwrap();
    for (name, client) in tls_clients(&server.url_tls(), &untrusting) {
        let refused = client.call(&Add { n: 1 }).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Protocol, "{name}: {refused}");
        assert!(
            refused.to_string().contains("TLS with https://127.0.0.1")
                && refused.to_string().contains("invalid peer certificate"),
            "{name}: {refused}"
        );
    }
    // A plain-text client to the TLS port gets an error, not a hang.
    let plain = Client::builder(HttpTransport::new(server.url()))
        .service_name("test")
        .build();
    let err = plain
        .call_with(&Add { n: 1 }, CallOptions::timeout(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_ne!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert_eq!(
        probe.calls(),
        2,
        "only the trusted calls reached the handler"
    );
    server.stop().await;
}

/// Mutual TLS on both transports: a client with a certificate of the client CA is served;
/// one without a certificate is refused during the handshake, before any handler runs, with
/// a typed error; and a foreign client (Python's ssl and urllib) with the certificate posts a
/// plain JSON query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_clients_with_a_certificate_only() {
    use tabgrab_call::{ClientTls, ServerTls};
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let probe = Probe::default();
    let tls =
        ServerTls::mutual_from_files(&certs.server_cert, &certs.server_key, &certs.ca).unwrap();
    let server = Server::start_tls(handlers(&probe), tls).await;
    let identified =
        ClientTls::mutual_from_files(&certs.ca, &certs.client_cert, &certs.client_key).unwrap();
    for (name, client) in tls_clients(&server.url_tls(), &identified) {
        assert_eq!(client.call(&Add { n: 41 }).await.unwrap(), 42, "{name}");
    }
    let anonymous = ClientTls::trusting_file(&certs.ca).unwrap();
    for (name, client) in tls_clients(&server.url_tls(), &anonymous) {
        let refused = client
            .call_with(&Add { n: 1 }, CallOptions::timeout(Duration::from_secs(10)))
            .await
            .unwrap_err();
        // TLS 1.3: the server refuses after the handshake; the client sees its connection
        // closed, and the error says what to look at.
        assert!(
            matches!(refused.kind(), ErrorKind::Unavailable | ErrorKind::Protocol),
            "{name}: {refused}"
        );
        assert!(
            refused
                .to_string()
                .contains("this client shows no certificate")
                || refused.to_string().contains("CertificateRequired"),
            "{name}: {refused}"
        );
    }
    assert_eq!(probe.calls(), 2, "no anonymous call reached the handler");

    if let Some(python) = tabgrab_testkit::python::with("ssl, urllib.request", "python3") {
        let script = r#"
import ssl, sys, urllib.request
url, ca, cert, key = sys.argv[1:5]
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
request = urllib.request.Request(url + "/queries/test.add.v1", data=b'{"n": 9}',
                                 headers={"content-type": "application/json"})
print(urllib.request.urlopen(request, context=context, timeout=10).read().decode())
anonymous = ssl.create_default_context(cafile=ca)
try:
    urllib.request.urlopen(request, context=anonymous, timeout=10).read()
    print("anonymous: served")
except Exception as e:
    print("anonymous: refused")
"#;
        let out = std::process::Command::new(python)
            .args(["-c", script, &server.url_tls()])
            .args([&certs.ca, &certs.client_cert, &certs.client_key])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            said.lines().collect::<Vec<_>>(),
            ["10", "anonymous: refused"]
        );
        assert_eq!(probe.calls(), 3);
    }
    server.stop().await;
}

/// Authenticated calls on both transports: no token or a wrong one is refused as
/// `Unauthenticated` (401 with `www-authenticate`, `UNAUTHENTICATED`) before any handler
/// runs, and not retried; an authorization rule refuses a principal a type as
/// `PermissionDenied`; a handler sees the principal; no token appears in an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_authenticated_and_authorized_per_type() {
    use tabgrab_call::BearerTokens;
    const FRONT_DESK: &str = "tok-front-desk-9f1c";
    const KITCHEN: &str = "tok-kitchen-77ab";
    let probe = Probe::default();
    let handlers = with_whoami(&probe)
        .authenticate(
            BearerTokens::new()
                .token(FRONT_DESK, "front-desk")
                .token(KITCHEN, "kitchen"),
        )
        // Only the front desk charges; anyone authenticated may add or ask who they are.
        .authorize(|who, ty| ty != "test.charge.v1" || who.name() == "front-desk");
    let server = Server::start(handlers).await;
    let url = server.url();
    let with = |token: Option<&str>| -> Vec<(&'static str, Client)> {
        let (mut http, mut grpc) = (HttpTransport::builder(&url), GrpcTransport::builder(&url));
        if let Some(token) = token {
            http = http.bearer_token(token);
            grpc = grpc.bearer_token(token);
        }
        vec![
            (
                "http",
                Client::builder(http.build()).service_name("test").build(),
            ),
            (
                "grpc",
                Client::builder(grpc.build().unwrap())
                    .service_name("test")
                    .build(),
            ),
        ]
    };
    for (name, client) in with(None).into_iter().chain(with(Some("tok-guess"))) {
        let refused = client.call(&Add { n: 1 }).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            ErrorKind::Unauthenticated,
            "{name}: {refused}"
        );
        assert!(!refused.to_string().contains("tok-"), "{name}: {refused}");
    }
    assert_eq!(
        probe.calls(),
        0,
        "nothing unauthenticated reached a handler, once each"
    );
    for (name, client) in with(Some(KITCHEN)) {
        assert_eq!(client.call(&Add { n: 1 }).await.unwrap(), 2, "{name}");
        assert_eq!(client.call(&WhoAmI {}).await.unwrap(), "kitchen", "{name}");
        let denied = client.call(&Charge { amount: 5 }).await.unwrap_err();
        assert_eq!(
            denied.kind(),
            ErrorKind::PermissionDenied,
            "{name}: {denied}"
        );
        assert!(
            denied.to_string().contains("kitchen may not send it"),
            "{denied}"
        );
    }
    for (name, client) in with(Some(FRONT_DESK)) {
        assert_eq!(
            client.call(&Charge { amount: 5 }).await.unwrap(),
            Charged { amount: 5 },
            "{name}"
        );
        assert_eq!(
            client.call(&WhoAmI {}).await.unwrap(),
            "front-desk",
            "{name}"
        );
    }
    // A plain client is told how to authenticate.
    let answer = reqwest::Client::new()
        .post(format!("{url}/queries/test.add.v1"))
        .header("content-type", "application/json")
        .body("{\"n\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(answer.headers()["www-authenticate"], "Bearer");
    let body = answer.text().await.unwrap();
    assert!(body.contains("\"kind\":\"unauthenticated\""), "{body}");
    server.stop().await;
}
