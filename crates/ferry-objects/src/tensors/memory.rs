//! The in-memory tensor dict consumer.

use super::blob::decode_item;
use super::TensorDict;
use crate::cacheable::ItemTracker;
use crate::delivery::Delivery;
use ferry_core::{ChunkData, ConsumeError, Consumer, State, TransferPlan};

/// Rebuilds a tensor dict in memory from a tensor dict object (ferry's or NVFlare's).
///
/// Items may arrive in any order. Each tensor's data is a zero-copy slice of its received
/// item; aliased names share one buffer. A malformed item fails the download with an error
/// naming the item. The dict is available from [`take`](Self::take) or the [`Delivery`] of
/// [`delivery`](Self::delivery).
#[derive(Debug, Default)]
pub struct TensorDictConsumer {
    tracker: ItemTracker,
    /// Received tensors by item index: items may arrive out of order, the dict is built in
    /// the sender's order at completion.
    items: std::collections::BTreeMap<u64, Vec<(String, super::Tensor)>>,
    /// Every name received so far, to refuse a name delivered twice as soon as it arrives.
    names: std::collections::HashSet<String>,
    result: Option<TensorDict>,
    delivery: Delivery<TensorDict>,
}

impl TensorDictConsumer {
    /// A new consumer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A consumer whose tracker has a custom item limit.
    pub fn with_tracker(tracker: ItemTracker) -> Self {
        Self {
            tracker,
            ..Self::default()
        }
    }

    /// A handle that receives the dict when the download completes.
    pub fn delivery(&self) -> Delivery<TensorDict> {
        self.delivery.clone()
    }

    /// The dict, once completed (taken once).
    pub fn take(&mut self) -> Option<TensorDict> {
        let out = self.result.take();
        if out.is_some() {
            self.delivery.take();
        }
        out
    }
}

impl Consumer for TensorDictConsumer {
    /// `consume` never blocks: tensors stay zero-copy slices of the received frames, and a
    /// chunk costs a header parse.
    fn blocks(&self) -> bool {
        false
    }

    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        self.tracker.plan_received(plan)
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
        for (index, blob) in self.tracker.accept(state, data)? {
            let item = decode_item(index, &blob)?;
            let tensor = item.tensor(index, &blob)?;
            for n in &item.names {
                if !self.names.insert(n.clone()) {
                    return Err(ConsumeError::Integrity(format!(
                        "item {index}: tensor {n:?} was already received"
                    )));
                }
            }
            let named = item
                .names
                .into_iter()
                .map(|n| (n, tensor.clone()))
                .collect();
            self.items.insert(index, named);
        }
        Ok(state.clone())
    }

    fn completed(&mut self, _ref_id: &str) -> Result<(), ConsumeError> {
        self.tracker.finish()?;
        let mut dict = TensorDict::new();
        for (index, named) in std::mem::take(&mut self.items) {
            for (name, tensor) in named {
                dict.insert(name, tensor)
                    .map_err(|e| ConsumeError::Integrity(format!("item {index}: {e}")))?;
            }
        }
        self.delivery.put(dict.clone());
        self.result = Some(dict);
        Ok(())
    }

    fn failed(&mut self, ref_id: &str, reason: &str) {
        tracing::debug!(ref_id, reason, "tensor dict download failed");
        self.items.clear();
        self.names.clear();
    }
}
