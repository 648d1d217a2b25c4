//! Tests of the header map and its codec.

use super::*;
use crate::testutil::hex;

/// Build msgpack bytes from a list of (hex | "str") tokens.
fn mp(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        if let Some(s) = p.strip_prefix('"') {
            out.extend_from_slice(s.trim_end_matches('"').as_bytes());
        } else {
            out.extend(hex(p));
        }
    }
    out
}

/// The exact header map of the §7 REQ capture (322 bytes).
fn req_capture() -> Vec<u8> {
    mp(&[
        "de 00 10 a8",
        "\"x-my-hdr\"",
        "07 a9",
        "\"cn__topic\"",
        "a4",
        "\"echo\"",
        "ab",
        "\"cn__channel\"",
        "a4",
        "\"task\"",
        "af",
        "\"cn__destination\"",
        "a6",
        "\"server\"",
        "aa",
        "\"cn__req_id\"",
        "d9 24",
        "\"84fd2bd2-078f-465f-8e46-01d8ef3fc412\"",
        "b2",
        "\"cn__reply_expected\"",
        "c3 aa",
        "\"cn__secure\"",
        "c2 ac",
        "\"cn__optional\"",
        "c2 a8",
        "\"cn__from\"",
        "a6",
        "\"site-1\"",
        "a6",
        "\"cn__to\"",
        "a6",
        "\"server\"",
        "aa",
        "\"cn__origin\"",
        "a6",
        "\"site-1\"",
        "ac",
        "\"cn__msg_type\"",
        "a3",
        "\"req\"",
        "a9",
        "\"cn__route\"",
        "91 92 a6",
        "\"site-1\"",
        "cb 41 da c2 86 77 f5 67 83",
        "b4",
        "\"cn__payload_encoding\"",
        "a4",
        "\"fobs\"",
        "af",
        "\"cn__payload_len\"",
        "1a ad",
        "\"cn__send_time\"",
        "cb 41 da c2 86 77 f5 d8 ce",
    ])
}

#[test]
fn req_capture_round_trips_byte_exact() {
    let bytes = req_capture();
    assert_eq!(bytes.len(), 322);
    let h = Headers::decode(&bytes).unwrap();
    assert_eq!(h.len(), 16);
    assert_eq!(h.get_str(keys::MSG_TYPE), Some("req"));
    assert_eq!(h.get_str(keys::ORIGIN), Some("site-1"));
    assert_eq!(h.get_str(keys::DESTINATION), Some("server"));
    assert_eq!(h.get_bool(keys::REPLY_EXPECTED), Some(true));
    assert_eq!(h.get_u64(keys::PAYLOAD_LEN), Some(26));
    assert_eq!(h.get_u64("x-my-hdr"), Some(7));
    assert!(matches!(h.get(keys::SEND_TIME), Some(Value::F64(_))));
    let route = h.get(keys::ROUTE).unwrap().as_array().unwrap();
    assert_eq!(route[0].as_array().unwrap()[0].as_str(), Some("site-1"));
    // unknown keys, order and exact types survive a round trip
    assert_eq!(h.encode(), bytes);
}

#[test]
fn stream_ack_capture_prefix() {
    // §7: de 00 12 a6 "sm__id" cf 00 06 61 4a e2 78 a0 cf a6 "sm__dt" 03 a6 "sm__os" 4a a6 "sm__sq" 00
    let mut h = Headers::new();
    h.insert(stream_keys::ID, 0x0006_614a_e278_a0cf_u64);
    h.insert(stream_keys::DATA_TYPE, 3);
    h.insert(stream_keys::OFFSET, 0x4a);
    h.insert(stream_keys::SEQ, 0);
    let enc = h.encode();
    let want = mp(&[
        "84 a6",
        "\"sm__id\"",
        "cf 00 06 61 4a e2 78 a0 cf a6",
        "\"sm__dt\"",
        "03 a6",
        "\"sm__os\"",
        "4a a6",
        "\"sm__sq\"",
        "00",
    ]);
    assert_eq!(enc, want);
}

#[test]
fn rejects_what_python_rejects() {
    assert!(Headers::decode(&[0x01]).is_err()); // not a map
    assert!(Headers::decode(&[0x81, 0x01, 0x02]).is_err()); // int key
    assert!(Headers::decode(&[0x81, 0xa1, b'k', 0xa1, 0xff]).is_err()); // bad utf-8
    assert!(Headers::decode(&[0x82, 0xa1, b'k', 0x01]).is_err()); // truncated
    assert!(Headers::decode(&[0x80, 0x00]).is_err()); // trailing bytes
    assert!(Headers::decode(&[]).unwrap().is_empty());
}

#[test]
fn insert_replaces_in_place() {
    let mut h: Headers = [("a", 1), ("b", 2)].into_iter().collect();
    h.insert("a", 3);
    assert_eq!(h.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(h.get_u64("a"), Some(3));
    assert_eq!(h.remove("a"), Some(Value::from(3)));
    assert!(!h.contains("a"));
}

#[test]
fn known_keys_are_borrowed_unknown_keys_kept_exactly() {
    let mut h = Headers::new();
    h.insert(keys::TOPIC, "t");
    let nested = Value::Map(vec![(
        "a".into(),
        Value::Array(vec![Value::from(-3), "x".into(), Value::F32(1.5)]),
    )]);
    h.insert("cn__not_yet_known", nested.clone());
    h.insert("x-app", Value::Binary(vec![1, 2]));
    h.insert(stream_keys::ID, u64::MAX);
    let bytes = h.encode();
    let back = Headers::decode(&bytes).unwrap();
    assert_eq!(back, h);
    assert_eq!(back.encode(), bytes);
    assert_eq!(back.get("cn__not_yet_known"), Some(&nested));
    let borrowed: Vec<bool> = back
        .entries
        .iter()
        .map(|(k, _)| matches!(k, Cow::Borrowed(_)))
        .collect();
    assert_eq!(borrowed, [true, false, false, true]);
}

#[test]
fn decode_errors_say_what_is_wrong() {
    let err = |b: &[u8]| Headers::decode(b).unwrap_err().to_string();
    assert!(err(&[0x91, 0x01]).contains("not a map"));
    assert!(err(&[0x81, 0xc4, 0x01, b'k', 0x01]).contains("key is not a str"));
    assert!(err(&[0x81, 0xa1, 0xff, 0x01]).contains("key is not UTF-8"));
    assert!(
        err(&[0x81, 0xa1, b'k', 0x91, 0xa1, 0xff]).contains("\"k\" holds a str that is not UTF-8")
    );
    assert!(err(&[0x80, 0xc0]).contains("trailing"));
}

#[test]
fn a_huge_claimed_map_is_refused_before_anything_is_reserved() {
    // map32 claiming 4 Gi entries, one present: refused by the scan, nothing sized by the claim
    let e = Headers::decode(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'k', 0x01]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    let e = Headers::decode(&[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, b'k']).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}
