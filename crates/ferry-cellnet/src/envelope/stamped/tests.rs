//! [`super::Stamped`] encodes as inserting each field into the map would.

use proptest::prelude::*;

use super::*;
use crate::headers::keys;

fn encoded(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

#[test]
fn a_field_encodes_as_its_value_does() {
    let long = "x".repeat(70_000);
    let mut fields = vec![
        Field::Bool(true),
        Field::Bool(false),
        Field::F64(1.5),
        Field::F64(-0.0),
        Field::Route("site-1", 1_700_000_000.25),
        Field::Str(""),
        Field::Str(&long[..31]),
        Field::Str(&long[..32]),
        Field::Str(&long[..255]),
        Field::Str(&long[..256]),
        Field::Str(&long[..65_535]),
        Field::Str(&long[..65_536]),
    ];
    for n in [
        0,
        127,
        128,
        255,
        256,
        65_535,
        65_536,
        u32::MAX as u64,
        u64::MAX,
    ] {
        fields.push(Field::U64(n));
    }
    for f in fields {
        let mut out = Vec::new();
        f.encode(&mut out);
        assert_eq!(out, encoded(&f.to_value()), "{f:?}");
    }
}

/// Keys a stamp sets, and others: more than a stamp's 16.
fn key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        keys::TOPIC,
        keys::CHANNEL,
        keys::TO,
        keys::ROUTE,
        keys::RETURN_CODE,
        keys::SEND_TIME,
        "x-app",
        "y",
        "sm__id",
        "a",
        "b",
        "c",
        "d",
        "e",
        "f",
        "g",
        "h",
        "i",
        "j",
        "k",
    ])
}

fn field() -> impl Strategy<Value = Field<'static>> {
    prop_oneof![
        any::<bool>().prop_map(Field::Bool),
        any::<u64>().prop_map(Field::U64),
        (-1e12f64..1e12).prop_map(Field::F64),
        prop::sample::select(vec!["", "req", "site-1.job"]).prop_map(Field::Str),
        (-1e12f64..1e12).prop_map(|t| Field::Route("server", t)),
    ]
}

proptest! {
    /// Whatever the map holds and however many fields are set, in whatever order and
    /// however often: the bytes are those of inserting each field into the map in turn.
    #[test]
    fn encodes_as_inserting_each_field_would(
        app in proptest::collection::vec((key(), any::<i32>()), 0..6),
        sets in proptest::collection::vec((key(), field()), 0..40),
    ) {
        let map: Headers = app.into_iter().collect();
        let mut want = map.clone();
        let mut s = Stamped::from(map);
        for (k, v) in sets {
            s.set(k, v);
            want.insert(k, v.to_value());
        }
        prop_assert_eq!(s.encode(), want.encode());
        prop_assert_eq!(s.into_headers(), want);
    }
}

#[test]
fn more_fields_than_a_stamp_has_keep_their_order() {
    const K: [&str; 18] = [
        "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "k11", "k12", "k13",
        "k14", "k15", "k16", "k17",
    ];
    let mut s = Stamped::from(Headers::new());
    let mut want = Headers::new();
    for (i, k) in K.iter().enumerate() {
        s.set(k, Field::U64(i as u64));
        want.insert(k, i as u64);
    }
    s.set("k17", Field::Bool(true));
    s.set("k3", Field::Bool(true));
    want.insert("k17", true);
    want.insert("k3", true);
    assert_eq!(s.encode(), want.encode());
    assert_eq!(Headers::decode(&s.encode()).unwrap(), want);
}

#[test]
fn a_strs_length_is_counted_as_it_is_written() {
    let long = "z".repeat(70_000);
    for n in [
        0, 1, 31, 32, 33, 255, 256, 257, 65_535, 65_536, 65_537, 70_000,
    ] {
        let mut out = Vec::new();
        put_str(&mut out, &long[..n]);
        assert_eq!(str_len(n), out.len(), "{n}");
    }
}

/// One text for the strs of a typed stamp to borrow from: long enough for any length tried.
fn text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| "abcdefghijklmnopqrstuvwxyz".repeat(3_000))
}

/// A str of any of the lengths whose msgpack differs: fixstr, str 8, str 16, str 32.
fn any_str() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        0..40usize,
        0..300usize,
        65_530..65_540usize,
        Just(70_000usize)
    ]
    .prop_map(|n| &text()[..n])
}

/// A typed stamp of either shape, any values.
fn any_typed() -> impl Strategy<Value = Typed<'static>> {
    (
        prop_oneof![Just(Shape::Request), Just(Shape::Reply)],
        [any_str(), any_str(), any_str(), any_str()],
        [any_str(), any_str(), any_str()],
        any::<bool>(),
        prop_oneof![0..300u64, any::<u64>()],
        any::<f64>(),
    )
        .prop_map(
            |(
                shape,
                [topic, channel, destination, req_id],
                [me, to, encoding],
                optional,
                len,
                at,
            )| {
                Typed {
                    shape,
                    topic,
                    channel,
                    destination,
                    req_id,
                    optional: optional && shape == Shape::Request,
                    me,
                    to,
                    encoding,
                    len,
                    at,
                }
            },
        )
}

/// The bytes of `t`'s fields set one by one on `map` (the generic path).
fn generic(map: Headers, t: &Typed<'_>) -> Vec<u8> {
    let mut s = Stamped::from(map);
    for (k, v) in t.fields() {
        s.set(k, v);
    }
    s.encode()
}

proptest! {
    /// A typed stamp is the same bytes as its fields set one by one, whatever the lengths
    /// of its strs and the sizes of its numbers; its Vec is exactly its size.
    #[test]
    fn a_typed_stamp_encodes_as_its_fields_would(t in any_typed()) {
        let got = Stamped::typed(Headers::new(), t).encode();
        prop_assert_eq!(&got, &generic(Headers::new(), &t));
        prop_assert_eq!(got.capacity(), got.len());
        prop_assert_eq!(&got, &t.encode());
        // and the field-by-field fallback of a miscounted size
        prop_assert_eq!(&got, &t.generic());
    }

    /// On a map that has entries (some of them a stamp's keys), with `cn__to` set after,
    /// and with a field added after it: the bytes are those of inserting each in turn.
    #[test]
    fn a_typed_stamp_on_a_map_or_with_more_fields_is_its_map(
        t in any_typed(),
        app in proptest::collection::vec((key(), any::<i32>()), 0..6),
        to in any_str(),
        late in proptest::option::of((key(), field())),
    ) {
        let map: Headers = app.into_iter().collect();
        let mut s = Stamped::typed(map.clone(), t);
        let mut want = map;
        for (k, v) in t.fields() {
            want.insert(k, v.to_value());
        }
        s.set(keys::TO, Field::Str(to));
        want.insert(keys::TO, to);
        prop_assert!(s.typed.is_some(), "cn__to keeps the stamp typed");
        if let Some((k, v)) = late {
            s.set(k, v);
            want.insert(k, v.to_value());
            prop_assert!(s.typed.is_none() || k == keys::TO);
        }
        prop_assert_eq!(s.encode(), want.encode());
        prop_assert_eq!(s.into_headers().encode(), want.encode());
    }
}

/// The keys of a REQ that expects a reply, in the order NVFlare writes them (§7).
const REQUEST_KEYS: [&str; 15] = [
    keys::TOPIC,
    keys::CHANNEL,
    keys::DESTINATION,
    keys::REQ_ID,
    keys::REPLY_EXPECTED,
    keys::SECURE,
    keys::OPTIONAL,
    keys::FROM,
    keys::TO,
    keys::ORIGIN,
    keys::MSG_TYPE,
    keys::ROUTE,
    keys::PAYLOAD_ENCODING,
    keys::PAYLOAD_LEN,
    keys::SEND_TIME,
];

/// The keys of a REPLY, in NVFlare's order.
const REPLY_KEYS: [&str; 15] = [
    keys::SECURE,
    keys::OPTIONAL,
    keys::RETURN_CODE,
    keys::CHANNEL,
    keys::TOPIC,
    keys::FROM,
    keys::TO,
    keys::ORIGIN,
    keys::DESTINATION,
    keys::REQ_ID,
    keys::MSG_TYPE,
    keys::ROUTE,
    keys::PAYLOAD_ENCODING,
    keys::PAYLOAD_LEN,
    keys::SEND_TIME,
];

#[test]
fn a_stamp_of_a_request_or_reply_is_typed_and_is_the_map_nvflare_writes() {
    use crate::envelope::{Address, Body, Stamp};
    use crate::return_code::ReturnCode;
    let me = crate::fqcn::Fqcn::new("site-1").unwrap();
    let stamp = Stamp {
        me: &me,
        at: 1_700_000_000.125,
    };
    let to = Address {
        destination: "server",
        channel: "task",
        topic: "echo",
    };
    let body = Body {
        encoding: "bytes",
        len: 70_000,
    };
    let id = "84fd2bd2-078f-465f-8e46-01d8ef3fc412";
    let req = stamp.request(Headers::new(), to, Some(id), true, body);
    let reply = stamp.reply(Headers::new(), to, id, body);
    let route = Value::Array(vec![Value::Array(vec![
        "site-1".into(),
        Value::F64(1_700_000_000.125),
    ])]);
    for (mut s, names, shape) in [
        (req, REQUEST_KEYS, Shape::Request),
        (reply, REPLY_KEYS, Shape::Reply),
    ] {
        assert_eq!(s.typed.as_ref().map(|t| t.shape), Some(shape));
        s.set(keys::TO, Field::Str("server"));
        let h = Headers::decode(&s.encode()).unwrap();
        let got: Vec<&str> = h.iter().map(|(k, _)| k).collect();
        assert_eq!(got, names, "{shape:?}");
        let msg_type = if shape == Shape::Request {
            "req"
        } else {
            "reply"
        };
        for (k, v) in [
            (keys::TOPIC, Value::from("echo")),
            (keys::CHANNEL, "task".into()),
            (keys::DESTINATION, "server".into()),
            (keys::REQ_ID, id.into()),
            (keys::SECURE, false.into()),
            (keys::OPTIONAL, (shape == Shape::Request).into()),
            (keys::FROM, "site-1".into()),
            (keys::TO, "server".into()),
            (keys::ORIGIN, "site-1".into()),
            (keys::MSG_TYPE, msg_type.into()),
            (keys::ROUTE, route.clone()),
            (keys::PAYLOAD_ENCODING, "bytes".into()),
            (keys::PAYLOAD_LEN, 70_000u64.into()),
            (keys::SEND_TIME, Value::F64(1_700_000_000.125)),
        ] {
            assert_eq!(h.get(k), Some(&v), "{shape:?} {k}");
        }
        if shape == Shape::Request {
            assert_eq!(h.get(keys::REPLY_EXPECTED), Some(&true.into()));
        } else {
            assert_eq!(
                h.get(keys::RETURN_CODE),
                Some(&ReturnCode::Ok.as_str().into())
            );
        }
        assert_eq!(s.clone().into_headers(), h);
    }
    // not typed: a request without an id, a reply with its own return code
    let fire = stamp.request(Headers::new(), to, None, false, body);
    assert!(fire.typed.is_none());
    let h = Headers::decode(&fire.encode()).unwrap();
    assert_eq!(h.get(keys::REPLY_EXPECTED), Some(&false.into()));
    assert!(!h.contains(keys::REQ_ID));
    let own: Headers = [(keys::RETURN_CODE, "timeout")].into_iter().collect();
    let reply = stamp.reply(own, to, id, body);
    assert!(reply.typed.is_none());
    let h = Headers::decode(&reply.encode()).unwrap();
    assert_eq!(h.get(keys::RETURN_CODE), Some(&"timeout".into()));
    assert_eq!(h.iter().next().map(|(k, _)| k), Some(keys::RETURN_CODE));
}
