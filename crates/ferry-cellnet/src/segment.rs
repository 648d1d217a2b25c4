//! Payload segments of an outgoing frame: bytes in memory, or a region of an open file that
//! the writer puts on the socket itself — with `sendfile(2)` on plain TCP (no copy through
//! user space), read and written in small pieces on transports that cannot (TLS, inproc).
//!
//! A region is read when it is written, not when the frame is built: a file that shrinks in
//! between leaves the frame short, and the writer closes the connection rather than send a
//! frame whose length lies (the receiver sees the connection drop mid-frame and retries).

use std::any::Any;
use std::fmt;
use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

/// In-memory segments as payload segments.
pub(crate) fn in_memory(b: Vec<Bytes>) -> Vec<Segment> {
    b.into_iter().map(Segment::Bytes).collect()
}

/// Segments as bytes in memory, file regions read off the runtime's threads (for what must
/// cut a payload into pieces: the byte-stream protocol). `UnexpectedEof` if a file no
/// longer holds its region.
pub(crate) async fn read_into_memory(segs: Vec<Segment>) -> std::io::Result<Vec<Bytes>> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        out.push(match s {
            Segment::Bytes(b) => b,
            Segment::File(r) => tokio::task::spawn_blocking(move || r.read())
                .await
                .map_err(std::io::Error::other)??,
        });
    }
    Ok(out)
}

/// One payload segment of an [`OutFrame`](crate::frame::OutFrame); the segments are
/// concatenated on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Bytes in memory, written with vectored I/O.
    Bytes(Bytes),
    /// A region of a file, written from the file when the frame is written.
    File(FileRegion),
}

impl Segment {
    /// Length on the wire.
    pub fn len(&self) -> usize {
        match self {
            Segment::Bytes(b) => b.len(),
            Segment::File(r) => r.len(),
        }
    }

    /// True if the segment puts nothing on the wire.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, if the segment is in memory.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Segment::Bytes(b) => Some(b),
            Segment::File(_) => None,
        }
    }
}

impl From<Bytes> for Segment {
    fn from(b: Bytes) -> Self {
        Segment::Bytes(b)
    }
}

impl From<FileRegion> for Segment {
    fn from(r: FileRegion) -> Self {
        Segment::File(r)
    }
}

/// `len` bytes of an open file from `offset`, sent when the frame carrying it is written.
///
/// Whatever must live until the bytes are on the socket (a byte-budget permit, a lease on
/// the file) can ride along as the region's owner: it is dropped with the last clone of the
/// region, after the writer has written it or dropped the frame.
#[derive(Clone)]
pub struct FileRegion {
    file: Arc<File>,
    offset: u64,
    len: usize,
    /// Kept alive, never looked at, until the region is written or dropped.
    owner: Option<Arc<dyn Any + Send + Sync>>,
}

impl FileRegion {
    /// `len` bytes of `file` from `offset`. Nothing is read now: the file must still hold
    /// them when the frame is written, or the connection is closed.
    pub fn new(file: Arc<File>, offset: u64, len: usize) -> FileRegion {
        FileRegion {
            file,
            offset,
            len,
            owner: None,
        }
    }

    /// The region, keeping `owner` alive (besides any owner it had) until it is written or
    /// dropped.
    pub fn with_owner(mut self, owner: impl Any + Send + Sync) -> FileRegion {
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

    /// Where the region starts in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the region.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The region without its first `n` bytes (`n` at most its length).
    pub(crate) fn advance(&mut self, n: usize) {
        let n = n.min(self.len);
        self.offset += n as u64;
        self.len -= n;
    }

    /// Read the whole region into memory (tests, and frames that must be copied anyway).
    /// Fails with `UnexpectedEof` if the file no longer holds it.
    pub fn read(&self) -> std::io::Result<Bytes> {
        let mut buf = vec![0u8; self.len];
        read_exact_at(&self.file, &mut buf, self.offset)?;
        Ok(Bytes::from(buf))
    }
}

impl PartialEq for FileRegion {
    /// The same region of the same open file.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.offset == other.offset && self.len == other.len
    }
}

impl Eq for FileRegion {}

impl fmt::Debug for FileRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRegion")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("owned", &self.owner.is_some())
            .finish_non_exhaustive()
    }
}

/// Fill `buf` from `file` at `offset`; `UnexpectedEof` if the file ends first (it shrank).
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset).map_err(shrank)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match file.seek_read(&mut buf[done..], offset + done as u64) {
                Ok(0) => return Err(shrank(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A short read of a region as the error to report: the file shrank after the frame was built.
pub(crate) fn shrank(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file ended before the region being sent (it shrank after the frame was built)",
        )
    } else {
        e
    }
}
