//! Checking a tensor dict's items against a ticket's pin without building the dict: what a
//! relay does before it serves the items on, as the blobs they arrived as.

use super::blob::decode_item;
use super::digest::DictMetadata;
use super::TensorPinCheck;
use crate::cacheable::ItemTracker;
use crate::verify::Pin;
use bytes::Bytes;
use ferry_core::{ChunkData, ConsumeError, State, TransferPlan};
use std::collections::HashSet;

/// An item that passed [`TensorItemCheck::accept`].
#[derive(Debug, Clone)]
pub struct CheckedItem {
    /// The item's index in the sender's order.
    pub index: u64,
    /// The item as it arrived: a one-tensor safetensors blob.
    pub blob: Bytes,
    /// Bytes of tensor data in it (what the pinned size counts).
    pub tensor_bytes: u64,
}

/// The checks [`TensorDictConsumer`](super::TensorDictConsumer) and
/// [`SafetensorsFileConsumer`](super::SafetensorsFileConsumer) make, for a receiver that keeps
/// the blobs rather than the dict.
///
/// What can be checked per item, as it arrives: the chunk's shape ([`ItemTracker`]: indices
/// within the plan, no item twice), the blob (one tensor whose data length matches its dtype
/// and shape, well-formed aliases, the dict metadata in the first item only), names not
/// already received, and the tensor bytes so far not beyond the pinned size. Each item is
/// hashed, but the ticket pins only the fold of every item hash (and the metadata), so whether
/// an item is the sender's is known only at [`finish`](Self::finish), once all arrived.
#[derive(Debug)]
pub struct TensorItemCheck {
    tracker: ItemTracker,
    pin: TensorPinCheck,
    /// The dict's `__metadata__`, from the first item.
    metadata: DictMetadata,
    names: HashSet<String>,
}

impl TensorItemCheck {
    /// Check items against `pin` (a `kind=tensors` ticket's size and tensor-dict digest).
    pub fn new(pin: Pin) -> Self {
        Self::with_tracker(pin, ItemTracker::new())
    }

    /// [`new`](Self::new) with a tracker of a custom item limit.
    pub fn with_tracker(pin: Pin, tracker: ItemTracker) -> Self {
        Self {
            tracker,
            pin: TensorPinCheck::new(pin),
            metadata: DictMetadata::new(),
            names: HashSet::new(),
        }
    }

    /// Take the item count from the sender's plan (which must be an item plan).
    pub fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        self.tracker.plan_received(plan)
    }

    /// The item count the plan announced, if one did.
    pub fn expected_items(&self) -> Option<u64> {
        self.tracker.expected()
    }

    /// Check one chunk; returns its items that had not arrived before, each checked as far as
    /// an item can be (see the type's docs). An error names the item and fails the download.
    pub fn accept(
        &mut self,
        state: &State,
        data: ChunkData,
    ) -> Result<Vec<CheckedItem>, ConsumeError> {
        let mut out = Vec::new();
        for (index, blob) in self.tracker.accept(state, data)? {
            let mut item = decode_item(index, &blob)?;
            if let Some(m) = item.dict_metadata.take() {
                self.metadata = m;
            }
            for name in &item.names {
                if !self.names.insert(name.clone()) {
                    return Err(ConsumeError::Integrity(format!(
                        "item {index}: tensor name {name:?} already received"
                    )));
                }
            }
            let tensor = item.tensor(index, &blob)?;
            self.pin
                .add(index, &item.names, item.dtype, &item.shape, tensor.data())?;
            out.push(CheckedItem {
                index,
                tensor_bytes: item.data_len as u64,
                blob,
            });
        }
        Ok(out)
    }

    /// Every item arrived: check that none is missing and that the items and the metadata
    /// hash to the pinned digest. Returns the item count.
    pub fn finish(&self) -> Result<u64, ConsumeError> {
        let count = self.tracker.finish()?;
        self.pin.finish(count, &self.metadata)?;
        Ok(count)
    }
}
