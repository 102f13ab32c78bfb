//! The one envelope on every wire: CloudEvents 1.0 attributes plus tabgrab's extensions.
//!
//! Required CloudEvents attributes are `id`, `source`, `type` and `specversion` (always `1.0`);
//! tabgrab always sets `time` and `datacontenttype` too, and uses the extensions
//! `correlationid` (the conversation a message belongs to), `causationid` (the id of the message
//! that caused this one), `traceparent` (W3C trace context), and for request-response messaging
//! `replyto` (the requester group's address) and `deadline` (RFC 3339 instant after which
//! nobody waits for the answer). The extension `principal` names who sent the message (see
//! [`crate::principal`]).
//!
//! The envelope has two encodings, both in [`crate::codec`]:
//! - **structured mode**: one JSON object with the attributes and `data` (JSON payloads inline,
//!   others as `data_base64`); used by the embedded log and the dead-letter store;
//! - **binary mode**: attributes as `ce-*` headers (`content-type` for `datacontenttype`) and the
//!   payload as the body, untouched; used by HTTP, NATS and AMQP, so peers that speak
//!   CloudEvents read tabgrab's messages without knowing tabgrab.
//!
//! Ids are UUIDv7: time-ordered, so logs and indexes keyed by id stay append-friendly.

use std::collections::BTreeMap;

use bytes::Bytes;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, ErrorKind, Message};

/// The CloudEvents specification version tabgrab speaks.
pub const SPEC_VERSION: &str = "1.0";

/// The content type of JSON payloads, tabgrab's default.
pub const JSON: &str = "application/json";

/// One message on the wire: CloudEvents attributes, tabgrab extensions and the payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Unique per message (a UUIDv7 when tabgrab made it); de-duplication and inboxes key on it.
    pub id: String,
    /// Who emitted the message (a URI-reference such as `/pizzeria/front-desk`).
    pub source: String,
    /// The versioned message type name (`pizzeria.order.accepted.v1`); selects the handler.
    pub ty: String,
    /// When the message was made; replay by time and latency figures use it.
    pub time: Option<OffsetDateTime>,
    /// What the message is about (an order id); ordering is kept per subject.
    pub subject: Option<String>,
    /// The payload's media type; `None` means JSON.
    pub datacontenttype: Option<String>,
    /// The conversation this message belongs to, shared by all its causes and effects.
    pub correlationid: Option<String>,
    /// The id of the message that caused this one.
    pub causationid: Option<String>,
    /// W3C trace context, so traces cross every transport.
    pub traceparent: Option<String>,
    /// Where a reply goes (request-response messaging): the requester group's address.
    pub replyto: Option<String>,
    /// After this instant the sender no longer waits; a responder skips expired requests.
    pub deadline: Option<OffsetDateTime>,
    /// Other CloudEvents extension attributes, kept so that a relay loses nothing.
    pub extensions: BTreeMap<String, String>,
    /// The payload, as bytes (JSON text for JSON payloads), so retries clone cheaply.
    pub data: Bytes,
}

impl Envelope {
    /// An envelope for a typed message: a fresh UUIDv7 id, the current time, JSON payload.
    pub fn new<M: Message>(source: impl Into<String>, message: &M) -> Result<Envelope, Error> {
        let data = serde_json::to_vec(message).map_err(|e| {
            Error::new(
                ErrorKind::InvalidPayload,
                format!("could not serialise a {} as JSON", M::TYPE),
            )
            .with_source(e)
        })?;
        Ok(Envelope::raw(source, M::TYPE, Bytes::from(data)))
    }

    /// An envelope around payload bytes that are already encoded as JSON.
    pub fn raw(source: impl Into<String>, ty: impl Into<String>, data: Bytes) -> Envelope {
        Envelope {
            id: Uuid::now_v7().to_string(),
            source: source.into(),
            ty: ty.into(),
            time: Some(OffsetDateTime::now_utc()),
            subject: None,
            datacontenttype: Some(JSON.to_owned()),
            correlationid: None,
            causationid: None,
            // The span that makes the envelope, when traces are exported.
            traceparent: crate::telemetry::trace::current(),
            replyto: None,
            deadline: None,
            extensions: BTreeMap::new(),
            data,
        }
    }

    /// Sets the subject (the entity the message is about; ordering is kept per subject).
    pub fn with_subject(mut self, subject: impl Into<String>) -> Envelope {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Envelope {
        self.correlationid = Some(id.into());
        self
    }

    /// Marks this envelope as caused by `cause`: `causationid` is the cause's id, the
    /// correlation id, trace context and [principal](crate::principal) are inherited (the
    /// cause's id starts a conversation).
    pub fn caused_by(mut self, cause: &Envelope) -> Envelope {
        self.causationid = Some(cause.id.clone());
        self.correlationid = Some(
            cause
                .correlationid
                .clone()
                .unwrap_or_else(|| cause.id.clone()),
        );
        if self.traceparent.is_none() {
            self.traceparent.clone_from(&cause.traceparent);
        }
        // On whose behalf: the cause's principal, unless this envelope names its own.
        if let Some(principal) = cause.extensions.get(crate::principal::ATTRIBUTE)
            && !self.extensions.contains_key(crate::principal::ATTRIBUTE)
        {
            self.extensions
                .insert(crate::principal::ATTRIBUTE.to_owned(), principal.clone());
        }
        self
    }

    /// Whether the payload is JSON (no content type, `application/json` or a `+json` type).
    pub fn is_json(&self) -> bool {
        match self.datacontenttype.as_deref() {
            None => true,
            Some(ct) => {
                let media = ct.split(';').next().unwrap_or("").trim();
                media.eq_ignore_ascii_case(JSON) || media.to_ascii_lowercase().ends_with("+json")
            }
        }
    }

    /// Decodes the payload as `M`. The envelope's type must be exactly `M::TYPE`.
    pub fn decode<M: Message>(&self) -> Result<M, Error> {
        if self.ty != M::TYPE {
            return Err(Error::new(
                ErrorKind::TypeMismatch,
                format!(
                    "envelope {} holds a {}, not a {}",
                    self.id,
                    self.ty,
                    M::TYPE
                ),
            ));
        }
        serde_json::from_slice(&self.data).map_err(|e| {
            Error::new(
                ErrorKind::InvalidPayload,
                format!(
                    "envelope {} claims to be a {} but its data does not decode as one",
                    self.id,
                    M::TYPE
                ),
            )
            .with_source(e)
        })
    }

    /// Milliseconds since the Unix epoch of `time`, if set.
    pub fn time_unix_ms(&self) -> Option<i128> {
        self.time.map(|t| t.unix_timestamp_nanos() / 1_000_000)
    }
}
