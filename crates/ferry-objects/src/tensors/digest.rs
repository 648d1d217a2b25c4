//! The tensor-dict digest: what a `--tensors` ticket pins.
//!
//! Definition (also in `docs/protocol.md`). Items are the sender's items in its order: one per
//! distinct tensor buffer, its names being the stored name followed by its aliases. For item
//! `i`, with every integer a little-endian `u64`:
//!
//! ```text
//! item_i = BLAKE3( n_names || (len(name) || name)*  ||  len(dtype) || dtype
//!                  || ndim || dim*  ||  len(data) || data )
//! digest = BLAKE3( "ferry-tensors/1" || n_items || item_0 || item_1 || ...
//!                  [ || n_meta || (len(key) || key || len(value) || value)* ] )
//! ```
//!
//! The bracketed part is there only when the dict has a safetensors `__metadata__` (non-empty),
//! its entries in key order (bytewise), so a dict without metadata keeps the digest it always
//! had, and metadata is pinned like the tensors: a sender cannot add, drop or change it.
//!
//! `dtype` is the safetensors dtype name (`F32`, `BF16`, ...), names are UTF-8, `data` the
//! tensor's little-endian bytes. The pinned size is the sum of `len(data)` over the items.
//! Each item is hashed alone, so a receiver hashes items as they arrive, in any order, and
//! keeps 32 bytes per item.

use super::{Dtype, TensorDict};
use crate::verify::Pin;
use ferry_core::ConsumeError;
use std::collections::BTreeMap;

/// The metadata of a tensor dict, as pinned.
pub(crate) type DictMetadata = BTreeMap<String, String>;

/// Domain prefix of the tensor-dict digest.
pub const TENSORS_DIGEST_DOMAIN: &[u8] = b"ferry-tensors/1";

/// The hash of one item (see the module docs).
pub fn item_hash<S: AsRef<str>>(
    names: &[S],
    dtype: Dtype,
    shape: &[usize],
    data: &[u8],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let n = |h: &mut blake3::Hasher, v: u64| {
        h.update(&v.to_le_bytes());
    };
    n(&mut h, names.len() as u64);
    for name in names {
        let name = name.as_ref().as_bytes();
        n(&mut h, name.len() as u64);
        h.update(name);
    }
    let dtype = dtype.to_string();
    n(&mut h, dtype.len() as u64);
    h.update(dtype.as_bytes());
    n(&mut h, shape.len() as u64);
    for &d in shape {
        n(&mut h, d as u64);
    }
    n(&mut h, data.len() as u64);
    h.update(data);
    *h.finalize().as_bytes()
}

/// Fold item hashes, in item order, and the dict's metadata into the digest.
fn fold<'a>(
    count: u64,
    items: impl Iterator<Item = &'a [u8; 32]>,
    metadata: &DictMetadata,
) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(TENSORS_DIGEST_DOMAIN);
    h.update(&count.to_le_bytes());
    for item in items {
        h.update(item);
    }
    if !metadata.is_empty() {
        h.update(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            for s in [k, v] {
                h.update(&(s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    h.finalize()
}

/// The pin of `dict` as a sender serves it (items grouped as
/// [`TensorSource`](super::TensorSource) groups them). Hashes every tensor once.
pub fn tensor_dict_pin(dict: &TensorDict) -> Pin {
    let metadata = dict.metadata().clone();
    let groups = super::source::group(dict.clone());
    let hashes: Vec<[u8; 32]> = groups
        .iter()
        .map(|g| {
            item_hash(
                &g.names,
                g.tensor.dtype(),
                g.tensor.shape(),
                g.tensor.data(),
            )
        })
        .collect();
    let size = groups.iter().map(|g| g.tensor.data().len() as u64).sum();
    Pin::new(size, fold(hashes.len() as u64, hashes.iter(), &metadata))
}

/// A receiver's check of a tensor dict against its pin: items are hashed as they arrive (any
/// order), the size is enforced as they arrive, the digest at completion.
#[derive(Debug)]
pub(crate) struct TensorPinCheck {
    pin: Pin,
    items: BTreeMap<u64, [u8; 32]>,
    bytes: u64,
}

impl TensorPinCheck {
    pub(crate) fn new(pin: Pin) -> Self {
        Self {
            pin,
            items: BTreeMap::new(),
            bytes: 0,
        }
    }

    pub(crate) fn pin(&self) -> Pin {
        self.pin
    }

    /// Hash item `index` (received for the first time).
    pub(crate) fn add(
        &mut self,
        index: u64,
        names: &[String],
        dtype: Dtype,
        shape: &[usize],
        data: &[u8],
    ) -> Result<(), ConsumeError> {
        self.bytes = self.bytes.saturating_add(data.len() as u64);
        if self.bytes > self.pin.size {
            return Err(ConsumeError::Integrity(format!(
                "item {index}: the sender sent {} bytes of tensor data so far, the ticket pins {}",
                self.bytes, self.pin.size
            )));
        }
        self.items
            .insert(index, item_hash(names, dtype, shape, data));
        Ok(())
    }

    /// Check the digest of the `count` items received (all of them: the tracker checked) and
    /// the dict metadata the first one carried.
    pub(crate) fn finish(&self, count: u64, metadata: &DictMetadata) -> Result<(), ConsumeError> {
        if self.bytes != self.pin.size || self.items.len() as u64 != count {
            return Err(ConsumeError::Integrity(format!(
                "received {} bytes of tensor data in {} items, the ticket pins {} bytes",
                self.bytes,
                self.items.len(),
                self.pin.size
            )));
        }
        let got = fold(count, self.items.values(), metadata);
        if got != self.pin.blake3 {
            return Err(ConsumeError::Integrity(format!(
                "tensor-dict digest mismatch: the ticket pins {}, the {count} items received hash to {}",
                self.pin.hex(),
                got.to_hex()
            )));
        }
        Ok(())
    }
}
