//! Digests of files already hashed by this process, so a file added to several transactions
//! (the same checkpoint sent to clients one transaction at a time, say) is read and hashed once.
//!
//! An entry is keyed by everything that changes when the file's content can have changed:
//! device, inode, size, modification time and — on Unix — the status-change time, which every
//! write updates and which, unlike the modification time, no unprivileged call can set back.
//! A file rewritten in place with its size and modification time restored therefore misses the
//! cache. Elsewhere (no inode or status-change time) nothing is cached.

use std::collections::HashMap;
use std::fs::Metadata;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// Entries kept; the cache is emptied when it would grow past this (a digest is 64 bytes of
/// hex, so the bound is about memory only in the pathological case of many distinct files).
const MAX_ENTRIES: usize = 1024;

/// What identifies a file's content for the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DigestKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
}

impl DigestKey {
    /// The key of an open file's metadata; `None` where the platform gives no inode or
    /// status-change time.
    pub(super) fn of(meta: &Metadata) -> Option<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Some(Self {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.len(),
                mtime: meta.modified().ok(),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            None
        }
    }
}

fn cache() -> &'static Mutex<HashMap<DigestKey, String>> {
    static CACHE: OnceLock<Mutex<HashMap<DigestKey, String>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The digest recorded for `key`, if any.
pub(super) fn get(key: &DigestKey) -> Option<String> {
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .cloned()
}

/// Record the digest of the file identified by `key`.
pub(super) fn put(key: DigestKey, digest: &str) {
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= MAX_ENTRIES && !c.contains_key(&key) {
        c.clear();
    }
    c.insert(key, digest.to_string());
}
