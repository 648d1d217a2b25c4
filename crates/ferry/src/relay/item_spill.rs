//! The relay's copy of a tensor dict: the item blobs as they arrived, appended to a spill
//! file in a directory the relay owns, an index of where each item sits, the checks they went
//! through, and where the upstream download stands.
//!
//! The upstream consumer appends here; every downstream pull reads here, waiting (on a condvar,
//! on the blocking pool) for an item that has not arrived yet. Memory does not grow with the
//! dict: the blobs live in the file, the bookkeeping is 16 bytes of index and 32 bytes of item
//! hash per item.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ferry_core::{ChunkData, ConsumeError, State, TransferPlan};
use ferry_objects::tensors::TensorItemCheck;
use ferry_objects::verify::Pin;

use super::phase::{Board, Phase, Watched};
use super::spill_file::SpillFile;

/// What the waiters look at, under one lock (with the phase: a [`Watched`]).
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
}

/// The relay's copy of a tensor dict (see the module docs).
#[derive(Debug)]
pub(crate) struct ItemSpill {
    file: SpillFile,
    pin: Pin,
    /// The index and where the download stands; signalled whenever an item arrives, the
    /// count becomes known or the phase changes.
    shared: Watched<Shared>,
    /// The per-item checks and the digest; kept across sources, so an item is hashed once
    /// whichever source sent it. Only the upstream consumer uses it.
    check: Mutex<TensorItemCheck>,
}

impl ItemSpill {
    /// Make the spill directory under `parent` and an empty file in it.
    pub(crate) fn create(parent: &Path, pin: Pin) -> std::io::Result<Self> {
        Ok(Self {
            file: SpillFile::create(parent, "items")?,
            pin,
            shared: Watched::new(Shared {
                index: BTreeMap::new(),
                prefix: 0,
                end: 0,
                tensor_bytes: 0,
                count: None,
            }),
            check: Mutex::new(TensorItemCheck::new(pin)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Board<Shared>> {
        self.shared.lock()
    }

    fn check(&self) -> MutexGuard<'_, TensorItemCheck> {
        self.check.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn pin(&self) -> Pin {
        self.pin
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    pub(crate) fn phase(&self) -> Phase {
        self.shared.phase()
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
        self.shared.notify();
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
            self.file.write_at(&item.blob, offset)?;
            let mut s = self.lock();
            s.end = offset + len;
            s.tensor_bytes += item.tensor_bytes;
            s.index.insert(item.index, (offset, len));
            while s.index.contains_key(&s.prefix) {
                s.prefix += 1;
            }
            drop(s);
            self.shared.notify();
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
        self.shared.set_phase(phase);
    }

    /// Wait for the item count.
    pub(crate) fn wait_count(&self, limit: Duration) -> Result<u64, String> {
        self.shared
            .wait(limit, "the tensor dict's item count", |s| s.count)
    }

    /// Wait until the whole dict arrived and matched the pin; the failure or a timeout text
    /// otherwise.
    pub(crate) fn wait_verified(&self, limit: Duration) -> Result<(), String> {
        self.shared
            .wait_verified(limit, "the end of the tensor dict")
    }

    /// Whether item `i` arrived (and so reads without waiting).
    pub(crate) fn has_item(&self, i: u64) -> bool {
        self.lock().index.contains_key(&i)
    }

    /// Wait for item `i` and read its blob.
    pub(crate) fn read_item(&self, i: u64, limit: Duration) -> Result<Vec<u8>, String> {
        let (offset, len) = self
            .shared
            .wait(limit, &format!("item {i}"), |s| s.index.get(&i).copied())?;
        let len = usize::try_from(len).map_err(|e| e.to_string())?;
        self.file.read(offset, len).map_err(|e| {
            format!(
                "reading item {i} of the relay's copy {}: {e}",
                self.path().display()
            )
        })
    }
}
