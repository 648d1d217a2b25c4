//! The file producer.

use crate::buffer_pool::BufferPool;
use crate::byte_state::{parse_byte_request, state_after, ByteRequest};
use crate::{ObjectsError, DEFAULT_CHUNK_SIZE};
use ferry_core::{
    ChunkData, Downloadable, PlanLayout, ProduceError, Produced, RefId, State, TransferPlan, TxId,
};
use std::fs::{File, Metadata};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

/// Builds a [`FileObject`].
#[derive(Debug, Clone)]
pub struct FileObjectBuilder {
    path: PathBuf,
    chunk_size: u64,
    digest: bool,
}

impl FileObjectBuilder {
    /// Chunk size in bytes (1 ..= [`MAX_CHUNK_SIZE`](crate::MAX_CHUNK_SIZE)); default
    /// [`DEFAULT_CHUNK_SIZE`].
    pub fn chunk_size(mut self, chunk_size: u64) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// Compute the file's BLAKE3 digest at construction (one full read) and advertise it in the
    /// plan, so ferry receivers verify the whole file. Off by default.
    pub fn digest(mut self, on: bool) -> Self {
        self.digest = on;
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
        let digest = if self.digest {
            let d = hash_file(&file, identity.size)
                .map_err(|e| ObjectsError::io(format!("hashing {}", self.path.display()), e))?;
            let after = file
                .metadata()
                .map_err(|e| ObjectsError::io(format!("stat {}", self.path.display()), e))?;
            if FileIdentity::of(&after) != identity {
                return Err(ObjectsError::io(
                    format!("hashing {}", self.path.display()),
                    std::io::Error::other("the file changed while its digest was computed"),
                ));
            }
            Some(d)
        } else {
            None
        };
        tracing::debug!(path = %self.path.display(), size = identity.size, chunk = self.chunk_size, digest = ?digest, "file object opened");
        Ok(FileObject {
            path: self.path,
            file: RwLock::new(Some(file)),
            identity,
            chunk_size: self.chunk_size,
            digest,
            // Keep up to ~16 MiB of idle buffers (at least one): enough to recycle the chunks
            // in flight at a steady pace without holding memory for huge chunk sizes.
            pool: BufferPool::new(((16u64 << 20) / self.chunk_size).clamp(1, 16) as usize),
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
/// into a pooled buffer frozen into `Bytes` (returned to the pool once written). After each read the handle is checked against the
/// size and modification time seen at construction: a file that changed fails the download
/// with a logical `error` status rather than sending mixed content. The object advertises a
/// [`PlanLayout::Bytes`] plan (size, chunk size and, if built with
/// [`digest(true)`](FileObjectBuilder::digest), the BLAKE3 digest).
#[derive(Debug)]
pub struct FileObject {
    path: PathBuf,
    /// `None` after release; a read lock per produce lets receivers read concurrently.
    file: RwLock<Option<File>>,
    identity: FileIdentity,
    chunk_size: u64,
    digest: Option<String>,
    /// Chunk buffers, reused once the connection has written them.
    pool: BufferPool,
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
}

impl Downloadable for FileObject {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        let guard = self.file.read().unwrap_or_else(|p| p.into_inner());
        let Some(file) = guard.as_ref() else {
            return Err(ProduceError(format!(
                "file {} requested after release",
                self.path.display()
            )));
        };
        let (offset, len) = match parse_byte_request(state, self.identity.size, self.chunk_size) {
            Err(reason) => {
                tracing::warn!(requester, path = %self.path.display(), %reason, "bad file request");
                return Ok(Produced::Error { reason });
            }
            Ok(ByteRequest::Eof) => return Ok(Produced::Eof),
            Ok(ByteRequest::Read { offset, len }) => (offset, len),
        };
        // len <= chunk_size <= MAX_CHUNK_SIZE, so it fits a usize.
        let mut buf = self.pool.take(len as usize);
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Ok(self.changed("it became shorter while being served"));
            }
            Err(e) => {
                return Err(ProduceError(format!(
                    "reading {} bytes at {offset} of {}: {e}",
                    len,
                    self.path.display()
                )))
            }
        }
        // Checked after the read: a change before or during it shows in size or mtime.
        let now = file
            .metadata()
            .map_err(|e| ProduceError(format!("stat {}: {e}", self.path.display())))?;
        if FileIdentity::of(&now) != self.identity {
            return Ok(self.changed("its size or modification time changed"));
        }
        Ok(Produced::Data {
            data: ChunkData::Bytes(self.pool.freeze(buf)),
            state: state_after(offset + len),
        })
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

    fn set_transaction(&self, tx_id: &TxId, ref_id: &RefId) {
        tracing::debug!(%tx_id, %ref_id, path = %self.path.display(), "file added to transaction");
    }

    fn release(&self) {
        *self.file.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.pool.clear();
    }
}

impl FileObject {
    fn changed(&self, what: &str) -> Produced {
        let reason = format!(
            "file {} changed while being downloaded: {what}",
            self.path.display()
        );
        tracing::error!(%reason);
        Produced::Error { reason }
    }
}
