//! Who calls, proven by TLS: a client certificate names the principal that reaches the
//! handler, over HTTP and gRPC, on real servers over TLS on loopback; and certificates out of
//! their validity (expired, not yet valid) fail once, at once, with an error that says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tabgrab_call::auth::{Authenticator as _, BearerTokens, ClientCertificates};
use tabgrab_call::grpc::GrpcTransport;
use tabgrab_call::http::HttpTransport;
use tabgrab_call::retry::{RetryBudget, RetryConfig};
use tabgrab_call::{CallOptions, Client, ClientTls, ServerTls};
use tabgrab_core::ErrorKind;

use common::{Add, Charge, Probe, Server, WhoAmI, handlers, with_whoami};

/// The CA of `tabgrab_testkit::tls::certificates` in `dir` (its `ca.pem` and `ca.key`)
/// signs a certificate for the subject `CN=cn`, with the extensions `ext` (openssl's
/// `-extfile` syntax), valid from `from` to `until` (`YYYYMMDDHHMMSSZ`) or, without them, for
/// two days from now. Returns the certificate's and its key's paths.
fn issue(
    dir: &Path,
    name: &str,
    cn: &str,
    ext: &str,
    validity: Option<(&str, &str)>,
) -> (PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // `openssl ca`, unlike `openssl x509 -req` in OpenSSL 3.0, sets any validity period.
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\n\
         serial = serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
         [any]\ncommonName = supplied\n",
    )
    .unwrap();
    if !dir.join("index.txt").exists() {
        std::fs::write(dir.join("index.txt"), "").unwrap();
    }
    let (key, csr, pem, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext).unwrap();
    let subject = format!("/CN={cn}");
    run(&[
        "req",
        "-subj",
        &subject,
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    let mut sign = vec![
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-cert",
        "ca.pem",
        "-keyfile",
        "ca.key",
        "-rand_serial",
        "-notext",
        "-in",
        &csr,
        "-out",
        &pem,
        "-extfile",
        &extfile,
    ];
    match validity {
        Some((from, until)) => sign.extend(["-startdate", from, "-enddate", until]),
        None => sign.extend(["-days", "2"]),
    }
    run(&sign);
    (dir.join(pem), dir.join(key))
}

const CLIENT_EXT: &str = "extendedKeyUsage=clientAuth\n";
const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
/// A day in 2020: long gone.
const EXPIRED: (&str, &str) = ("20200101000000Z", "20200102000000Z");
/// A day in 2090: not yet.
const NOT_YET: (&str, &str) = ("20900101000000Z", "20900102000000Z");

/// Clients of `url` over HTTP and gRPC with `tls` and, if given, a bearer token; every call
/// may be tried up to 5 times (what must not be retried shows that it is not).
fn clients(url: &str, tls: &ClientTls, token: Option<&str>) -> Vec<(&'static str, Client)> {
    let (mut http, mut grpc) = (
        HttpTransport::builder(url).tls(tls.clone()),
        GrpcTransport::builder(url).tls(tls.clone()),
    );
    if let Some(token) = token {
        http = http.bearer_token(token);
        grpc = grpc.bearer_token(token);
    }
    vec![
        ("http", retrying(Client::builder(http.build()))),
        ("grpc", retrying(Client::builder(grpc.build().unwrap()))),
    ]
}

/// `builder` with up to 5 attempts per call and a budget that allows them.
fn retrying<T>(builder: tabgrab_call::ClientBuilder<T>) -> Client
where
    T: tower::Service<tabgrab_call::Call, Response = bytes::Bytes, Error = tabgrab_call::CallError>
        + Clone
        + Send
        + Sync
        + 'static,
    T::Future: Send + 'static,
{
    builder
        .service_name("test")
        .retry(RetryConfig {
            max_attempts: 5,
            base: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        })
        .retry_budget(Arc::new(RetryBudget::new(
            Duration::from_secs(10),
            1_000,
            100.0,
        )))
        .default_timeout(Duration::from_secs(10))
        .build()
}

/// Over mutual TLS, the client certificate's CN names the principal that reaches the
/// handler, over HTTP and over gRPC; an authorization rule refuses that principal a type;
/// a certificate of the same CA with a name not allowed is refused as unauthenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_principal_over_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let (kitchen_cert, kitchen_key) = issue(dir.path(), "kitchen", "kitchen", CLIENT_EXT, None);
    let probe = Probe::default();
    let handlers = with_whoami(&probe)
        .authenticate(ClientCertificates::new().allow("kitchen", "kitchen"))
        // The kitchen adds and asks who it is; it never charges.
        .authorize(|who, ty| ty != "test.charge.v1" || who.name() != "kitchen");
    let tls =
        ServerTls::mutual_from_files(&certs.server_cert, &certs.server_key, &certs.ca).unwrap();
    let server = Server::start_tls(handlers, tls).await;

    let kitchen = ClientTls::mutual_from_files(&certs.ca, &kitchen_cert, &kitchen_key).unwrap();
    for (name, client) in clients(&server.url_tls(), &kitchen, None) {
        assert_eq!(client.call(&WhoAmI {}).await.unwrap(), "kitchen", "{name}");
        assert_eq!(client.call(&Add { n: 1 }).await.unwrap(), 2, "{name}");
        let denied = client.call(&Charge { amount: 5 }).await.unwrap_err();
        assert_eq!(
            denied.kind(),
            ErrorKind::PermissionDenied,
            "{name}: {denied}"
        );
        assert!(
            denied.to_string().contains("kitchen may not send it"),
            "{name}: {denied}"
        );
    }
    assert_eq!(probe.calls(), 2, "the two adds; no charge ran");

    // The CA's other client certificate (CN=client) passes the handshake, not the list.
    let other =
        ClientTls::mutual_from_files(&certs.ca, &certs.client_cert, &certs.client_key).unwrap();
    for (name, client) in clients(&server.url_tls(), &other, None) {
        let refused = client.call(&Add { n: 1 }).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            ErrorKind::Unauthenticated,
            "{name}: {refused}"
        );
        assert!(
            refused.to_string().contains("\"client\" is not allowed"),
            "{name}: {refused}"
        );
    }
    assert_eq!(probe.calls(), 2, "nothing of the other client ran");
    server.stop().await;
}

/// Served over TLS without client certificates, the certificate authenticator has no
/// certificate to read: every call is unauthenticated, even from a client that has one
/// (the server never asks for it). Combined with bearer tokens, a token passes instead; over
/// mutual TLS the certificate does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_mutual_tls_the_certificate_authenticator_refuses_and_a_token_may_stand_in() {
    const TOKEN: &str = "tok-ops-5e1d";
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let (kitchen_cert, kitchen_key) = issue(dir.path(), "kitchen", "kitchen", CLIENT_EXT, None);
    let anonymous = ClientTls::trusting_file(&certs.ca).unwrap();
    let kitchen = ClientTls::mutual_from_files(&certs.ca, &kitchen_cert, &kitchen_key).unwrap();
    let probe = Probe::default();

    let plain = ServerTls::from_files(&certs.server_cert, &certs.server_key).unwrap();
    let server = Server::start_tls(
        with_whoami(&probe).authenticate(ClientCertificates::new()),
        plain.clone(),
    )
    .await;
    for tls in [&anonymous, &kitchen] {
        for (name, client) in clients(&server.url_tls(), tls, None) {
            let refused = client.call(&WhoAmI {}).await.unwrap_err();
            assert_eq!(
                refused.kind(),
                ErrorKind::Unauthenticated,
                "{name}: {refused}"
            );
            assert!(
                refused.to_string().contains("no client certificate"),
                "{name}: {refused}"
            );
        }
    }
    server.stop().await;

    let either = || ClientCertificates::new().or(BearerTokens::new().token(TOKEN, "ops"));
    let server = Server::start_tls(with_whoami(&probe).authenticate(either()), plain).await;
    for (name, client) in clients(&server.url_tls(), &anonymous, None) {
        let refused = client.call(&WhoAmI {}).await.unwrap_err();
        assert_eq!(
            refused.kind(),
            ErrorKind::Unauthenticated,
            "{name}: {refused}"
        );
        // Both ways in are named.
        let said = refused.to_string();
        assert!(
            said.contains("no client certificate") && said.contains("Bearer <token>"),
            "{name}: {said}"
        );
    }
    for (name, client) in clients(&server.url_tls(), &anonymous, Some(TOKEN)) {
        assert_eq!(client.call(&WhoAmI {}).await.unwrap(), "ops", "{name}");
    }
    server.stop().await;

    let mutual =
        ServerTls::mutual_from_files(&certs.server_cert, &certs.server_key, &certs.ca).unwrap();
    let server = Server::start_tls(with_whoami(&probe).authenticate(either()), mutual).await;
    // The certificate comes first; a wrong token beside it does not matter.
    for (name, client) in clients(&server.url_tls(), &kitchen, Some("tok-wrong")) {
        assert_eq!(client.call(&WhoAmI {}).await.unwrap(), "kitchen", "{name}");
    }
    server.stop().await;
    assert_eq!(probe.calls(), 0, "only WhoAmI was called");
}

/// A TCP relay to `target` that counts the connections it accepts: the attempts a client
/// makes at the server behind it.
async fn counting_relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, accepted)
}

/// A server whose certificate expired, or is not valid yet: each client (HTTP, gRPC; retries
/// configured) fails with `Protocol`, whose message says so, after exactly one connection, at
/// once; nothing reaches a handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_out_of_its_validity_fails_the_call_once_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    for (name, validity, says) in [
        ("stale", EXPIRED, "certificate expired"),
        ("early", NOT_YET, "not valid"),
    ] {
        let (cert, key) = issue(dir.path(), name, "server", SERVER_EXT, Some(validity));
        let probe = Probe::default();
        let server = Server::start_tls(
            handlers(&probe),
            ServerTls::from_files(&cert, &key).unwrap(),
        )
        .await;
        let (relay, accepted) = counting_relay(server.addr).await;
        let trusted = ClientTls::trusting_file(&certs.ca).unwrap();
        for (transport, client) in clients(&format!("https://{relay}"), &trusted, None) {
            refused_once(&client, &accepted, says, &format!("{name} {transport}")).await;
        }
        assert_eq!(probe.calls(), 0);
        server.stop().await;
    }
}

/// One call through `client` (to a [`counting_relay`] whose count is `accepted`) fails
/// within 5 s, with a `Protocol` error that names the TLS peer and `says` why, over exactly
/// one connection: a refused handshake is not retried.
async fn refused_once(client: &Client, accepted: &AtomicU64, says: &str, label: &str) {
    let before = accepted.load(Ordering::SeqCst);
    let started = Instant::now();
    let refused = client
        .call_with(&Add { n: 1 }, CallOptions::timeout(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{label}: {:?}",
        started.elapsed()
    );
    let said = refused.to_string();
    assert_eq!(refused.kind(), ErrorKind::Protocol, "{label}: {said}");
    assert!(
        said.contains("TLS with https://127.0.0.1") && said.contains(says),
        "{label}: {said}"
    );
    let connections = accepted.load(Ordering::SeqCst) - before;
    assert_eq!(
        connections, 1,
        "{label}: connections for one call, no retry"
    );
}

/// A mutual-TLS server refuses a client certificate that expired, or is not valid yet, at
/// the handshake: the client fails once, with an error that names the refusal, and the
/// server goes on serving a client with a valid certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_out_of_its_validity_is_refused_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tabgrab_testkit::tls::certificates(dir.path()).unwrap();
    let expired = issue(dir.path(), "expired", "kitchen", CLIENT_EXT, Some(EXPIRED));
    let early = issue(dir.path(), "early", "kitchen", CLIENT_EXT, Some(NOT_YET));
    let probe = Probe::default();
    let tls =
        ServerTls::mutual_from_files(&certs.server_cert, &certs.server_key, &certs.ca).unwrap();
    let server = Server::start_tls(handlers(&probe), tls).await;
    let (relay, accepted) = counting_relay(server.addr).await;
    let url = format!("https://{relay}");
    // TLS 1.3: the server checks the certificate after the client's handshake is done, and
    // says why with an alert (`certificate_expired` stands for "not currently valid", early
    // as well as late); the client reports it, and does not try again once it has read it.
    // The client has sent its request by then: the server's lingering close reads it, so no
    // reset overtakes the alert (before it, one run in some dozens saw "connection reset",
    // took it for a lost connection and tried again). One connection per call, never the
    // five attempts the clients may make.
    for (cert, key) in [expired, early] {
        let tls = ClientTls::mutual_from_files(&certs.ca, &cert, &key).unwrap();
        for (name, client) in clients(&url, &tls, None) {
            let says = "received fatal alert: CertificateExpired";
            refused_once(&client, &accepted, says, name).await;
        }
    }
    assert_eq!(probe.calls(), 0);
    let valid =
        ClientTls::mutual_from_files(&certs.ca, &certs.client_cert, &certs.client_key).unwrap();
    for (name, client) in clients(&url, &valid, None) {
        assert_eq!(client.call(&Add { n: 1 }).await.unwrap(), 2, "{name}");
    }
    assert_eq!(probe.calls(), 2);
    server.stop().await;
}
