//! The wire format of a reply, and the outcome a requester's reply handler receives.
//!
//! A reply is an envelope of type [`REPLY_TYPE`] whose `correlationid` is the request id and
//! whose `causationid` is the request envelope's id. Two extension attributes say what it
//! answers: `requesttype` (the request's message type) and `responder` (the topic the request
//! was sent to); the requester checks both against its stored request before accepting the
//! reply, so a reply cannot complete a request of another type or from another responder.
//! The data is JSON, either `{"ok": <response>}` or `{"rejected": <Rejection>}`: the
//! responder's typed refusal crosses the wire as a [`Rejection`] with its code and details.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Error, ErrorKind, Rejection, Request};

/// The message type of every reply envelope. The reply constants are the wire format, for a
/// responder tabgrab did not write that answers with typed rejections (a plain client can
/// instead reply with the bare response and its correlation id: [`PLAIN_REPLY_TYPE`]).
pub const REPLY_TYPE: &str = "tabgrab.messaging.reply.v1";

/// The type a requester gives a reply that names none: a plain client's reply (RabbitMQ: an
/// AMQP message with only its `correlation_id` property), whose body is the JSON response
/// itself rather than a [`ReplyBody`]. Such a reply is matched to its request by the
/// correlation id alone; it cannot carry a rejection.
pub const PLAIN_REPLY_TYPE: &str = "tabgrab.messaging.plain-reply.v1";

/// The extension attribute naming the request type a reply answers (wire format).
pub const REQUEST_TYPE_ATTR: &str = "requesttype";

/// The extension attribute naming the responder topic a reply comes from (wire format).
pub const RESPONDER_ATTR: &str = "responder";

/// The data of a reply envelope.
///
/// The response is kept as the JSON text it was serialized to ([`RawValue`]): a responder
/// serializes its response once (straight into the reply's bytes, not through a
/// `serde_json::Value`), and a requester checks the reply's shape without building a tree,
/// then decodes the response once, into its type.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyBody {
    /// The handler's response, as JSON text.
    Ok(Box<RawValue>),
    /// The handler's typed refusal.
    Rejected(Rejection),
}

impl PartialEq for ReplyBody {
    fn eq(&self, other: &ReplyBody) -> bool {
        match (self, other) {
            (ReplyBody::Ok(a), ReplyBody::Ok(b)) => a.get() == b.get(),
            (ReplyBody::Rejected(a), ReplyBody::Rejected(b)) => a == b,
            _ => false,
        }
    }
}

impl ReplyBody {
    /// A reply with `response`, serialized once.
    pub fn ok<T: Serialize>(response: &T) -> Result<ReplyBody, Error> {
        serde_json::value::to_raw_value(response)
            .map(ReplyBody::Ok)
            .map_err(|e| {
                Error::new(ErrorKind::InvalidPayload, "a response does not serialise")
                    .with_source(e)
            })
    }

    /// Decodes a reply envelope's data.
    pub fn decode(data: &[u8]) -> Result<ReplyBody, Error> {
        serde_json::from_slice(data).map_err(|e| {
            Error::new(
                ErrorKind::InvalidPayload,
                format!(
                    "a {REPLY_TYPE} must hold {{\"ok\": ..}} or {{\"rejected\": ..}}; this one does not decode"
                ),
            )
            .with_source(e)
        })
    }

    /// Encodes the body as JSON bytes.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(self).map_err(|e| {
            Error::new(ErrorKind::InvalidPayload, "a reply body does not serialise").with_source(e)
        })
    }

    /// Decodes the success payload as `T` (the request's response type).
    pub(crate) fn into_result<T: serde::de::DeserializeOwned>(
        self,
        request_type: &str,
    ) -> Result<Result<T, Rejection>, Error> {
        match self {
            ReplyBody::Ok(raw) => serde_json::from_str(raw.get()).map(Ok).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidPayload,
                    format!(
                        "the reply to a {request_type} does not decode as its response type {}; \
                         check that requester and responder use the same version",
                        std::any::type_name::<T>()
                    ),
                )
                .with_source(e)
            }),
            ReplyBody::Rejected(rejection) => Ok(Err(rejection)),
        }
    }
}

/// How a request of type `R` ended, as its reply handler sees it.
///
/// Typed by the request, not by its response, so a reply handler's argument names the request
/// it answers and `on_reply` infers it: `|outcome: Outcome<GetPrice>, ctx| ..`.
pub enum Outcome<R: Request> {
    /// The responder answered: its response, or its typed refusal.
    Replied(Result<R::Response, Rejection>),
    /// No reply arrived before the deadline. A reply that comes later is counted as late and
    /// dropped, never delivered.
    TimedOut,
}

impl<R: Request> Outcome<R> {
    /// The response, if the responder answered with one.
    pub fn ok(self) -> Option<R::Response> {
        match self {
            Outcome::Replied(Ok(t)) => Some(t),
            _ => None,
        }
    }

    /// Whether the request timed out.
    pub fn is_timed_out(&self) -> bool {
        matches!(self, Outcome::TimedOut)
    }

    /// The response, or the error [`Requester::request`](super::Requester::request) would
    /// give: [`ErrorKind::Remote`] with the [`Rejection`] ([`Error::rejection`]), or
    /// [`ErrorKind::DeadlineExceeded`] when no reply came in time. For a reply handler that
    /// treats both as failures (`outcome.into_result()?`).
    pub fn into_result(self) -> Result<R::Response, Error> {
        match self {
            Outcome::Replied(Ok(response)) => Ok(response),
            Outcome::Replied(Err(rejection)) => Err(Error::rejected(R::TYPE, rejection)),
            Outcome::TimedOut => Err(Error::new(
                ErrorKind::DeadlineExceeded,
                format!("no reply to {} came before its deadline", R::TYPE),
            )),
        }
    }
}

impl<R: Request> Clone for Outcome<R>
where
    R::Response: Clone,
{
    fn clone(&self) -> Self {
        match self {
            Outcome::Replied(result) => Outcome::Replied(result.clone()),
            Outcome::TimedOut => Outcome::TimedOut,
        }
    }
}

impl<R: Request> std::fmt::Debug for Outcome<R>
where
    R::Response: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Replied(result) => f.debug_tuple("Replied").field(result).finish(),
            Outcome::TimedOut => f.write_str("TimedOut"),
        }
    }
}

impl<R: Request> PartialEq for Outcome<R>
where
    R::Response: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Outcome::Replied(a), Outcome::Replied(b)) => a == b,
            (Outcome::TimedOut, Outcome::TimedOut) => true,
            _ => false,
        }
    }
}

/// An outcome before its payload is decoded to the handler's type.
#[derive(Clone, Debug)]
pub(crate) enum RawOutcome {
    /// A reply arrived.
    Replied(ReplyBody),
    /// The deadline passed.
    TimedOut,
}

impl RawOutcome {
    /// Decodes into the typed outcome of a request of type `R`.
    pub(crate) fn decode<R: Request>(self) -> Result<Outcome<R>, Error> {
        match self {
            RawOutcome::Replied(body) => Ok(Outcome::Replied(body.into_result(R::TYPE)?)),
            RawOutcome::TimedOut => Ok(Outcome::TimedOut),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_crosses_the_wire_with_its_code_and_details() {
        let body = ReplyBody::Rejected(
            Rejection::new("inventory.missing", "out of truffle")
                .with_details(&vec!["truffle"])
                .unwrap_or_else(|_| Rejection::new("x", "y")),
        );
        let wire = body.encode().unwrap_or_default();
        let back = ReplyBody::decode(&wire).map(|b| b.into_result::<u32>("t.x.v1"));
        match back {
            Ok(Ok(Err(r))) => {
                assert_eq!(r.code, "inventory.missing");
                assert_eq!(
                    r.details_as::<Vec<String>>().ok().flatten(),
                    Some(vec!["truffle".into()])
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(ReplyBody::decode(b"{\"maybe\": 1}").is_err());
    }
}
