//! Headers on their way out: a message's own map and the `cn__*` keys this cell stamps on it,
//! written together into the frame's header block without first becoming `rmpv` values.
//!
//! A REQ or a REPLY gets 15 keys from its stamp; as [`Headers`] entries each str value was
//! its own allocation, made, encoded and freed within the send. Here they are borrowed
//! ([`Field`]) until they are written.

use rmpv::Value;

use crate::headers::{keys, Headers};

/// A value a stamp sets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Field<'a> {
    /// A str.
    Str(&'a str),
    /// A bool.
    Bool(bool),
    /// A non-negative integer (written in its shortest form, as `rmpv` writes it).
    U64(u64),
    /// A float64.
    F64(f64),
    /// A route of one hop, `[[fqcn, time]]`.
    Route(&'a str, f64),
}

/// Append a msgpack str (the shortest form, as `rmp` writes it). Written by hand: a header
/// block is mostly strs (every key, most values), and `rmp`'s generic writer made its
/// markers and lengths a third of the cost of sealing a message.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xda);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        // a header block is far below 4 GiB (`Limits::max_header_size`)
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// Append a msgpack float64.
fn put_f64(out: &mut Vec<u8>, f: f64) {
    out.push(0xcb);
    out.extend_from_slice(&f.to_bits().to_be_bytes());
}

impl Field<'_> {
    /// Append the msgpack of this value (byte for byte what its [`Field::to_value`] encodes to).
    fn encode(self, out: &mut Vec<u8>) {
        match self {
            Field::Str(s) => put_str(out, s),
            Field::Bool(b) => out.push(if b { 0xc3 } else { 0xc2 }),
            // Writing to a Vec cannot fail.
            Field::U64(n) => drop(rmp::encode::write_uint(out, n)),
            Field::F64(f) => put_f64(out, f),
            Field::Route(hop, at) => {
                // [[hop, at]]: fixarray 1 of fixarray 2
                out.extend_from_slice(&[0x91, 0x92]);
                put_str(out, hop);
                put_f64(out, at);
            }
        }
    }

    /// The value as a header map holds it.
    fn to_value(self) -> Value {
        match self {
            Field::Str(s) => Value::from(s),
            Field::Bool(b) => Value::from(b),
            Field::U64(n) => Value::from(n),
            Field::F64(f) => Value::F64(f),
            Field::Route(hop, at) => {
                Value::Array(vec![Value::Array(vec![hop.into(), Value::F64(at)])])
            }
        }
    }
}

/// The msgpack of a str key under 32 bytes: its fixstr marker and its bytes (`N` = length + 1).
const fn fixstr<const N: usize>(k: &str) -> [u8; N] {
    let b = k.as_bytes();
    assert!(b.len() + 1 == N && b.len() < 32);
    let mut out = [0u8; N];
    out[0] = 0xa0 | b.len() as u8;
    let mut i = 0;
    while i < b.len() {
        out[i + 1] = b[i];
        i += 1;
    }
    out
}

/// A key and its msgpack, encoded at compile time.
macro_rules! pre {
    ($k:expr) => {
        ($k, &fixstr::<{ $k.len() + 1 }>($k) as &[u8])
    };
}

/// The keys a stamp sets, in the order it sets them, each with its msgpack: a stamp of
/// this shape on an empty map is written key bytes by key bytes, not key by key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A REQ that expects a reply ([`super::Stamp::request`] with a request id).
    Request,
    /// A REPLY ([`super::Stamp::reply`] setting `cn__return_code`).
    Reply,
}

/// The keys of a [`Shape::Request`], in order, pre-encoded.
static REQUEST_KEYS: [(&str, &[u8]); 15] = [
    pre!(keys::TOPIC),
    pre!(keys::CHANNEL),
    pre!(keys::DESTINATION),
    pre!(keys::REQ_ID),
    pre!(keys::REPLY_EXPECTED),
    pre!(keys::SECURE),
    pre!(keys::OPTIONAL),
    pre!(keys::FROM),
    pre!(keys::TO),
    pre!(keys::ORIGIN),
    pre!(keys::MSG_TYPE),
    pre!(keys::ROUTE),
    pre!(keys::PAYLOAD_ENCODING),
    pre!(keys::PAYLOAD_LEN),
    pre!(keys::SEND_TIME),
];

/// The keys of a [`Shape::Reply`], in order, pre-encoded.
static REPLY_KEYS: [(&str, &[u8]); 15] = [
    pre!(keys::SECURE),
    pre!(keys::OPTIONAL),
    pre!(keys::RETURN_CODE),
    pre!(keys::CHANNEL),
    pre!(keys::TOPIC),
    pre!(keys::FROM),
    pre!(keys::TO),
    pre!(keys::ORIGIN),
    pre!(keys::DESTINATION),
    pre!(keys::REQ_ID),
    pre!(keys::MSG_TYPE),
    pre!(keys::ROUTE),
    pre!(keys::PAYLOAD_ENCODING),
    pre!(keys::PAYLOAD_LEN),
    pre!(keys::SEND_TIME),
];

impl Shape {
    /// The keys, in order, with their msgpack.
    fn keys(self) -> &'static [(&'static str, &'static [u8])] {
        match self {
            Shape::Request => &REQUEST_KEYS,
            Shape::Reply => &REPLY_KEYS,
        }
    }
}

/// A message's header map with the keys a stamp set on it.
///
/// Means exactly what inserting each field into the map in turn ([`Headers::insert`]) would:
/// a field whose key the map has takes that entry's place, the others follow in the order
/// they were set ([`Stamped::into_headers`] builds that map; [`Stamped::encode`] writes it).
#[derive(Clone, Debug)]
pub(crate) struct Stamped<'a> {
    map: Headers,
    /// In the order they were set. A Vec (one allocation per stamp) rather than an inline
    /// array: the value moves through several calls on its way to [`super::seal`], and an
    /// inline array of 16 fields made `memmove` 3% of a round trip's CPU.
    fields: Vec<(&'static str, Field<'a>)>,
    /// The fields' keys are exactly those of this shape, in its order ([`Stamped::shaped`];
    /// a field added after it clears it): [`Stamped::encode`] writes their pre-encoded keys.
    shape: Option<Shape>,
}

impl From<Headers> for Stamped<'_> {
    fn from(map: Headers) -> Self {
        Stamped {
            map,
            fields: Vec::new(),
            shape: None,
        }
    }
}

impl<'a> Stamped<'a> {
    /// `map` with room for the 15 keys a REQ or a REPLY stamp sets.
    pub fn for_stamp(map: Headers) -> Self {
        Stamped {
            map,
            fields: Vec::with_capacity(16),
            shape: None,
        }
    }

    /// Note that the fields set so far are those of `shape`, in its order (checked).
    pub fn shaped(mut self, shape: Shape) -> Self {
        let keys = shape.keys();
        let fits = self.fields.len() == keys.len()
            && self.fields.iter().zip(keys).all(|((k, _), (s, _))| k == s);
        debug_assert!(fits, "fields not of shape {shape:?}");
        self.shape = fits.then_some(shape);
        self
    }

    /// Set `key` (replacing the value it has).
    pub fn set(&mut self, key: &'static str, v: Field<'a>) {
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => {
                self.shape = None;
                self.fields.push((key, v));
            }
        }
    }

    /// Set `key`, which no field has yet (a stamp setting each of its keys once): no search
    /// of the fields set before it.
    pub fn set_new(&mut self, key: &'static str, v: Field<'a>) {
        debug_assert!(
            self.fields.iter().all(|(k, _)| *k != key),
            "{key} set twice"
        );
        self.shape = None;
        self.fields.push((key, v));
    }

    /// True if the map or a field has `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains(key) || self.fields.iter().any(|(k, _)| *k == key)
    }

    /// The header map the peer will decode.
    pub fn into_headers(self) -> Headers {
        let mut h = self.map;
        for (k, v) in &self.fields {
            h.insert(k, v.to_value());
        }
        h
    }

    /// Encode as one msgpack map.
    pub fn encode(&self) -> Vec<u8> {
        if let (Some(shape), true) = (self.shape, self.map.is_empty()) {
            return self.encode_shaped(shape);
        }
        let fields = &self.fields;
        let field = |k: &str| fields.iter().find(|(f, _)| *f == k).map(|(_, v)| *v);
        let extra = fields.iter().filter(|(k, _)| !self.map.contains(k)).count();
        let mut out = Vec::with_capacity(64 + (self.map.len() + fields.len()) * 24);
        // Writing to a Vec cannot fail.
        let _ = rmp::encode::write_map_len(&mut out, (self.map.len() + extra) as u32);
        for (k, v) in self.map.encodable() {
            put_str(&mut out, k);
            match field(k) {
                Some(f) => f.encode(&mut out),
                None => v.encode(&mut out),
            }
        }
        for (k, v) in fields.iter() {
            if !self.map.contains(k) {
                put_str(&mut out, k);
                v.encode(&mut out);
            }
        }
        out
    }

    /// [`Stamped::encode`] of fields of `shape` on an empty map: each key's bytes copied.
    fn encode_shaped(&self, shape: Shape) -> Vec<u8> {
        let mut out = Vec::with_capacity(320);
        // a fixmap of the 15 fields
        out.push(0x80 | self.fields.len() as u8);
        for ((_, v), (_, key)) in self.fields.iter().zip(shape.keys()) {
            out.extend_from_slice(key);
            v.encode(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
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
            for (k, enc) in shape.keys() {
                let mut out = Vec::new();
                put_str(&mut out, k);
                assert_eq!(&out, enc, "{k}");
            }
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
}
