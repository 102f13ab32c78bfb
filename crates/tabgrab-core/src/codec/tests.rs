use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, PartialEq, Serialize, Deserialize, Message)]
#[message(type = "pizzeria.order.accepted.v1")]
struct OrderAccepted {
    order_id: String,
    pizzas: Vec<String>,
}

fn sample() -> Envelope {
    Envelope::new(
        "/pizzeria/front-desk",
        &OrderAccepted {
            order_id: "o-1".into(),
            pizzas: vec!["margherita".into()],
        },
    )
    .unwrap()
    .with_subject("o-1")
    .with_correlation_id("c-1")
}

#[test]
fn structured_round_trip_keeps_every_attribute() {
    let mut envelope = sample();
    envelope.causationid = Some("cause".into());
    envelope.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    envelope.replyto = Some("pizzeria.frontdesk.replies".into());
    envelope.deadline = envelope.time.map(|t| t + time::Duration::seconds(5));
    envelope.extensions.insert("tenant".into(), "north".into());
    let codec = Codec::default();
    let bytes = codec.encode(&envelope).unwrap();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.contains(r#""specversion":"1.0""#), "{text}");
    assert!(text.contains(r#""data":{"order_id":"o-1""#), "{text}");
    let decoded = codec.decode(&bytes).unwrap();
    assert_eq!(decoded, envelope);
    assert_eq!(decoded.decode::<OrderAccepted>().unwrap().order_id, "o-1");
}

#[test]
fn encode_with_adds_attributes_for_one_hop_under_the_same_rules() {
    let envelope = sample();
    let codec = Codec::default();
    let bytes = codec
        .encode_with(
            &envelope,
            &[("tabgrabtimeout", "250"), ("idempotencykey", "k-1")],
        )
        .unwrap();
    let decoded = codec.decode(&bytes).unwrap();
    assert_eq!(
        decoded.extensions.get("tabgrabtimeout").map(String::as_str),
        Some("250")
    );
    assert_eq!(
        decoded.extensions.get("idempotencykey").map(String::as_str),
        Some("k-1")
    );
    let mut without = decoded.clone();
    without.extensions.clear();
    assert_eq!(without, envelope);
    // Nothing extra: the same bytes as `encode`.
    assert_eq!(
        codec.encode_with(&envelope, &[]).unwrap(),
        codec.encode(&envelope).unwrap()
    );
    // A bad name, a reserved one, one the envelope has, a bad value: typed errors.
    assert!(codec.encode_with(&envelope, &[("Bad-Name", "x")]).is_err());
    assert!(codec.encode_with(&envelope, &[("type", "x")]).is_err());
    let mut tenant = envelope.clone();
    tenant.extensions.insert("tenant".into(), "north".into());
    let err = codec
        .encode_with(&tenant, &[("tenant", "south")])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert!(err.to_string().contains("tenant"), "{err}");
    assert!(
        codec
            .encode_with(&envelope, &[("note", "a\u{0}b")])
            .is_err()
    );
    // The extra attributes count with all of the envelope's towards the limit.
    let mut full = envelope.clone();
    let mut n = 0;
    while codec.check_envelope(&full).is_ok() {
        full.extensions.insert(format!("x{n}"), "1".into());
        n += 1;
    }
    full.extensions.remove(&format!("x{}", n - 1));
    assert!(codec.encode_with(&full, &[]).is_ok());
    let err = codec.encode_with(&full, &[("one", "more")]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
}

#[test]
fn binary_mode_uses_ce_headers_and_keeps_the_body() {
    let mut envelope = sample();
    envelope.subject = Some("order 1 \"quoted\" 100%".into());
    let codec = Codec::default();
    let (headers, body) = codec.encode_binary(&envelope).unwrap();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("ce-specversion"), Some("1.0"));
    assert_eq!(get("ce-type"), Some("pizzeria.order.accepted.v1"));
    assert_eq!(get("ce-subject"), Some("order%201%20%22quoted%22%20100%25"));
    assert_eq!(get("content-type"), Some("application/json"));
    assert_eq!(body, envelope.data);
    let decoded = codec
        .decode_binary(
            headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            body,
        )
        .unwrap();
    assert_eq!(decoded, envelope);
}

#[test]
fn non_json_payloads_travel_as_base64() {
    let mut envelope = Envelope::raw(
        "/test",
        "test.blob.v1",
        Bytes::from_static(&[0, 159, 146, 150]),
    );
    envelope.datacontenttype = Some("application/octet-stream".into());
    let codec = Codec::default();
    let bytes = codec.encode(&envelope).unwrap();
    assert!(std::str::from_utf8(&bytes).unwrap().contains("data_base64"));
    assert_eq!(codec.decode(&bytes).unwrap(), envelope);
}

#[test]
fn refuses_oversized_envelopes_on_encode_and_decode() {
    let codec = Codec::with_max_size(512);
    let big = OrderAccepted {
        order_id: "o".into(),
        pizzas: vec!["x".repeat(600)],
    };
    let envelope = Envelope::new("/test", &big).unwrap();
    assert_eq!(
        codec.encode(&envelope).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    let bytes = Codec::default().encode(&envelope).unwrap();
    assert_eq!(
        codec.decode(&bytes).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    let (headers, body) = Codec::default().encode_binary(&envelope).unwrap();
    let err = codec
        .decode_binary(
            headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            body,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);
}

#[test]
fn encode_into_appends_the_same_bytes_and_leaves_the_buffer_as_it_was_on_an_error() {
    let codec = Codec::with_max_size(512);
    let small = sample();
    let big = Envelope::new(
        "/test",
        &OrderAccepted {
            order_id: "o".into(),
            pizzas: vec!["x".repeat(600)],
        },
    )
    .unwrap();
    let mut out = b"before".to_vec();
    let first = codec.encode_into(&small, &mut out).unwrap();
    assert_eq!(first.start, 6);
    assert_eq!(&out[first.clone()], &codec.encode(&small).unwrap()[..]);
    // The size limit counts this envelope's bytes, not what the buffer already holds.
    let second = codec.encode_into(&small, &mut out).unwrap();
    assert_eq!(second.start, first.end);
    assert_eq!(out.len(), second.end);
    let len = out.len();
    let err = codec.encode_into(&big, &mut out).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    assert_eq!(out.len(), len, "a refused envelope leaves nothing behind");
    assert_eq!(codec.decode(&out[second]).unwrap(), small);
}

/// CloudEvents JSON lets an attribute be a number or a boolean: each is kept as the text JSON
/// writes for it; null is an absent attribute; an object or an array is refused.
#[test]
fn numbers_and_booleans_are_attributes_and_null_is_none() {
    let bytes = br#"{"specversion":"1.0","id":"1","source":"/s","type":"a.b.v1","int":42,"neg":-3,"num":1.5,"whole":2.0,"flag":true,"subject":null,"escaped":"a\u0041"}"#;
    let envelope = Codec::default().decode(bytes).unwrap();
    let extension = |name: &str| envelope.extensions.get(name).map(String::as_str);
    assert_eq!(extension("int"), Some("42"));
    assert_eq!(extension("neg"), Some("-3"));
    assert_eq!(extension("num"), Some("1.5"));
    assert_eq!(extension("whole"), Some("2.0"));
    assert_eq!(extension("flag"), Some("true"));
    assert_eq!(extension("escaped"), Some("aA"));
    assert_eq!(envelope.subject, None);
    for bad in [r#""list":[1]"#, r#""map":{"a":1}"#] {
        let text =
            format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"a.b.v1",{bad}}}"#);
        let err = Codec::default().decode(text.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Malformed, "{text}: {err}");
    }
}

#[test]
fn decoding_errors_are_typed() {
    let codec = Codec::default();
    let cases: &[(&[u8], ErrorKind)] = &[
        (b"\xff\xfe garbage", ErrorKind::Malformed),
        (b"[1,2,3]", ErrorKind::Malformed),
        (b"{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"a.b.v1\"} trailing", ErrorKind::Malformed),
        (b"{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\"}", ErrorKind::MissingAttribute),
        (b"{\"specversion\":\"1.0\",\"source\":\"/s\",\"type\":\"a.b.v1\"}", ErrorKind::MissingAttribute),
        (b"{\"id\":\"1\",\"source\":\"/s\",\"type\":\"a.b.v1\"}", ErrorKind::MissingAttribute),
        (b"{\"specversion\":\"0.3\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"a.b.v1\"}", ErrorKind::UnsupportedVersion),
        (b"{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"a.b.v1\",\"time\":\"yesterday\"}", ErrorKind::Malformed),
        (b"{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"a.b.v1\",\"Bad-Name\":\"x\"}", ErrorKind::Malformed),
        (b"{\"specversion\":\"1.0\",\"id\":{},\"source\":\"/s\",\"type\":\"a.b.v1\"}", ErrorKind::Malformed),
    ];
    for (bytes, kind) in cases {
        let err = codec.decode(bytes).unwrap_err();
        assert_eq!(
            err.kind(),
            *kind,
            "{} -> {err}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn registry_tells_unknown_types_from_newer_versions() {
    let mut registry = Registry::new();
    registry.register::<OrderAccepted>();
    assert!(registry.check("pizzeria.order.accepted.v1").is_ok());
    let newer = registry.check("pizzeria.order.accepted.v2").unwrap_err();
    assert_eq!(newer.kind(), ErrorKind::UnsupportedVersion);
    assert!(newer.message().contains("knows only v1"), "{newer}");
    assert_eq!(
        registry
            .check("pizzeria.order.eaten.v1")
            .unwrap_err()
            .kind(),
        ErrorKind::UnknownType
    );
    assert_eq!(
        registry.check("not a type").unwrap_err().kind(),
        ErrorKind::UnknownType
    );

    let mut envelope = sample();
    envelope.ty = "pizzeria.order.accepted.v2".into();
    let bytes = Codec::default().encode(&envelope).unwrap();
    let err = Codec::default()
        .decode_known(&bytes, &registry)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsupportedVersion);
}

#[test]
fn typed_decode_checks_the_type_and_the_payload() {
    let mut envelope = sample();
    envelope.ty = "pizzeria.order.cancelled.v1".into();
    assert_eq!(
        envelope.decode::<OrderAccepted>().unwrap_err().kind(),
        ErrorKind::TypeMismatch
    );
    let mut envelope = sample();
    envelope.data = Bytes::from_static(b"{\"order_id\":7}");
    assert_eq!(
        envelope.decode::<OrderAccepted>().unwrap_err().kind(),
        ErrorKind::InvalidPayload
    );
}

#[test]
fn caused_by_inherits_the_conversation() {
    let cause = sample();
    let effect = Envelope::raw(
        "/pizzeria/payment",
        "pizzeria.payment.collected.v1",
        Bytes::from_static(b"{}"),
    )
    .caused_by(&cause);
    assert_eq!(effect.causationid.as_deref(), Some(cause.id.as_str()));
    assert_eq!(effect.correlationid.as_deref(), Some("c-1"));
    assert_ne!(effect.id, cause.id);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Codec::with_max_size(256).decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_json_shaped_input(
        keys in proptest::collection::vec("(specversion|id|source|type|time|data|data_base64|subject|deadline|[a-z]{1,6})", 0..8),
        values in proptest::collection::vec("(\"1.0\"|\"x\"|1|true|null|\\{\\}|\\[\\]|\"2024-01-01T00:00:00Z\"|\"[a-z%]{0,5}\")", 0..8),
    ) {
        let body = keys.iter().zip(values.iter()).map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",");
        let text = format!("{{{body}}}");
        let _ = Codec::default().decode(text.as_bytes());
    }

    /// The hand-written encoder writes every string as `serde_json` does, escapes and all.
    #[test]
    fn strings_are_written_as_serde_json_writes_them(
        s in prop_oneof![any::<String>(), "[\"\\\\\u{0}-\u{1f}\u{7f}a\u{e9}]{0,12}"],
    ) {
        let mut out = Vec::new();
        write_string(&mut out, &s).unwrap();
        prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
    }

    #[test]
    fn binary_decode_never_panics(name in "[a-zA-Z-]{0,12}", value in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Codec::default().decode_binary([(name.as_str(), value.as_slice())], Bytes::new());
    }

    /// The codec writes times itself in the common case (UTC, years 0–9999) and through the
    /// `time` crate otherwise: either way the text is the `time` crate's RFC 3339, and it
    /// reads back as the same instant (with its offset).
    #[test]
    fn times_are_written_as_rfc3339_and_read_back(
        seconds in -62_135_596_800i64..253_402_300_799,
        nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000, (0u32..1_000).prop_map(|ms| ms * 1_000_000)],
        offset_minutes in prop_oneof![Just(0i16), -1439i16..1440],
    ) {
        use time::format_description::well_known::Rfc3339;
        let offset = time::UtcOffset::from_whole_seconds(i32::from(offset_minutes) * 60).unwrap();
        let time = (time::OffsetDateTime::from_unix_timestamp(seconds).unwrap()
            + time::Duration::nanoseconds(i64::from(nanos)))
        .to_offset(offset);
        let mut envelope = sample();
        envelope.time = Some(time);
        envelope.deadline = Some(time);
        let codec = Codec::default();
        let expected = time.format(&Rfc3339);
        match codec.encode(&envelope) {
            Ok(bytes) => {
                let text = std::str::from_utf8(&bytes).unwrap();
                let expected = expected.unwrap();
                prop_assert!(text.contains(&format!("\"time\":\"{expected}\"")), "{} in {}", expected, text);
                let back = codec.decode(&bytes).unwrap();
                prop_assert_eq!(back.time, Some(time));
                prop_assert_eq!(back.time.map(|t| t.offset()), Some(offset));
                prop_assert_eq!(back.deadline, Some(time));
                let (headers, body) = codec.encode_binary(&envelope).unwrap();
                let ce_time = headers.iter().find(|(n, _)| n == "ce-time").map(|(_, v)| v.clone());
                prop_assert_eq!(ce_time.and_then(|v| percent_decode(&v).map(std::borrow::Cow::into_owned)), Some(expected));
                let back = codec.decode_binary(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())), body).unwrap();
                prop_assert_eq!(back.time, Some(time));
            }
            // A year the local offset moves outside 0–9999: RFC 3339 cannot write it.
            Err(e) => {
                prop_assert!(expected.is_err());
                prop_assert_eq!(e.kind(), ErrorKind::Malformed);
            }
        }
    }

    #[test]
    fn structured_round_trip(subject in ".{0,40}", order in "[a-z0-9-]{1,20}", tenant in "[ -~]{0,20}") {
        let valid = attribute::check_value("subject", &subject).is_ok();
        let mut envelope = Envelope::new("/p", &OrderAccepted { order_id: order, pizzas: vec![] }).unwrap().with_subject(subject);
        envelope.extensions.insert("tenant".into(), tenant);
        let codec = Codec::default();
        if !valid {
            // What a peer must refuse is never sent.
            prop_assert_eq!(codec.encode(&envelope).unwrap_err().kind(), ErrorKind::Malformed);
            prop_assert_eq!(codec.encode_binary(&envelope).unwrap_err().kind(), ErrorKind::Malformed);
            return Ok(());
        }
        prop_assert_eq!(codec.decode(&codec.encode(&envelope).unwrap()).unwrap(), envelope.clone());
        let (headers, body) = codec.encode_binary(&envelope).unwrap();
        let back = codec.decode_binary(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())), body).unwrap();
        prop_assert_eq!(back, envelope);
    }
}

#[test]
fn every_decoder_applies_the_attribute_rules() {
    let codec = Codec::default();
    let header = |name: &'static str, value: &'static str| (name, value.as_bytes());
    let base = [
        header("ce-specversion", "1.0"),
        header("ce-id", "1"),
        header("ce-source", "/s"),
        header("ce-type", "demo.ping.v1"),
    ];
    let binary = |extra: (&'static str, &'static [u8])| {
        let mut headers = base.to_vec();
        headers.push(extra);
        codec.decode_binary(headers, Bytes::from_static(b"{}"))
    };
    // A CR LF (percent-encoded, as a header must carry it) and an extension under a
    // reserved name are refused, like a bad name.
    for bad in [
        header("ce-subject", "a%0D%0Ax-injected: 1"),
        header("ce-data", "x"),
        header("ce-my_ext", "x"),
    ] {
        assert_eq!(
            binary(bad).unwrap_err().kind(),
            ErrorKind::Malformed,
            "{bad:?}"
        );
    }
    // Structured mode: the same rules.
    let structured =
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"demo.ping.v1","subject":"a\nb"}"#;
    assert_eq!(
        codec.decode(structured).unwrap_err().kind(),
        ErrorKind::Malformed
    );
    // More than MAX_ATTRIBUTES is too large, however small each one is.
    let many: Vec<(String, String)> = (0..MAX_ATTRIBUTES)
        .map(|i| (format!("x{i}"), "1".to_owned()))
        .collect();
    let pairs: Vec<(String, String)> = many
        .iter()
        .map(|(n, v)| (format!("ce-{n}"), v.clone()))
        .chain([
            ("ce-specversion".to_owned(), "1.0".to_owned()),
            ("ce-id".to_owned(), "1".to_owned()),
        ])
        .collect();
    let e = codec
        .decode_binary(
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            Bytes::new(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    let e = codec
        .decode_attributes("demo.ping.v1", many, Bytes::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
}

#[test]
fn attributes_by_name_decode_under_the_same_rules() {
    let codec = Codec::with_max_size(256);
    let attributes = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    };
    let data = Bytes::from_static(b"{\"n\":1}");
    let envelope = codec
        .decode_attributes(
            "demo.ping.v1",
            attributes(&[
                ("id", "c-1"),
                ("subject", "o-1"),
                ("time", "2026-11-27T09:00:00Z"),
                ("tenant", "north"),
            ]),
            data.clone(),
        )
        .unwrap();
    assert_eq!(envelope.id, "c-1");
    assert_eq!(envelope.source, "/unknown");
    assert_eq!(envelope.subject.as_deref(), Some("o-1"));
    assert!(envelope.time.is_some());
    assert_eq!(
        envelope.extensions.get("tenant").map(String::as_str),
        Some("north")
    );
    assert!(envelope.is_json());
    codec.check_envelope(&envelope).unwrap();
    // Made here when absent: a fresh id.
    let made = codec
        .decode_attributes("demo.ping.v1", Vec::new(), data.clone())
        .unwrap();
    assert!(!made.id.is_empty());
    let refused = |pairs: &[(&str, &str)]| {
        codec
            .decode_attributes("demo.ping.v1", attributes(pairs), data.clone())
            .unwrap_err()
            .kind()
    };
    assert_eq!(refused(&[("id", "")]), ErrorKind::MissingAttribute);
    assert_eq!(refused(&[("Bad Name", "x")]), ErrorKind::Malformed);
    assert_eq!(refused(&[("subject", "a\r\nb")]), ErrorKind::Malformed);
    assert_eq!(refused(&[("data", "x")]), ErrorKind::Malformed);
    assert_eq!(
        refused(&[("type", "demo.other.v1")]),
        ErrorKind::TypeMismatch
    );
    assert_eq!(refused(&[("time", "yesterday")]), ErrorKind::Malformed);
    // The attributes count against the size limit, not only the data.
    assert_eq!(
        refused(&[("tenant", &"x".repeat(300))]),
        ErrorKind::TooLarge
    );
}

#[test]
fn a_made_envelope_is_checked_whole() {
    let codec = Codec::with_max_size(512);
    let good = sample();
    Codec::default().check_envelope(&good).unwrap();
    let check = |f: &dyn Fn(&mut Envelope)| {
        let mut e = sample();
        f(&mut e);
        codec.check_envelope(&e).unwrap_err().kind()
    };
    assert_eq!(check(&|e| e.id.clear()), ErrorKind::MissingAttribute);
    assert_eq!(
        check(&|e| e.subject = Some("a\r\nb".into())),
        ErrorKind::Malformed
    );
    assert_eq!(
        check(&|e| {
            e.extensions.insert("Bad".into(), "x".into());
        }),
        ErrorKind::Malformed
    );
    assert_eq!(
        check(&|e| {
            e.extensions.insert("id".into(), "x".into());
        }),
        ErrorKind::Malformed
    );
    assert_eq!(
        check(&|e| {
            for i in 0..MAX_ATTRIBUTES {
                e.extensions.insert(format!("x{i}"), String::new());
            }
        }),
        ErrorKind::TooLarge
    );
    // Attributes count against the size limit: a payload that fits alone does not with a
    // long attribute beside it.
    assert_eq!(check(&|e| e.source = "/".repeat(500)), ErrorKind::TooLarge);
}

/// `decode_shared` decodes exactly as `decode` does, with `data` a slice of the message
/// instead of a copy; attributes with escapes (which JSON cannot lend) are decoded too.
#[test]
fn decode_shared_slices_data_from_the_message_and_decodes_as_decode_does() {
    let codec = Codec::default();
    let mut envelope = Envelope::raw("/s", "demo.ping.v1", Bytes::from_static(br#"{"n":1}"#))
        .with_subject("a \"quoted\" subject");
    envelope.deadline = envelope.time;
    envelope
        .extensions
        .insert("tabgrabtimeout".into(), "4999".into());
    let bytes = codec.encode(&envelope).unwrap();
    let shared = codec.decode_shared(&bytes).unwrap();
    let copied = codec.decode(&bytes).unwrap();
    assert_eq!(shared, copied);
    assert_eq!(shared, envelope);
    let message = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
    assert!(
        message.contains(&(shared.data.as_ptr() as usize)),
        "decode_shared slices data from the message"
    );
    assert!(
        !message.contains(&(copied.data.as_ptr() as usize)),
        "decode copies it"
    );
    let wrong = br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#;
    let e = codec.decode_shared(&Bytes::from_static(wrong)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedVersion);
    assert!(e.message().contains("\"0.3\""), "{e}");
}
