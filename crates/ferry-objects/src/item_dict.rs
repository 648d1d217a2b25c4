//! What the in-memory item-dict consumers ([`TensorDictConsumer`](crate::TensorDictConsumer),
//! [`NpzDictConsumer`](crate::NpzDictConsumer)) share: checking chunks with an
//! [`ItemTracker`], refusing a name delivered twice, building the dict in the sender's item
//! order whatever the arrival order, and handing it over through a [`Delivery`].

use crate::cacheable::ItemTracker;
use crate::delivery::Delivery;
use crate::ObjectsError;
use bytes::Bytes;
use ferry_core::{ChunkData, ConsumeError, State, TransferPlan};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;

/// A dict of named values in insertion order with unique names.
pub(crate) trait NamedDict: Default + Clone + Debug {
    /// What a name maps to.
    type Value: Debug;

    /// Add `value` under `name`, refusing a name the dict cannot hold.
    fn insert_named(&mut self, name: String, value: Self::Value) -> Result<(), ObjectsError>;
}

impl NamedDict for crate::TensorDict {
    type Value = crate::Tensor;

    fn insert_named(&mut self, name: String, value: crate::Tensor) -> Result<(), ObjectsError> {
        self.insert(name, value)
    }
}

impl NamedDict for crate::NdArrayDict {
    type Value = crate::NdArray;

    fn insert_named(&mut self, name: String, value: crate::NdArray) -> Result<(), ObjectsError> {
        self.insert(name, value)
    }
}

/// The received items of one item-dict download and the finished dict.
#[derive(Debug)]
pub(crate) struct ItemDictAssembly<D: NamedDict> {
    tracker: ItemTracker,
    /// Received named values by item index: items may arrive out of order, the dict is built
    /// in the sender's order at completion.
    items: BTreeMap<u64, Vec<(String, D::Value)>>,
    /// Every name received so far, to refuse a name delivered twice as soon as it arrives.
    names: HashSet<String>,
    result: Option<D>,
    delivery: Delivery<D>,
}

impl<D: NamedDict> Default for ItemDictAssembly<D> {
    fn default() -> Self {
        Self::new(ItemTracker::new())
    }
}

impl<D: NamedDict> ItemDictAssembly<D> {
    /// An empty assembly checking chunks with `tracker`.
    pub(crate) fn new(tracker: ItemTracker) -> Self {
        Self {
            tracker,
            items: BTreeMap::new(),
            names: HashSet::new(),
            result: None,
            delivery: Delivery::new(),
        }
    }

    /// A handle that receives the dict when the download completes.
    pub(crate) fn delivery(&self) -> Delivery<D> {
        self.delivery.clone()
    }

    /// The dict, once completed (taken once, also from the delivery).
    pub(crate) fn take(&mut self) -> Option<D> {
        let out = self.result.take();
        if out.is_some() {
            self.delivery.take();
        }
        out
    }

    /// Take the item count from the plan.
    pub(crate) fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        self.tracker.plan_received(plan)
    }

    /// Check a chunk and keep the named values `decode` finds in each of its new items.
    pub(crate) fn consume(
        &mut self,
        state: &State,
        data: ChunkData,
        mut decode: impl FnMut(u64, &Bytes) -> Result<Vec<(String, D::Value)>, ConsumeError>,
    ) -> Result<State, ConsumeError> {
        for (index, blob) in self.tracker.accept(state, data)? {
            let named = decode(index, &blob)?;
            for (name, _) in &named {
                if !self.names.insert(name.clone()) {
                    return Err(ConsumeError::Integrity(format!(
                        "item {index}: {name:?} was already received"
                    )));
                }
            }
            self.items.insert(index, named);
        }
        Ok(state.clone())
    }

    /// Check that every item arrived; returns the item count.
    pub(crate) fn finish(&self) -> Result<u64, ConsumeError> {
        self.tracker.finish()
    }

    /// Check that every item arrived, build the dict in item order and deliver it.
    pub(crate) fn completed(&mut self) -> Result<(), ConsumeError> {
        self.completed_with(|_| {})
    }

    /// [`completed`](Self::completed), with `finish` applied to the dict before it is
    /// delivered (e.g. to give it what the items carried beside the named values).
    pub(crate) fn completed_with(
        &mut self,
        finish: impl FnOnce(&mut D),
    ) -> Result<(), ConsumeError> {
        self.tracker.finish()?;
        let mut dict = D::default();
        for (index, named) in std::mem::take(&mut self.items) {
            for (name, value) in named {
                dict.insert_named(name, value)
                    .map_err(|e| ConsumeError::Integrity(format!("item {index}: {e}")))?;
            }
        }
        finish(&mut dict);
        self.delivery.put(dict.clone());
        self.result = Some(dict);
        Ok(())
    }

    /// Drop what was received.
    pub(crate) fn failed(&mut self) {
        self.items.clear();
        self.names.clear();
    }
}
