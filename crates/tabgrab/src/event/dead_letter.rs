//! Dead letters: events that could not be handled, kept with the reason, never dropped.
//!
//! A dead letter is itself a CloudEvent (type [`DEAD_LETTER_TYPE`]) on the topic
//! `<topic>.dead-letters`, so the usual tools read it: a subscription can react to dead
//! letters, and [`read_dead_letters`] lists them. The original record is kept byte for byte
//! (base64), whether or not it could be decoded, so it can be inspected or re-published.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backend::embedded::{EmbeddedBus, storage};
use crate::backend::{Bus, Engine};
use crate::{Codec, Envelope, Error, ErrorKind, Message};

/// The CloudEvents type of dead-letter records.
pub const DEAD_LETTER_TYPE: &str = "tabgrab.dead-letter.recorded.v1";

/// Dead letters may carry an original record up to the log's record limit, base64-encoded.
pub(crate) const DEAD_LETTER_MAX_SIZE: usize = 32 * 1024 * 1024;

/// The topic that holds the dead letters of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dead-letters")
}

/// An event that a consumer group gave up on, with everything needed to understand why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The topic the event was read from.
    pub topic: String,
    /// The consumer group that gave up.
    pub group: String,
    /// The event's offset in `topic` (the first offset of the range, for data loss).
    pub offset: u64,
    /// Why: `max_deliveries`, `permanent_error`, `data_loss`, or a decoding error kind
    /// (`malformed`, `too_large`, `unknown_type`, `unsupported_version`, `missing_attribute`,
    /// `invalid_payload`).
    pub reason: String,
    /// The last error, in words.
    pub error: String,
    /// How many times the handler ran (0 when the event never reached it).
    pub attempts: u32,
    /// The event's id, when its envelope could be decoded.
    pub message_id: Option<String>,
    /// The event's type, when its envelope could be decoded.
    pub message_type: Option<String>,
    /// The event's subject, when its envelope could be decoded.
    pub subject: Option<String>,
    /// The original record, byte for byte, base64-encoded.
    pub original_base64: String,
}

impl Message for DeadLetter {
    const TYPE: &'static str = DEAD_LETTER_TYPE;
}

impl crate::Event for DeadLetter {}

impl DeadLetter {
    /// The original record's bytes.
    pub fn original(&self) -> Result<Bytes, Error> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.original_base64)
            .map(Bytes::from)
            .map_err(|e| {
                Error::new(ErrorKind::Malformed, "dead letter's original is not base64")
                    .with_source(e)
            })
    }

    /// Builds a dead letter for the record at `offset` of `topic`; the reason comes next,
    /// with [`DeadLetter::because`].
    pub(crate) fn new(
        topic: &str,
        group: &str,
        offset: u64,
        original: &[u8],
        envelope: Option<&Envelope>,
    ) -> DeadLetter {
        DeadLetter {
            topic: topic.to_owned(),
            group: group.to_owned(),
            offset,
            reason: String::new(),
            error: String::new(),
            attempts: 0,
            message_id: envelope.map(|e| e.id.clone()),
            message_type: envelope.map(|e| e.ty.clone()),
            subject: envelope.and_then(|e| e.subject.clone()),
            original_base64: base64::engine::general_purpose::STANDARD.encode(original),
        }
    }

    /// Sets why the group gave up: the reason code, the last error and the attempts made.
    pub(crate) fn because(mut self, reason: &str, error: String, attempts: u32) -> DeadLetter {
        self.reason = reason.to_owned();
        self.error = error;
        self.attempts = attempts;
        self
    }

    /// Appends this dead letter durably to the dead-letter topic of `self.topic`.
    pub(crate) async fn record(&self, bus: &Bus) -> Result<u64, Error> {
        let topic = dead_letter_topic(&self.topic);
        let mut envelope = Envelope::new(format!("/tabgrab/groups/{}", self.group), self)?;
        envelope.subject.clone_from(&self.subject);
        let bus = match &bus.engine {
            Engine::Embedded(bus) => bus,
            Engine::Broker(b) => return Ok(b.publish(&topic, &envelope).await?.position),
        };
        let log = bus.topic(&topic)?;
        let bytes = Codec::with_max_size(DEAD_LETTER_MAX_SIZE).encode(&envelope)?;
        log.append(bytes)
            .await
            .map_err(|e| storage(&topic, "dead-letter", e))
    }
}

/// Every dead letter of `topic`, oldest first.
pub fn read_dead_letters(bus: &EmbeddedBus, topic: &str) -> Result<Vec<DeadLetter>, Error> {
    let dl_topic = dead_letter_topic(topic);
    // Reading must not create anything: no directory means no dead letter was ever written.
    if !bus.dir().join("topics").join(&dl_topic).is_dir() {
        return Ok(Vec::new());
    }
    let log = bus.topic(&dl_topic)?;
    let codec = Codec::with_max_size(DEAD_LETTER_MAX_SIZE);
    let mut letters = Vec::new();
    let mut from = log.start_offset();
    loop {
        let records = log
            .read(from, 1024)
            .map_err(|e| storage(&dl_topic, "read", e))?;
        let Some(last) = records.last() else { break };
        from = last.offset + 1;
        for record in records {
            letters.push(codec.decode(&record.payload)?.decode::<DeadLetter>()?);
        }
    }
    Ok(letters)
}
