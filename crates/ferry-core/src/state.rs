//! The opaque download state: a small map owned by the [`Downloadable`](crate::Downloadable).
//!
//! On the wire it is a msgpack map with string keys (NVFlare's `state` dict, e.g.
//! `{"received_bytes": n}` for files or `{"start": s, "count": c}` for cacheable objects). The
//! engine never interprets it; only objects do, through the typed accessors below which turn
//! hostile values (wrong type, negative, absurdly large) into a [`StateError`] instead of a panic.

use rmpv::Value;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a state value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The key holds a value of another type than expected.
    #[error("state key {key:?} has the wrong type (expected {expected})")]
    WrongType {
        /// The key.
        key: String,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// The key holds a negative integer where a count or offset was expected.
    #[error("state key {key:?} is negative ({value})")]
    Negative {
        /// The key.
        key: String,
        /// The value found.
        value: i64,
    },
    /// A required key is absent.
    #[error("state key {0:?} is missing")]
    Missing(String),
    /// The value is out of the range the object accepts.
    #[error("state key {key:?} = {value} is out of range ({why})")]
    OutOfRange {
        /// The key.
        key: String,
        /// The value found.
        value: u64,
        /// Why it is out of range.
        why: String,
    },
}

/// A download state: an ordered map from string keys to msgpack values.
///
/// Equality is by value: two states with the same keys and values are equal whatever the
/// order of their keys (the order matters only for the bytes on the wire).
#[derive(Clone, Debug, Default)]
pub struct State {
    entries: Vec<(String, Value)>,
}

impl State {
    /// An empty state (`{}` on the wire).
    pub fn new() -> Self {
        Self::default()
    }

    /// This state with `key` set to `value` (replacing an earlier value of the same key).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.set(key, value);
        self
    }

    /// Set `key` to `value`.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `key` as a non-negative integer: `Ok(None)` when absent (or nil), an error when it is of
    /// another type or negative.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, StateError> {
        match self.get(key) {
            None | Some(Value::Nil) => Ok(None),
            Some(Value::Integer(i)) => {
                if let Some(u) = i.as_u64() {
                    Ok(Some(u))
                } else {
                    Err(StateError::Negative {
                        key: key.to_string(),
                        value: i.as_i64().unwrap_or(i64::MIN),
                    })
                }
            }
            Some(_) => Err(StateError::WrongType {
                key: key.to_string(),
                expected: "a non-negative integer",
            }),
        }
    }

    /// `key` as a non-negative integer that must be present.
    pub fn require_u64(&self, key: &str) -> Result<u64, StateError> {
        self.get_u64(key)?
            .ok_or_else(|| StateError::Missing(key.to_string()))
    }

    /// Whether the state has no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        // Keys are unique (set() replaces, deserialization refuses duplicates), so equal
        // lengths plus every key of one found with an equal value in the other is equality.
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .all(|(k, v)| other.get(k).is_some_and(|o| o == v))
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StateVisitor;
        impl<'de> Visitor<'de> for StateVisitor {
            type Value = State;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with string keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<State, A::Error> {
                // Cap the pre-allocation: the size hint comes from the peer.
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if entries.iter().any(|(old, _): &(String, Value)| *old == k) {
                        return Err(de::Error::custom(format!("duplicate state key {k:?}")));
                    }
                    entries.push((k, v));
                }
                Ok(State { entries })
            }
        }
        deserializer.deserialize_map(StateVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_access_rejects_hostile_values() {
        let s = State::new()
            .with("ok", 5u64)
            .with("neg", -3i64)
            .with("str", "x")
            .with("nil", Value::Nil)
            .with("huge", u64::MAX);
        assert_eq!(s.get_u64("ok"), Ok(Some(5)));
        assert_eq!(s.get_u64("absent"), Ok(None));
        assert_eq!(s.get_u64("nil"), Ok(None));
        assert_eq!(s.get_u64("huge"), Ok(Some(u64::MAX)));
        assert!(matches!(
            s.get_u64("neg"),
            Err(StateError::Negative { value: -3, .. })
        ));
        assert!(matches!(
            s.get_u64("str"),
            Err(StateError::WrongType { .. })
        ));
        assert_eq!(
            s.require_u64("absent"),
            Err(StateError::Missing("absent".into()))
        );
    }

    #[test]
    fn equality_ignores_key_order() {
        let a = State::new().with("start", 0u64).with("count", 4u64);
        let b = State::new().with("count", 4u64).with("start", 0u64);
        assert_eq!(a, b);
        assert_ne!(a, State::new().with("start", 0u64));
        assert_ne!(a, State::new().with("start", 0u64).with("count", 5u64));
    }

    #[test]
    fn msgpack_form_is_a_plain_map() {
        let s = State::new().with("received_bytes", 1048576u64);
        let bytes = rmp_serde::to_vec_named(&s).unwrap();
        // fixmap(1) "received_bytes" uint32 1048576
        let mut want = vec![0x81, 0xae];
        want.extend_from_slice(b"received_bytes");
        want.extend_from_slice(&[0xce, 0x00, 0x10, 0x00, 0x00]);
        assert_eq!(bytes, want);
        let back: State = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn non_map_and_duplicate_keys_are_refused() {
        let arr = rmp_serde::to_vec(&vec![1, 2]).unwrap();
        assert!(rmp_serde::from_slice::<State>(&arr).is_err());
        // {"a":1,"a":2}
        let dup = [0x82, 0xa1, b'a', 0x01, 0xa1, b'a', 0x02];
        assert!(rmp_serde::from_slice::<State>(&dup).is_err());
        // {1: 2}: non-string key
        assert!(rmp_serde::from_slice::<State>(&[0x81, 0x01, 0x02]).is_err());
    }
}
