//! Encoding and decoding envelopes, with a size limit and typed errors.
//!
//! Why a codec object rather than free functions: the maximum size is configuration (default
//! [`DEFAULT_MAX_SIZE`], 1 MiB) and every transport must enforce the same one, on encode (so
//! we never send what a peer must refuse) and on decode *before* anything is allocated for the
//! message (so a hostile peer cannot make us buffer gigabytes). Transports that stream (HTTP)
//! check the announced length with [`Codec::check_size`] before reading the body.
//!
//! Decoding never panics: every failure is an [`Error`] whose [`ErrorKind`] says which of
//! malformed, too large, missing attribute, unsupported version (checked here for
//! `specversion`) it is. Whether the *type* is one the application knows is a separate check,
//! [`Registry::check`], because a relay may carry types it does not understand.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::attribute::{self, MAX_ATTRIBUTES};
use crate::envelope::{JSON, SPEC_VERSION};
use crate::{Envelope, Error, ErrorKind, Message, MessageType};

/// Default maximum size of an encoded envelope: 1 MiB.
pub const DEFAULT_MAX_SIZE: usize = 1024 * 1024;

/// Encodes and decodes envelopes under a size limit.
#[derive(Clone, Copy, Debug)]
pub struct Codec {
    /// The largest encoded envelope accepted, in bytes (structured: the JSON text; binary:
    /// header names and values plus the body).
    max_size: usize,
}

impl Default for Codec {
    fn default() -> Codec {
        Codec {
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

impl Codec {
    /// A codec with the given maximum envelope size in bytes.
    pub fn with_max_size(max_size: usize) -> Codec {
        Codec { max_size }
    }

    /// The maximum envelope size in bytes.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Refuses a size above the maximum with [`ErrorKind::TooLarge`].
    pub fn check_size(&self, size: usize) -> Result<(), Error> {
        if size > self.max_size {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "envelope of {size} bytes exceeds the maximum of {} bytes; \
                     send large payloads by reference or raise the codec's max_size",
                    self.max_size
                ),
            ));
        }
        Ok(())
    }

    /// Encodes in CloudEvents JSON structured mode, after [`Codec::check_envelope`]: what a
    /// peer must refuse is never sent.
    pub fn encode(&self, envelope: &Envelope) -> Result<Bytes, Error> {
        self.encode_with(envelope, &[])
    }

    /// [`Codec::encode`] with `extra` extension attributes written beside the envelope's own,
    /// without a copy of the envelope: what a transport adds for one hop (a call's remaining
    /// time over NATS). Each name is checked like an extension's, must not be one the
    /// envelope has, and counts towards the attribute and size limits.
    pub fn encode_with(&self, envelope: &Envelope, extra: &[(&str, &str)]) -> Result<Bytes, Error> {
        let mut out = Vec::with_capacity(Codec::size_hint(envelope));
        self.encode_extra_into(envelope, extra, &mut out)?;
        Ok(Bytes::from(out))
    }

    /// About how many bytes `envelope` encodes to: the capacity to reserve before
    /// [`Codec::encode_into`]. It counts each attribute's value with room for its name, quotes
    /// and separators (so that an encoding seldom grows its buffer, which copies it), and the
    /// data as it is written (base64 is a third larger).
    pub fn size_hint(envelope: &Envelope) -> usize {
        /// Room for an attribute's name, two quotes, a colon and a comma.
        const PER_ATTRIBUTE: usize = 24;
        /// `specversion`, `time`, `deadline`, `datacontenttype` and the braces.
        const FIXED: usize = 160;
        let strings = [&envelope.id, &envelope.source, &envelope.ty]
            .into_iter()
            .chain(optional_attributes(envelope).map(|(_, value)| value))
            .chain(envelope.extensions.iter().flat_map(|(k, v)| [k, v]))
            .map(|s| s.len() + PER_ATTRIBUTE)
            .sum::<usize>();
        let data = if envelope.is_json() {
            envelope.data.len()
        } else {
            envelope.data.len().div_ceil(3) * 4
        };
        FIXED + strings + data
    }

    /// [`Codec::encode`] appended to `out`, for a batch encoded into one buffer (one
    /// allocation for all of its envelopes rather than one each); returns where in `out` the
    /// envelope's encoding is. On an error `out` is left as it was.
    pub fn encode_into(
        &self,
        envelope: &Envelope,
        out: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, Error> {
        self.encode_extra_into(envelope, &[], out)
    }

    /// The one encoder behind [`Codec::encode_with`] and [`Codec::encode_into`].
    fn encode_extra_into(
        &self,
        envelope: &Envelope,
        extra: &[(&str, &str)],
        out: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, Error> {
        self.check_envelope(envelope)?;
        if attribute_count(envelope) + extra.len() > MAX_ATTRIBUTES {
            return Err(too_many_attributes());
        }
        for &(name, value) in extra {
            check_extension(name, value)?;
            if envelope.extensions.contains_key(name) {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!("the envelope already carries the extension {name:?}"),
                ));
            }
        }
        let start = out.len();
        let written = write_structured(envelope, extra, out)
            .and_then(|()| self.check_encoded_size(envelope, out.len() - start));
        match written {
            Ok(()) => Ok(start..out.len()),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// The checks [`Codec::encode`] makes, for `encoded`, an encoding of `envelope` made
    /// earlier (an outbox row): the envelope's attributes, and this codec's size limit on the
    /// bytes. A transport that sends stored bytes as they are checks them with this.
    pub fn check_encoded(&self, envelope: &Envelope, encoded: &[u8]) -> Result<(), Error> {
        self.check_envelope(envelope)?;
        self.check_encoded_size(envelope, encoded.len())
    }

    fn check_encoded_size(&self, envelope: &Envelope, size: usize) -> Result<(), Error> {
        self.check_size(size)
            .map_err(|e| Error::new(e.kind(), format!("{} ({})", e.message(), envelope.ty)))
    }

    /// Decodes CloudEvents JSON structured mode. The envelope's `data` is a copy; see
    /// [`Codec::decode_shared`] to share the buffer instead.
    pub fn decode(&self, bytes: &[u8]) -> Result<Envelope, Error> {
        self.decode_from(bytes, None)
    }

    /// [`Codec::decode`] of a shared buffer: the envelope's `data` is a slice of `bytes`, not
    /// a copy (it keeps the buffer alive as long as the envelope holds it).
    pub fn decode_shared(&self, bytes: &Bytes) -> Result<Envelope, Error> {
        self.decode_from(bytes, Some(bytes))
    }

    /// Decodes `bytes`; `data` is sliced from `shared` (the same bytes) when given.
    fn decode_from(&self, bytes: &[u8], shared: Option<&Bytes>) -> Result<Envelope, Error> {
        self.check_size(bytes.len())?;
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = de::Deserializer::deserialize_map(&mut de, StructuredVisitor { shared });
        let fields = match parsed {
            Ok(fields) => fields,
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    "bytes are not a CloudEvents JSON object",
                )
                .with_source(e));
            }
        };
        de.end().map_err(|e| {
            Error::new(ErrorKind::Malformed, "trailing bytes after the envelope").with_source(e)
        })?;
        fields.into_envelope()
    }

    /// Encodes in CloudEvents binary mode: `ce-*` headers (and `content-type`) plus the body,
    /// after [`Codec::check_envelope`].
    /// Header values are percent-encoded as the HTTP binding requires.
    pub fn encode_binary(
        &self,
        envelope: &Envelope,
    ) -> Result<(Vec<(String, String)>, Bytes), Error> {
        self.check_envelope(envelope)?;
        let mut headers = Vec::with_capacity(12);
        let mut push =
            |name: &str, value: &str| headers.push((name.to_owned(), percent_encode(value)));
        push("ce-specversion", SPEC_VERSION);
        push("ce-id", &envelope.id);
        push("ce-source", &envelope.source);
        push("ce-type", &envelope.ty);
        if let Some(time) = envelope.time {
            push(
                "ce-time",
                &format_time(time, &mut [0; crate::wire::RFC3339_MAX])?,
            );
        }
        for (name, value) in optional_attributes(envelope) {
            push(&format!("ce-{name}"), value);
        }
        if let Some(deadline) = envelope.deadline {
            push(
                "ce-deadline",
                &format_time(deadline, &mut [0; crate::wire::RFC3339_MAX])?,
            );
        }
        for (name, value) in &envelope.extensions {
            push(&format!("ce-{name}"), value);
        }
        if let Some(ct) = &envelope.datacontenttype {
            push("content-type", ct);
        }
        let size = headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
            + envelope.data.len();
        self.check_size(size)?;
        Ok((headers, envelope.data.clone()))
    }

    /// Decodes CloudEvents binary mode from header pairs (names case-insensitive) and a body.
    /// Headers that are neither `ce-*` nor `content-type` are ignored.
    pub fn decode_binary<'a>(
        &self,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        body: Bytes,
    ) -> Result<Envelope, Error> {
        let mut fields = Fields::default();
        let mut size = body.len();
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            let attribute = if lower == "content-type" {
                "datacontenttype"
            } else if let Some(attribute) = lower.strip_prefix("ce-") {
                attribute
            } else {
                continue;
            };
            size += name.len() + value.len();
            self.check_size(size)?;
            let value = std::str::from_utf8(value).map_err(|e| {
                Error::new(ErrorKind::Malformed, format!("header {name} is not UTF-8"))
                    .with_source(e)
            })?;
            let value = percent_decode(value).ok_or_else(|| {
                Error::new(
                    ErrorKind::Malformed,
                    format!("header {name} has a bad percent-encoding"),
                )
            })?;
            fields.set(attribute, value)?;
        }
        self.check_size(size)?;
        fields.data = Some(body);
        fields.into_envelope()
    }

    /// Decodes an envelope given as a type, attributes by name and the payload (the gRPC
    /// `Call`'s fields), under every rule of the other decoders: each attribute's name and
    /// value ([`attribute`]), their number, and their size counted with the payload's
    /// against the limit. What the caller leaves out is made here: a fresh UUIDv7 `id`, the
    /// source `/unknown`, the current `time`, a JSON `datacontenttype`. A `type` attribute,
    /// if given, must be `ty`.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tabgrab_core::{Codec, ErrorKind};
    ///
    /// let codec = Codec::default();
    /// let attributes = [("subject".to_owned(), "o-1".to_owned())];
    /// let envelope = codec.decode_attributes("demo.ping.v1", attributes, Bytes::from("{}"))?;
    /// assert_eq!(envelope.subject.as_deref(), Some("o-1"));
    /// let bad = [("Subject".to_owned(), "o-1".to_owned())];
    /// let e = codec.decode_attributes("demo.ping.v1", bad, Bytes::new()).unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::Malformed);
    /// # Ok::<(), tabgrab_core::Error>(())
    /// ```
    pub fn decode_attributes(
        &self,
        ty: &str,
        attributes: impl IntoIterator<Item = (String, String)>,
        data: Bytes,
    ) -> Result<Envelope, Error> {
        let mut fields = Fields::default();
        let mut size = data.len() + "type".len() + ty.len();
        self.check_size(size)?;
        for (name, value) in attributes {
            size += name.len() + value.len();
            self.check_size(size)?;
            if name == "data" || name == "data_base64" {
                return Err(reserved(&name));
            }
            fields.set(&name, Cow::Owned(value))?;
        }
        match &fields.ty {
            Some(given) if given != ty => {
                return Err(Error::new(
                    ErrorKind::TypeMismatch,
                    format!("the type attribute says {given} but the call is of {ty}"),
                ));
            }
            _ => {}
        }
        attribute::check_value("type", ty)?;
        fields.ty = Some(ty.to_owned());
        if fields.specversion.is_none() {
            fields.specversion = Some(Ok(()));
        }
        if fields.id.is_none() {
            fields.id = Some(uuid::Uuid::now_v7().to_string());
        }
        if fields.source.is_none() {
            fields.source = Some("/unknown".to_owned());
        }
        if fields.time.is_none() {
            fields.time = Some(OffsetDateTime::now_utc());
        }
        if fields.datacontenttype.is_none() {
            fields.datacontenttype = Some(JSON.to_owned());
        }
        fields.data = Some(data);
        // With what was made here, counted and sized like any envelope.
        let envelope = fields.into_envelope()?;
        self.check_envelope(&envelope)?;
        Ok(envelope)
    }

    /// Checks a whole envelope against the rules every decoder applies, however it was made
    /// (a transport's fast path, a relay, code): the required attributes present and not
    /// empty, at most [`MAX_ATTRIBUTES`], each name and value valid ([`attribute`]), no
    /// extension under a reserved name, and the attributes' names and values counted with the
    /// payload against the size limit. Servers run it before any handler sees the envelope.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tabgrab_core::{Codec, Envelope, ErrorKind};
    ///
    /// let mut envelope = Envelope::raw("/demo", "demo.ping.v1", Bytes::from("{}"));
    /// assert!(Codec::default().check_envelope(&envelope).is_ok());
    /// envelope.subject = Some("a\nb".into());
    /// let e = Codec::default().check_envelope(&envelope).unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::Malformed);
    /// ```
    pub fn check_envelope(&self, envelope: &Envelope) -> Result<(), Error> {
        for (name, value) in [
            ("id", &envelope.id),
            ("source", &envelope.source),
            ("type", &envelope.ty),
        ] {
            if value.is_empty() {
                return Err(Error::new(
                    ErrorKind::MissingAttribute,
                    format!("the required CloudEvents attribute {name:?} is empty"),
                ));
            }
        }
        // The times as RFC 3339 text at most.
        const TIME_LEN: usize = 35;
        let mut size = envelope.data.len() + "specversion".len() + SPEC_VERSION.len();
        let known = [
            ("id", Some(&envelope.id)),
            ("source", Some(&envelope.source)),
            ("type", Some(&envelope.ty)),
            ("datacontenttype", envelope.datacontenttype.as_ref()),
        ];
        for (name, value) in known
            .into_iter()
            .filter_map(|(n, v)| v.map(|v| (n, v)))
            .chain(optional_attributes(envelope))
        {
            attribute::check_value(name, value)?;
            size += name.len() + value.len();
        }
        for (name, present) in [
            ("time", envelope.time.is_some()),
            ("deadline", envelope.deadline.is_some()),
        ] {
            if present {
                size += name.len() + TIME_LEN;
            }
        }
        if attribute_count(envelope) > MAX_ATTRIBUTES {
            return Err(too_many_attributes());
        }
        for (name, value) in &envelope.extensions {
            check_extension(name, value)?;
            size += name.len() + value.len();
        }
        self.check_size(size)
    }

    /// Decodes structured mode and checks the type against `registry`.
    pub fn decode_known(&self, bytes: &[u8], registry: &Registry) -> Result<Envelope, Error> {
        let envelope = self.decode(bytes)?;
        registry.check(&envelope.ty)?;
        Ok(envelope)
    }
}

/// The rules for an extension attribute: a valid name that is not a reserved one, and a
/// valid value.
fn check_extension(name: &str, value: &str) -> Result<(), Error> {
    attribute::check_name(name)?;
    if attribute::RESERVED.contains(&name) {
        return Err(reserved(name));
    }
    attribute::check_value(name, value)
}

/// How many attributes `envelope` carries: specversion, id, source and type, and each optional
/// attribute and extension that is set.
fn attribute_count(envelope: &Envelope) -> usize {
    4 + usize::from(envelope.datacontenttype.is_some())
        + optional_attributes(envelope).count()
        + usize::from(envelope.time.is_some())
        + usize::from(envelope.deadline.is_some())
        + envelope.extensions.len()
}

/// The optional string attributes, by CloudEvents name.
fn optional_attributes(envelope: &Envelope) -> impl Iterator<Item = (&'static str, &String)> {
    [
        ("subject", &envelope.subject),
        ("correlationid", &envelope.correlationid),
        ("causationid", &envelope.causationid),
        ("traceparent", &envelope.traceparent),
        ("replyto", &envelope.replyto),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
}

/// `time` as RFC 3339 text: [`wire::rfc3339`](crate::wire::rfc3339) in the common case (UTC,
/// years 0–9999; no allocation, no general formatter), the `time` crate otherwise. `buf`
/// holds the text of the common case.
fn format_time(
    time: OffsetDateTime,
    buf: &mut [u8; crate::wire::RFC3339_MAX],
) -> Result<std::borrow::Cow<'_, str>, Error> {
    if let Some(text) = crate::wire::rfc3339(time, buf) {
        return Ok(std::borrow::Cow::Borrowed(text));
    }
    time.format(&Rfc3339)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| {
            Error::new(ErrorKind::Malformed, "time cannot be written as RFC 3339").with_source(e)
        })
}

/// An RFC 3339 timestamp: [`wire::parse_utc`](crate::wire::parse_utc) reads what tabgrab
/// writes, the `time` crate's parser everything else.
fn parse_time(attribute: &str, value: &str) -> Result<OffsetDateTime, Error> {
    if let Some(time) = crate::wire::parse_utc(value) {
        return Ok(time);
    }
    OffsetDateTime::parse(value, &Rfc3339).map_err(|e| {
        Error::new(
            ErrorKind::Malformed,
            format!("attribute {attribute} is not an RFC 3339 timestamp: {value:?}"),
        )
        .with_source(e)
    })
}

/// Writes `envelope` (and `extra`) as a CloudEvents JSON object into `out`.
///
/// By hand rather than through serde: attribute names are known, and a value with nothing to
/// escape (every value tabgrab itself makes) is copied as it is after one branch-free scan;
/// only a value with a quote, a backslash or a control character goes through `serde_json`'s
/// escaping. The bytes are the same as `serde_json` writes for the same map.
fn write_structured(
    envelope: &Envelope,
    extra: &[(&str, &str)],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    out.extend_from_slice(b"{\"specversion\":");
    write_string(out, SPEC_VERSION)?;
    write_attribute(out, "id", &envelope.id)?;
    write_attribute(out, "source", &envelope.source)?;
    write_attribute(out, "type", &envelope.ty)?;
    if let Some(time) = envelope.time {
        let mut buf = [0; crate::wire::RFC3339_MAX];
        write_attribute(out, "time", &format_time(time, &mut buf)?)?;
    }
    for (name, value) in optional_attributes(envelope) {
        write_attribute(out, name, value)?;
    }
    if let Some(deadline) = envelope.deadline {
        let mut buf = [0; crate::wire::RFC3339_MAX];
        write_attribute(out, "deadline", &format_time(deadline, &mut buf)?)?;
    }
    for (name, value) in &envelope.extensions {
        write_attribute(out, name, value)?;
    }
    for (name, value) in extra {
        write_attribute(out, name, value)?;
    }
    if let Some(ct) = &envelope.datacontenttype {
        write_attribute(out, "datacontenttype", ct)?;
    }
    if envelope.is_json() {
        if !envelope.data.is_empty() {
            let raw: &RawValue = serde_json::from_slice(&envelope.data).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidPayload,
                    format!(
                        "{} {} has a JSON content type but its data is not JSON",
                        envelope.ty, envelope.id
                    ),
                )
                .with_source(e)
            })?;
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(raw.get().as_bytes());
        }
    } else {
        // Base64 has nothing to escape.
        out.extend_from_slice(b",\"data_base64\":\"");
        let encoded = base64::engine::general_purpose::STANDARD.encode(&envelope.data);
        out.extend_from_slice(encoded.as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
    Ok(())
}

/// `,"name":"value"`.
fn write_attribute(out: &mut Vec<u8>, name: &str, value: &str) -> Result<(), Error> {
    out.push(b',');
    write_string(out, name)?;
    out.push(b':');
    write_string(out, value)
}

/// `s` as a JSON string.
fn write_string(out: &mut Vec<u8>, s: &str) -> Result<(), Error> {
    // What `serde_json` escapes: `"`, `\` and the C0 controls. No early exit, so that the scan
    // compiles to vector instructions.
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return Ok(());
    }
    serde_json::to_writer(out, s).map_err(|e| {
        Error::new(ErrorKind::Malformed, "could not write envelope JSON").with_source(e)
    })
}

/// [`ErrorKind::TooLarge`] for an envelope with more than [`MAX_ATTRIBUTES`].
fn too_many_attributes() -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!("an envelope may carry at most {MAX_ATTRIBUTES} attributes"),
    )
}

/// [`ErrorKind::Malformed`] for an extension that takes a reserved name.
fn reserved(name: &str) -> Error {
    Error::new(
        ErrorKind::Malformed,
        format!("{name:?} is a reserved attribute name and cannot be an extension"),
    )
}

/// Attributes collected while decoding, before the required ones are checked.
#[derive(Default)]
struct Fields {
    /// Attributes set so far, against [`MAX_ATTRIBUTES`].
    count: usize,
    /// `Ok` for `1.0`, else the version sent (kept only to say so).
    specversion: Option<Result<(), String>>,
    id: Option<String>,
    source: Option<String>,
    ty: Option<String>,
    time: Option<OffsetDateTime>,
    subject: Option<String>,
    datacontenttype: Option<String>,
    correlationid: Option<String>,
    causationid: Option<String>,
    traceparent: Option<String>,
    replyto: Option<String>,
    deadline: Option<OffsetDateTime>,
    extensions: BTreeMap<String, String>,
    data: Option<Bytes>,
}

impl Fields {
    /// Sets one attribute. `value` is borrowed from the input where JSON allows (no escapes):
    /// only the attributes the envelope keeps as strings are copied.
    fn set(&mut self, attribute: &str, value: Cow<'_, str>) -> Result<(), Error> {
        self.count += 1;
        if self.count > MAX_ATTRIBUTES {
            return Err(too_many_attributes());
        }
        attribute::check_value(attribute, &value)?;
        match attribute {
            "specversion" if value == SPEC_VERSION => self.specversion = Some(Ok(())),
            "specversion" => self.specversion = Some(Err(value.into_owned())),
            "id" => self.id = Some(value.into_owned()),
            "source" => self.source = Some(value.into_owned()),
            "type" => self.ty = Some(value.into_owned()),
            "time" => self.time = Some(parse_time("time", &value)?),
            "subject" => self.subject = Some(value.into_owned()),
            "datacontenttype" => self.datacontenttype = Some(value.into_owned()),
            "correlationid" => self.correlationid = Some(value.into_owned()),
            "causationid" => self.causationid = Some(value.into_owned()),
            "traceparent" => self.traceparent = Some(value.into_owned()),
            "replyto" => self.replyto = Some(value.into_owned()),
            "deadline" => self.deadline = Some(parse_time("deadline", &value)?),
            other => {
                attribute::check_name(other)?;
                if attribute::RESERVED.contains(&other) {
                    return Err(reserved(other));
                }
                self.extensions.insert(other.to_owned(), value.into_owned());
            }
        }
        Ok(())
    }

    fn into_envelope(self) -> Result<Envelope, Error> {
        let missing = |name: &str| {
            Error::new(
                ErrorKind::MissingAttribute,
                format!("the required CloudEvents attribute {name:?} is missing"),
            )
        };
        if let Err(specversion) = self.specversion.ok_or_else(|| missing("specversion"))? {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!(
                    "CloudEvents specversion {specversion:?} is not supported; tabgrab speaks {SPEC_VERSION}"
                ),
            ));
        }
        let id = self
            .id
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("id"))?;
        let source = self
            .source
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("source"))?;
        let ty = self
            .ty
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("type"))?;
        Ok(Envelope {
            id,
            source,
            ty,
            time: self.time,
            subject: self.subject,
            datacontenttype: self.datacontenttype,
            correlationid: self.correlationid,
            causationid: self.causationid,
            traceparent: self.traceparent,
            replyto: self.replyto,
            deadline: self.deadline,
            extensions: self.extensions,
            data: self.data.unwrap_or_default(),
        })
    }
}

/// Reads a structured-mode JSON object attribute by attribute, keeping `data` as raw JSON text
/// (a slice of `shared` when the input is one, else a copy).
struct StructuredVisitor<'a> {
    /// The input as a shared buffer, for [`Codec::decode_shared`].
    shared: Option<&'a Bytes>,
}

/// An attribute value: CloudEvents JSON allows strings, numbers and booleans. Borrowed from
/// the input when it is a string without escapes.
struct AttributeValue<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for AttributeValue<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor of its own rather than a `serde_json::Value` first: every attribute of
        // every message is decoded here.
        deserializer.deserialize_any(AttributeVisitor)
    }
}

struct AttributeVisitor;

impl<'de> Visitor<'de> for AttributeVisitor {
    type Value = AttributeValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an attribute: a string, number or boolean")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<AttributeValue<'de>, E> {
        Ok(AttributeValue(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<AttributeValue<'de>, E> {
        Ok(AttributeValue(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<AttributeValue<'de>, E> {
        Ok(AttributeValue(Cow::Owned(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<AttributeValue<'de>, E> {
        Ok(AttributeValue(Cow::Owned(v.to_string())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AttributeValue<'de>, E> {
        Ok(AttributeValue(Cow::Owned(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AttributeValue<'de>, E> {
        Ok(AttributeValue(Cow::Owned(v.to_string())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttributeValue<'de>, E> {
        // Written as JSON writes it (`1.0`, not `1`).
        serde_json::Number::from_f64(v)
            .map(|n| AttributeValue(Cow::Owned(n.to_string())))
            .ok_or_else(|| E::custom("an attribute must be a string, number or boolean"))
    }
}

impl<'de> Visitor<'de> for StructuredVisitor<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvents JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        let mut data_base64 = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "data" => {
                    // Borrowed: the input is a slice, so the raw text is in it.
                    let raw: &'de RawValue = map.next_value()?;
                    if raw.get() != "null" {
                        let text = raw.get().as_bytes();
                        fields.data = Some(match self.shared {
                            Some(shared) => shared.slice_ref(text),
                            None => Bytes::copy_from_slice(text),
                        });
                    }
                }
                "data_base64" => {
                    let encoded: String = map.next_value()?;
                    data_base64 = Some(encoded);
                }
                attribute => {
                    // A null attribute is the same as an absent one.
                    if let Some(AttributeValue(value)) =
                        map.next_value::<Option<AttributeValue<'de>>>()?
                    {
                        fields.set(attribute, value).map_err(de::Error::custom)?;
                    }
                }
            }
        }
        if let Some(encoded) = data_base64 {
            if fields.data.is_some() {
                return Err(de::Error::custom("both data and data_base64 are present"));
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| de::Error::custom(format!("data_base64 is not base64: {e}")))?;
            fields.data = Some(Bytes::from(decoded));
        }
        Ok(fields)
    }
}

/// Percent-encodes a header value as the CloudEvents HTTP binding asks: space, `"`, `%` and
/// anything outside printable ASCII.
fn percent_encode(value: &str) -> String {
    let needs = |b: u8| !(0x21..=0x7e).contains(&b) || b == b'"' || b == b'%';
    if !value.bytes().any(needs) {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        if needs(b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// Reverses [`percent_encode`]; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(value: &str) -> Option<Cow<'_, str>> {
    if !value.contains('%') {
        return Some(Cow::Borrowed(value));
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The message types an application knows, by base name and major versions.
///
/// Used by subscribers and servers to tell "a type I do not know" ([`ErrorKind::UnknownType`],
/// dead-lettered) from "a version of a type I know but cannot read"
/// ([`ErrorKind::UnsupportedVersion`], also dead-lettered, with a clearer reason).
#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// Base name to the major versions registered for it.
    versions: HashMap<String, Vec<u32>>,
    /// Every registered full name: the fast path of [`Registry::check`], which runs once per
    /// consumed message.
    names: HashSet<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers a message type.
    pub fn register<M: Message>(&mut self) -> &mut Registry {
        // A Message's TYPE is a constant written by the developer; a malformed one is a bug
        // that `check` reports for every message of that type, so it is skipped here.
        let _ = self.register_name(M::TYPE);
        self
    }

    /// Registers a type by name, refusing a malformed name.
    pub fn register_name(&mut self, name: &str) -> Result<(), Error> {
        let parsed = MessageType::parse(name)?;
        self.names.insert(parsed.to_string());
        let versions = self.versions.entry(parsed.base().to_owned()).or_default();
        if !versions.contains(&parsed.version()) {
            versions.push(parsed.version());
        }
        Ok(())
    }

    /// Adds every type of `other`.
    pub fn merge(&mut self, other: &Registry) -> &mut Registry {
        for (base, versions) in &other.versions {
            let mine = self.versions.entry(base.clone()).or_default();
            for v in versions {
                if !mine.contains(v) {
                    mine.push(*v);
                }
            }
            self.names
                .extend(versions.iter().map(|v| format!("{base}.v{v}")));
        }
        self
    }

    /// Whether `ty` is registered exactly.
    pub fn contains(&self, ty: &str) -> bool {
        self.check(ty).is_ok()
    }

    /// `Ok` for a registered type; [`ErrorKind::UnknownType`] or
    /// [`ErrorKind::UnsupportedVersion`] otherwise, with a message that says which versions
    /// this reader knows.
    pub fn check(&self, ty: &str) -> Result<(), Error> {
        if self.names.contains(ty) {
            return Ok(());
        }
        let parsed = MessageType::parse(ty).map_err(|e| {
            Error::new(
                ErrorKind::UnknownType,
                format!("message type {ty:?} is unknown: {}", e.message()),
            )
        })?;
        match self.versions.get(parsed.base()) {
            Some(versions) if versions.contains(&parsed.version()) => Ok(()),
            Some(versions) => Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!(
                    "message type {ty} has version v{}, but this reader knows only {}; \
                     upgrade the reader or have the sender emit a known version",
                    parsed.version(),
                    versions
                        .iter()
                        .map(|v| format!("v{v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            None => Err(Error::new(
                ErrorKind::UnknownType,
                format!("message type {ty} is not registered with this application"),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
