//! Calls over core NATS: the same handlers as HTTP and gRPC, on a queue group per service,
//! through the same client stack. Runs against the shared nats-server on 127.0.0.1:4222
//! (skipped with a printed reason when it is absent, a failure under
//! `TABGRAB_REQUIRE_SERVICES=1`); every test uses a service name of its own.
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tabgrab_call::nats::{self, NatsTransport};
use tabgrab_call::retry::RetryConfig;
use tabgrab_call::{CallContext, CallOptions, Client, HandlerError, Handlers};
use tabgrab_core::ErrorKind;
use tokio::sync::oneshot;
use tokio::time::Instant;

use common::{Add, Charge, Charged, Probe, Slow, eventually, handlers};

const URL: &str = "nats://127.0.0.1:4222";

async fn connect() -> Option<async_nats::Client> {
    if !tabgrab_testkit::services::require("NATS", "127.0.0.1:4222") {
        return None;
    }
    Some(async_nats::connect(URL).await.unwrap())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

/// A unique suffix without another dependency: the time and a counter.
fn uuid_like() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{nanos:x}{}{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A server of `service` on its own connection; stops (draining) when the sender is used or
/// dropped.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tabgrab_core::Error>>,
}

impl Running {
    async fn start(service: &str, handlers: Handlers) -> Running {
        let client = async_nats::connect(URL).await.unwrap();
        let listener = nats::listen(&client, service).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(nats::serve(listener, handlers, async move {
            let _ = stopped.await;
        }));
        Running {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

fn client(nats: &async_nats::Client, service: &str) -> Client {
    Client::builder(NatsTransport::new(nats.clone(), service))
        .service_name(service)
        .build()
}

#[tokio::test]
async fn answers_and_a_rejection_travels_back_typed() {
    let Some(nats) = connect().await else { return };
    let service = unique("answers");
    let probe = Probe::default();
    let server = Running::start(&service, handlers(&probe)).await;
    let client = client(&nats, &service);
    assert_eq!(client.call(&Add { n: 41 }).await.unwrap(), 42);
    assert_eq!(
        client.call(&Charge { amount: 5 }).await.unwrap(),
        Charged { amount: 5 }
    );
    let refused = client.call(&Charge { amount: 0 }).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Remote, "{refused}");
    let rejection = refused.rejection().expect("the rejection travels back");
    assert_eq!(rejection.code, "test.zero");
    assert_eq!(rejection.message, "nothing to charge");
    assert!(refused.to_string().contains("test.charge.v1"), "{refused}");
    // A refusal is an answer: not retried, so three calls reached the handlers.
    assert_eq!(probe.calls(), 3);
    // The same server reads a client that sends in binary mode (`ce-*` headers).
    let binary = Client::builder(
        NatsTransport::builder(nats.clone(), &service)
            .content_mode(tabgrab_core::wire::ContentMode::Binary)
            .build(),
    )
    .service_name(&service)
    .build();
    assert_eq!(binary.call(&Add { n: 1 }).await.unwrap(), 2);
    let refused = binary.call(&Charge { amount: 0 }).await.unwrap_err();
    assert_eq!(
        refused.rejection().map(|r| r.code.as_str()),
        Some("test.zero")
    );
    assert_eq!(probe.calls(), 5);
    server.stop().await;
}

#[tokio::test]
async fn no_responders_is_unavailable_at_once_and_opens_the_breaker() {
    let Some(nats) = connect().await else { return };
    let service = unique("nobody");
    let client = Client::builder(NatsTransport::new(nats.clone(), &service))
        .service_name(&service)
        .retry(RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        })
        .build();
    let started = Instant::now();
    let err = client
        .call_with(&Add { n: 1 }, CallOptions::timeout(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.message().contains("no responders"), "{err}");
    // Fast: NATS says at once that nobody listens; the 10 s deadline plays no part.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The breaker counts it like any unavailable recipient, and opens.
    let mut open = None;
    for _ in 0..50 {
        let err = client.call(&Add { n: 1 }).await.unwrap_err();
        if err.kind() == ErrorKind::CircuitOpen {
            open = Some(err);
            break;
        }
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }
    assert!(open.is_some(), "the breaker never opened");
}

#[tokio::test]
async fn the_deadline_is_the_request_timeout_and_cancels_the_handler() {
    let Some(nats) = connect().await else { return };
    let service = unique("slow");
    let probe = Probe::default();
    let server = Running::start(&service, handlers(&probe)).await;
    let client = client(&nats, &service);
    let started = Instant::now();
    let err = client
        .call_with(
            &Slow { ms: 10_000 },
            CallOptions::timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(took >= Duration::from_millis(190), "{took:?}");
    assert!(took < Duration::from_millis(700), "{took:?}");
    // The server got the same budget in `tabgrab-timeout` and dropped the handler's future.
    assert!(
        eventually(Duration::from_secs(3), || probe.cancelled() == 1).await,
        "handler not cancelled"
    );
    // An attempt timeout below the deadline is a `Timeout` of that attempt (retried while
    // the deadline allows: a query is idempotent).
    let client = Client::builder(NatsTransport::new(nats.clone(), &service))
        .service_name(&service)
        .attempt_timeout(Duration::from_millis(100))
        .retry(RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        })
        .build();
    let err = client
        .call_with(
            &Slow { ms: 10_000 },
            CallOptions::timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    server.stop().await;
}

#[tokio::test]
async fn any_server_of_the_queue_group_answers() {
    let Some(nats) = connect().await else { return };
    let service = unique("group");
    let counted = |hits: Arc<AtomicU64>| {
        Handlers::new().handle(move |q: Add, _ctx: CallContext| {
            let hits = Arc::clone(&hits);
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(q.n + 1)
            }
        })
    };
    let (a_hits, b_hits) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a = Running::start(&service, counted(Arc::clone(&a_hits))).await;
    let b = Running::start(&service, counted(Arc::clone(&b_hits))).await;
    let client = client(&nats, &service);
    for n in 0..64 {
        assert_eq!(client.call(&Add { n }).await.unwrap(), n + 1);
    }
    let (from_a, from_b) = (a_hits.load(Ordering::SeqCst), b_hits.load(Ordering::SeqCst));
    // Each request went to exactly one member; NATS picks at random, so both got some (the
    // chance that one got all 64 is 2^-63).
    assert_eq!(from_a + from_b, 64);
    assert!(from_a > 0 && from_b > 0, "a {from_a}, b {from_b}");
    // One member stops: the other answers everything.
    a.stop().await;
    for n in 0..16 {
        assert_eq!(client.call(&Add { n }).await.unwrap(), n + 1);
    }
    assert_eq!(a_hits.load(Ordering::SeqCst), from_a);
    assert_eq!(b_hits.load(Ordering::SeqCst), from_b + 16);
    b.stop().await;
}

#[tokio::test]
async fn a_stranger_can_request_with_plain_json_and_bad_input_is_refused() {
    let Some(nats) = connect().await else { return };
    let service = unique("plain");
    let probe = Probe::default();
    let server = Running::start(&service, handlers(&probe)).await;
    // Plain core NATS, no tabgrab: the envelope is made from the subject.
    let subject = nats::call_subject(&service, tabgrab_call::RequestKind::Query, "test.add.v1");
    let answer = nats
        .request(subject.clone(), "{\"n\": 1}".into())
        .await
        .unwrap();
    assert_eq!(&answer.payload[..], b"2");
    assert!(answer.headers.is_none());
    // Bad JSON: an error answer with its kind, never the handler.
    let answer = nats.request(subject, "{\"n\": ".into()).await.unwrap();
    let headers = answer.headers.expect("an error answer has headers");
    assert_eq!(
        headers.get(nats::ERROR_HEADER).map(|v| v.as_str()),
        Some("invalid_payload")
    );
    // An unknown type, and a query sent as a command.
    let unknown = nats::call_subject(&service, tabgrab_call::RequestKind::Query, "test.nope.v1");
    let answer = nats.request(unknown, "{}".into()).await.unwrap();
    assert_eq!(
        answer
            .headers
            .unwrap()
            .get(nats::ERROR_HEADER)
            .map(|v| v.as_str()),
        Some("unknown_type")
    );
    let wrong = nats::call_subject(&service, tabgrab_call::RequestKind::Command, "test.add.v1");
    let answer = nats.request(wrong, "{\"n\": 1}".into()).await.unwrap();
    assert_eq!(
        answer
            .headers
            .unwrap()
            .get(nats::ERROR_HEADER)
            .map(|v| v.as_str()),
        Some("unknown_type")
    );
    assert_eq!(probe.calls(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_input_rules_hold_over_nats_as_over_http_and_grpc() {
    let Some(nats) = connect().await else { return };
    let service = unique("strict");
    let probe = Probe::default();
    let server = Running::start(&service, handlers(&probe)).await;
    let kind_of = |answer: async_nats::Message| {
        answer
            .headers
            .and_then(|h| h.get(nats::ERROR_HEADER).map(|v| v.as_str().to_owned()))
    };
    let query = nats::call_subject(&service, tabgrab_call::RequestKind::Query, "test.add.v1");
    let command = nats::call_subject(
        &service,
        tabgrab_call::RequestKind::Command,
        "test.charge.v1",
    );
    let with = |pairs: &[(&str, &str)]| {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, *value);
        }
        headers
    };
    let ce = [
        ("ce-specversion", "1.0"),
        ("ce-id", "n-1"),
        ("ce-source", "/t"),
        ("ce-type", "test.add.v1"),
    ];
    // A field the message does not have.
    let answer = nats
        .request(query.clone(), "{\"n\": 1, \"m\": 2}".into())
        .await
        .unwrap();
    assert_eq!(kind_of(answer).as_deref(), Some("invalid_payload"));
    // A payload that is not JSON.
    let answer = nats
        .request_with_headers(
            query.clone(),
            with(&[("content-type", "text/plain")]),
            "1".into(),
        )
        .await
        .unwrap();
    assert_eq!(kind_of(answer).as_deref(), Some("unsupported_media_type"));
    // Attribute rules: a control character (a NATS header can carry a tab) and a bad name.
    for bad in [("ce-subject", "a\tb"), ("ce-my_ext", "x")] {
        let mut pairs = ce.to_vec();
        pairs.push(bad);
        let answer = nats
            .request_with_headers(query.clone(), with(&pairs), "{\"n\": 1}".into())
            .await
            .unwrap();
        assert_eq!(kind_of(answer).as_deref(), Some("malformed"), "{bad:?}");
    }
    assert_eq!(probe.calls(), 0);
    // An idempotency key bound to its payload.
    let keyed = |amount: u64| {
        nats.request_with_headers(
            command.clone(),
            with(&[("idempotency-key", "k-1")]),
            format!("{{\"amount\": {amount}}}").into(),
        )
    };
    let first = keyed(5).await.unwrap();
    assert!(kind_of(first.clone()).is_none());
    let again = keyed(5).await.unwrap();
    assert_eq!(again.payload, first.payload);
    assert_eq!(probe.calls(), 1);
    let other = keyed(6).await.unwrap();
    assert_eq!(kind_of(other).as_deref(), Some("conflict"));
    assert_eq!(probe.calls(), 1);
    server.stop().await;
}

/// The server's size limit holds over NATS as over HTTP and gRPC: a call over it, plain or in
/// either content mode, is answered `too_large` and never reaches the handler.
#[tokio::test]
async fn a_call_over_the_size_limit_is_too_large_and_never_reaches_the_handler() {
    let Some(nats) = connect().await else { return };
    let service = unique("small");
    let probe = Probe::default();
    let small = tabgrab_core::Codec::with_max_size(1024);
    let server = Running::start(&service, handlers(&probe).codec(small)).await;
    let query = nats::call_subject(&service, tabgrab_call::RequestKind::Query, "test.add.v1");
    let big = format!("{{\"n\": 1, \"pad\": \"{}\"}}", "x".repeat(4096));
    let kind_of = |answer: async_nats::Message| {
        answer
            .headers
            .and_then(|h| h.get(nats::ERROR_HEADER).map(|v| v.as_str().to_owned()))
    };
    // Plain JSON, and CloudEvents binary mode (attributes in headers).
    let answer = nats
        .request(query.clone(), big.clone().into())
        .await
        .unwrap();
    assert_eq!(kind_of(answer).as_deref(), Some("too_large"));
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "n-big"),
        ("ce-source", "/t"),
        ("ce-type", "test.add.v1"),
        ("content-type", "application/json"),
    ] {
        headers.insert(name, value);
    }
    let answer = nats
        .request_with_headers(query.clone(), headers, big.clone().into())
        .await
        .unwrap();
    assert_eq!(kind_of(answer).as_deref(), Some("too_large"));
    // Structured mode: the whole event as the body.
    let event = format!(
        "{{\"specversion\":\"1.0\",\"id\":\"n-big-2\",\"source\":\"/t\",\"type\":\"test.add.v1\",\"data\":{big}}}"
    );
    let answer = nats.request(query, event.into()).await.unwrap();
    assert_eq!(kind_of(answer).as_deref(), Some("too_large"));
    assert_eq!(probe.calls(), 0);
    // Under the limit, the same server answers.
    let answer = client(&nats, &service).call(&Add { n: 1 }).await.unwrap();
    assert_eq!(answer, 2);
    assert_eq!(probe.calls(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_structured_call_is_one_message_without_headers_that_carries_deadline_and_key() {
    let Some(nats) = connect().await else { return };
    let service = unique("headerless");
    type Seen = (Option<Duration>, Option<String>, Vec<String>);
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
    let recorded = Arc::clone(&seen);
    let handlers = Handlers::new().handle(move |c: Charge, ctx: CallContext| {
        let recorded = Arc::clone(&recorded);
        async move {
            let extensions = ctx.envelope().extensions.keys().cloned().collect();
            let entry = (
                ctx.remaining(),
                ctx.idempotency_key().map(str::to_owned),
                extensions,
            );
            recorded.lock().unwrap().push(entry);
            Ok::<_, HandlerError>(Charged { amount: c.amount })
        }
    });
    let server = Running::start(&service, handlers).await;
    // A plain subscriber on the call's subject sees each request as it travels.
    let subject = nats::call_subject(
        &service,
        tabgrab_call::RequestKind::Command,
        "test.charge.v1",
    );
    let mut wire = nats.subscribe(subject.clone()).await.unwrap();
    nats.flush().await.unwrap();
    let client = client(&nats, &service);
    let charge = async |amount: u64| {
        let options =
            CallOptions::timeout(Duration::from_secs(5)).idempotency_key("charge-order-1");
        client.call_with(&Charge { amount }, options).await
    };
    assert_eq!(charge(7).await.unwrap(), Charged { amount: 7 });
    let sent = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut wire))
        .await
        .unwrap()
        .unwrap();
    assert!(sent.headers.is_none(), "{:?}", sent.headers);
    let body: serde_json::Value = serde_json::from_slice(&sent.payload).unwrap();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["idempotencykey"], "charge-order-1");
    let ms: u64 = body["tabgrabtimeout"].as_str().unwrap().parse().unwrap();
    assert!((1..=5_000).contains(&ms), "{ms}");
    // The handler got the deadline and the key, and neither as an extension of its event.
    {
        let seen = seen.lock().unwrap();
        let (remaining, key, extensions) = &seen[0];
        let remaining = remaining.expect("the caller's deadline reached the handler");
        assert!(remaining > Duration::from_secs(3), "{remaining:?}");
        assert_eq!(key.as_deref(), Some("charge-order-1"));
        assert!(extensions.is_empty(), "{extensions:?}");
    }
    // The key works as over headers: the same call again is answered from the first, and
    // another payload under it is a conflict.
    assert_eq!(charge(7).await.unwrap(), Charged { amount: 7 });
    let conflict = charge(8).await.unwrap_err();
    assert_eq!(conflict.kind(), ErrorKind::Conflict, "{conflict}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Without headers, a body that names `specversion` is read as an event and refused with
    // what it lacks; one that does not is a plain request.
    let kind_of = |answer: async_nats::Message| {
        answer
            .headers
            .and_then(|h| h.get(nats::ERROR_HEADER).map(|v| v.as_str().to_owned()))
    };
    let answer = nats
        .request(
            subject.clone(),
            "{\"specversion\": \"1.0\", \"amount\": 1}".into(),
        )
        .await
        .unwrap();
    assert_eq!(kind_of(answer).as_deref(), Some("missing_attribute"));
    let answer = nats
        .request(subject.clone(), "{\"amount\": 2}".into())
        .await
        .unwrap();
    assert!(answer.headers.is_none());
    assert_eq!(&answer.payload[..], b"{\"amount\":2}");
    // A timeout attribute that is not a number of milliseconds: malformed, never the handler.
    let mut bad = serde_json::from_slice::<serde_json::Value>(&sent.payload).unwrap();
    bad["id"] = "another-id".into();
    bad["tabgrabtimeout"] = "soon".into();
    let answer = nats
        .request(subject, serde_json::to_vec(&bad).unwrap().into())
        .await
        .unwrap();
    assert_eq!(kind_of(answer).as_deref(), Some("malformed"));
    assert_eq!(seen.lock().unwrap().len(), 2);
    server.stop().await;
}

/// Over NATS as over HTTP and gRPC: a server whose handlers authenticate refuses a call
/// without the token (or with a wrong one) as `Unauthenticated`, in either content mode, and
/// serves one with it.
#[tokio::test]
async fn calls_without_the_token_are_unauthenticated() {
    let Some(nats) = connect().await else { return };
    let service = unique("auth");
    let probe = Probe::default();
    let handlers =
        handlers(&probe).authenticate(tabgrab_call::BearerTokens::new().token("tok-3e9", "ops"));
    let server = Running::start(&service, handlers).await;
    for mode in [
        tabgrab_core::wire::ContentMode::Structured,
        tabgrab_core::wire::ContentMode::Binary,
    ] {
        let build = |token: Option<&str>| {
            let mut transport = NatsTransport::builder(nats.clone(), &service).content_mode(mode);
            if let Some(token) = token {
                transport = transport.bearer_token(token);
            }
            Client::builder(transport.build())
                .service_name(&service)
                .build()
        };
        for token in [None, Some("tok-wrong")] {
            let refused = build(token).call(&Add { n: 1 }).await.unwrap_err();
            assert_eq!(
                refused.kind(),
                ErrorKind::Unauthenticated,
                "{mode:?}: {refused}"
            );
        }
        assert_eq!(build(Some("tok-3e9")).call(&Add { n: 1 }).await.unwrap(), 2);
    }
    assert_eq!(
        probe.calls(),
        2,
        "only the authenticated calls were handled"
    );
    server.stop().await;
}
