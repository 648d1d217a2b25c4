//! The msgpack header map of a CellNet message (f3-wire.md §2.2, §4.2): an ordered map of str
//! keys to msgpack values that keeps unknown keys and their exact msgpack types.

use std::borrow::Cow;

use rmpv::Value;

use crate::error::CellnetError;
use value::ReadError;

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

/// A header key: one of the keys CellNet and the stream protocol write ([`KNOWN_KEYS`]) is a
/// `&'static str`, anything else owns its text. A message carries about twenty `cn__*`/`sm__*`
/// keys each way; borrowing them saves an allocation and a free per key per message.
type Key = Cow<'static, str>;

/// Every `cn__*` and `sm__*` key NVFlare 2.9 writes (f3-wire.md §2.2, §4.2), those this crate
/// writes among them. Only used to avoid allocating keys: a key not listed is kept as well.
const KNOWN_KEYS: &[&str] = &[
    keys::MSG_TYPE,
    keys::ORIGIN,
    keys::DESTINATION,
    keys::FROM,
    keys::TO,
    keys::CHANNEL,
    keys::TOPIC,
    keys::REQ_ID,
    keys::REPLY_EXPECTED,
    keys::RETURN_CODE,
    keys::ERROR,
    keys::PAYLOAD_ENCODING,
    keys::PAYLOAD_LEN,
    keys::ROUTE,
    keys::SEND_TIME,
    keys::SECURE,
    keys::OPTIONAL,
    keys::ORIGINAL_HEADERS,
    keys::RETURN_REASON,
    keys::ENCRYPTED,
    "cn__clear_payload_len",
    "cn__conn_url",
    "cn__pass_through",
    "cn__server_transit_required",
    stream_keys::ID,
    stream_keys::SEQ,
    stream_keys::DATA_TYPE,
    stream_keys::OFFSET,
    stream_keys::SIZE,
    stream_keys::CHANNEL,
    stream_keys::TOPIC,
    stream_keys::PAYLOAD_ENCODING,
    stream_keys::REQ_ID,
    stream_keys::RELIABLE,
    stream_keys::OPTIONAL,
    stream_keys::CHUNK_SIZE,
    stream_keys::WINDOW,
    stream_keys::ERROR_MSG,
    stream_keys::ERROR_TYPE,
    "sm__ai",
    "sm__fd",
    "sm__rt",
    "sm__rw",
];

/// `k` as a [`Key`]: borrowed from [`KNOWN_KEYS`] if it is one of them, else owned.
fn key(k: &str) -> Key {
    let known = if k.starts_with("cn__") || k.starts_with("sm__") {
        KNOWN_KEYS.iter().find(|&&s| s == k)
    } else {
        None
    };
    match known {
        Some(&s) => Cow::Borrowed(s),
        None => Cow::Owned(k.to_owned()),
    }
}

/// An ordered header map with str keys and exact msgpack values.
///
/// Insertion order is kept (it is the order on the wire); [`Headers::insert`] replaces a key in
/// place. Unknown keys travel untouched.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers {
    entries: Vec<(Key, Value)>,
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

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of `key` if it is a str.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The value of `key` if it is a bool.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    /// The value of `key` if it is a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// Set `key`, replacing an existing value in place.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl Into<Value>) {
        let k = key.as_ref();
        let value = value.into();
        if let Some(slot) = self.entries.iter_mut().find(|(have, _)| have == k) {
            slot.1 = value;
        } else {
            self.entries.push((self::key(k), value));
        }
    }

    /// Remove `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// True if `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Iterate in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Keep only the entries for which `f` returns true.
    pub fn retain(&mut self, mut f: impl FnMut(&str, &Value) -> bool) {
        self.entries.retain(|(k, v)| f(k, v));
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
            self.entries
                .iter()
                .map(|(k, v)| (Value::from(k.as_ref()), v.clone()))
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
        for (k, v) in &self.entries {
            let _ = rmp::encode::write_str(out, k);
            let _ = rmpv::encode::write_value(out, v);
        }
    }

    /// Decode a msgpack map as Python's `msgpack.unpackb` defaults would accept it: a single
    /// map, str keys only, valid UTF-8 strings everywhere. An empty input is an empty map.
    ///
    /// The top-level map is read entry by entry straight from the slice (`headers::value`: every
    /// length checked against the input, nesting bounded, trailing bytes refused), so no map
    /// of `Value` keys is built to be taken apart again, known keys cost no allocation and
    /// each str or bin one of its size.
    pub fn decode(buf: &[u8]) -> Result<Headers, CellnetError> {
        if buf.is_empty() {
            return Ok(Headers::new());
        }
        let bad = |why: &str| CellnetError::Headers(why.to_string());
        let mut rd = buf;
        let n = value::map_len(&mut rd).map_err(|_| bad("header block is not a map"))?;
        // whatever `n` claims, the reservation is a small constant; a claim the input cannot
        // hold fails when its entries run out
        let mut entries = Vec::with_capacity(n.min(32));
        for _ in 0..n {
            let k = value::key(&mut rd).map_err(|e| match e {
                ReadError::NotStr => bad("header key is not a str"),
                ReadError::NotUtf8 => bad("header key is not UTF-8"),
                e => CellnetError::Headers(e.to_string()),
            })?;
            let v = value::read(&mut rd).map_err(|e| match e {
                ReadError::NotUtf8 => {
                    CellnetError::Headers(format!("header {k:?} holds a str that is not UTF-8"))
                }
                e => CellnetError::Headers(format!("header {k:?}: {e}")),
            })?;
            entries.push((key(k), v));
        }
        if !rd.is_empty() {
            return Err(CellnetError::Headers(format!(
                "{} trailing bytes after the msgpack value",
                rd.len()
            )));
        }
        Ok(Headers { entries })
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
