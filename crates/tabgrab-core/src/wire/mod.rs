//! The CloudEvents bindings every transport shares, in one place: [`ContentMode`] (structured
//! or binary) for the message transports, and the binary mode's mapping: the HTTP
//! headers of calls, the NATS headers of calls and JetStream events, the AMQP headers of
//! RabbitMQ messages all map attributes through [`Codec::encode_binary`] /
//! [`Codec::decode_binary`] and the fast paths here; [`nats`] adapts them to async-nats'
//! header map (feature `nats`).
//!
//! The fast paths: the time written and read without the `time` crate's general RFC 3339
//! machinery, and the fast decoding of the envelope tabgrab's own clients send. They are
//! shortcuts for the common case (tabgrab talking to tabgrab: known attributes, plain
//! header text, a UTC time), each checked by a unit test against the codec's general path,
//! which every transport still uses for anything else.

use crate::{Codec, Envelope, Error, ErrorKind};
use bytes::Bytes;

#[cfg(feature = "nats")]
pub mod nats;

/// The media type of the CloudEvents JSON event format: a message whose content type is this
/// carries the whole event, attributes and data, as one JSON document (structured mode).
pub const STRUCTURED_JSON: &str = "application/cloudevents+json";

/// How a message transport (NATS, AMQP) carries an envelope: the two CloudEvents content
/// modes. Receivers read both whatever they send; the mode only chooses what is sent.
///
/// Structured is the default because it was measured faster on both brokers (BENCHMARKS.md,
/// "Engines"): the server and the clients handle one short header instead of eight, and the
/// bytes the embedded log and the outbox store are the bytes sent. Binary keeps the data as
/// the body, which plain clients that know nothing of CloudEvents read as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ContentMode {
    /// The event as one `application/cloudevents+json` document in the body.
    #[default]
    Structured,
    /// The attributes as `ce-*` headers (and `content-type`), the data as the body.
    Binary,
}

impl ContentMode {
    /// Its name in a bus URL (`?wire=structured|binary`).
    pub fn as_str(self) -> &'static str {
        match self {
            ContentMode::Structured => "structured",
            ContentMode::Binary => "binary",
        }
    }

    /// Reads a name of [`ContentMode::as_str`]; anything else is a `Malformed` error that
    /// lists the names.
    pub fn parse(name: &str) -> Result<ContentMode, Error> {
        match name {
            "structured" => Ok(ContentMode::Structured),
            "binary" => Ok(ContentMode::Binary),
            other => Err(Error::new(
                ErrorKind::Malformed,
                format!("unknown wire mode {other:?}: use structured or binary"),
            )),
        }
    }

    /// The mode a received message is in, from its content type (`content-type` header or
    /// AMQP property) and whether it has a `ce-*` header: a CloudEvents media type means
    /// structured (as every CloudEvents binding says); a `ce-*` header or another content
    /// type means binary; neither means structured, as the NATS binding before message
    /// headers sent it.
    pub fn of_received(content_type: Option<&str>, has_ce_header: bool) -> ContentMode {
        match content_type {
            Some(ct) if is_cloudevents_media_type(ct) => ContentMode::Structured,
            Some(_) => ContentMode::Binary,
            None if has_ce_header => ContentMode::Binary,
            None => ContentMode::Structured,
        }
    }
}

/// Whether `content_type` names a CloudEvents event format (`application/cloudevents`,
/// `application/cloudevents+json`, with or without parameters; any case).
pub fn is_cloudevents_media_type(content_type: &str) -> bool {
    const PREFIX: &str = "application/cloudevents";
    content_type
        .as_bytes()
        .get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX.as_bytes()))
}

/// The longest [`rfc3339`] output: `9999-12-31T23:59:59.999999999Z`.
pub const RFC3339_MAX: usize = 30;

/// Room for the two times an envelope may carry (`ce-time` and `ce-deadline`), written by
/// [`rfc3339`] on the caller's stack.
pub type TimeBufs = [[u8; RFC3339_MAX]; 2];

/// A header name of [`plain_headers`]: a known attribute's static name, or an extension
/// attribute (lowercase letters and digits) whose header is `ce-` and the attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name<'a> {
    /// `ce-id`, `content-type`, …
    Known(&'static str),
    /// The attribute name without the `ce-` prefix.
    Extension(&'a str),
}

/// The CloudEvents binary-mode headers of `envelope` as (name, value) pairs, `ce-specversion`
/// first, when every value is plain header text (no percent-encoding needed, so no control
/// character), every extension name is a valid attribute name that is not reserved, there are
/// not too many, and the headers fit the codec's size limit;
/// `None` otherwise (the transport then takes the codec's general path, which says why).
/// Every transport builds its own header map from these pairs, so the check is written once.
pub fn plain_headers<'a>(
    codec: &Codec,
    envelope: &'a Envelope,
    bufs: &'a mut TimeBufs,
) -> Option<impl Iterator<Item = (Name<'a>, &'a str)>> {
    // No early exit, so that the scan compiles to vector instructions (every header of every
    // message is checked).
    let plain = |v: &str| {
        v.bytes().fold(true, |plain, b| {
            plain & (0x21..=0x7e).contains(&b) & (b != b'"') & (b != b'%')
        })
    };
    let [time_buf, deadline_buf] = bufs;
    let time = match envelope.time {
        Some(t) => Some(rfc3339(t, time_buf)?),
        None => None,
    };
    let deadline = match envelope.deadline {
        Some(t) => Some(rfc3339(t, deadline_buf)?),
        None => None,
    };
    let known: [(&'static str, Option<&'a str>); 12] = [
        ("ce-specversion", Some(crate::envelope::SPEC_VERSION)),
        ("ce-id", Some(&envelope.id)),
        ("ce-source", Some(&envelope.source)),
        ("ce-type", Some(&envelope.ty)),
        ("ce-time", time),
        ("ce-subject", envelope.subject.as_deref()),
        ("ce-correlationid", envelope.correlationid.as_deref()),
        ("ce-causationid", envelope.causationid.as_deref()),
        ("ce-traceparent", envelope.traceparent.as_deref()),
        ("ce-replyto", envelope.replyto.as_deref()),
        ("ce-deadline", deadline),
        ("content-type", envelope.datacontenttype.as_deref()),
    ];
    let mut size = envelope.data.len();
    for (name, value) in known {
        let Some(value) = value else { continue };
        if !plain(value) {
            return None;
        }
        size += name.len() + value.len();
    }
    // Past the attribute count, or an extension the codec refuses: its path says why.
    if envelope.extensions.len() + known.len() > crate::attribute::MAX_ATTRIBUTES {
        return None;
    }
    for (name, value) in &envelope.extensions {
        let valid = !name.is_empty()
            && name.len() <= crate::attribute::MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && !crate::attribute::RESERVED.contains(&name.as_str());
        if !valid || !plain(value) {
            return None;
        }
        size += "ce-".len() + name.len() + value.len();
    }
    codec.check_size(size).ok()?;
    let known = known
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (Name::Known(name), v)));
    let extensions = envelope
        .extensions
        .iter()
        .map(|(name, value)| (Name::Extension(name.as_str()), value.as_str()));
    Some(known.chain(extensions))
}

/// `time` as RFC 3339, byte for byte what `time`'s `Rfc3339` writes (fractional seconds
/// without trailing zeros, `Z`), into `buf` and without allocating; `None` for what only the
/// `time` crate's path handles (an offset other than UTC, a year outside 0–9999).
pub fn rfc3339(time: time::OffsetDateTime, buf: &mut [u8; RFC3339_MAX]) -> Option<&str> {
    if !time.offset().is_utc() || !(0..10_000).contains(&time.year()) {
        return None;
    }
    let (year, month, day) = time.to_calendar_date();
    let (hour, minute, second, nanos) = time.to_hms_nano();
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (at..at + digits).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year.unsigned_abs(), 4);
    put(5, u32::from(u8::from(month)), 2);
    put(8, u32::from(day), 2);
    put(11, u32::from(hour), 2);
    put(14, u32::from(minute), 2);
    put(17, u32::from(second), 2);
    let mut len = 19;
    if nanos != 0 {
        let (mut digits, mut fraction) = (9, nanos);
        while fraction % 10 == 0 {
            fraction /= 10;
            digits -= 1;
        }
        put(20, fraction, digits);
        buf[19] = b'.';
        len = 20 + digits;
    }
    buf[4] = b'-';
    buf[7] = b'-';
    buf[10] = b'T';
    buf[13] = b':';
    buf[16] = b':';
    buf[len] = b'Z';
    std::str::from_utf8(&buf[..=len]).ok()
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (1–9 fraction digits) as the `time` crate's RFC 3339
/// parser reads it; `None` for any other spelling, which goes to that parser.
pub fn parse_utc(text: &str) -> Option<time::OffsetDateTime> {
    let b = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[b.len() - 1] != b'Z' {
        return None;
    }
    let nanos = match b.len() {
        20 => 0,
        22..=30 if b[19] == b'.' => {
            let digits = b.len() - 21;
            number(20..b.len() - 1)? * 10u32.pow(9 - digits as u32)
        }
        _ => return None,
    };
    let month = time::Month::try_from(u8::try_from(number(5..7)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(number(0..4)?).ok()?,
        month,
        u8::try_from(number(8..10)?).ok()?,
    )
    .ok()?;
    let time = time::Time::from_hms_nano(
        u8::try_from(number(11..13)?).ok()?,
        u8::try_from(number(14..16)?).ok()?,
        u8::try_from(number(17..19)?).ok()?,
        nanos,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc())
}

/// The envelope of CloudEvents binary-mode headers in the common case: the known attributes,
/// no percent-encoding, extensions named in lowercase letters and digits, the time and the
/// deadline as `…Z` (what [`rfc3339`] writes),
/// specversion 1.0, the required attributes present, within the size limit. It makes the
/// envelope the codec would make without its per-header allocations (a lowercased copy of
/// each name) and without the general RFC 3339 parser; `None` for anything else, which the
/// codec then decodes or refuses with its own message (unit tests hold both equal).
///
/// `headers` yields every header (names as sent: tabgrab sends them lowercase); headers
/// other than `ce-*` and `content-type` are skipped.
pub fn fast_envelope<'a>(
    codec: &Codec,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &Bytes,
) -> Option<Envelope> {
    let mut envelope = Envelope {
        id: String::new(),
        source: String::new(),
        ty: String::new(),
        time: None,
        subject: None,
        datacontenttype: None,
        correlationid: None,
        causationid: None,
        traceparent: None,
        replyto: None,
        deadline: None,
        extensions: Default::default(),
        data: body.clone(),
    };
    let mut specversion = false;
    let mut size = body.len();
    for (name, value) in headers {
        if !(name.starts_with("ce-") || name == "content-type") {
            let attribute = name
                .as_bytes()
                .get(..3)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"ce-"))
                || name.eq_ignore_ascii_case("content-type");
            if attribute {
                // Another spelling of an attribute's header: the codec lowercases it.
                return None;
            }
            continue;
        }
        size += name.len() + value.len();
        let value = std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.contains('%'))?;
        match name {
            "ce-specversion" => specversion = value == crate::envelope::SPEC_VERSION,
            "ce-id" => envelope.id = value.to_owned(),
            "ce-source" => envelope.source = value.to_owned(),
            "ce-type" => envelope.ty = value.to_owned(),
            "ce-time" => envelope.time = Some(parse_utc(value)?),
            "ce-subject" => envelope.subject = Some(value.to_owned()),
            "content-type" => envelope.datacontenttype = Some(value.to_owned()),
            "ce-correlationid" => envelope.correlationid = Some(value.to_owned()),
            "ce-causationid" => envelope.causationid = Some(value.to_owned()),
            "ce-traceparent" => envelope.traceparent = Some(value.to_owned()),
            "ce-replyto" => envelope.replyto = Some(value.to_owned()),
            "ce-deadline" => envelope.deadline = Some(parse_utc(value)?),
            _ => {
                // An extension; anything the codec would refuse or lowercase goes to it.
                let attribute = name.strip_prefix("ce-")?;
                let valid = !attribute.is_empty()
                    && attribute
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !valid {
                    return None;
                }
                envelope
                    .extensions
                    .insert(attribute.to_owned(), value.to_owned());
            }
        }
    }
    let complete = specversion
        && !envelope.id.is_empty()
        && !envelope.source.is_empty()
        && !envelope.ty.is_empty();
    (complete && codec.check_size(size).is_ok()).then_some(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_mode_of_a_message_follows_its_content_type() {
        use ContentMode::{Binary, Structured};
        assert_eq!(
            ContentMode::of_received(Some(STRUCTURED_JSON), false),
            Structured
        );
        assert_eq!(
            ContentMode::of_received(Some("Application/CloudEvents+JSON; charset=utf-8"), true),
            Structured
        );
        assert_eq!(
            ContentMode::of_received(Some("application/json"), true),
            Binary
        );
        assert_eq!(ContentMode::of_received(Some("text/plain"), false), Binary);
        assert_eq!(ContentMode::of_received(None, true), Binary);
        assert_eq!(ContentMode::of_received(None, false), Structured);
        for mode in [Structured, Binary] {
            assert_eq!(ContentMode::parse(mode.as_str()).unwrap(), mode);
        }
        let err = ContentMode::parse("protobuf").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Malformed);
        assert!(err.message().contains("structured or binary"), "{err}");
    }

    #[test]
    fn the_time_is_written_as_the_time_crate_writes_it() {
        use time::format_description::well_known::Rfc3339;
        let check = |t: time::OffsetDateTime| {
            let mut buf = [0u8; RFC3339_MAX];
            assert_eq!(
                rfc3339(t, &mut buf),
                Some(t.format(&Rfc3339).unwrap().as_str()),
                "{t:?}"
            );
        };
        let base = time::macros::datetime!(2026-11-27 02:37:05 UTC);
        for nanos in [
            0,
            1,
            10,
            100,
            120_000,
            123_456_789,
            500_000_000,
            999_999_999,
            100_000_000,
        ] {
            check(base + time::Duration::nanoseconds(nanos));
        }
        check(time::macros::datetime!(0000-01-01 00:00:00 UTC));
        check(time::macros::datetime!(9999-12-31 23:59:59.999999999 UTC));
        check(time::OffsetDateTime::now_utc());
        let mut seconds: i64 = 0;
        for _ in 0..10_000 {
            seconds = seconds
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let s = seconds.rem_euclid(253_402_300_799);
            let n = (seconds >> 7).rem_euclid(1_000_000_000);
            check(
                time::OffsetDateTime::from_unix_timestamp(s - 62_167_219_200)
                    .unwrap()
                    .replace_nanosecond(n as u32)
                    .unwrap(),
            );
        }
        // What the fast path leaves to the codec.
        let mut buf = [0u8; RFC3339_MAX];
        assert_eq!(
            rfc3339(base.to_offset(time::macros::offset!(+2)), &mut buf),
            None
        );
    }
}
