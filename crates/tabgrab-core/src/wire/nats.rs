//! The CloudEvents NATS binding of the envelope, and the NATS connection set-up, for calls
//! and the event backend alike. Structured mode: one `content-type:
//! application/cloudevents+json` header, the event as the body. Binary mode: attributes as
//! `ce-*` headers (and `content-type`), the data as the body, untouched. [`decode`] reads
//! both, and a message without headers whose body is a structured event
//! ([`is_structured_body`]): the NATS binding 1.0 sends every event so, and tabgrab's
//! structured calls do (no headers is the cheapest message NATS carries). Calls over NATS use
//! it, and so does tabgrab's NATS event backend.
//!
//! Both directions have a fast path for what tabgrab itself sends (known attributes, plain
//! header text, a UTC time): static header names and no percent-encoding pass on the way
//! out, no lowercased copies of names and no general RFC 3339 parser on the way in. Anything
//! else goes through the codec's general [`Codec::encode_binary`] /
//! [`Codec::decode_binary`]; unit tests hold both paths equal.

use super::ContentMode;
use crate::{Codec, Envelope, Error, ErrorKind, SecretUrl};
use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;

/// The CloudEvents binary-mode headers of `envelope`: static names and the values as they are
/// when every attribute is plain header text (the common case), else the codec's
/// percent-encoded pairs. Both give the same headers (a unit test holds them equal) and check
/// the same size limit.
pub fn encode_headers(codec: &Codec, envelope: &Envelope) -> Result<HeaderMap, Error> {
    if let Some(map) = plain_ce_headers(codec, envelope) {
        return Ok(map);
    }
    let (pairs, _) = codec.encode_binary(envelope)?;
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let name: HeaderName = name.parse().map_err(|_| {
            Error::new(
                ErrorKind::Malformed,
                format!("{name:?} cannot be a NATS header name"),
            )
        })?;
        map.insert(name, value);
    }
    Ok(map)
}

/// The fast path of [`encode_headers`]; `None` when a value needs percent-encoding or it is
/// over the size limit (the codec then says why).
fn plain_ce_headers(codec: &Codec, envelope: &Envelope) -> Option<HeaderMap> {
    use super::Name;
    let mut bufs = [[0u8; super::RFC3339_MAX]; 2];
    let mut map = HeaderMap::new();
    for (name, value) in super::plain_headers(codec, envelope, &mut bufs)? {
        let name = match name {
            Name::Known(name) => HeaderName::from_static(name),
            Name::Extension(attribute) => format!("ce-{attribute}").parse().ok()?,
        };
        map.insert(name, value);
    }
    Some(map)
}

/// The headers and body of `envelope` in `mode`: binary, the [`encode_headers`] and the data;
/// structured, [`structured`] of the codec's JSON document.
pub fn encode(
    codec: &Codec,
    envelope: &Envelope,
    mode: ContentMode,
) -> Result<(HeaderMap, Bytes), Error> {
    match mode {
        ContentMode::Binary => Ok((encode_headers(codec, envelope)?, envelope.data.clone())),
        ContentMode::Structured => Ok(structured(codec.encode(envelope)?)),
    }
}

/// A structured-mode message of an envelope already encoded by [`Codec::encode`] (as the
/// embedded log and the outbox store it): one `content-type` header, the bytes as they are.
pub fn structured(encoded: Bytes) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("content-type"),
        super::STRUCTURED_JSON,
    );
    (headers, encoded)
}

/// Decodes a message in either CloudEvents mode ([`ContentMode::of_received`] tells which):
/// structured through the codec's JSON decoding; binary through the fast path for what
/// tabgrab sends, else the codec (which says what is wrong).
pub fn decode(
    codec: &Codec,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<Envelope, Error> {
    let empty = HeaderMap::new();
    let headers = headers.unwrap_or(&empty);
    let (content_type, ce_header) = scan(headers);
    if ContentMode::of_received(content_type, ce_header) == ContentMode::Structured {
        return codec.decode_shared(&payload);
    }
    let pairs = || {
        headers.iter().flat_map(|(name, values)| {
            values.iter().map(move |v| {
                (
                    <HeaderName as AsRef<str>>::as_ref(name),
                    v.as_str().as_bytes(),
                )
            })
        })
    };
    match super::fast_envelope(codec, pairs(), &payload) {
        Some(envelope) => Ok(envelope),
        None => codec.decode_binary(pairs(), payload),
    }
}

/// Whether a message is a CloudEvent, in either mode: a CloudEvents content type
/// (structured) or a `ce-*` header (binary), header names in any case; or, without either and
/// without any `content-type`, a structured event as the body ([`is_structured_body`]). A
/// call server takes a message that is none of these as a plain request whose body is the
/// data.
pub fn is_cloud_event(headers: Option<&HeaderMap>, payload: &[u8]) -> bool {
    let (content_type, ce_header) = headers.map(scan).unwrap_or_default();
    match content_type {
        _ if ce_header => true,
        Some(content_type) => super::is_cloudevents_media_type(content_type),
        None => is_structured_body(payload),
    }
}

/// Whether the body of a message without CloudEvents headers is a structured-mode event: a
/// JSON object with a `specversion` member, as the NATS binding 1.0 sends every event (it
/// predates NATS headers) and as tabgrab's calls over NATS send theirs (a message without
/// headers is the cheapest one NATS carries). A plain JSON request with a member named
/// `specversion` anywhere in it (even nested) is taken for a CloudEvent, and refused with a
/// clear error if it is not a valid one; send such a request with a `content-type` header.
pub fn is_structured_body(payload: &[u8]) -> bool {
    const NAME: &[u8] = b"\"specversion\"";
    // Built once: building a finder per message showed in the calls' profile.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(NAME));
    let start = payload.iter().position(|b| !b.is_ascii_whitespace());
    start.is_some_and(|i| payload[i] == b'{')
        && FINDER.find_iter(payload).any(|at| {
            let rest = &payload[at + NAME.len()..];
            rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b':')
        })
}

/// The `content-type` and whether any `ce-*` header is present, header names in any case.
fn scan(headers: &HeaderMap) -> (Option<&str>, bool) {
    let (mut content_type, mut ce_header) = (None, false);
    for (name, values) in headers.iter() {
        let name = <HeaderName as AsRef<str>>::as_ref(name);
        if name.eq_ignore_ascii_case("content-type") {
            content_type = values.first().map(|v| v.as_str());
        } else if name
            .as_bytes()
            .get(..3)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"ce-"))
        {
            ce_header = true;
        }
    }
    (content_type, ce_header)
}

/// Client options carrying `url`'s credentials (`user:password@`, or `token@`), to connect to
/// [`SecretUrl::without_userinfo`]: async-nats neither uses the credentials of a URL nor keeps
/// them out of its debug log, so they are given apart from the address.
pub fn connect_options(url: &SecretUrl) -> async_nats::ConnectOptions {
    match url.userinfo() {
        Some((user, Some(password))) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        Some((token, None)) => async_nats::ConnectOptions::with_token(token),
        None => async_nats::ConnectOptions::new(),
    }
}

/// The server addresses of `url` without credentials: one, or a cluster's comma-separated
/// list (`nats://a:4222,nats://b:4222`), each parsed; a `Malformed` error names the bad one.
pub fn server_addrs(url: &SecretUrl) -> Result<Vec<async_nats::ServerAddr>, crate::Error> {
    url.without_userinfo()
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<async_nats::ServerAddr>().map_err(|e| {
                crate::Error::new(
                    crate::ErrorKind::Malformed,
                    format!("nats URL {url}: {part:?} is not a server address: {e}"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_is_every_server() {
        let url = SecretUrl::new("nats://u:p@127.0.0.1:4222,nats://127.0.0.1:4223");
        let addrs = server_addrs(&url).unwrap();
        assert_eq!(addrs.len(), 2);
        assert_eq!(addrs[1].port(), 4223);
        let bad = server_addrs(&SecretUrl::new("nats://u:p@h:1,nats://h:x")).unwrap_err();
        assert!(!bad.to_string().contains(":p@"), "{bad}");
    }

    fn pairs(map: &HeaderMap) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = map
            .iter()
            .flat_map(|(n, vs)| {
                vs.iter()
                    .map(move |v| (n.to_string(), v.as_str().to_owned()))
            })
            .collect();
        pairs.sort();
        pairs
    }

    fn by_codec(codec: &Codec, envelope: &Envelope) -> Vec<(String, String)> {
        let mut pairs = codec.encode_binary(envelope).unwrap().0;
        pairs.sort();
        pairs
    }

    #[test]
    fn the_fast_decoding_is_the_codecs() {
        let codec = Codec::default();
        let mut envelope = Envelope::raw("/s", "demo.ping.v1", Bytes::from("{}"))
            .with_subject("o-1")
            .with_correlation_id("c-1");
        envelope.replyto = Some("replies.front".into());
        let headers = encode_headers(&codec, &envelope).unwrap();
        let fast = crate::wire::fast_envelope(
            &codec,
            headers
                .iter()
                .flat_map(|(n, vs)| vs.iter().map(move |v| (n.as_ref(), v.as_str().as_bytes()))),
            &envelope.data,
        )
        .expect("tabgrab's own headers take the fast path");
        assert_eq!(fast, envelope);
        assert_eq!(
            decode(&codec, Some(&headers), envelope.data.clone()).unwrap(),
            envelope
        );
        // Extensions and percent-encoded values go to the codec, with the same result.
        envelope.extensions.insert("tenant".into(), "a b".into());
        envelope.source = "/a source".into();
        let headers = encode_headers(&codec, &envelope).unwrap();
        assert_eq!(
            decode(&codec, Some(&headers), envelope.data.clone()).unwrap(),
            envelope
        );
        // Structured, with the content type spelt in capitals: the same envelope.
        let mut structured_headers = HeaderMap::new();
        structured_headers.insert("Content-Type", crate::wire::STRUCTURED_JSON);
        let body = codec.encode(&envelope).unwrap();
        assert!(is_cloud_event(Some(&structured_headers), b"{}"));
        assert_eq!(
            decode(&codec, Some(&structured_headers), body.clone()).unwrap(),
            envelope
        );
        assert!(is_cloud_event(Some(&headers), b"{}"));
        // No headers at all: the structured body says it is an event, and decodes alike.
        assert!(is_cloud_event(None, &body));
        assert!(is_cloud_event(Some(&HeaderMap::new()), &body));
        assert_eq!(decode(&codec, None, body.clone()).unwrap(), envelope);
        // A declared plain content type wins over the body's look.
        let mut plain = HeaderMap::new();
        plain.insert("content-type", "application/json");
        assert!(!is_cloud_event(Some(&plain), &body));
        assert!(!is_cloud_event(Some(&plain), b"{}"));
        assert!(!is_cloud_event(None, b"{\"order\": 1}"));
        assert!(!is_cloud_event(None, b""));
        // No headers and no valid event: the codec names what is missing.
        let err = decode(&codec, None, Bytes::from("{}")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingAttribute);
    }

    #[test]
    fn a_structured_body_is_a_json_object_naming_specversion() {
        assert!(is_structured_body(b" \n{\"specversion\":\"1.0\"}"));
        assert!(is_structured_body(br#"{"id":"1","specversion" : "1.0"}"#));
        assert!(is_structured_body(
            br#"{"data":"specversion","specversion":"1.0"}"#
        ));
        // The member's name, not a value that contains the word.
        assert!(!is_structured_body(br#"{"note":"specversion"}"#));
        assert!(!is_structured_body(br#"["specversion"]"#));
        assert!(!is_structured_body(br#""specversion""#));
        assert!(!is_structured_body(b"   "));
        assert!(!is_structured_body(b""));
    }

    #[test]
    fn the_fast_headers_are_the_codecs_headers() {
        let codec = Codec::default();
        let envelope = Envelope::raw("/pizzeria/front-desk", "demo.ping.v1", Bytes::from("{}"))
            .with_subject("order-1")
            .with_correlation_id("c-1");
        let fast = plain_ce_headers(&codec, &envelope).expect("plain attributes");
        assert_eq!(pairs(&fast), by_codec(&codec, &envelope));
        let mut envelope = Envelope::raw("/s", "demo.ping.v1", Bytes::from("x"));
        envelope.causationid = Some("cause-1".into());
        envelope.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        envelope.replyto = Some("group-a".into());
        envelope.datacontenttype = Some("text/plain".into());
        envelope.time = None;
        let fast = plain_ce_headers(&codec, &envelope).expect("plain attributes");
        assert_eq!(pairs(&fast), by_codec(&codec, &envelope));
        // A request's deadline and a reply's extensions stay on the fast path.
        let mut envelope = Envelope::raw("/s", "demo.ping.v1", Bytes::from("{}"));
        envelope.deadline = Some(time::macros::datetime!(2026-11-27 09:00:00.25 UTC));
        envelope
            .extensions
            .insert("requesttype".into(), "demo.ping.v1".into());
        envelope
            .extensions
            .insert("responder".into(), "menu".into());
        let fast = plain_ce_headers(&codec, &envelope).expect("plain attributes");
        assert_eq!(pairs(&fast), by_codec(&codec, &envelope));
        assert_eq!(
            crate::wire::fast_envelope(
                &codec,
                fast.iter().flat_map(|(n, vs)| vs
                    .iter()
                    .map(move |v| (n.as_ref(), v.as_str().as_bytes()))),
                &envelope.data,
            ),
            Some(envelope.clone())
        );
        // An extension name the codec refuses, or one spelt in capitals, goes to the codec.
        let mut odd = envelope.clone();
        odd.extensions.insert("Tenant".into(), "a".into());
        assert!(plain_ce_headers(&codec, &odd).is_none());
        let mut capitals = fast.clone();
        capitals.insert("Ce-Subject", "o-1");
        let decoded = decode(&codec, Some(&capitals), envelope.data.clone()).unwrap();
        assert_eq!(decoded.subject.as_deref(), Some("o-1"));
        // What needs encoding takes the codec's path, with the same result.
        let envelope = Envelope::raw("/a source", "demo.ping.v1", Bytes::new());
        assert!(plain_ce_headers(&codec, &envelope).is_none());
        let map = encode_headers(&codec, &envelope).unwrap();
        assert_eq!(pairs(&map), by_codec(&codec, &envelope));
        // The size limit holds on both paths.
        let small = Codec::with_max_size(64);
        let big = Envelope::raw("/s", "demo.ping.v1", Bytes::from(vec![b'1'; 100]));
        assert_eq!(
            encode_headers(&small, &big).unwrap_err().kind(),
            ErrorKind::TooLarge
        );
    }
}
