//! Malformed, oversized and unknown requests are refused with a clear 4xx or gRPC status and
//! never reach the handler.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tabgrab_call::grpc::proto::CallRequest;
use tabgrab_call::grpc::proto::calls_client::CallsClient;
use tabgrab_call::http::ErrorBody;
use tabgrab_core::Codec;
use tower::ServiceExt as _;

use common::{Probe, Server, handlers};

async fn post(probe: &Probe, uri: &str, body: Vec<u8>) -> (StatusCode, ErrorBody) {
    let app = tabgrab_call::router(handlers(probe).codec(Codec::with_max_size(1024)));
    let response = app
        .oneshot(
            Request::post(uri)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "not an error body ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

#[tokio::test]
async fn malformed_json_is_400_and_never_reaches_the_handler() {
    let probe = Probe::default();
    let (status, body) = post(
        &probe,
        "/queries/test.add.v1",
        b"{\"n\": \"seven\"".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body.kind, "invalid_payload");
    assert!(body.error.contains("test.add.v1"), "{}", body.error);
    assert_eq!(probe.calls(), 0);
}

#[tokio::test]
async fn oversized_body_is_413_and_never_reaches_the_handler() {
    let probe = Probe::default();
    let big = format!("{{\"n\": 1, \"pad\": \"{}\"}}", "x".repeat(4096));
    let (status, body) = post(&probe, "/queries/test.add.v1", big.into_bytes()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body.kind, "too_large");
    assert!(
        body.error.contains("maximum of 1024 bytes"),
        "{}",
        body.error
    );
    assert_eq!(probe.calls(), 0);
}

#[tokio::test]
async fn unknown_type_is_404_and_a_query_posted_as_a_command_says_where_to_go() {
    let probe = Probe::default();
    let (status, body) = post(&probe, "/queries/test.nothing.v1", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body.kind, "unknown_type");
    let (status, body) = post(&probe, "/commands/test.add.v1", b"{\"n\":1}".to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body.error.contains("/queries/test.add.v1"),
        "{}",
        body.error
    );
    assert_eq!(probe.calls(), 0);
}

#[tokio::test]
async fn bad_cloudevents_headers_are_400() {
    let probe = Probe::default();
    let app = tabgrab_call::router(handlers(&probe));
    let response = app
        .oneshot(
            Request::post("/queries/test.add.v1")
                .header("ce-specversion", "1.0")
                .header("ce-id", "1")
                .header("ce-source", "/t")
                .header("ce-type", "test.other.v1")
                .body(Body::from("{\"n\":1}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(probe.calls(), 0);
}

#[tokio::test]
async fn grpc_malformed_oversized_and_unknown_get_clear_statuses() {
    let probe = Probe::default();
    let server = Server::start(handlers(&probe).codec(Codec::with_max_size(1024))).await;
    let mut client = CallsClient::connect(server.url()).await.unwrap();
    let call = |ty: &str, data: Vec<u8>| CallRequest {
        r#type: ty.to_owned(),
        data: data.into(),
        attributes: Default::default(),
    };
    let status = client
        .call(call("test.add.v1", b"not json".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("test.add.v1"),
        "{}",
        status.message()
    );
    let status = client
        .call(call("test.add.v1", vec![b' '; 1500]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("maximum"), "{}", status.message());
    let status = client
        .call(call("test.nothing.v1", b"{}".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert_eq!(probe.calls(), 0);
    let ok = client
        .call(call("test.add.v1", b"{\"n\":41}".to_vec()))
        .await
        .unwrap();
    assert_eq!(&ok.into_inner().data[..], b"42");
    server.stop().await;
}

/// A request to the router with `content_type` (if any), `headers` and `body`: the status
/// and the body.
async fn send(
    probe: &Probe,
    uri: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (StatusCode, bytes::Bytes) {
    let app = tabgrab_call::router(handlers(probe));
    let mut request = Request::post(uri);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .oneshot(request.body(Body::from(body.to_vec())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn kind_of(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.kind)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415_and_never_reaches_the_handler() {
    let probe = Probe::default();
    let add = b"{\"n\":1}";
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/cloudevents-batch+json",
        "application/protobuf",
    ] {
        let (status, body) = send(&probe, "/queries/test.add.v1", Some(ct), &[], add).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        assert_eq!(kind_of(&body), "unsupported_media_type", "{ct}");
    }
    assert_eq!(probe.calls(), 0);
    // JSON, a +json type, and no content type (an envelope without datacontenttype is JSON).
    for ct in [
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("application/vnd.pizzeria+json"),
        None,
    ] {
        let (status, body) = send(&probe, "/queries/test.add.v1", ct, &[], add).await;
        assert_eq!(status, StatusCode::OK, "{ct:?}");
        assert_eq!(&body[..], b"2");
    }
    // A CloudEvent in structured mode: the body is the envelope, its data the message.
    let event =
        br#"{"specversion":"1.0","id":"e-1","source":"/t","type":"test.add.v1","data":{"n":41}}"#;
    let (status, body) = send(
        &probe,
        "/queries/test.add.v1",
        Some("application/cloudevents+json"),
        &[],
        event,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"42");
    // A structured event whose data is not JSON is refused, its type must be the path's.
    let text = br#"{"specversion":"1.0","id":"e-1","source":"/t","type":"test.add.v1","datacontenttype":"text/plain","data_base64":"AA=="}"#;
    let (status, _) = send(
        &probe,
        "/queries/test.add.v1",
        Some("application/cloudevents+json"),
        &[],
        text,
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let other =
        br#"{"specversion":"1.0","id":"e-1","source":"/t","type":"test.slow.v1","data":{"ms":0}}"#;
    let (status, _) = send(
        &probe,
        "/queries/test.add.v1",
        Some("application/cloudevents+json"),
        &[],
        other,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_field_the_message_does_not_have_is_refused_naming_it() {
    let probe = Probe::default();
    let (status, body) = send(
        &probe,
        "/commands/test.charge.v1",
        Some("application/json"),
        &[],
        br#"{"amount": 5, "amount_cents": 500}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(body.kind, "invalid_payload");
    assert!(body.error.contains("amount_cents"), "{}", body.error);
    // Over gRPC alike.
    let server = Server::start(handlers(&probe)).await;
    let mut client = CallsClient::connect(server.url()).await.unwrap();
    let status = client
        .call(CallRequest {
            r#type: "test.charge.v1".into(),
            data: br#"{"amount": 5, "tip": 1}"#.to_vec().into(),
            attributes: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("tip"), "{}", status.message());
    assert_eq!(probe.calls(), 0);
    server.stop().await;
}

#[tokio::test]
async fn attribute_headers_follow_the_attribute_rules() {
    let probe = Probe::default();
    let base = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/t"),
        ("ce-type", "test.add.v1"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut headers = base.to_vec();
        headers.extend_from_slice(extra);
        headers
    };
    let cases: [(&[(&str, &str)], StatusCode); 4] = [
        // A CR LF, percent-encoded (an HTTP header cannot carry it raw).
        (
            &[("ce-subject", "a%0D%0Ax-admin: 1")],
            StatusCode::BAD_REQUEST,
        ),
        (&[("ce-my_ext", "x")], StatusCode::BAD_REQUEST),
        (&[("ce-data", "x")], StatusCode::BAD_REQUEST),
        (&[("ce-id", "")], StatusCode::BAD_REQUEST),
    ];
    for (extra, expected) in cases {
        let mut headers = with(&[]);
        headers.retain(|(n, _)| !extra.iter().any(|(m, _)| m == n));
        headers.extend_from_slice(extra);
        let (status, body) = send(
            &probe,
            "/queries/test.add.v1",
            Some("application/json"),
            &headers,
            b"{\"n\":1}",
        )
        .await;
        assert_eq!(status, expected, "{extra:?}: {}", kind_of(&body));
    }
    // More attributes than an envelope may carry: too large, however small each one is.
    let names: Vec<String> = (0..70).map(|i| format!("ce-x{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let (status, _) = send(
        &probe,
        "/queries/test.add.v1",
        Some("application/json"),
        &with(&[]).into_iter().chain(many).collect::<Vec<_>>(),
        b"{\"n\":1}",
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(probe.calls(), 0);
    let (status, _) = send(
        &probe,
        "/queries/test.add.v1",
        Some("application/json"),
        &with(&[("ce-tenant", "north")]),
        b"{\"n\":1}",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn grpc_call_attributes_are_validated_and_counted_against_the_limit() {
    let probe = Probe::default();
    // The default 1 MiB limit: 50,000 attributes fit in it, and in tonic's frame limit.
    let server = Server::start(handlers(&probe)).await;
    let mut client = CallsClient::connect(server.url()).await.unwrap();
    let small = Server::start(handlers(&probe).codec(Codec::with_max_size(1024))).await;
    let mut small_client = CallsClient::connect(small.url()).await.unwrap();
    let call = |attributes: Vec<(String, String)>| CallRequest {
        r#type: "test.add.v1".into(),
        data: b"{\"n\":1}".to_vec().into(),
        attributes: attributes.into_iter().collect(),
    };
    let pair = |n: &str, v: &str| vec![(n.to_owned(), v.to_owned())];
    let refused = [
        // 50,000 attributes of a few bytes each.
        (0..50_000)
            .map(|i| (format!("x{i}"), "1".to_owned()))
            .collect(),
        pair("Bad_Name", "x"),
        pair("", "x"),
        pair("subject", "a\r\nx-admin: 1"),
        pair("id", ""),
        pair("datacontenttype", "text/plain"),
    ];
    for attributes in refused {
        let shown = attributes.first().cloned();
        let status = client.call(call(attributes)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{shown:?}");
    }
    // Small data, but the attributes take it over a 1,024-byte limit.
    let status = small_client
        .call(call(pair("tenant", &"x".repeat(1100))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(probe.calls(), 0);
    small.stop().await;
    let ok = client
        .call(call(vec![
            ("id".into(), "c-1".into()),
            ("tenant".into(), "north".into()),
        ]))
        .await
        .unwrap();
    assert_eq!(&ok.into_inner().data[..], b"2");
    server.stop().await;
}

#[tokio::test]
async fn a_request_that_is_not_protobuf_is_invalid_argument_not_internal() {
    let probe = Probe::default();
    let server = Server::start(handlers(&probe)).await;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // A gRPC frame (uncompressed, 4 bytes) whose bytes are no protobuf message: a field tag
    // with wire type 7, which does not exist.
    let frame: &[u8] = &[0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
    let request = Request::post(format!("{}/tabgrab.call.v1.Calls/Call", server.url()))
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
    assert_eq!(status, "3", "INVALID_ARGUMENT is 3");
    assert_eq!(probe.calls(), 0);
    server.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_is_bound_to_its_payload_on_http_and_grpc() {
    let probe = Probe::default();
    let server = Server::start(handlers(&probe)).await;
    let http = reqwest::Client::new();
    let post = |key: &'static str, amount: u64| {
        http.post(format!("{}/commands/test.charge.v1", server.url()))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(format!("{{\"amount\":{amount}}}"))
            .send()
    };
    let first = post("k-1", 5).await.unwrap();
    assert_eq!(first.status(), reqwest::StatusCode::OK);
    let first = first.bytes().await.unwrap();
    // The same key and payload: the first answer, the handler did not run again.
    let again = post("k-1", 5).await.unwrap();
    assert_eq!(again.status(), reqwest::StatusCode::OK);
    assert_eq!(again.bytes().await.unwrap(), first);
    assert_eq!(probe.calls(), 1);
    // The same key, another payload: a conflict, not the first answer.
    let other = post("k-1", 6).await.unwrap();
    assert_eq!(other.status(), reqwest::StatusCode::CONFLICT);
    assert_eq!(kind_of(&other.bytes().await.unwrap()), "conflict");
    assert_eq!(probe.calls(), 1);
    // Over gRPC, on the same record (the handlers are one).
    let mut client = CallsClient::connect(server.url()).await.unwrap();
    let mut request = tonic::Request::new(CallRequest {
        r#type: "test.charge.v1".into(),
        data: b"{\"amount\":7}".to_vec().into(),
        attributes: Default::default(),
    });
    request
        .metadata_mut()
        .insert("idempotency-key", "k-1".parse().unwrap());
    let status = client.call(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    // Through the client stack: a typed, non-retryable error.
    let stack = tabgrab_call::Client::builder(
        tabgrab_call::grpc::GrpcTransport::new(server.url()).unwrap(),
    )
    .service_name("test")
    .build();
    let e = stack
        .call_with(
            &common::Charge { amount: 8 },
            tabgrab_call::CallOptions::default().idempotency_key("k-1"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), tabgrab_core::ErrorKind::Conflict);
    assert!(!e.is_retryable());
    let charged = stack
        .call_with(
            &common::Charge { amount: 5 },
            tabgrab_call::CallOptions::default().idempotency_key("k-1"),
        )
        .await
        .unwrap();
    assert_eq!(charged, common::Charged { amount: 5 });
    assert_eq!(probe.calls(), 1);
    server.stop().await;
}
