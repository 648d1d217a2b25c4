//! Headers on their way out: a message's own map and the `cn__*` keys this cell stamps on it,
//! written together into the frame's header block without first becoming `rmpv` values.
//!
//! A REQ or a REPLY gets 15 keys from its stamp; as [`Headers`] entries each str value was
//! its own allocation, made, encoded and freed within the send. Here they are borrowed
//! ([`Field`]) until they are written.

use rmpv::Value;

use crate::headers::{keys, Headers};

mod typed;

pub(crate) use typed::Typed;

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
    // the marker: 1 byte under 32, then 2, 3 and 5 (as counted without a branch)
    n + 1 + (n >= 32) as usize + (n >= 256) as usize + 2 * (n >= 65_536) as usize
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

/// The two stamps that set the same keys in the same order every time ([`Typed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A REQ that expects a reply ([`super::Stamp::request`] with a request id).
    Request,
    /// A REPLY ([`super::Stamp::reply`] setting `cn__return_code`).
    Reply,
}

/// A message's header map with the keys a stamp set on it.
///
/// Means exactly what inserting each field into the map in turn ([`Headers::insert`]) would:
/// a field whose key the map has takes that entry's place, the others follow in the order
/// they were set ([`Stamped::into_headers`] builds that map; [`Stamped::encode`] writes it).
/// The fields of a REQ's or a REPLY's stamp are held as a [`Typed`] until something other
/// than setting `cn__to` is done with them.
#[derive(Clone, Debug)]
pub(crate) struct Stamped<'a> {
    map: Headers,
    /// In the order they were set; after those of `typed`, if there is one. A Vec (one
    /// allocation per stamp) rather than an inline array: the value moves through several
    /// calls on its way to [`super::seal`], and an inline array of 16 fields made
    /// `memmove` 3% of a round trip's CPU.
    fields: Vec<(&'static str, Field<'a>)>,
    /// The first fields, when they are a stamp of a [`Shape`] (then `fields` is empty):
    /// written by [`Typed::encode`], without a field list to build or walk. Boxed: the
    /// value is moved through several futures on its way to [`super::seal`], and 140 bytes
    /// inline made those moves cost more than the allocation.
    typed: Option<Box<Typed<'a>>>,
}

impl From<Headers> for Stamped<'_> {
    fn from(map: Headers) -> Self {
        Stamped {
            map,
            fields: Vec::new(),
            typed: None,
        }
    }
}

impl<'a> Stamped<'a> {
    /// `map` with room for the 15 keys a stamp sets.
    pub fn for_stamp(map: Headers) -> Self {
        Stamped {
            map,
            fields: Vec::with_capacity(16),
            typed: None,
        }
    }

    /// `map` with the fields of `stamp`.
    pub fn typed(map: Headers, stamp: Typed<'a>) -> Self {
        Stamped {
            map,
            fields: Vec::new(),
            typed: Some(Box::new(stamp)),
        }
    }

    /// The typed stamp's fields moved into `fields`, to be treated as any others.
    fn untype(&mut self) {
        if let Some(t) = self.typed.take() {
            let rest = std::mem::take(&mut self.fields);
            self.fields = Vec::with_capacity(16 + rest.len());
            self.fields.extend(t.fields());
            self.fields.extend(rest);
        }
    }

    /// Set `key` (replacing the value it has).
    pub fn set(&mut self, key: &'static str, v: Field<'a>) {
        if let Some(t) = &mut self.typed {
            // seal's `cn__to`, the one field set after a stamp
            if let (keys::TO, Field::Str(s)) = (key, v) {
                t.to = s;
                return;
            }
            self.untype();
        }
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => self.fields.push((key, v)),
        }
    }

    /// Set `key`, which no field has yet (a stamp setting each of its keys once): no search
    /// of the fields set before it.
    pub fn set_new(&mut self, key: &'static str, v: Field<'a>) {
        self.untype();
        debug_assert!(
            self.fields.iter().all(|(k, _)| *k != key),
            "{key} set twice"
        );
        self.fields.push((key, v));
    }

    /// The header map the peer will decode.
    pub fn into_headers(mut self) -> Headers {
        self.untype();
        let mut h = self.map;
        for (k, v) in &self.fields {
            h.insert(k, v.to_value());
        }
        h
    }

    /// Encode as one msgpack map.
    pub fn encode(&self) -> Vec<u8> {
        match self.typed {
            Some(ref t) if self.fields.is_empty() && self.map.is_empty() => t.encode(),
            Some(ref t) => {
                let mut all = t.fields().to_vec();
                all.extend_from_slice(&self.fields);
                self.encode_fields(&all)
            }
            None => self.encode_fields(&self.fields),
        }
    }

    /// [`Stamped::encode`] of the map and `fields` (all of them, the typed stamp's too).
    fn encode_fields(&self, fields: &[(&'static str, Field<'a>)]) -> Vec<u8> {
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
}

#[cfg(test)]
mod tests;
