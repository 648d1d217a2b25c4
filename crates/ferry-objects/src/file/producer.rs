//! The file producer.

use super::digest_cache::{self, DigestKey};
use super::nowait::{read_exact_at_nowait, NoWait};
use crate::buffer_pool::BufferPool;
use crate::byte_state::{parse_byte_request, state_after, ByteRequest};
use crate::{ObjectsError, DEFAULT_CHUNK_SIZE};
use ferry_core::{
    ChunkData, Downloadable, ExpectedReceivers, FileChunk, PlanLayout, ProduceError, Produced,
    RefId, State, TransferPlan, TxId,
};
use std::fs::{File, Metadata};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// Builds a [`FileObject`].
#[derive(Debug, Clone)]
pub struct FileObjectBuilder {
    path: PathBuf,
    chunk_size: u64,
    digest: bool,
    file_chunks: bool,
}

impl FileObjectBuilder {
    /// Chunk size in bytes (1 ..= [`MAX_CHUNK_SIZE`](crate::MAX_CHUNK_SIZE)); default
    /// [`DEFAULT_CHUNK_SIZE`].
    pub fn chunk_size(mut self, chunk_size: u64) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// Compute the file's BLAKE3 digest at construction (one full read) and advertise it in the
    /// plan, so ferry receivers verify the whole file. Off by default. The digest is remembered
    /// for the life of the process, keyed by device, inode, size, modification and
    /// status-change time: opening the unchanged file again (for another transaction) does not
    /// read it again.
    pub fn digest(mut self, on: bool) -> Self {
        self.digest = on;
        self
    }

    /// Produce chunks as regions of the open file ([`ChunkData::File`]) instead of reading
    /// them into buffers: for a service whose connections send a file region straight from
    /// the file (plain TCP, `sendfile(2)`), where the sender then never copies the bytes. Over
    /// a connection that cannot (TLS) a region is still sent, read in pieces as it is written,
    /// so leave this off there. Off by default.
    ///
    /// The file is checked against the size and modification time seen at construction
    /// when each chunk is produced, not after its bytes were read: a file that shrinks later
    /// cuts the reply short and the connection is closed (the receiver resumes or fails with
    /// a clear error); a change of the same size in place between produce and send is caught
    /// only by the receiver's check of the digest ([`digest`](Self::digest)).
    pub fn file_chunks(mut self, on: bool) -> Self {
        self.file_chunks = on;
        self
    }

    /// Open the file and build the object.
    pub fn open(self) -> Result<FileObject, ObjectsError> {
        crate::check_chunk_size(self.chunk_size)?;
        let file = File::open(&self.path)
            .map_err(|e| ObjectsError::io(format!("opening {}", self.path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| ObjectsError::io(format!("stat {}", self.path.display()), e))?;
        if !meta.is_file() {
            return Err(ObjectsError::InvalidOption(format!(
                "{} is not a regular file",
                self.path.display()
            )));
        }
        let identity = FileIdentity::of(&meta);
        let key = DigestKey::of(&meta);
        let cached = self
            .digest
            .then(|| key.as_ref().and_then(digest_cache::get))
            .flatten();
        let digest_cached = cached.is_some();
        let digest = if let Some(d) = cached {
            Some(d)
        } else if self.digest {
            let d = hash_file(&file, identity.size)
                .map_err(|e| ObjectsError::io(format!("hashing {}", self.path.display()), e))?;
            let after = file
                .metadata()
                .map_err(|e| ObjectsError::io(format!("stat {}", self.path.display()), e))?;
            if FileIdentity::of(&after) != identity || DigestKey::of(&after) != key {
                return Err(ObjectsError::io(
                    format!("hashing {}", self.path.display()),
                    std::io::Error::other("the file changed while its digest was computed"),
                ));
            }
            if let Some(key) = key {
                digest_cache::put(key, &d);
            }
            Some(d)
        } else {
            None
        };
        tracing::debug!(path = %self.path.display(), size = identity.size, chunk = self.chunk_size, digest = ?digest, digest_cached, "file object opened");
        Ok(FileObject {
            path: self.path,
            file: RwLock::new(Some(Arc::new(file))),
            file_chunks: self.file_chunks,
            identity,
            chunk_size: self.chunk_size,
            digest,
            // Keep up to ~16 MiB of idle buffers (at least one): enough to recycle the chunks
            // in flight at a steady pace without holding memory for huge chunk sizes.
            pool: BufferPool::new(((16u64 << 20) / self.chunk_size).clamp(1, 16) as usize),
            nowait_unsupported: AtomicBool::new(false),
            digest_cached,
        })
    }
}

/// Size and modification time: what must not change while the file is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    size: u64,
    mtime: Option<SystemTime>,
}

impl FileIdentity {
    fn of(meta: &Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime: meta.modified().ok(),
        }
    }
}

fn hash_file(file: &File, size: u64) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; (1 << 20).min(size.max(1) as usize)];
    let mut off = 0u64;
    while off < size {
        let n = buf.len().min((size - off) as usize);
        file.read_exact_at(&mut buf[..n], off)?;
        hasher.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// A file served with NVFlare's file state `{"received_bytes": n}`.
///
/// Chunks are read with `pread` from one handle opened at construction (no reopen per chunk)
/// into a pooled buffer frozen into `Bytes` (returned to the pool once written), or, built
/// with [`file_chunks(true)`](FileObjectBuilder::file_chunks), handed out unread as regions of
/// the handle for the connection to send from the file. After each read the handle is checked against the
/// size and modification time seen at construction: a file that changed fails the download
/// with a logical `error` status rather than sending mixed content. The object advertises a
/// [`PlanLayout::Bytes`] plan (size, chunk size and, if built with
/// [`digest(true)`](FileObjectBuilder::digest), the BLAKE3 digest).
#[derive(Debug)]
pub struct FileObject {
    path: PathBuf,
    /// `None` after release; a read lock per produce lets receivers read concurrently.
    /// Shared with the file chunks in flight, which the connections send from it.
    file: RwLock<Option<Arc<File>>>,
    /// Chunks are regions of `file`, not buffers (see [`FileObjectBuilder::file_chunks`]).
    file_chunks: bool,
    identity: FileIdentity,
    chunk_size: u64,
    digest: Option<String>,
    /// Chunk buffers, reused once the connection has written them.
    pool: BufferPool,
    /// Set once `RWF_NOWAIT` reads were refused: every chunk then goes through `produce`.
    pub(super) nowait_unsupported: AtomicBool,
    /// The digest came from this process's cache of digests (no read of the file).
    digest_cached: bool,
}

impl FileObject {
    /// Open `path` with default options ([`DEFAULT_CHUNK_SIZE`], no digest).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ObjectsError> {
        Self::builder(path).open()
    }

    /// A builder for `path`.
    pub fn builder(path: impl AsRef<Path>) -> FileObjectBuilder {
        FileObjectBuilder {
            path: path.as_ref().to_path_buf(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            digest: false,
            file_chunks: false,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file size seen at construction.
    pub fn size(&self) -> u64 {
        self.identity.size
    }

    /// The chunk size.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The BLAKE3 digest (hex), if computed.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Whether the digest came from this process's memory of unchanged files rather than from
    /// reading the file (see [`FileObjectBuilder::digest`]).
    pub fn digest_was_cached(&self) -> bool {
        self.digest_cached
    }

    /// Produce the chunk after `state`. `None` only in [`ReadMode::NoWait`], when the read
    /// would have waited for the disk.
    fn produce_with(
        &self,
        state: Option<&State>,
        requester: &str,
        mode: ReadMode,
    ) -> Option<Result<Produced, ProduceError>> {
        let guard = self.file.read().unwrap_or_else(|p| p.into_inner());
        let Some(file) = guard.as_ref() else {
            return Some(Err(ProduceError(format!(
                "file {} requested after release",
                self.path.display()
            ))));
        };
        let (offset, len) = match parse_byte_request(state, self.identity.size, self.chunk_size) {
            Err(reason) => {
                tracing::warn!(requester, path = %self.path.display(), %reason, "bad file request");
                return Some(Ok(Produced::Invalid { reason }));
            }
            Ok(ByteRequest::Eof) => return Some(Ok(Produced::Eof)),
            Ok(ByteRequest::Read { offset, len }) => (offset, len),
        };
        if self.file_chunks {
            return Some(self.file_chunk(file, offset, len));
        }
        // len <= chunk_size <= MAX_CHUNK_SIZE, so it fits a usize.
        let mut buf = self.pool.take(len as usize);
        let read = match mode {
            ReadMode::Blocking => file.read_exact_at(&mut buf, offset),
            ReadMode::NoWait => match read_exact_at_nowait(file, &mut buf, offset) {
                NoWait::Done(r) => r,
                NoWait::WouldBlock => {
                    self.pool.recycle(buf);
                    return None;
                }
                NoWait::Unsupported => {
                    self.nowait_unsupported.store(true, Ordering::Relaxed);
                    self.pool.recycle(buf);
                    return None;
                }
            },
        };
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Some(Ok(self.changed("it became shorter while being served")));
            }
            Err(e) => {
                return Some(Err(ProduceError(format!(
                    "reading {} bytes at {offset} of {}: {e}",
                    len,
                    self.path.display()
                ))))
            }
        }
        // Checked after the read: a change before or during it shows in size or mtime.
        let now = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(ProduceError(format!(
                    "stat {}: {e}",
                    self.path.display()
                ))))
            }
        };
        if FileIdentity::of(&now) != self.identity {
            return Some(Ok(self.changed("its size or modification time changed")));
        }
        Some(Ok(Produced::Data {
            data: ChunkData::Bytes(self.pool.freeze(buf)),
            state: state_after(offset + len),
        }))
    }
}

/// Chunks up to this size may be read on an async thread when cached: copying 4 MiB from the
/// page cache takes a few hundred microseconds, about what a thread hand-off costs in
/// context switches. Bigger chunks always go to the blocking pool.
const INLINE_READ_MAX: u64 = 4 << 20;

/// How [`FileObject::produce_with`] may read.
#[derive(Debug, Clone, Copy)]
enum ReadMode {
    /// Wait for the disk if need be (on a thread that may block).
    Blocking,
    /// Only what the page cache holds (on an async thread).
    NoWait,
}

impl Downloadable for FileObject {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        self.produce_with(state, requester, ReadMode::Blocking)
            .unwrap_or_else(|| Err(ProduceError("a blocking read did not complete".into())))
    }

    /// A chunk whose bytes are all in the page cache is read at once (`preadv2` with
    /// `RWF_NOWAIT`); anything that would wait for the disk is left to `produce`.
    fn try_produce_now(
        &self,
        state: Option<&State>,
        requester: &str,
    ) -> Option<Result<Produced, ProduceError>> {
        if self.file_chunks {
            // nothing is read: a region is made at once whatever its size
            return self.produce_with(state, requester, ReadMode::Blocking);
        }
        if self.chunk_size > INLINE_READ_MAX || self.nowait_unsupported.load(Ordering::Relaxed) {
            return None;
        }
        self.produce_with(state, requester, ReadMode::NoWait)
    }

    fn plan(&self) -> Option<TransferPlan> {
        Some(TransferPlan {
            layout: PlanLayout::Bytes {
                total: self.identity.size,
                chunk: self.chunk_size,
            },
            total_bytes: Some(self.identity.size),
            blake3: self.digest.clone(),
        })
    }

    fn set_transaction(&self, tx_id: &TxId, ref_id: &RefId, _receivers: &ExpectedReceivers) {
        tracing::debug!(%tx_id, %ref_id, path = %self.path.display(), "file added to transaction");
    }

    fn release(&self) {
        *self.file.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.pool.clear();
    }
}

impl FileObject {
    /// The chunk at `offset` as a region of the open file (nothing is read): checked against
    /// the file's size and modification time now; a change after this shows when the
    /// connection sends it (see [`FileObjectBuilder::file_chunks`]).
    fn file_chunk(
        &self,
        file: &Arc<File>,
        offset: u64,
        len: u64,
    ) -> Result<Produced, ProduceError> {
        let now = file
            .metadata()
            .map_err(|e| ProduceError(format!("stat {}: {e}", self.path.display())))?;
        if FileIdentity::of(&now) != self.identity {
            return Ok(self.changed("its size or modification time changed"));
        }
        Ok(Produced::Data {
            // len <= chunk_size <= MAX_CHUNK_SIZE, so it fits a usize.
            data: ChunkData::File(FileChunk::new(Arc::clone(file), offset, len as usize)),
            state: state_after(offset + len),
        })
    }

    fn changed(&self, what: &str) -> Produced {
        let reason = format!(
            "file {} changed while being downloaded: {what}",
            self.path.display()
        );
        tracing::error!(%reason);
        Produced::Error { reason }
    }
}
