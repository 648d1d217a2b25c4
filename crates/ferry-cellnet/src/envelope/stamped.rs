//! Headers on their way out: a message's own map and the `cn__*` keys this cell stamps on it,
//! written together into the frame's header block without first becoming `rmpv` values.
//!
//! A REQ or a REPLY gets 15 keys from its stamp; as [`Headers`] entries each str value was
//! its own allocation, made, encoded and freed within the send. Here they are borrowed
//! ([`Field`]) until they are written.

use rmpv::Value;

use super::block::{padded, Block, PaddedKeys, KEY_ROOM};
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

/// The length of the msgpack of a str of `n` bytes ([`put_str`]).
const fn str_len(n: usize) -> usize {
    n + if n < 32 {
        1
    } else if n < 256 {
        2
    } else if n < 65_536 {
        3
    } else {
        5
    }
}

/// The length of the msgpack of `n` in its shortest form (as `rmp::encode::write_uint`).
const fn uint_len(n: u64) -> usize {
    if n < 128 {
        1
    } else if n < 256 {
        2
    } else if n < 65_536 {
        3
    } else if n < 1 << 32 {
        5
    } else {
        9
    }
}

/// Append a msgpack float64.
fn put_f64(out: &mut Vec<u8>, f: f64) {
    out.push(0xcb);
    out.extend_from_slice(&f.to_bits().to_be_bytes());
}

impl Field<'_> {
    /// The length of [`Field::encode`]'s bytes.
    fn encoded_len(self) -> usize {
        match self {
            Field::Str(s) => str_len(s.len()),
            Field::Bool(_) => 1,
            Field::U64(n) => uint_len(n),
            Field::F64(_) => 9,
            Field::Route(hop, _) => 2 + str_len(hop.len()) + 9,
        }
    }

    /// [`Field::encode`] into a [`Block`].
    #[inline(always)]
    fn write(self, out: &mut Block) {
        match self {
            Field::Str(s) => out.str(s),
            Field::Bool(b) => out.byte(if b { 0xc3 } else { 0xc2 }),
            Field::U64(n) => out.uint(n),
            Field::F64(f) => out.f64(f),
            Field::Route(hop, at) => {
                out.bytes(&[0x91, 0x92]);
                out.str(hop);
                out.f64(at);
            }
        }
    }

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
const REQUEST_KEYS: [(&str, &[u8]); 15] = [
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
const REPLY_KEYS: [(&str, &[u8]); 15] = [
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

/// The msgpack of `keys`, each padded for [`Block::key`].
const fn pad<const N: usize>(keys: &[(&str, &[u8]); N]) -> [([u8; KEY_ROOM], u8); N] {
    let mut out = [([0; KEY_ROOM], 0); N];
    let mut i = 0;
    while i < N {
        out[i] = padded(keys[i].1);
        i += 1;
    }
    out
}

/// [`REQUEST_KEYS`] padded.
static REQUEST_PADDED: [([u8; KEY_ROOM], u8); 15] = pad(&REQUEST_KEYS);

/// [`REPLY_KEYS`] padded.
static REPLY_PADDED: [([u8; KEY_ROOM], u8); 15] = pad(&REPLY_KEYS);

impl Shape {
    /// The keys' msgpack, in order, each padded for [`Block::key`].
    fn padded_keys(self) -> &'static PaddedKeys {
        match self {
            Shape::Request => &REQUEST_PADDED,
            Shape::Reply => &REPLY_PADDED,
        }
    }

    /// The keys, in order, with their msgpack.
    fn keys(self) -> &'static [(&'static str, &'static [u8])] {
        match self {
            Shape::Request => &REQUEST_KEYS,
            Shape::Reply => &REPLY_KEYS,
        }
    }

    /// The length of the keys' msgpack, all together.
    fn keys_len(self) -> usize {
        const fn sum(keys: &[(&str, &[u8])]) -> usize {
            let mut n = 0;
            let mut i = 0;
            while i < keys.len() {
                n += keys[i].1.len();
                i += 1;
            }
            n
        }
        const REQUEST: usize = sum(&REQUEST_KEYS);
        const REPLY: usize = sum(&REPLY_KEYS);
        match self {
            Shape::Request => REQUEST,
            Shape::Reply => REPLY,
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

    /// Note that the fields set so far are those of `shape`, in its order.
    ///
    /// Only their number is checked in a release build: the stamp that calls this sets
    /// those very keys in that order a few lines before (the tests, built with debug
    /// assertions, check every key), and comparing the 15 keys' text cost a tenth of
    /// sealing the message.
    pub fn shaped(mut self, shape: Shape) -> Self {
        let keys = shape.keys();
        debug_assert!(
            self.fields
                .iter()
                .map(|(k, _)| *k)
                .eq(keys.iter().map(|(k, _)| *k)),
            "fields not of shape {shape:?}"
        );
        self.shape = (self.fields.len() == keys.len()).then_some(shape);
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
        self.write_shaped(shape).unwrap_or_else(|| {
            let size = 1
                + shape.keys_len()
                + self
                    .fields
                    .iter()
                    .map(|(_, v)| v.encoded_len())
                    .sum::<usize>();
            self.append_shaped(shape, size)
        })
    }

    /// [`Stamped::encode_shaped`] on the stack, if the block fits there (as a stamp's block
    /// does unless its strs are long).
    fn write_shaped(&self, shape: Shape) -> Option<Vec<u8>> {
        let mut out = Block::new();
        // a fixmap of the 15 fields
        out.byte(0x80 | self.fields.len() as u8);
        for ((_, v), key) in self.fields.iter().zip(shape.padded_keys()) {
            out.key(key);
            v.write(&mut out);
        }
        out.finish()
    }

    /// [`Stamped::encode_shaped`] appended to a `Vec` of `size` bytes, for any size.
    fn append_shaped(&self, shape: Shape, size: usize) -> Vec<u8> {
        // Counted first: `Bytes::from(Vec)` keeps the allocation as it is only if the Vec is
        // full; with room to spare it allocated again.
        let mut out = Vec::with_capacity(size);
        out.push(0x80 | self.fields.len() as u8);
        for ((_, v), (_, key)) in self.fields.iter().zip(shape.keys()) {
            out.extend_from_slice(key);
            v.encode(&mut out);
        }
        debug_assert_eq!(out.len(), size);
        out
    }
}

#[cfg(test)]
mod tests;
