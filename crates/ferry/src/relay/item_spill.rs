//! The relay's copy of a tensor dict: the item blobs as they arrived, appended to a spill
//! file in a directory the relay owns, an index of where each item sits, the checks they went
//! through, and where the upstream download stands.
//!
//! The upstream consumer appends here; every downstream pull reads here, waiting (on a condvar,
//! on the blocking pool) for an item that has not arrived yet. Memory does not grow with the
//! dict: the blobs live in the file, the bookkeeping is 16 bytes of index and 32 bytes of item
//! hash per item.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_core::{ChunkData, ConsumeError, State, TransferPlan};
use ferry_objects::tensors::TensorItemCheck;
use ferry_objects::verify::Pin;

use super::spill::Phase;

/// What the waiters look at, under one lock.
#[derive(Debug)]
struct Shared {
    /// Item index -> (offset, length) of its blob in the file.
    index: BTreeMap<u64, (u64, u64)>,
    /// Items `[0, prefix)` all arrived (where another source continues).
    prefix: u64,
    /// Where the next blob goes.
    end: u64,
    /// Tensor bytes received (what the pinned size counts).
    tensor_bytes: u64,
    /// The item count, once a plan announced it (or the download finished without one).
    count: Option<u64>,
    phase: Phase,
}

/// The relay's copy of a tensor dict (see the module docs).
#[derive(Debug)]
pub(crate) struct ItemSpill {
    file: File,
    path: PathBuf,
    /// The directory the relay made for `file`, removed (with the file) when the relay goes.
    _dir: tempfile::TempDir,
    pin: Pin,
    shared: Mutex<Shared>,
    /// Signalled whenever an item arrives, the count becomes known or the phase changes.
    changed: Condvar,
    /// The per-item checks and the digest; kept across sources, so an item is hashed once
    /// whichever source sent it. Only the upstream consumer uses it.
    check: Mutex<TensorItemCheck>,
}

impl ItemSpill {
    /// Make the spill directory under `parent` and an empty file in it.
    pub(crate) fn create(parent: &Path, pin: Pin) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-relay-")
            .tempdir_in(parent)?;
        let path = dir.path().join("items");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self {
            file,
            path,
            _dir: dir,
            pin,
            shared: Mutex::new(Shared {
                index: BTreeMap::new(),
                prefix: 0,
                end: 0,
                tensor_bytes: 0,
                count: None,
                phase: Phase::Filling,
            }),
            changed: Condvar::new(),
            check: Mutex::new(TensorItemCheck::new(pin)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self) -> MutexGuard<'_, TensorItemCheck> {
        self.check.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn pin(&self) -> Pin {
        self.pin
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn phase(&self) -> Phase {
        self.lock().phase.clone()
    }

    /// Tensor bytes that arrived, and the items `[0, n)` that all arrived.
    pub(crate) fn progress(&self) -> (u64, u64) {
        let s = self.lock();
        (s.tensor_bytes, s.prefix)
    }

    /// The item count, if known.
    pub(crate) fn count(&self) -> Option<u64> {
        self.lock().count
    }

    /// A source's plan: its item count must be the one an earlier source announced.
    pub(crate) fn plan_received(&self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        let mut check = self.check();
        let before = check.expected_items();
        check.plan_received(plan)?;
        let count = check.expected_items();
        drop(check);
        if before.is_some() && before != count {
            return Err(ConsumeError::Integrity(format!(
                "the source announces {count:?} items, an earlier source announced {before:?}: not the same tensor dict"
            )));
        }
        self.lock().count = count;
        self.changed.notify_all();
        Ok(())
    }

    /// Check a chunk and append its new items, then announce them to the waiters. Called by
    /// one upstream consumer at a time.
    pub(crate) fn store(&self, state: &State, data: ChunkData) -> Result<(), ConsumeError> {
        let items = self.check().accept(state, data);
        let items = match items {
            Ok(items) => items,
            Err(e) => {
                // A malformed item or bytes beyond the pin: nothing of this source is trusted,
                // and the ones before cannot be told apart from it.
                if matches!(e, ConsumeError::Integrity(_)) {
                    self.set_phase(Phase::Failed(format!(
                        "an item from upstream is not what the ticket pins: {e}"
                    )));
                }
                return Err(e);
            }
        };
        for item in items {
            let len = item.blob.len() as u64;
            let offset = self.lock().end;
            self.file
                .write_all_at(&item.blob, offset)
                .map_err(|e| ConsumeError::Io {
                    context: format!("writing the relay's copy {}", self.path.display()),
                    source: e,
                })?;
            let mut s = self.lock();
            s.end = offset + len;
            s.tensor_bytes += item.tensor_bytes;
            s.index.insert(item.index, (offset, len));
            while s.index.contains_key(&s.prefix) {
                s.prefix += 1;
            }
            drop(s);
            self.changed.notify_all();
        }
        Ok(())
    }

    /// Every item arrived: check the digest against the pin and move to `Verified`, or to
    /// `Failed` (returned as the error).
    pub(crate) fn finish(&self, source: &str) -> Result<(), String> {
        let result = self.check().finish().map_err(|e| {
            format!(
                "the tensor dict {source} sent does not match the ticket ({e}): a corrupted or hostile upstream; nothing was kept"
            )
        });
        match &result {
            Ok(count) => {
                self.lock().count = Some(*count);
                self.set_phase(Phase::Verified);
            }
            Err(why) => self.set_phase(Phase::Failed(why.clone())),
        }
        result.map(|_| ())
    }

    /// Move to `phase` (a failure is final) and wake every waiter.
    pub(crate) fn set_phase(&self, phase: Phase) {
        let mut s = self.lock();
        if !matches!(s.phase, Phase::Failed(_)) {
            s.phase = phase;
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Wait until `ready` gives an answer from the shared state, the relay failed, or `limit`
    /// passed (`what` says what was waited for, in the timeout's text).
    fn wait<T>(
        &self,
        limit: Duration,
        what: &str,
        mut ready: impl FnMut(&Shared) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + limit;
        let mut s = self.lock();
        loop {
            if let Phase::Failed(why) = &s.phase {
                return Err(why.clone());
            }
            if let Some(v) = ready(&s) {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{what} did not arrive from upstream within {}s",
                    limit.as_secs()
                ));
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Wait for the item count.
    pub(crate) fn wait_count(&self, limit: Duration) -> Result<u64, String> {
        self.wait(limit, "the tensor dict's item count", |s| s.count)
    }

    /// Wait until the upstream download is over (verified or failed) or `limit` passed.
    pub(crate) fn wait_done(&self, limit: Duration) -> Phase {
        self.wait(limit, "the end of the tensor dict", |s| {
            (s.phase != Phase::Filling).then(|| s.phase.clone())
        })
        .unwrap_or_else(Phase::Failed)
    }

    /// Whether item `i` arrived (and so reads without waiting).
    pub(crate) fn has_item(&self, i: u64) -> bool {
        self.lock().index.contains_key(&i)
    }

    /// Wait for item `i` and read its blob.
    pub(crate) fn read_item(&self, i: u64, limit: Duration) -> Result<Vec<u8>, String> {
        let (offset, len) = self.wait(limit, &format!("item {i}"), |s| s.index.get(&i).copied())?;
        let len = usize::try_from(len).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset).map_err(|e| {
            format!(
                "reading item {i} of the relay's copy {}: {e}",
                self.path.display()
            )
        })?;
        Ok(buf)
    }
}
