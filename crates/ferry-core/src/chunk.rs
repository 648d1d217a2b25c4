//! Chunk payloads: one `Bytes` (files) or a list of items (cacheable items), each item one
//! `Bytes` or, on a sender, the parts it is the concatenation of; on a sender a file chunk may
//! also be a region of the open file, read only when the reply is written.
//!
//! On the wire a chunk is a msgpack `bin` or an array of `bin`, exactly as NVFlare sends Python
//! `bytes` / `list[bytes]` — never an array of integers; the reply codec
//! ([`message::reply`](crate::message::reply)) writes and reads it.

use std::any::Any;
use std::fmt;
use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

/// The data of one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkData {
    /// A run of bytes (file chunks): msgpack `bin`.
    Bytes(Bytes),
    /// A list of items (cacheable objects, tensors): msgpack array of `bin`.
    Items(Vec<Bytes>),
    /// A list of items, each given as the parts it is the concatenation of: a sender's form
    /// that needs no copy to put an item together (a tensor item is its safetensors header
    /// followed by the tensor's own memory). On the wire exactly [`Items`](Self::Items); a
    /// received chunk is always `Items`.
    ItemParts(Vec<Vec<Bytes>>),
    /// A run of bytes still in a file: a sender's form that the connection writes straight
    /// from the file (`sendfile(2)` on plain TCP). On the wire exactly [`Bytes`](Self::Bytes);
    /// a received chunk is never `File`.
    File(FileChunk),
}

/// `len` bytes of an open file from `offset`, read when the reply is written.
///
/// The file must still hold them then: a file that shrank leaves the reply short, and the
/// connection carrying it is closed (the receiver retries or resumes). Whatever must live
/// until the bytes are written (a byte-budget permit) rides along as the owner.
#[derive(Clone)]
pub struct FileChunk {
    file: Arc<File>,
    offset: u64,
    len: usize,
    /// Kept alive, never looked at, until the chunk is written or dropped.
    owner: Option<Arc<dyn Any + Send + Sync>>,
}

impl FileChunk {
    /// `len` bytes of `file` from `offset`.
    pub fn new(file: Arc<File>, offset: u64, len: usize) -> Self {
        Self {
            file,
            offset,
            len,
            owner: None,
        }
    }

    /// The chunk, keeping `owner` alive (besides any owner it had) as long as it lives.
    pub fn with_owner(mut self, owner: impl Any + Send + Sync) -> Self {
        self.owner = Some(match self.owner.take() {
            Some(before) => Arc::new((before, owner)),
            None => Arc::new(owner),
        });
        self
    }

    /// The file.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Where the chunk starts in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty chunk.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What keeps the owner alive (to hand on to whatever writes the chunk).
    pub fn owner(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.owner.clone()
    }

    /// Read the chunk into memory; `UnexpectedEof` if the file no longer holds it.
    pub fn read(&self) -> std::io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; self.len];
        self.file.read_exact_at(&mut buf, self.offset)?;
        Ok(Bytes::from(buf))
    }
}

impl PartialEq for FileChunk {
    /// The same region of the same open file.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.offset == other.offset && self.len == other.len
    }
}

impl Eq for FileChunk {}

impl fmt::Debug for FileChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileChunk")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl ChunkData {
    /// Total number of payload bytes (summed over items), as NVFlare's byte accounting does.
    pub fn byte_len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::Items(items) => items.iter().map(|b| b.len() as u64).sum(),
            Self::ItemParts(items) => items.iter().flatten().map(|b| b.len() as u64).sum(),
            Self::File(f) => f.len() as u64,
        }
    }

    /// Number of items for a list chunk; `None` for raw bytes.
    pub fn item_count(&self) -> Option<usize> {
        match self {
            Self::Bytes(_) | Self::File(_) => None,
            Self::Items(items) => Some(items.len()),
            Self::ItemParts(items) => Some(items.len()),
        }
    }

    /// The same chunk with every item in one buffer: [`ItemParts`](Self::ItemParts) become
    /// [`Items`](Self::Items), copying each item of more than one part (what a consumer fed
    /// in-process by a sender's object sees; a received chunk is already `Items`). A
    /// [`File`](Self::File) chunk stays one: [`into_memory`](Self::into_memory) reads it.
    pub fn into_joined(self) -> Self {
        match self {
            Self::ItemParts(items) => Self::Items(items.into_iter().map(join).collect()),
            other => other,
        }
    }

    /// The same chunk as a received one looks: items joined, a file chunk read into
    /// [`Bytes`](Self::Bytes) (`UnexpectedEof` if the file no longer holds it).
    pub fn into_memory(self) -> std::io::Result<Self> {
        match self {
            Self::File(f) => f.read().map(Self::Bytes),
            other => Ok(other.into_joined()),
        }
    }
}

/// One buffer holding `parts` one after the other (no copy for a single part).
pub fn join(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut out = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in &parts {
                out.extend_from_slice(p);
            }
            Bytes::from(out)
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

    #[test]
    fn parted_items_count_like_items_and_join_into_them() {
        let parts = ChunkData::ItemParts(vec![
            vec![Bytes::from_static(b"he"), Bytes::from_static(b"llo")],
            vec![Bytes::from_static(b"x")],
            vec![],
        ]);
        assert_eq!(parts.byte_len(), 6);
        assert_eq!(parts.item_count(), Some(3));
        assert_eq!(
            parts.into_joined(),
            ChunkData::Items(vec![
                Bytes::from_static(b"hello"),
                Bytes::from_static(b"x"),
                Bytes::new()
            ])
        );
        let single = Bytes::from(vec![7u8; 64]);
        let ptr = single.as_ptr();
        let ChunkData::Items(joined) = ChunkData::ItemParts(vec![vec![single]]).into_joined()
        else {
            panic!("joined into items");
        };
        assert_eq!(joined[0].as_ptr(), ptr, "a single part is not copied");
    }
}
