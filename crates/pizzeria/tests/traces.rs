//! Traces end to end, received by an OTLP/gRPC receiver tabgrab did not write (Python, on the
//! official `opentelemetry-proto` definitions: `tabgrab_testkit::otlp`): in each style
//! an order is one trace from `POST /orders` to its last handler, every span's parent is in
//! the same trace, and the spans carry the semantic conventions' attributes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use common::processes::pizzeria;
use serde_json::Value;
use tabgrab_testkit::otlp::Receiver;

/// Runs `pizzeria run --style STYLE [ARGS]` exporting to `receiver`; its JSON summary.
fn run(style: &str, receiver: &Receiver, dir: &Path, args: &[&str]) -> Value {
    let output = pizzeria()
        .args(["run", "--style", style, "--orders", "12", "--json"])
        .args(["--otlp", &receiver.endpoint(), "--trace-sample", "1"])
        .args(args)
        .arg("--data-dir")
        .arg(dir.join(style))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The spans received so far, by trace id.
fn traces(receiver: &Receiver) -> HashMap<String, Vec<Value>> {
    let mut traces: HashMap<String, Vec<Value>> = HashMap::new();
    for span in receiver.spans() {
        traces
            .entry(span["trace_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(span);
    }
    traces
}

/// Checks that every trace is one order's: rooted at its `POST /orders`, every other span's
/// parent in the same trace. Returns the traces.
fn orders(receiver: &Receiver, summary: &Value) -> Vec<Vec<Value>> {
    let traces: Vec<Vec<Value>> = traces(receiver).into_values().collect();
    let shown: Vec<Vec<String>> = traces
        .iter()
        .map(|t| {
            t.iter()
                .map(|s| format!("{} {}", s["name"], s["attributes"]))
                .collect()
        })
        .collect();
    assert_eq!(
        traces.len() as u64,
        summary["accepted"].as_u64().unwrap(),
        "one trace per accepted order: {shown:#?}"
    );
    for trace in &traces {
        let ids: HashSet<&str> = trace
            .iter()
            .map(|s| s["span_id"].as_str().unwrap())
            .collect();
        let roots: Vec<&Value> = trace
            .iter()
            .filter(|s| s["parent_span_id"].as_str().unwrap().is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "one root: {trace:?}");
        assert_eq!(roots[0]["name"], "POST /orders");
        assert_eq!(roots[0]["kind"], "SPAN_KIND_SERVER");
        assert_eq!(roots[0]["attributes"]["http.route"], "/orders");
        for span in trace {
            let parent = span["parent_span_id"].as_str().unwrap();
            assert!(
                parent.is_empty() || ids.contains(parent),
                "{} has its parent outside its trace",
                span["name"]
            );
        }
    }
    traces
}

/// The consumer groups whose `process` spans are in `trace`.
fn groups(trace: &[Value]) -> BTreeSet<String> {
    trace
        .iter()
        .filter(|s| s["kind"] == "SPAN_KIND_CONSUMER")
        .map(|s| {
            s["attributes"]["messaging.consumer.group.name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn an_event_driven_order_is_one_trace_to_its_delivery() {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let summary = run("events", &receiver, dir.path(), &[]);
    events_traces(&receiver, &summary, "tabgrab_log");
}

#[test]
fn an_event_driven_order_is_one_trace_on_nats_and_rabbitmq() {
    let nats = tabgrab_testkit::services::require("NATS", "127.0.0.1:4222");
    let amqp = tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672");
    for (up, url, system) in [
        (nats, "nats://127.0.0.1:4222", "nats"),
        (amqp, "amqp://guest:guest@127.0.0.1:5672/%2f", "rabbitmq"),
    ] {
        if !up {
            continue;
        }
        let Some(receiver) = Receiver::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let namespace = format!("traces{}", std::process::id());
        let bus = format!("{url}?namespace={namespace}");
        let summary = run("events", &receiver, dir.path(), &["--bus", &bus]);
        events_traces(&receiver, &summary, system);
    }
}

/// The events style's traces: one per order, through the groups, the conventions' attributes.
fn events_traces(receiver: &Receiver, summary: &Value, system: &str) {
    let traces = orders(receiver, summary);
    let delivered = traces
        .iter()
        .filter(|t| groups(t).contains("delivery"))
        .count() as u64;
    assert_eq!(delivered, summary["delivered"].as_u64().unwrap());
    for trace in &traces {
        let groups = groups(trace);
        for group in ["front-desk", "payment", "inventory"] {
            assert!(
                groups.contains(group),
                "{group} handled every order: {groups:?}"
            );
        }
        // The front desk's publish is the root's child and the consumers' parent.
        let send = trace
            .iter()
            .find(|s| s["kind"] == "SPAN_KIND_PRODUCER")
            .expect("the OrderAccepted publish");
        assert_eq!(send["name"], "send pizzeria");
        assert_eq!(send["attributes"]["messaging.operation.type"], "send");
        assert!(
            send["attributes"]["messaging.destination.name"]
                .as_str()
                .unwrap()
                .ends_with("pizzeria")
        );
        assert_eq!(send["attributes"]["messaging.system"], system);
        let accepted_by_payment = trace
            .iter()
            .find(|s| {
                s["attributes"]["messaging.consumer.group.name"] == "payment"
                    && s["attributes"]["cloudevents.event_type"] == "pizzeria.order.accepted.v1"
            })
            .unwrap();
        assert_eq!(accepted_by_payment["parent_span_id"], send["span_id"]);
        let attributes = &accepted_by_payment["attributes"];
        assert_eq!(attributes["messaging.operation.type"], "process");
        assert_eq!(accepted_by_payment["name"], "process pizzeria");
        assert!(
            !attributes["messaging.message.id"]
                .as_str()
                .unwrap()
                .is_empty()
        );
    }
}

#[test]
fn a_called_order_is_one_trace_through_the_calls() {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let summary = run("calls", &receiver, dir.path(), &[]);
    let traces = orders(&receiver, &summary);
    let mut baked = 0;
    for trace in &traces {
        let root = trace.iter().find(|s| s["name"] == "POST /orders").unwrap();
        // Each call: a client span under the order, its server span under the client span.
        for client in trace.iter().filter(|s| s["kind"] == "SPAN_KIND_CLIENT") {
            assert_eq!(client["parent_span_id"], root["span_id"]);
            assert_eq!(client["attributes"]["rpc.system"], "tabgrab");
            let method = client["attributes"]["rpc.method"].as_str().unwrap();
            let server = trace
                .iter()
                .find(|s| {
                    s["kind"] == "SPAN_KIND_SERVER" && s["parent_span_id"] == client["span_id"]
                })
                .unwrap_or_else(|| panic!("no server span for {method}"));
            assert_eq!(server["attributes"]["rpc.method"], method);
            if method == "pizzeria.kitchen.place-ticket.v1" {
                baked += 1;
            }
        }
    }
    assert_eq!(baked, summary["delivered"].as_u64().unwrap());
}

#[test]
fn a_messaged_order_is_one_trace_through_requests_and_replies() {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let summary = run("messaging", &receiver, dir.path(), &[]);
    let traces = orders(&receiver, &summary);
    let mut to_kitchen = 0;
    for trace in &traces {
        // Every request handled by its responder, every reply by the requester, in the trace.
        let requests = trace
            .iter()
            .filter(|s| {
                s["kind"] == "SPAN_KIND_CONSUMER"
                    && s["attributes"]["cloudevents.event_type"] != "tabgrab.messaging.reply.v1"
            })
            .count();
        let replies = trace
            .iter()
            .filter(|s| s["attributes"]["cloudevents.event_type"] == "tabgrab.messaging.reply.v1")
            .count();
        assert!(requests >= 1, "{trace:?}");
        assert_eq!(requests, replies, "a reply for every request");
        if groups(trace).contains("kitchen") {
            to_kitchen += 1;
        }
    }
    assert_eq!(to_kitchen, summary["delivered"].as_u64().unwrap());
}
