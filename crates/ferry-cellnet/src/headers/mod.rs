//! The msgpack header map of a CellNet message (f3-wire.md §2.2, §4.2): an ordered map of str
//! keys to msgpack values that keeps unknown keys and their exact msgpack types.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::Bytes;
use rmpv::Value;

use crate::error::CellnetError;
use known_keys::{key, known, Key, KNOWN_KEYS};
use slots::{Slots, MAX_NOTED, N_SLOTS};
use value::ReadError;

pub(crate) use slots::Slot;

mod known_keys;
pub(crate) mod memo;
mod slots;
mod value;

/// Header keys used by CellNet (`cn__*`).
pub mod keys {
    /// `req` / `reply` / `return`.
    pub const MSG_TYPE: &str = "cn__msg_type";
    /// Original sender.
    pub const ORIGIN: &str = "cn__origin";
    /// Final target.
    pub const DESTINATION: &str = "cn__destination";
    /// Previous hop.
    pub const FROM: &str = "cn__from";
    /// Next hop.
    pub const TO: &str = "cn__to";
    /// Application channel.
    pub const CHANNEL: &str = "cn__channel";
    /// Application topic.
    pub const TOPIC: &str = "cn__topic";
    /// Correlation id (str, or `[str]` in RETURN messages).
    pub const REQ_ID: &str = "cn__req_id";
    /// Whether the requester waits for a reply.
    pub const REPLY_EXPECTED: &str = "cn__reply_expected";
    /// Return code of a reply.
    pub const RETURN_CODE: &str = "cn__return_code";
    /// Optional error text.
    pub const ERROR: &str = "cn__error";
    /// `fobs` / `bytes` / `none`.
    pub const PAYLOAD_ENCODING: &str = "cn__payload_encoding";
    /// Informational payload length.
    pub const PAYLOAD_LEN: &str = "cn__payload_len";
    /// `[[fqcn, time], ...]` per hop.
    pub const ROUTE: &str = "cn__route";
    /// Informational send time.
    pub const SEND_TIME: &str = "cn__send_time";
    /// End-to-end encryption requested.
    pub const SECURE: &str = "cn__secure";
    /// Lowers log levels only.
    pub const OPTIONAL: &str = "cn__optional";
    /// Headers of the message that could not be forwarded (RETURN).
    pub const ORIGINAL_HEADERS: &str = "cn__original_headers";
    /// Why a RETURN was sent (`cant_forward`).
    pub const RETURN_REASON: &str = "cn__return_reason";
    /// Set when the payload is end-to-end encrypted (not supported by ferry).
    pub const ENCRYPTED: &str = "cn__encrypted";
}

/// Header keys of the byte-stream protocol (`sm__*`).
pub mod stream_keys {
    /// Stream id (u64).
    pub const ID: &str = "sm__id";
    /// Chunk sequence number.
    pub const SEQ: &str = "sm__sq";
    /// Data type: 1 chunk, 2 final, 3 ack, 6 error.
    pub const DATA_TYPE: &str = "sm__dt";
    /// Byte offset (chunks) or bytes consumed (ACK).
    pub const OFFSET: &str = "sm__os";
    /// Total blob size.
    pub const SIZE: &str = "sm__sz";
    /// Application channel of the blob.
    pub const CHANNEL: &str = "sm__ch";
    /// Application topic of the blob.
    pub const TOPIC: &str = "sm__tp";
    /// Payload encoding of the blob.
    pub const PAYLOAD_ENCODING: &str = "sm__pe";
    /// Stream request id correlating a streamed request and its streamed reply.
    pub const REQ_ID: &str = "sm__ri";
    /// Reliable mode.
    pub const RELIABLE: &str = "sm__rs";
    /// Optional (logging only).
    pub const OPTIONAL: &str = "sm__op";
    /// Sender chunk size.
    pub const CHUNK_SIZE: &str = "sm__cs";
    /// Sender window.
    pub const WINDOW: &str = "sm__ws";
    /// Error message.
    pub const ERROR_MSG: &str = "sm__em";
    /// Error class.
    pub const ERROR_TYPE: &str = "sm__et";
    /// The channel carrying every stream message.
    pub const STREAM_CHANNEL: &str = "sm__STREAM";
    /// Topic of data chunks.
    pub const TOPIC_DATA: &str = "sm__DATA";
    /// Topic of ACKs.
    pub const TOPIC_ACK: &str = "sm__ACK";
    /// Topic of errors (2.9).
    pub const TOPIC_ERROR: &str = "sm__ERROR";
    /// The channel of streamed replies.
    pub const RETURN_ONLY: &str = "return_only";
}

/// Where the [`Slot`] keys of `entries` lie.
fn slots_of(entries: &[(Key, Entry)]) -> Slots {
    let mut slots = Slots::default();
    for (at, (k, _)) in entries.iter().enumerate().take(MAX_NOTED) {
        // a key equal to a known one is always borrowed (`key`, `scan`)
        if let (Cow::Borrowed(k), Some((i, _))) = (k, known(k.as_bytes())) {
            debug_assert_eq!(KNOWN_KEYS[i], *k);
            slots.note(i, at);
        }
    }
    slots
}

/// An ordered header map with str keys and exact msgpack values.
///
/// Insertion order is kept (it is the order on the wire); [`Headers::insert`] replaces a key in
/// place. Unknown keys travel untouched.
///
/// A decoded map keeps the header block it came from: the whole block is checked when it is
/// decoded (as Python's `msgpack.unpackb` would check it), but a value becomes an
/// [`rmpv::Value`] only when it is asked for ([`Headers::get`], [`Headers::iter`], ...);
/// [`Headers::get_str`], [`Headers::get_bool`] and [`Headers::get_u64`] read it where it lies,
/// and a value never read or changed is written out again byte for byte. A message's ~20
/// `cn__*` values thus cost no allocation each.
#[derive(Clone, Default)]
pub struct Headers {
    entries: Vec<(Key, Entry)>,
    /// The header block the map was decoded from (empty for a map built here): the bytes of
    /// every [`Entry`] still as received.
    block: Bytes,
    /// Where the keys the cell reads from every message lie in `entries` (kept in step with
    /// them by every change), so that reading them is no walk.
    slots: Slots,
}

/// One value of a [`Headers`] map. Small (a map's entries are one allocation of about 1 KiB
/// for a CellNet message's 20 keys, in the allocator's thread cache): a received value is a
/// range of the block, and an [`rmpv::Value`] is boxed.
#[derive(Clone)]
struct Entry {
    /// Where the value's msgpack lies in the map's block while it is the value received
    /// (checked at decoding: reading it again cannot fail); `(0, 0)` for a value set here
    /// (a msgpack value is never empty).
    raw: (u32, u32),
    /// The value as an [`rmpv::Value`]: set for a value inserted here, made on first use for
    /// a received one.
    value: OnceLock<Box<Value>>,
}

impl Entry {
    fn new(v: Value) -> Entry {
        Entry {
            raw: (0, 0),
            value: OnceLock::from(Box::new(v)),
        }
    }

    fn received(start: usize, end: usize) -> Entry {
        Entry {
            // within a block whose length fits in a u32 (checked by `scan`)
            raw: (start as u32, end as u32),
            value: OnceLock::new(),
        }
    }

    /// The msgpack bytes of a received value.
    fn raw<'a>(&self, block: &'a [u8]) -> Option<&'a [u8]> {
        let (a, b) = self.raw;
        if a == b {
            return None;
        }
        Some(block.get(a as usize..b as usize).unwrap_or_default())
    }

    /// The value if it was made already (or set here).
    fn made(&self) -> Option<&Value> {
        self.value.get().map(|b| &**b)
    }

    /// The value, made from the received bytes the first time.
    fn value<'a>(&'a self, block: &[u8]) -> &'a Value {
        self.value.get_or_init(|| Box::new(self.decode(block)))
    }

    fn into_value(self, block: &[u8]) -> Value {
        match self.value.get() {
            Some(_) => self.value.into_inner().map_or(Value::Nil, |b| *b),
            None => self.decode(block),
        }
    }

    fn decode(&self, block: &[u8]) -> Value {
        let mut rd = self.raw(block).unwrap_or_default();
        // checked when the block was decoded; Nil only if that invariant were broken
        value::read(&mut rd).unwrap_or(Value::Nil)
    }
}

/// A value on its way into a header block ([`Headers::encodable`]): the bytes it was received
/// as, or its [`rmpv::Value`].
pub(crate) struct Encodable<'a>(EncodableInner<'a>);

enum EncodableInner<'a> {
    Raw(&'a [u8]),
    Value(&'a Value),
}

impl Encodable<'_> {
    /// Append the value's msgpack to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self.0 {
            EncodableInner::Raw(b) => out.extend_from_slice(b),
            // Writing to a Vec cannot fail.
            EncodableInner::Value(v) => drop(rmpv::encode::write_value(out, v)),
        }
    }
}

impl Headers {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Headers {
            entries: Vec::with_capacity(n),
            block: Bytes::new(),
            slots: Slots::default(),
        }
    }

    /// Make room for `n` more entries.
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve(n);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    /// The entry of a [`Slot`]'s key: the one [`Headers::entry`] finds, without the walk.
    fn entry_at(&self, s: Slot) -> Option<&Entry> {
        let e = match self.slots.get(s) {
            Some(i) => self.entries.get(i).map(|(_, e)| e),
            None if Slots::covers(self.entries.len()) => None,
            None => self.entry(s.key()),
        };
        debug_assert!(
            match (e, self.entry(s.key())) {
                (Some(a), Some(b)) => std::ptr::eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            },
            "slot {s:?} out of step"
        );
        e
    }

    /// The value of a [`Slot`]'s key if it is a str (as [`Headers::get_str`] of its key).
    pub(crate) fn str_at(&self, s: Slot) -> Option<&str> {
        self.str_of(self.entry_at(s)?)
    }

    /// The bytes of a [`Slot`]'s value if it is a str: `Some` exactly when [`Headers::str_at`]
    /// is, with the same bytes. A received str was checked for UTF-8 when its block was
    /// decoded; making it a `&str` checks it again (a `from_utf8` call, ~90 instructions for
    /// a header's short text), which a caller that only compares or parses it (the message
    /// type, a request id) need not pay.
    pub(crate) fn str_bytes_at(&self, s: Slot) -> Option<&[u8]> {
        let e = self.entry_at(s)?;
        match (e.made(), e.raw(&self.block)) {
            // Some exactly when `str_at` is: received strs are UTF-8 (checked by `scan`; a
            // block that broke that would make `str_at` None, and so this)
            (None, Some(raw)) => value::as_str_bytes(raw).filter(|b| {
                debug_assert!(std::str::from_utf8(b).is_ok(), "unchecked str in a block");
                b.is_ascii() || std::str::from_utf8(b).is_ok()
            }),
            _ => e.value(&self.block).as_str().map(str::as_bytes),
        }
    }

    /// The value of a [`Slot`]'s key if it is a bool (as [`Headers::get_bool`] of its key).
    pub(crate) fn bool_at(&self, s: Slot) -> Option<bool> {
        self.bool_of(self.entry_at(s)?)
    }

    /// The value of a [`Slot`]'s key (as [`Headers::get`] of its key).
    pub(crate) fn get_at(&self, s: Slot) -> Option<&Value> {
        self.entry_at(s).map(|e| e.value(&self.block))
    }

    /// The length of a [`Slot`]'s value if it is an array.
    pub(crate) fn array_len_at(&self, s: Slot) -> Option<usize> {
        self.array_len_of(self.entry_at(s)?)
    }

    fn str_of<'a>(&'a self, e: &'a Entry) -> Option<&'a str> {
        match (e.made(), e.raw(&self.block)) {
            (None, Some(raw)) => value::as_str(raw),
            _ => e.value(&self.block).as_str(),
        }
    }

    fn bool_of(&self, e: &Entry) -> Option<bool> {
        match (e.made(), e.raw(&self.block)) {
            (None, Some([0xc2])) => Some(false),
            (None, Some([0xc3])) => Some(true),
            (None, Some(_)) => None,
            _ => e.value(&self.block).as_bool(),
        }
    }

    fn array_len_of(&self, e: &Entry) -> Option<usize> {
        match (e.made(), e.raw(&self.block)) {
            (None, Some(raw)) => value::array_len(raw),
            _ => e.value(&self.block).as_array().map(Vec::len),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entry(key).map(|e| e.value(&self.block))
    }

    /// The value of `key` if it is a str.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.str_of(self.entry(key)?)
    }

    /// The value of `key` if it is a bool.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.bool_of(self.entry(key)?)
    }

    /// The value of `key` if it is a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        let e = self.entry(key)?;
        match (e.made(), e.raw(&self.block)) {
            // an integer is read without allocating; anything else is not one
            (None, Some(mut raw @ [0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff, ..])) => {
                value::read(&mut raw).ok()?.as_u64()
            }
            (None, Some(_)) => None,
            _ => e.value(&self.block).as_u64(),
        }
    }

    /// The length of the value of `key` if it is an array.
    #[cfg(test)]
    pub(crate) fn array_len(&self, key: &str) -> Option<usize> {
        self.array_len_of(self.entry(key)?)
    }

    /// Set `key`, replacing an existing value in place.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl Into<Value>) {
        let k = key.as_ref();
        let value = Entry::new(value.into());
        if let Some(slot) = self.entries.iter_mut().find(|(have, _)| have == k) {
            slot.1 = value;
        } else {
            let (k, known) = self::key(k);
            if let Some(i) = known {
                self.slots.note(i, self.entries.len());
            }
            self.entries.push((k, value));
        }
    }

    /// Remove `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        let e = self.entries.remove(i).1;
        self.slots = slots_of(&self.entries);
        Some(e.into_value(&self.block))
    }

    /// True if `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.entry(key).is_some()
    }

    /// Iterate in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries
            .iter()
            .map(|(k, e)| (k.as_ref(), e.value(&self.block)))
    }

    /// Iterate in wire order, each value as it would be encoded (without making received
    /// values into [`rmpv::Value`]s).
    pub(crate) fn encodable(&self) -> impl Iterator<Item = (&str, Encodable<'_>)> {
        self.entries.iter().map(|(k, e)| {
            let v = match (e.raw(&self.block), e.made()) {
                (Some(raw), _) => EncodableInner::Raw(raw),
                (None, Some(v)) => EncodableInner::Value(v),
                (None, None) => EncodableInner::Value(e.value(&self.block)),
            };
            (k.as_ref(), Encodable(v))
        })
    }

    /// Keep only the entries for which `f` returns true.
    pub fn retain(&mut self, mut f: impl FnMut(&str, &Value) -> bool) {
        let block = &self.block;
        self.entries.retain(|(k, e)| f(k, e.value(block)));
        self.slots = slots_of(&self.entries);
    }

    /// Copy every entry of `other` into `self` (replacing existing keys).
    pub fn extend_from(&mut self, other: &Headers) {
        for (k, v) in other.iter() {
            self.insert(k, v.clone());
        }
    }

    /// The map as an [`rmpv::Value`] (for `cn__original_headers`).
    pub fn to_value(&self) -> Value {
        Value::Map(
            self.iter()
                .map(|(k, v)| (Value::from(k), v.clone()))
                .collect(),
        )
    }

    /// Encode as a msgpack map.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 24);
        self.encode_into(&mut out);
        out
    }

    /// Append the msgpack map to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = rmp::encode::write_map_len(out, self.entries.len() as u32);
        for (k, v) in self.encodable() {
            let _ = rmp::encode::write_str(out, k);
            v.encode(out);
        }
    }

    /// Decode a msgpack map as Python's `msgpack.unpackb` defaults would accept it: a single
    /// map, str keys only, valid UTF-8 strings everywhere. An empty input is an empty map.
    ///
    /// The map keeps a copy of `buf` (made once it is known good);
    /// [`Headers::decode_bytes`] keeps the block itself.
    pub fn decode(buf: &[u8]) -> Result<Headers, CellnetError> {
        let (entries, slots) = scan(buf)?;
        Ok(Headers {
            entries,
            block: Bytes::copy_from_slice(buf),
            slots,
        })
    }

    /// Decode a msgpack map (see [`Headers::decode`]) that keeps `block` as the storage of
    /// its values: nothing is copied, and `block` (with whatever buffer it is a slice of)
    /// lives as long as the map or a clone of it.
    pub fn decode_bytes(block: Bytes) -> Result<Headers, CellnetError> {
        let (entries, slots) = scan(&block)?;
        Ok(Headers {
            entries,
            block,
            slots,
        })
    }
}

/// The entries of the header block `buf`, each value noted where it lies, and where the
/// [`Slot`] keys are among them.
///
/// The top-level map is read entry by entry straight from the block (every length checked
/// against the input, nesting bounded, strs checked for UTF-8, trailing bytes refused): known
/// keys and the values cost no allocation, and nothing is sized by what the input claims.
fn scan(buf: &[u8]) -> Result<(Vec<(Key, Entry)>, Slots), CellnetError> {
    let mut slots = Slots::default();
    if buf.is_empty() {
        return Ok((Vec::new(), slots));
    }
    let bad = |why: &str| CellnetError::Headers(why.to_string());
    if u32::try_from(buf.len()).is_err() {
        return Err(bad("header block larger than 4 GiB"));
    }
    let mut rd = buf;
    let n = value::map_len(&mut rd).map_err(|_| bad("header block is not a map"))?;
    // whatever `n` claims, the reservation is a small constant; a claim the input cannot
    // hold fails when its entries run out
    let mut entries = Vec::with_capacity(n.min(32));
    for _ in 0..n {
        let k = value::key(&mut rd).map_err(|e| match e {
            ReadError::NotStr => bad("header key is not a str"),
            e => CellnetError::Headers(e.to_string()),
        })?;
        // a known key is UTF-8 by being known; only another one is checked (and owned)
        let k: Key = match known(k) {
            Some((i, s)) => {
                if i < N_SLOTS {
                    slots.note(i, entries.len());
                }
                Cow::Borrowed(s)
            }
            None => match std::str::from_utf8(k) {
                Ok(s) => Cow::Owned(s.to_owned()),
                Err(_) => return Err(bad("header key is not UTF-8")),
            },
        };
        let start = buf.len() - rd.len();
        value::skip(&mut rd).map_err(|e| match e {
            ReadError::NotUtf8 => {
                CellnetError::Headers(format!("header {k:?} holds a str that is not UTF-8"))
            }
            e => CellnetError::Headers(format!("header {k:?}: {e}")),
        })?;
        let end = buf.len() - rd.len();
        entries.push((k, Entry::received(start, end)));
    }
    if !rd.is_empty() {
        return Err(CellnetError::Headers(format!(
            "{} trailing bytes after the msgpack value",
            rd.len()
        )));
    }
    Ok((entries, slots))
}

impl PartialEq for Headers {
    /// Same keys in the same order with equal values (however they were received).
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: Into<Value>> FromIterator<(K, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.insert(k, v);
        }
        h
    }
}

#[cfg(test)]
mod tests;
