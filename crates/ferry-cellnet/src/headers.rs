//! The msgpack header map of a CellNet message (f3-wire.md §2.2, §4.2): an ordered map of str
//! keys to msgpack values that keeps unknown keys and their exact msgpack types.

use rmpv::Value;

use crate::error::CellnetError;
use crate::msgpack;

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

/// An ordered header map with str keys and exact msgpack values.
///
/// Insertion order is kept (it is the order on the wire); [`Headers::insert`] replaces a key in
/// place. Unknown keys travel untouched.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers {
    entries: Vec<(String, Value)>,
}

impl Headers {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
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
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.entries.push((key, value));
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
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
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
                .map(|(k, v)| (Value::from(k.as_str()), v.clone()))
                .collect(),
        )
    }

    /// Encode as a msgpack map.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 24);
        // Writing to a Vec cannot fail.
        let _ = rmp::encode::write_map_len(&mut out, self.entries.len() as u32);
        for (k, v) in &self.entries {
            let _ = rmp::encode::write_str(&mut out, k);
            let _ = rmpv::encode::write_value(&mut out, v);
        }
        out
    }

    /// Decode a msgpack map as Python's `msgpack.unpackb` defaults would accept it: a single
    /// map, str keys only, valid UTF-8 strings everywhere. An empty input is an empty map.
    pub fn decode(buf: &[u8]) -> Result<Headers, CellnetError> {
        if buf.is_empty() {
            return Ok(Headers::new());
        }
        // headers are at most 64 KiB, so the node bound is the input length
        let v = msgpack::decode_value(buf, buf.len()).map_err(CellnetError::Headers)?;
        let Value::Map(entries) = v else {
            return Err(CellnetError::Headers("header block is not a map".into()));
        };
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let Value::String(k) = k else {
                return Err(CellnetError::Headers("header key is not a str".into()));
            };
            let Some(k) = k.into_str() else {
                return Err(CellnetError::Headers("header key is not UTF-8".into()));
            };
            if !valid_utf8(&v) {
                return Err(CellnetError::Headers(format!(
                    "header {k:?} holds a str that is not UTF-8"
                )));
            }
            out.push((k, v));
        }
        Ok(Headers { entries: out })
    }
}

fn valid_utf8(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_str(),
        Value::Array(a) => a.iter().all(valid_utf8),
        Value::Map(m) => m.iter().all(|(k, v)| valid_utf8(k) && valid_utf8(v)),
        _ => true,
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.insert(k, v);
        }
        h
    }
}

#[cfg(test)]
mod tests {
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
}
