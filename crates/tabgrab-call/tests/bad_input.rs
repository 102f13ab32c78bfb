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
