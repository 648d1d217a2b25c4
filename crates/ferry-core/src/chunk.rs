//! Chunk payloads: one `Bytes` (files) or a list of `Bytes` (cacheable items).
//!
//! On the wire a chunk is a msgpack `bin` or an array of `bin`, exactly as NVFlare sends Python
//! `bytes` / `list[bytes]` — never an array of integers.

use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The data of one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkData {
    /// A run of bytes (file chunks): msgpack `bin`.
    Bytes(Bytes),
    /// A list of items (cacheable objects, tensors): msgpack array of `bin`.
    Items(Vec<Bytes>),
}

impl ChunkData {
    /// Total number of payload bytes (summed over items), as NVFlare's byte accounting does.
    pub fn byte_len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::Items(items) => items.iter().map(|b| b.len() as u64).sum(),
        }
    }

    /// Number of items for a list chunk; `None` for raw bytes.
    pub fn item_count(&self) -> Option<usize> {
        match self {
            Self::Bytes(_) => None,
            Self::Items(items) => Some(items.len()),
        }
    }
}

impl Serialize for ChunkData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Bytes(b) => serializer.serialize_bytes(b),
            Self::Items(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for it in items {
                    seq.serialize_element(&serde_bytes_ref(it))?;
                }
                seq.end()
            }
        }
    }
}

/// Serialize a `Bytes` as `bin` (serde's `bytes` path) without depending on `serde_bytes`.
fn serde_bytes_ref(b: &Bytes) -> impl Serialize + '_ {
    struct AsBin<'a>(&'a [u8]);
    impl Serialize for AsBin<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    AsBin(b)
}

impl<'de> Deserialize<'de> for ChunkData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChunkVisitor;
        impl<'de> Visitor<'de> for ChunkVisitor {
            type Value = ChunkData;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes or a list of bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ChunkData, E> {
                Ok(ChunkData::Bytes(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ChunkData, E> {
                Ok(ChunkData::Bytes(Bytes::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ChunkData, A::Error> {
                // The size hint comes from the peer: cap the pre-allocation.
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(item) = seq.next_element::<ItemBytes>()? {
                    items.push(item.0);
                }
                Ok(ChunkData::Items(items))
            }
        }
        deserializer.deserialize_any(ChunkVisitor)
    }
}

/// One list element: must be `bin` (a list of integers is refused).
struct ItemBytes(Bytes);

impl<'de> Deserialize<'de> for ItemBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ItemBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ItemBytes, E> {
                Ok(ItemBytes(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ItemBytes, E> {
                Ok(ItemBytes(Bytes::from(v)))
            }
        }
        deserializer.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_msgpack_bin() {
        let c = ChunkData::Bytes(Bytes::from_static(b"xy"));
        assert_eq!(
            rmp_serde::to_vec_named(&c).unwrap(),
            vec![0xc4, 0x02, b'x', b'y']
        );
        let items = ChunkData::Items(vec![Bytes::from_static(b"a"), Bytes::from_static(b"")]);
        let enc = rmp_serde::to_vec_named(&items).unwrap();
        assert_eq!(enc, vec![0x92, 0xc4, 0x01, b'a', 0xc4, 0x00]);
        assert_eq!(rmp_serde::from_slice::<ChunkData>(&enc).unwrap(), items);
        assert_eq!(
            rmp_serde::from_slice::<ChunkData>(&[0xc4, 0x02, b'x', b'y']).unwrap(),
            c
        );
        assert_eq!(items.byte_len(), 1);
        assert_eq!(items.item_count(), Some(2));
    }

    #[test]
    fn integer_lists_and_strings_are_refused() {
        assert!(rmp_serde::from_slice::<ChunkData>(&[0x92, 0x01, 0x02]).is_err());
        assert!(rmp_serde::from_slice::<ChunkData>(&[0xa1, b'x']).is_err());
    }
}
