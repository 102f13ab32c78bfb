//! The names of tabgrab's metrics and their attributes: one list for every crate.
//!
//! The libraries record through the [`metrics`] facade; nothing is kept until an application
//! installs a recorder (`tabgrab::telemetry::Prometheus::install`, or any `metrics`
//! exporter). Names follow the OpenTelemetry semantic conventions where they have one
//! ([messaging](https://opentelemetry.io/docs/specs/semconv/messaging/messaging-metrics/),
//! [RPC](https://opentelemetry.io/docs/specs/semconv/rpc/rpc-metrics/)); tabgrab's own
//! (dead letters, replies, outbox, breakers) are under `tabgrab.`. In Prometheus' exposition
//! the dots become underscores, counters end in `_total` and durations in `_seconds`
//! (`messaging.process.duration` is `messaging_process_duration_seconds`).
//!
//! Attributes are bounded: engine, topic, group, message type, outcome, error kind and
//! reason; never a message id or a subject.
//!
//! Counters that components keep anyway for their `stats()` are not counted twice: the
//! components register as [`Source`]s and are read when metrics are rendered ([`collect`]).

mod collect;
pub mod trace;

pub use collect::{Labels, Samples, Source, collect, register, retire};

/// Messages published (counter; attributes: system, destination, `error.type` on failure).
pub const SENT: &str = "messaging.client.sent.messages";
/// Messages a consumer group received (counter; system, destination, group).
pub const CONSUMED: &str = "messaging.client.consumed.messages";
/// Publish durations, until the engine acknowledged (histogram, seconds).
pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
/// Handler durations of consumers and responders (histogram, seconds; `error.type` on
/// failure).
pub const PROCESS_DURATION: &str = "messaging.process.duration";
/// Messages a consumer group finished, by `outcome` (counter): `ack`, `retry`, `skipped`,
/// `dead_letter`.
pub const PROCESSED: &str = "tabgrab.messaging.processed.messages";
/// Dead letters written, by `reason` (counter).
pub const DEAD_LETTERS: &str = "tabgrab.dead_letters";
/// Messages of a topic a group has not finished (gauge).
pub const CONSUMER_LAG: &str = "tabgrab.consumer.lag";
/// Requests sent by request-response messaging (counter; group).
pub const REQUESTS_SENT: &str = "tabgrab.requests.sent";
/// Requests waiting for their reply (gauge; group).
pub const REQUESTS_IN_FLIGHT: &str = "tabgrab.requests.in_flight";
/// Requests whose deadline passed without a reply (counter; group).
pub const REQUESTS_TIMED_OUT: &str = "tabgrab.requests.timed_out";
/// Replies received, by `outcome` (counter): `handled` (a reply or a rejection handed to its
/// handler), `late`, `duplicate`, `forged` (unknown or mismatched correlation, undecodable).
pub const REPLIES: &str = "tabgrab.replies";
/// Requests refused before they were sent, by `reason` (counter): `bulkhead`,
/// `circuit_open`.
pub const REQUESTS_REFUSED: &str = "tabgrab.requests.refused";
/// A circuit breaker's state (gauge: 0 closed, 1 half-open, 2 open; `breaker`).
pub const BREAKER_STATE: &str = "tabgrab.breaker.state";
/// A circuit breaker's state changes, by the state it changed `to` (counter; `closed`,
/// `open`, `half_open`).
pub const BREAKER_TRANSITIONS: &str = "tabgrab.breaker.transitions";
/// Handler or call attempts after the first (counter).
pub const RETRIES: &str = "tabgrab.retries";
/// Retries the retry budget refused (counter; service).
pub const RETRY_BUDGET_EXHAUSTED: &str = "tabgrab.retry.budget_exhausted";
/// Outbox rows staged and not yet published, counted by the relays (gauge; table).
pub const OUTBOX_BACKLOG: &str = "tabgrab.outbox.backlog";
/// Outbox rows the relays published (counter; table).
pub const OUTBOX_RELAYED: &str = "tabgrab.outbox.relayed";
/// Time from staging an outbox row to its publish being acknowledged (histogram, seconds).
pub const OUTBOX_RELAY_LAG: &str = "tabgrab.outbox.relay.lag";
/// Deliveries an inbox recognised as already applied, whose effect it did not apply again
/// (counter; group).
pub const INBOX_DUPLICATES: &str = "tabgrab.inbox.duplicates";
/// Call durations at the client, every attempt included (histogram, seconds; `rpc.service`,
/// `rpc.method`, `error.type` on failure).
pub const RPC_CLIENT_DURATION: &str = "rpc.client.call.duration";
/// Call durations at the server, checks and handler (histogram, seconds; `rpc.method`,
/// `error.type` on failure).
pub const RPC_SERVER_DURATION: &str = "rpc.server.call.duration";

/// Attribute: the engine (`tabgrab_log`, `nats`, `rabbitmq`).
pub const SYSTEM: &str = "messaging.system";
/// Attribute: the topic.
pub const DESTINATION: &str = "messaging.destination.name";
/// Attribute: the consumer group (or requester / responder group).
pub const GROUP: &str = "messaging.consumer.group.name";
/// Attribute: the error kind of a failed operation ([`ErrorKind::as_str`](crate::ErrorKind)).
pub const ERROR_TYPE: &str = "error.type";
/// Attribute: what became of a message or reply.
pub const OUTCOME: &str = "outcome";
/// Attribute: why a message was dead-lettered or refused.
pub const REASON: &str = "reason";
/// Attribute: the service a client calls.
pub const RPC_SERVICE: &str = "rpc.service";
/// Attribute: the request type called.
pub const RPC_METHOD: &str = "rpc.method";
/// Attribute: the outbox's table.
pub const OUTBOX_TABLE: &str = "tabgrab.outbox.table";
/// Attribute: the state a breaker changed to.
pub const TO: &str = "to";
/// Attribute: which breaker.
pub const BREAKER: &str = "breaker";

/// The `messaging.system` value of a bus whose backend is named `backend` (`embedded`,
/// `nats`, `amqp`).
pub fn messaging_system(backend: &str) -> &'static str {
    match backend {
        "embedded" => "tabgrab_log",
        "nats" => "nats",
        "amqp" => "rabbitmq",
        _ => "other",
    }
}

/// Describes every metric above (help text and unit) to the installed recorder; call it once
/// after installing one.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(SENT, "Messages published");
    describe_counter!(CONSUMED, "Messages a consumer group received");
    describe_histogram!(
        OPERATION_DURATION,
        Unit::Seconds,
        "Publish duration, until the engine acknowledged"
    );
    describe_histogram!(
        PROCESS_DURATION,
        Unit::Seconds,
        "Handler duration of consumers and responders"
    );
    describe_counter!(
        PROCESSED,
        "Messages a consumer group finished, by outcome (ack, retry, skipped, dead_letter)"
    );
    describe_counter!(DEAD_LETTERS, "Dead letters written, by reason");
    describe_gauge!(CONSUMER_LAG, "Messages of a topic a group has not finished");
    describe_counter!(REQUESTS_SENT, "Requests sent (request-response messaging)");
    describe_gauge!(REQUESTS_IN_FLIGHT, "Requests waiting for their reply");
    describe_counter!(
        REQUESTS_TIMED_OUT,
        "Requests whose deadline passed without a reply"
    );
    describe_counter!(
        REPLIES,
        "Replies received, by outcome (handled, late, duplicate, forged)"
    );
    describe_counter!(
        REQUESTS_REFUSED,
        "Requests refused before they were sent, by reason"
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit breaker state changes, by the state changed to"
    );
    describe_counter!(RETRIES, "Handler or call attempts after the first");
    describe_counter!(RETRY_BUDGET_EXHAUSTED, "Retries the retry budget refused");
    describe_gauge!(OUTBOX_BACKLOG, "Outbox rows staged and not yet published");
    describe_counter!(OUTBOX_RELAYED, "Outbox rows the relay published");
    describe_histogram!(
        OUTBOX_RELAY_LAG,
        Unit::Seconds,
        "Time from staging an outbox row to its publish being acknowledged"
    );
    describe_counter!(
        INBOX_DUPLICATES,
        "Deliveries an inbox recognised as already applied"
    );
    describe_histogram!(
        RPC_CLIENT_DURATION,
        Unit::Seconds,
        "Call duration at the client, every attempt included"
    );
    describe_histogram!(
        RPC_SERVER_DURATION,
        Unit::Seconds,
        "Call duration at the server, checks and handler"
    );
}
