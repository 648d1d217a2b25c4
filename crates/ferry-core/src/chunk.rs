//! Chunk payloads: one `Bytes` (files) or a list of `Bytes` (cacheable items).
//!
//! On the wire a chunk is a msgpack `bin` or an array of `bin`, exactly as NVFlare sends Python
//! `bytes` / `list[bytes]` — never an array of integers; the reply codec
//! ([`message::reply`](crate::message::reply)) writes and reads it.

use bytes::Bytes;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_count_payload_bytes_and_items() {
        let items = ChunkData::Items(vec![Bytes::from_static(b"a"), Bytes::from_static(b"")]);
        assert_eq!(items.byte_len(), 1);
        assert_eq!(items.item_count(), Some(2));
        let bytes = ChunkData::Bytes(Bytes::from_static(b"xy"));
        assert_eq!(bytes.byte_len(), 2);
        assert_eq!(bytes.item_count(), None);
    }
}
