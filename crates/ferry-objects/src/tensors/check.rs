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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cacheable::{ItemSource, COUNT, START};
    use crate::tensors::{tensor_dict_pin, Dtype, Tensor, TensorDict, TensorSource};

    fn dict() -> TensorDict {
        let mut d = TensorDict::new();
        for i in 0..3u8 {
            let data: Vec<u8> = (0..64u8).map(|x| x ^ i).collect();
            let t = Tensor::new(Dtype::F32, vec![4, 4], Bytes::from(data)).unwrap();
            d.insert(format!("w{i}"), t).unwrap();
        }
        let tied = d.get("w1").unwrap().clone();
        d.insert("tied", tied).unwrap();
        d.with_metadata([("format".to_string(), "pt".to_string())].into())
    }

    fn one(i: u64, blob: Bytes) -> (State, ChunkData) {
        let st = State::new().with(START, i).with(COUNT, 1u64);
        (st, ChunkData::Items(vec![blob]))
    }

    #[test]
    fn the_origins_items_pass_and_fold_to_the_pin() {
        let d = dict();
        let src = TensorSource::new(d.clone());
        let mut c = TensorItemCheck::new(tensor_dict_pin(&d));
        let mut bytes = 0;
        // any order, and a duplicate is not returned twice
        for i in [2, 0, 1, 0] {
            let blob = src.produce_item(i).unwrap();
            let (st, data) = one(i, blob.clone());
            for item in c.accept(&st, data).unwrap() {
                assert_eq!((item.index, &item.blob), (i, &blob));
                bytes += item.tensor_bytes;
            }
        }
        assert_eq!(bytes, tensor_dict_pin(&d).size);
        assert_eq!(c.finish().unwrap(), 3);
    }

    #[test]
    fn a_changed_item_is_accepted_but_fails_the_digest() {
        let d = dict();
        let src = TensorSource::new(d.clone());
        let mut c = TensorItemCheck::new(tensor_dict_pin(&d));
        for i in 0..3 {
            let mut blob = src.produce_item(i).unwrap().to_vec();
            if i == 1 {
                let last = blob.len() - 1;
                blob[last] ^= 1;
            }
            let (st, data) = one(i, Bytes::from(blob));
            c.accept(&st, data).unwrap();
        }
        let e = c.finish().unwrap_err().to_string();
        assert!(e.contains("tensor-dict digest mismatch"), "{e}");
    }

    #[test]
    fn what_an_item_can_be_checked_for_fails_at_once() {
        let d = dict();
        let src = TensorSource::new(d.clone());
        // a name twice
        let mut c = TensorItemCheck::new(tensor_dict_pin(&d));
        let (st, data) = one(2, src.produce_item(2).unwrap());
        c.accept(&st, data).unwrap();
        let (st, data) = one(1, src.produce_item(2).unwrap());
        let e = c.accept(&st, data).unwrap_err().to_string();
        assert!(
            e.contains("item 1") && e.contains("already received"),
            "{e}"
        );
        // more tensor bytes than pinned
        let mut c = TensorItemCheck::new(Pin::new(10, blake3::hash(b"x")));
        let (st, data) = one(0, src.produce_item(0).unwrap());
        let e = c.accept(&st, data).unwrap_err().to_string();
        assert!(e.contains("the ticket pins 10"), "{e}");
        // not a blob
        let mut c = TensorItemCheck::new(tensor_dict_pin(&d));
        let (st, data) = one(0, Bytes::from_static(b"garbage!garbage!"));
        let e = c.accept(&st, data).unwrap_err().to_string();
        assert!(e.contains("item 0") && e.contains("malformed"), "{e}");
    }
}
