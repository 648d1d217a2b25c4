//! The in-memory tensor dict consumer.

use super::blob::decode_item;
use super::digest::DictMetadata;
use super::{TensorDict, TensorPinCheck};
use crate::cacheable::ItemTracker;
use crate::delivery::Delivery;
use crate::item_dict::ItemDictAssembly;
use crate::verify::{Pin, Verified};
use ferry_core::{ChunkData, ConsumeError, Consumer, State, TransferPlan};

/// Rebuilds a tensor dict in memory from a tensor dict object (ferry's or NVFlare's).
///
/// Items may arrive in any order; the dict is built in the sender's order. Each tensor's data
/// is a zero-copy slice of its received item; aliased names share one buffer. The dict's
/// safetensors `__metadata__` (carried by the first item) is the received dict's
/// [`metadata`](TensorDict::metadata). A malformed
/// item fails the download with an error naming the item. The dict is available from
/// [`take`](Self::take) or the [`Delivery`] of [`delivery`](Self::delivery).
///
/// With a [`pin`](Self::pin) (a `--tensors` ticket's size and tensor-dict digest, see
/// [`tensor_dict_pin`](crate::tensors::tensor_dict_pin)) each item is hashed as it arrives,
/// tensor data beyond the pinned size fail at once, and the download completes only when the
/// digest matches.
#[derive(Debug, Default)]
pub struct TensorDictConsumer {
    assembly: ItemDictAssembly<TensorDict>,
    check: Option<TensorPinCheck>,
    /// The dict's `__metadata__`, from the first item.
    metadata: DictMetadata,
}

impl TensorDictConsumer {
    /// A new consumer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A consumer whose tracker has a custom item limit.
    pub fn with_tracker(tracker: ItemTracker) -> Self {
        Self {
            assembly: ItemDictAssembly::new(tracker),
            check: None,
            metadata: DictMetadata::new(),
        }
    }

    /// Hold the sender to `pin` (size and tensor-dict digest).
    pub fn pin(mut self, pin: Pin) -> Self {
        self.check = Some(TensorPinCheck::new(pin));
        self
    }

    /// What the dict was checked against: meaningful once the download completed.
    pub fn verified(&self) -> Verified {
        self.check
            .as_ref()
            .map_or(Verified::Unverified, |c| Verified::Pinned(c.pin()))
    }

    /// A handle that receives the dict when the download completes.
    pub fn delivery(&self) -> Delivery<TensorDict> {
        self.assembly.delivery()
    }

    /// The dict, once completed (taken once).
    pub fn take(&mut self) -> Option<TensorDict> {
        self.assembly.take()
    }
}

impl Consumer for TensorDictConsumer {
    /// Unpinned, `consume` never blocks: tensors stay zero-copy slices of the received
    /// frames, and a chunk costs a header parse. Pinned, it hashes each item: on the pool.
    fn blocks(&self) -> bool {
        self.check.is_some()
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
        let check = &mut self.check;
        let metadata = &mut self.metadata;
        self.assembly.consume(state, data, |index, blob| {
            let mut item = decode_item(index, blob)?;
            if let Some(m) = item.dict_metadata.take() {
                *metadata = m;
            }
            let tensor = item.tensor(index, blob)?;
            if let Some(c) = check.as_mut() {
                c.add(index, &item.names, item.dtype, &item.shape, tensor.data())?;
            }
            Ok(item
                .names
                .into_iter()
                .map(|n| (n, tensor.clone()))
                .collect())
        })
    }

    fn completed(&mut self, _ref_id: &str) -> Result<(), ConsumeError> {
        if let Some(c) = &self.check {
            c.finish(self.assembly.finish()?, &self.metadata)?;
        }
        let metadata = std::mem::take(&mut self.metadata);
        self.assembly
            .completed_with(|dict| dict.set_metadata(metadata))
    }

    fn failed(&mut self, ref_id: &str, reason: &str) {
        tracing::debug!(ref_id, reason, "tensor dict download failed");
        self.assembly.failed();
    }
}
