//! [`super::Stamped`] encodes as inserting each field into the map would.

use proptest::prelude::*;

use super::*;
use crate::envelope::block::{BUF, KEY_ROOM};
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

/// A stamp of each shape, its fields of every kind of value.
fn shaped(shape: Shape, map: Headers) -> Stamped<'static> {
    let mut s = Stamped::for_stamp(map);
    for (i, (k, _)) in shape.keys().iter().enumerate() {
        let v = match i % 5 {
            0 => Field::Str("site-1.job-7"),
            1 => Field::Bool(i % 2 == 0),
            2 => Field::U64(70_000 * i as u64),
            3 => Field::F64(1_700_000_000.5 + i as f64),
            _ => Field::Route("server", 2.25),
        };
        s.set_new(k, v);
    }
    s.shaped(shape)
}

#[test]
fn pre_encoded_keys_are_the_keys_msgpack() {
    for shape in [Shape::Request, Shape::Reply] {
        for ((k, enc), (pad, len)) in shape.keys().iter().zip(shape.padded_keys()) {
            let mut out = Vec::new();
            put_str(&mut out, k);
            assert_eq!(&out, enc, "{k}");
            assert_eq!(&pad[..usize::from(*len)], *enc, "{k}");
            assert!(pad[usize::from(*len)..].iter().all(|b| *b == 0));
        }
        assert_eq!(
            shape.keys_len(),
            shape.keys().iter().map(|(_, k)| k.len()).sum::<usize>()
        );
    }
}

#[test]
fn a_shaped_stamp_encodes_as_inserting_each_field_would() {
    for shape in [Shape::Request, Shape::Reply] {
        let mut s = shaped(shape, Headers::new());
        assert_eq!(s.shape, Some(shape));
        let want = s.clone().into_headers();
        assert_eq!(s.encode(), want.encode(), "{shape:?}");
        // a field replaced in place keeps the shape (seal's `cn__to`)
        s.set(keys::TO, Field::Str("server"));
        assert_eq!(s.shape, Some(shape));
        assert_eq!(s.encode(), s.clone().into_headers().encode());
        // a field added is no longer the shape
        s.set("x-late", Field::U64(1));
        assert_eq!(s.shape, None);
        assert_eq!(s.encode(), s.clone().into_headers().encode());
        // nor is a stamp on a map that has entries
        let map: Headers = [("x-app", 1), (keys::TOPIC, 2)].into_iter().collect();
        let s = shaped(shape, map);
        assert_eq!(s.shape, Some(shape));
        assert_eq!(s.encode(), s.clone().into_headers().encode());
        assert_eq!(
            Headers::decode(&s.encode()).unwrap(),
            s.clone().into_headers()
        );
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

/// A value of the kind a shape's field has, of any length or size.
fn value_like(v: Field<'static>) -> BoxedStrategy<Field<'static>> {
    // one text to borrow from: long enough for a block well past the stack buffer
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = TEXT
        .get_or_init(|| "abcdefghijklmnopqrstuvwxyz".repeat(3_000))
        .as_str();
    let len = prop_oneof![0..40usize, 0..300usize, Just(65_536usize)];
    match v {
        Field::Str(_) => len.prop_map(move |n| Field::Str(&text[..n])).boxed(),
        Field::Bool(_) => any::<bool>().prop_map(Field::Bool).boxed(),
        Field::U64(_) => prop_oneof![0..300u64, any::<u64>()]
            .prop_map(Field::U64)
            .boxed(),
        Field::F64(_) => any::<f64>().prop_map(Field::F64).boxed(),
        Field::Route(..) => (len, any::<f64>())
            .prop_map(move |(n, t)| Field::Route(&text[..n], t))
            .boxed(),
    }
}

/// A stamp of `shape` whose fields are of the kinds a real stamp's are, any values.
fn any_shaped(shape: Shape) -> impl Strategy<Value = Stamped<'static>> {
    let kinds: Vec<_> = shaped(shape, Headers::new())
        .fields
        .iter()
        .map(|(_, v)| value_like(*v))
        .collect();
    kinds.prop_map(move |values| {
        let mut s = Stamped::for_stamp(Headers::new());
        for ((k, _), v) in shape.keys().iter().zip(values) {
            s.set_new(k, v);
        }
        s.shaped(shape)
    })
}

proptest! {
    /// A shaped stamp written on the stack, appended to a Vec, or encoded as a header map
    /// is the same bytes, whatever the lengths of its strs (a block that does not fit on
    /// the stack is appended) and the sizes of its numbers; the Vec is exactly its size.
    #[test]
    fn a_shaped_stamp_is_the_same_bytes_on_the_stack_or_not(
        s in prop_oneof![any_shaped(Shape::Request), any_shaped(Shape::Reply)],
    ) {
        let shape = s.shape.unwrap();
        let want = s.clone().into_headers().encode();
        let got = s.encode();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(got.capacity(), got.len());
        prop_assert_eq!(&s.append_shaped(shape, want.len()), &want);
        match s.write_shaped(shape) {
            Some(b) => prop_assert_eq!(b, want),
            // the last key written needs its padded room
            None => prop_assert!(want.len() > BUF - KEY_ROOM),
        }
    }
}

#[test]
fn a_block_at_and_past_the_stack_limit_is_right() {
    let text = "x".repeat(BUF);
    for shape in [Shape::Request, Shape::Reply] {
        let base = shaped(shape, Headers::new()).encode().len();
        // the sixth field (a str in `shaped`) made longer, up to a block past the buffer
        let mut stacked = Vec::new();
        for len in BUF - KEY_ROOM - 2..=BUF + 2 {
            let mut s = shaped(shape, Headers::new());
            let (k, Field::Str(old)) = s.fields[5] else {
                panic!("not a str")
            };
            let n = old.len() + len - base - 1;
            s.set(k, Field::Str(&text[..n]));
            let want = s.clone().into_headers().encode();
            assert_eq!(want.len(), len, "{shape:?}");
            assert_eq!(s.encode(), want, "{shape:?} {len}");
            let got = s.write_shaped(shape);
            assert!(got.is_none() || got == Some(want));
            stacked.push(got.is_some());
        }
        // both ways were taken, the stack first
        assert!(stacked[0] && !stacked[stacked.len() - 1], "{shape:?}");
    }
}

#[test]
fn a_stamp_of_a_request_or_reply_is_shaped_and_encodes_as_its_map() {
    use crate::envelope::{Address, Body, Stamp};
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
    for (mut s, shape) in [(req, Shape::Request), (reply, Shape::Reply)] {
        assert_eq!(s.shape, Some(shape));
        s.set(keys::TO, Field::Str("server"));
        assert_eq!(s.encode(), s.clone().into_headers().encode(), "{shape:?}");
    }
}
