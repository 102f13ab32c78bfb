//! Dead letters: events that could not be handled, kept with the reason, never dropped.
//!
//! A dead letter is itself a CloudEvent (type [`DEAD_LETTER_TYPE`]) on the topic
//! `<topic>.dead-letters`, so the usual tools read it: a subscription can react to dead
//! letters, and [`read_dead_letters`] lists them.
//!
//! # Bounded, whatever the bad message
//! A dead letter must be writable for *every* message a group can receive, or one bad message
//! wedges its group: a copy of a 0.8 MB original, base64-encoded, does not fit the bus's
//! 1 MiB envelope limit, and a write that can never succeed was retried forever. So a dead
//! letter has a bounded size on every engine (well under the 1 MiB codec limit):
//! - an original of up to [`ORIGINAL_KEPT_WHOLE`] bytes is kept whole, byte for byte
//!   (base64), whether or not it could be decoded, so it can be inspected or published again;
//! - a larger one is kept as its first [`ORIGINAL_EXCERPT`] bytes, with its size and SHA-256
//!   digest, and [`DeadLetter::original_kept_at`] says where the engine keeps the whole of it
//!   (the embedded log at its offset, the JetStream stream at its sequence, RabbitMQ's
//!   dead-letter queue, to which the group then rejects it);
//! - the texts that come from the message or the handler (id, type, subject, the error) are
//!   cut to a few KiB.
//!
//! Writing a dead letter can still fail for a while (the broker restarts, the disk is full):
//! that is retried with backoff by the subscription, counted and logged, and the message stays
//! unacknowledged meanwhile; it never blocks the group's other messages.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::backend::Bus;
use crate::backend::embedded::EmbeddedBus;
use crate::{Codec, Envelope, Error, ErrorKind, Message, Topic};

/// The CloudEvents type of dead-letter records.
pub const DEAD_LETTER_TYPE: &str = "tabgrab.dead-letter.recorded.v1";

/// Originals up to this size are kept whole in their dead letter.
pub const ORIGINAL_KEPT_WHOLE: usize = 256 * 1024;

/// Of a larger original, the dead letter keeps this many first bytes (and its digest).
pub const ORIGINAL_EXCERPT: usize = 16 * 1024;

/// The longest error text a dead letter keeps (a handler's error may quote its input).
const ERROR_MAX: usize = 4 * 1024;

/// The longest id, type or subject a dead letter keeps (they come from the bad message).
const ATTRIBUTE_MAX: usize = 512;

/// The topic that holds the dead letters of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    crate::topic::dead_letters_of(topic)
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
    /// Why: `max_deliveries`, `permanent_error`, `data_loss`, a decoding error kind
    /// (`malformed`, `too_large`, `unknown_type`, `unsupported_version`, `missing_attribute`,
    /// `invalid_payload`), or a refused principal (`unauthenticated`, `permission_denied`; see
    /// [`crate::principal`]).
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
    /// The original record, byte for byte, base64-encoded: all of it, or its first
    /// [`ORIGINAL_EXCERPT`] bytes when [`original_truncated`](Self::original_truncated). An
    /// event that arrived in CloudEvents binary mode (attributes in headers) is kept as the
    /// same event in structured mode.
    pub original_base64: String,
    /// The original's size in bytes.
    #[serde(default)]
    pub original_size: u64,
    /// The original's SHA-256, in lowercase hex: identifies it where only an excerpt is kept.
    #[serde(default)]
    pub original_sha256: String,
    /// Whether `original_base64` holds only an excerpt (the original was larger than
    /// [`ORIGINAL_KEPT_WHOLE`], or than what fits the bus's envelope limit beside the rest).
    #[serde(default)]
    pub original_truncated: bool,
    /// Where the engine keeps the whole original when only an excerpt is here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_kept_at: Option<String>,
}

impl Message for DeadLetter {
    const TYPE: &'static str = DEAD_LETTER_TYPE;
}

impl crate::Event for DeadLetter {}

impl DeadLetter {
    /// The original record's bytes, when the dead letter keeps all of them. When it keeps an
    /// excerpt only, a `TooLarge` error says where the whole original is; the excerpt is
    /// [`DeadLetter::excerpt`].
    pub fn original(&self) -> Result<Bytes, Error> {
        if self.original_truncated {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "the dead letter of offset {} in topic {} keeps the first {} of its {} bytes \
                     (sha256 {}); the whole original is kept at {}",
                    self.offset,
                    self.topic,
                    ORIGINAL_EXCERPT,
                    self.original_size,
                    self.original_sha256,
                    self.original_kept_at
                        .as_deref()
                        .unwrap_or("an unknown place")
                ),
            ));
        }
        self.excerpt()
    }

    /// The kept bytes of the original: all of it, or its first [`ORIGINAL_EXCERPT`] bytes.
    pub fn excerpt(&self) -> Result<Bytes, Error> {
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
    ///
    /// A decoded event whose record does not hold it whole (CloudEvents binary mode: the
    /// attributes travel in headers, the record is the data) is kept as the same event in
    /// structured mode, one self-contained record that can be inspected and redriven.
    pub(crate) fn new(
        topic: &str,
        group: &str,
        offset: u64,
        original: &[u8],
        envelope: Option<&Envelope>,
    ) -> DeadLetter {
        let structured;
        let original = match envelope {
            Some(e) if Codec::default().decode(original).is_err() => {
                match Codec::default().encode(e) {
                    // Only when the event fits whole: an excerpt of it could not be redriven
                    // either, and the record's own bytes then say more.
                    Ok(bytes) if bytes.len() <= ORIGINAL_KEPT_WHOLE => {
                        structured = bytes;
                        &structured[..]
                    }
                    _ => original,
                }
            }
            _ => original,
        };
        let truncated = original.len() > ORIGINAL_KEPT_WHOLE;
        let kept = if truncated {
            &original[..ORIGINAL_EXCERPT]
        } else {
            original
        };
        let attribute = |s: &String| cut(s, ATTRIBUTE_MAX);
        DeadLetter {
            topic: topic.to_owned(),
            group: group.to_owned(),
            offset,
            reason: String::new(),
            error: String::new(),
            attempts: 0,
            message_id: envelope.map(|e| attribute(&e.id)),
            message_type: envelope.map(|e| attribute(&e.ty)),
            subject: envelope.and_then(|e| e.subject.as_ref().map(attribute)),
            original_base64: base64::engine::general_purpose::STANDARD.encode(kept),
            original_size: u64::try_from(original.len()).unwrap_or(u64::MAX),
            original_sha256: hex(&sha2::Sha256::digest(original)),
            original_truncated: truncated,
            original_kept_at: None,
        }
    }

    /// Sets why the group gave up: the reason code, the last error and the attempts made.
    pub(crate) fn because(mut self, reason: &str, error: String, attempts: u32) -> DeadLetter {
        self.reason = reason.to_owned();
        self.error = cut(&error, ERROR_MAX);
        self.attempts = attempts;
        self
    }

    /// This dead letter cut to fit `codec`'s size limit: as it is if it fits, else with as
    /// long an excerpt of the original as fits (at most [`ORIGINAL_EXCERPT`] bytes), and
    /// `location()` as the place the engine keeps the whole original.
    pub(crate) fn fit(mut self, codec: Codec, location: impl FnOnce() -> String) -> DeadLetter {
        let size = |letter: &DeadLetter| letter.encoded_size(codec);
        let mut location = Some(location);
        let mut locate = |letter: &mut DeadLetter| {
            if let Some(location) = location.take() {
                letter.original_kept_at.get_or_insert_with(location);
            }
        };
        if self.original_truncated {
            locate(&mut self);
        }
        if size(&self).is_some() {
            return self;
        }
        let kept = self.excerpt().unwrap_or_default();
        let mut letter = self.without_original();
        locate(&mut letter);
        let Some(base) = size(&letter) else {
            // Not even the bare letter fits (a very small limit): written as it is, the write
            // fails and is counted; nothing is dropped.
            return letter;
        };
        // Base64 turns 3 bytes into 4; a little slack for the JSON around them.
        let budget = codec.max_size().saturating_sub(base + 16) / 4 * 3;
        let n = budget.min(kept.len()).min(ORIGINAL_EXCERPT);
        letter.original_base64 = base64::engine::general_purpose::STANDARD.encode(&kept[..n]);
        if size(&letter).is_none() {
            letter.original_base64 = String::new();
        }
        letter
    }

    /// The size of this dead letter's envelope under `codec`, if it fits.
    fn encoded_size(&self, codec: Codec) -> Option<usize> {
        codec
            .encode(&self.envelope().ok()?)
            .ok()
            .map(|bytes| bytes.len())
    }

    /// The same dead letter without the kept bytes of the original (its size and digest
    /// stay): what is written when the engine refuses the full one as too large.
    pub(crate) fn without_original(&self) -> DeadLetter {
        let mut letter = self.clone();
        letter.original_base64 = String::new();
        letter.original_truncated = true;
        letter
    }

    /// Appends this dead letter durably to the dead-letter topic of `self.topic`.
    pub(crate) async fn record(&self, bus: &Bus) -> Result<u64, Error> {
        let topic = Topic::new(&self.topic)?.dead_letters();
        let envelope = self.envelope()?;
        Ok(bus.backend().publish(&topic, &envelope).await?.position)
    }

    /// This dead letter as the envelope that is written.
    pub(crate) fn envelope(&self) -> Result<Envelope, Error> {
        let mut envelope = Envelope::new(format!("/tabgrab/groups/{}", self.group), self)?;
        envelope.subject.clone_from(&self.subject);
        Ok(envelope)
    }
}

/// `text`, cut to at most `max` bytes at a character boundary, with a note of the cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Every open dead letter of `topic` on an embedded bus (not redriven or purged), oldest
/// first, without a runtime (the same as [`Bus::dead_letters`]; reading creates nothing).
pub fn read_dead_letters(bus: &EmbeddedBus, topic: &str) -> Result<Vec<DeadLetter>, Error> {
    Ok(
        super::open_letters(&bus.read_all_now(&dead_letter_topic(topic))?)?
            .into_iter()
            .map(|k| k.letter)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event that arrived in binary mode (its record is the data alone) is kept as the
    /// same event in structured mode, which decodes back to it; a record that is the
    /// event's structured encoding is kept byte for byte.
    #[test]
    fn a_binary_mode_event_is_kept_whole_in_structured_mode() {
        let codec = Codec::default();
        let event =
            Envelope::raw("/test", "t.v1", Bytes::from_static(br#"{"n":1}"#)).with_subject("s-1");
        let letter = DeadLetter::new("orders", "kitchen", 7, br#"{"n":1}"#, Some(&event));
        let kept = codec.decode(&letter.original().unwrap()).unwrap();
        assert_eq!(
            (kept.id, kept.ty, kept.data),
            (event.id.clone(), event.ty.clone(), event.data.clone())
        );
        let structured = codec.encode(&event).unwrap();
        let letter = DeadLetter::new("orders", "kitchen", 7, &structured, Some(&event));
        assert_eq!(letter.original().unwrap(), structured);
    }

    /// However large the original and however long the texts that come with it, a dead
    /// letter fits the bus's default envelope limit.
    #[test]
    fn a_dead_letter_fits_the_default_codec_whatever_the_original() {
        let codec = Codec::default();
        for size in [
            0,
            1,
            ORIGINAL_KEPT_WHOLE,
            ORIGINAL_KEPT_WHOLE + 1,
            900_000,
            40 << 20,
        ] {
            let original = vec![0xA5_u8; size];
            let envelope = Envelope::raw("/test", "t".repeat(100_000), Bytes::new())
                .with_subject("s".repeat(700_000));
            let letter = DeadLetter::new("orders", "kitchen", 7, &original, Some(&envelope))
                .because("malformed", "e".repeat(2 << 20), 0);
            let bytes = codec
                .encode(&letter.envelope().expect("an envelope"))
                .expect("the dead letter fits");
            assert!(bytes.len() < 400 * 1024, "{size}: {} bytes", bytes.len());
            assert_eq!(letter.original_size, size as u64);
            assert_eq!(letter.original_truncated, size > ORIGINAL_KEPT_WHOLE);
            assert_eq!(
                letter.original_sha256,
                hex(&sha2::Sha256::digest(&original))
            );
            if size > ORIGINAL_KEPT_WHOLE {
                assert_eq!(
                    letter.excerpt().expect("base64"),
                    original[..ORIGINAL_EXCERPT]
                );
                assert_eq!(
                    letter.original().expect_err("only an excerpt").kind(),
                    ErrorKind::TooLarge
                );
            } else {
                assert_eq!(letter.original().expect("kept whole"), original);
            }
        }
    }

    /// Under a small envelope limit the dead letter keeps as much of the original as fits,
    /// and says where the whole is.
    #[test]
    fn a_dead_letter_is_cut_to_fit_a_small_codec() {
        let codec = Codec::with_max_size(4096);
        let original: Vec<u8> = (0..10_000_u32).map(|i| i as u8).collect();
        let letter = DeadLetter::new("orders", "kitchen", 3, &original, None)
            .because("too_large", "too large".into(), 0)
            .fit(codec, || "offset 3".into());
        assert!(letter.original_truncated);
        assert_eq!(letter.original_kept_at.as_deref(), Some("offset 3"));
        let excerpt = letter.excerpt().expect("base64");
        assert!(excerpt.len() > 1000, "{} bytes kept", excerpt.len());
        assert_eq!(excerpt, original[..excerpt.len()]);
        assert!(letter.encoded_size(codec).is_some());

        let small = DeadLetter::new("orders", "kitchen", 4, b"tiny", None)
            .because("malformed", "bad".into(), 0)
            .fit(codec, || unreachable!("kept whole"));
        assert!(!small.original_truncated);
        assert_eq!(small.original().expect("whole"), &b"tiny"[..]);
    }

    #[test]
    fn cut_texts_end_at_a_character_boundary_and_say_so() {
        let text = "é".repeat(10);
        let cut_text = cut(&text, 5);
        assert!(cut_text.starts_with("éé"));
        assert!(cut_text.ends_with("(20 bytes in all)"));
        assert_eq!(cut("short", 5), "short");
    }
}
