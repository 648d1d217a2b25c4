//! The downloadable and the consumer of a NumPy array dict: [`NpzSource`] serves one
//! `.npz` item per array through the shared item cache ([`NpzDictObject`]), and
//! [`NpzDictConsumer`] rebuilds the dict from the items.

use super::dict::NdArrayDict;
use super::format::{decode_npz, encode_npz_into, NdArray};
use crate::buffer_pool::BufferPool;
use crate::cacheable::{CacheOptions, CacheableObject, ItemError, ItemSource, ItemTracker};
use crate::delivery::Delivery;
use crate::item_dict::ItemDictAssembly;
use crate::ObjectsError;
use bytes::Bytes;
use ferry_core::{ChunkData, ConsumeError, Consumer, State, TransferPlan};
use std::sync::RwLock;

/// An [`ItemSource`] over an [`NdArrayDict`]: item `i` is the `i`-th array as a one-key `.npz`
/// blob, NVFlare's `ArrayDownloadable` item format.
#[derive(Debug)]
pub struct NpzSource {
    /// `None` after release (the arrays are dropped).
    arrays: RwLock<Option<Vec<(String, NdArray)>>>,
    /// Per item: data length (a lower bound of the blob, the size hint), kept after release.
    sizes: Vec<u64>,
    /// Blob buffers come back here once the cache and the connections are done with an item
    /// (a fresh multi-MiB allocation per item costs a page fault per 4 KiB).
    pool: BufferPool,
}

/// Idle blob buffers an [`NpzSource`] keeps.
const NPZ_POOL_IDLE: usize = 16;

impl NpzSource {
    /// Serve `dict`, one item per array in insertion order.
    pub fn new(dict: NdArrayDict) -> Self {
        let entries = dict.into_entries();
        let sizes = entries.iter().map(|(_, a)| a.data().len() as u64).collect();
        Self {
            arrays: RwLock::new(Some(entries)),
            sizes,
            pool: BufferPool::new(NPZ_POOL_IDLE),
        }
    }
}

impl ItemSource for NpzSource {
    fn item_count(&self) -> u64 {
        self.sizes.len() as u64
    }

    fn produce_item(&self, index: u64) -> Result<Bytes, ItemError> {
        let err = |reason: String| ItemError { index, reason };
        let guard = self.arrays.read().unwrap_or_else(|p| p.into_inner());
        let arrays = guard
            .as_ref()
            .ok_or_else(|| err("arrays requested after release".into()))?;
        let (name, arr) = usize::try_from(index)
            .ok()
            .and_then(|i| arrays.get(i))
            .ok_or_else(|| err("no such item".into()))?;
        // Zip and .npy headers are small; reserve the data plus room for them.
        let mut buf = self.pool.take_empty(arr.data().len() + 4096);
        encode_npz_into([(name.as_str(), arr)], &mut buf)
            .map_err(|e| err(format!("serializing {name:?}: {e}")))?;
        Ok(self.pool.freeze(buf))
    }

    fn item_size_hint(&self, index: u64) -> Option<u64> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.sizes.get(i))
            .copied()
    }

    fn release(&self) {
        *self.arrays.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.pool.clear();
    }
}

/// A NumPy array dict served as a shared, cached item object.
pub type NpzDictObject = CacheableObject<NpzSource>;

impl CacheableObject<NpzSource> {
    /// Serve `dict` (one array per item; use
    /// [`ChunkPacking::MaxBytes`](crate::ChunkPacking::MaxBytes)(crate::ChunkPacking::MaxBytes)`(2 MiB)` to pack chunks as
    /// NVFlare does).
    pub fn from_arrays(dict: NdArrayDict, options: CacheOptions) -> Result<Self, ObjectsError> {
        CacheableObject::new(NpzSource::new(dict), options)
    }
}

/// Rebuilds an array dict in memory from a NumPy item object (NVFlare's `add_arrays` or an
/// [`NpzDictObject`]).
///
/// Items may arrive in any order; the dict is built in the sender's order. Each item may hold
/// several arrays (all are taken, as NVFlare's `ArrayConsumer` does). A malformed item fails
/// the download with an error naming the item.
#[derive(Debug, Default)]
pub struct NpzDictConsumer {
    assembly: ItemDictAssembly<NdArrayDict>,
}

impl NpzDictConsumer {
    /// A new consumer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A consumer whose tracker has a custom item limit.
    pub fn with_tracker(tracker: ItemTracker) -> Self {
        Self {
            assembly: ItemDictAssembly::new(tracker),
        }
    }

    /// A handle that receives the dict when the download completes.
    pub fn delivery(&self) -> Delivery<NdArrayDict> {
        self.assembly.delivery()
    }

    /// The dict, once completed (taken once).
    pub fn take(&mut self) -> Option<NdArrayDict> {
        self.assembly.take()
    }
}

impl Consumer for NpzDictConsumer {
    /// `consume` never blocks: arrays are parsed in memory.
    fn blocks(&self) -> bool {
        false
    }

    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        self.assembly.plan_received(plan)
    }

    fn needs_order(&self) -> bool {
        false
    }

    fn consume(
        &mut self,
        _ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError> {
        self.assembly.consume(state, data, |index, blob| {
            decode_npz(blob).map_err(|e| ConsumeError::Integrity(format!("item {index}: {e}")))
        })
    }

    fn completed(&mut self, _ref_id: &str) -> Result<(), ConsumeError> {
        self.assembly.completed()
    }

    fn failed(&mut self, ref_id: &str, reason: &str) {
        tracing::debug!(ref_id, reason, "numpy dict download failed");
        self.assembly.failed();
    }
}
