//! The file a relay spills its copy into, in a directory the relay makes and removes when it
//! goes: positioned writes from the upstream consumer, positioned reads for the downstream
//! pulls.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ferry_core::ConsumeError;
use ferry_objects::file::{read_exact_at_nowait, NoWait};

/// A spill file in its own directory (both removed on drop).
#[derive(Debug)]
pub(crate) struct SpillFile {
    file: File,
    path: PathBuf,
    /// The directory the relay made for `file`, removed (with the file) when the relay goes.
    _dir: tempfile::TempDir,
}

impl SpillFile {
    /// Make a spill directory under `parent` and an empty file `name` in it.
    pub(crate) fn create(parent: &Path, name: &str) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-relay-")
            .tempdir_in(parent)?;
        let path = dir.path().join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self {
            file,
            path,
            _dir: dir,
        })
    }

    /// Set the file's length (grown sparse: no space is taken before bytes are written).
    pub(crate) fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Write `data` at `offset`; a failure is the upstream consumer's I/O error.
    pub(crate) fn write_at(&self, data: &[u8], offset: u64) -> Result<(), ConsumeError> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| ConsumeError::Io {
                context: format!("writing the relay's copy {}", self.path.display()),
                source: e,
            })
    }

    /// Read `[start, start + len)`, which must have been written.
    pub(crate) fn read(&self, start: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, start)?;
        Ok(buf)
    }

    /// `[start, start + len)` if it can be read without waiting for the disk (it is in the
    /// page cache, as bytes just written are); `None` where it cannot, or where the kernel or
    /// file system cannot tell.
    pub(crate) fn read_nowait(&self, start: u64, len: usize) -> Option<std::io::Result<Vec<u8>>> {
        let mut buf = vec![0u8; len];
        match read_exact_at_nowait(&self.file, &mut buf, start) {
            NoWait::Done(r) => Some(r.map(|()| buf)),
            NoWait::WouldBlock | NoWait::Unsupported => None,
        }
    }
}
