//! Property tests: random and mutated frames through the decoder, header and payload parsers
//! never panic, and the decoder never asks for more than the frame limit.

use bytes::{Bytes, BytesMut};
use ferry_cellnet::frame::{FrameDecoder, FrameType, OutFrame};
use ferry_cellnet::headers::Headers;
use ferry_cellnet::rmpv::Value;
use ferry_cellnet::{msgpack, Fobs, Message, Payload};
use proptest::prelude::*;

const MAX_FRAME: usize = 64 * 1024;

/// A valid REQ frame with a FOBS payload (the shape of f3-wire.md §7).
fn valid_frame() -> Vec<u8> {
    let mut h = Headers::new();
    h.insert("x-my-hdr", 7);
    h.insert("cn__topic", "echo");
    h.insert("cn__channel", "task");
    h.insert("cn__destination", "server");
    h.insert("cn__req_id", "84fd2bd2-078f-465f-8e46-01d8ef3fc412");
    h.insert("cn__reply_expected", true);
    h.insert("cn__origin", "site-1");
    h.insert("cn__msg_type", "req");
    h.insert(
        "cn__route",
        Value::Array(vec![Value::Array(vec!["site-1".into(), Value::F64(1.5)])]),
    );
    h.insert("cn__payload_encoding", "fobs");
    let payload = Payload::Value(Value::Map(vec![
        ("k".into(), "v".into()),
        ("b".into(), Value::Binary(vec![1, 2])),
        ("l".into(), Value::Array(vec![1.into(), 2.into()])),
    ]))
    .into_segments();
    OutFrame {
        frame_type: FrameType::Data,
        app_id: 1,
        headers: Bytes::from(h.encode()),
        payload,
    }
    .to_bytes(17, 2)
    .unwrap()
    .to_vec()
}

/// Run everything a reader would run on `input`; must not panic.
fn feed(input: &[u8]) {
    let d = FrameDecoder::new(MAX_FRAME, 65535);
    let mut buf = BytesMut::from(input);
    loop {
        if let Ok(Some(len)) = d.peek_length(&buf) {
            assert!(len <= MAX_FRAME, "decoder accepted a length over the limit");
        }
        match d.decode(&mut buf) {
            Ok(Some(f)) => {
                if let Ok(h) = Headers::decode(&f.headers) {
                    let enc = h.get_str("cn__payload_encoding").map(str::to_string);
                    if let Ok(p) = Payload::from_wire(enc.as_deref(), f.payload.clone()) {
                        let _ = Message {
                            headers: h,
                            payload: p,
                        }
                        .value();
                    }
                }
                let _ = Fobs::parse(f.payload.clone()).map(|f| f.to_value());
                let _ = msgpack::decode_value(&f.payload, 10_000);
            }
            Ok(None) => break,
            Err(e) if e.is_fatal() => break,
            Err(_) => continue,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        feed(&input);
    }

    #[test]
    fn mutated_frames_never_panic(
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        twice in any::<bool>(),
    ) {
        let mut f = valid_frame();
        for (i, b) in muts {
            let i = i.index(f.len());
            f[i] = b;
        }
        if twice {
            let again = f.clone();
            f.extend_from_slice(&again);
        }
        let cut = cut.index(f.len() + 1);
        feed(&f[..cut]);
        feed(&f);
    }

    #[test]
    fn random_headers_and_payloads_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Headers::decode(&input);
        let _ = Fobs::parse(Bytes::from(input.clone())).map(|f| f.to_value());
        let _ = msgpack::decode_value(&input, 10_000);
        let _ = msgpack::scan(&input, 10_000);
    }

    #[test]
    fn header_round_trip(entries in proptest::collection::vec(("[a-z_]{1,12}", any::<i64>(), ".{0,20}"), 0..20)) {
        let mut h = Headers::new();
        for (k, i, s) in &entries {
            h.insert(format!("{k}_i"), *i);
            h.insert(format!("{k}_s"), s.as_str());
        }
        let back = Headers::decode(&h.encode()).unwrap();
        prop_assert_eq!(back, h);
    }

    /// Known `cn__*`/`sm__*` keys, unknown ones that look like them, and application keys,
    /// with nested values: decoding what was encoded gives the same map and the same bytes.
    #[test]
    fn header_round_trip_known_and_unknown_keys(
        entries in proptest::collection::vec((header_key(), header_value()), 0..24)
    ) {
        let mut h = Headers::new();
        for (k, v) in &entries {
            h.insert(k, v.clone());
        }
        let bytes = h.encode();
        let back = Headers::decode(&bytes).unwrap();
        prop_assert_eq!(back.encode(), bytes);
        prop_assert_eq!(back, h);
    }
}

#[test]
fn the_valid_frame_decodes() {
    let f = valid_frame();
    let mut buf = BytesMut::from(&f[..]);
    let frame = FrameDecoder::new(MAX_FRAME, 65535)
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    let h = Headers::decode(&frame.headers).unwrap();
    assert_eq!(h.get_str("cn__msg_type"), Some("req"));
    let p = Payload::from_wire(Some("fobs"), frame.payload).unwrap();
    let v = Message {
        headers: h,
        payload: p,
    }
    .value()
    .unwrap();
    assert_eq!(v["k"].as_str(), Some("v"));
}

/// A header key: one this crate knows, an unknown one in its namespaces, or any str.
fn header_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "cn__msg_type",
            "cn__origin",
            "cn__route",
            "cn__req_id",
            "cn__to",
            "sm__id",
            "sm__ri",
        ])
        .prop_map(str::to_string),
        "(cn|sm)__[a-z_]{0,10}",
        ".{0,16}",
    ]
}

/// A msgpack value as headers hold them: scalars, strs, bins, and nested arrays and maps.
fn header_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Value::F64),
        ".{0,24}".prop_map(Value::from),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Binary),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((".{0,8}".prop_map(Value::from), inner), 0..4)
                .prop_map(Value::Map),
        ]
    })
}
