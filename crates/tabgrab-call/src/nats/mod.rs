//! The NATS transport: calls as core NATS request-reply, served by the same
//! [`Handlers`](crate::Handlers) as HTTP and gRPC, on a queue group per service.
//!
//! Why core NATS and not JetStream for calls: a call wants an answer *now* from a service
//! that is up, and fails fast when none is; nothing is persisted, so a call costs one publish
//! each way through the server. Request-response *messaging* (`tabgrab::messaging`), where the
//! request must survive the recipient being down, uses JetStream instead.
//!
//! # Subjects
//! A call of type `pizzeria.payment.charge-card.v1` to the service `payment` is a request on
//! `tabgrab.call.payment.commands.pizzeria.payment.charge-card.v1` (`queries` for a query),
//! the same shape as the HTTP route `POST /commands/{type}`. The service is one subject token
//! (dots become `~`); characters a subject cannot hold (whitespace, `*`, `>`) become `_`.
//! Servers of a service subscribe to `tabgrab.call.<service>.>` in the queue group
//! `<service>`, so NATS hands each request to one of them: any number of instances share
//! the work, and a stopped one simply stops getting requests.
//!
//! # The wire
//! - Request, structured mode (the default): one message **without headers**, the
//!   CloudEvent as the body, with the caller's remaining budget (milliseconds, relative, as
//!   over HTTP) and an idempotency key as the extension attributes `tabgrabtimeout` and
//!   `idempotencykey`; the server takes both out before the handler sees the envelope. No
//!   headers is the cheapest message async-nats carries (its `HeaderMap` is a map of
//!   `String`s on each side).
//! - Request, binary mode ([`NatsTransportBuilder::content_mode`]): the message's JSON as the
//!   payload, the attributes as `ce-*` headers and `content-type`, the budget in
//!   `tabgrab-timeout` and the key in `idempotency-key`.
//! - The server reads both, a structured event with a CloudEvents `content-type`, and a plain
//!   request (the envelope made from the subject), so
//!   `nats req tabgrab.call.menu.queries.demo.price.v1 '{..}'` works. A body without headers
//!   is an event when it is a JSON object with a `specversion` member
//!   ([`is_structured_body`](tabgrab_core::wire::nats::is_structured_body)); a plain request
//!   with such a member says `content-type: application/json`.
//! - Answer: the response's JSON, no headers; or a `tabgrab-error: <kind>` header with the
//!   JSON [`ErrorBody`](crate::error::ErrorBody) (`kind`, `error`, `rejection`) as over HTTP,
//!   so a handler's [`Rejection`](tabgrab_core::Rejection) comes back whole.
//!
//! # Errors
//! | what happened | [`ErrorKind`](tabgrab_core::ErrorKind) |
//! |---|---|
//! | no server of the service is subscribed (NATS "no responders", at once) | `Unavailable` (retryable: the breaker counts it) |
//! | no answer before the caller's deadline (the request's timeout) | `DeadlineExceeded` |
//! | no answer before an attempt timeout shorter than the deadline | `Timeout` |
//! | the server sheds the call (more than [`NatsServeConfig::max_in_flight`] running) | `Rejected` |
//! | the handler's refusal, unknown type, bad payload, handler failure | as over HTTP |
//! | the connection to NATS is down | `Unavailable` |
//!
//! The client's layers (bulkhead, deadline, retries, breaker) sit above the transport and
//! work over it unchanged: see [`Client`](crate::Client).

mod client;
mod server;

pub use self::client::{NatsTransport, NatsTransportBuilder};
pub use self::server::{NatsListener, NatsServeConfig, listen, serve, serve_with};
pub use tabgrab_core::wire::nats::connect_options;

use async_nats::HeaderName;

use crate::call::RequestKind;

/// The first tokens of every call subject: a call to service `payment` of type `t` goes to
/// `tabgrab.call.payment.<kind>.<t>`, which a client tabgrab did not write (nats-py in the
/// pizzeria's tests) can use.
pub const SUBJECT_PREFIX: &str = "tabgrab.call";

/// The reply header that marks an error answer; its value is the error kind's name. Part of
/// the wire format, for clients tabgrab did not write.
pub const ERROR_HEADER: &str = "tabgrab-error";

pub(crate) const ERROR_HEADER_NAME: HeaderName = HeaderName::from_static(ERROR_HEADER);

/// The subject token of a service: dots become `~`, what a subject cannot hold becomes `_`.
pub(crate) fn service_token(service: &str) -> String {
    if service.is_empty() {
        return "_".to_owned();
    }
    service
        .chars()
        .map(|c| match c {
            '.' => '~',
            c if c == '*' || c == '>' || c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// The message type as subject tokens: its dots kept, empty tokens and what a subject cannot
/// hold replaced by `_`. A type that needs no replacement (every well-formed type name) is
/// returned as it is, without a copy: this runs twice per call.
pub fn type_tokens(ty: &str) -> std::borrow::Cow<'_, str> {
    let unfit = |c: char| c == '*' || c == '>' || c.is_whitespace() || c.is_control();
    let plain = !ty.is_empty()
        && !ty.starts_with('.')
        && !ty.ends_with('.')
        && !ty.contains("..")
        && !ty.chars().any(unfit);
    if plain {
        return std::borrow::Cow::Borrowed(ty);
    }
    std::borrow::Cow::Owned(replaced_tokens(ty))
}

fn replaced_tokens(ty: &str) -> String {
    let mut out = String::with_capacity(ty.len());
    for (i, token) in ty.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if token.is_empty() {
            out.push('_');
            continue;
        }
        out.extend(token.chars().map(|c| {
            if c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        }));
    }
    out
}

/// The subject a server of `service` subscribes to: `tabgrab.call.<service>.>`.
pub fn service_subject(service: &str) -> String {
    format!("{SUBJECT_PREFIX}.{}.>", service_token(service))
}

/// The subject of a call of type `ty` to `service`.
pub fn call_subject(service: &str, kind: RequestKind, ty: &str) -> String {
    format!(
        "{SUBJECT_PREFIX}.{}.{}.{}",
        service_token(service),
        kind.path_segment(),
        type_tokens(ty)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_valid_nats_subjects() {
        assert_eq!(
            call_subject(
                "payment",
                RequestKind::Command,
                "pizzeria.payment.charge-card.v1"
            ),
            "tabgrab.call.payment.commands.pizzeria.payment.charge-card.v1"
        );
        assert_eq!(
            service_subject("pizzeria.menu"),
            "tabgrab.call.pizzeria~menu.>"
        );
        assert_eq!(
            call_subject("a b", RequestKind::Query, "x..y *>"),
            "tabgrab.call.a_b.queries.x._.y___"
        );
        assert_eq!(service_token(""), "_");
    }

    #[test]
    fn a_plain_type_is_its_own_tokens_and_any_other_is_replaced() {
        for ty in [
            "pizzeria.payment.charge-card.v1",
            "a",
            "",
            ".a",
            "a.",
            "a..b",
            "a b.c",
            "a*.>",
            "a\tb",
            "ü.v1",
        ] {
            let tokens = type_tokens(ty);
            assert_eq!(tokens, replaced_tokens(ty), "{ty:?}");
            let borrowed = matches!(tokens, std::borrow::Cow::Borrowed(_));
            assert_eq!(borrowed, tokens == ty && !ty.is_empty(), "{ty:?}");
        }
    }
}
