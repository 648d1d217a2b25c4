//! The tensor dict producer.

use super::blob::encode_item_header;
use super::{Tensor, TensorDict};
use crate::cacheable::{CacheOptions, CacheableObject, ItemError, ItemSource};
use crate::ObjectsError;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::RwLock;

/// One item: a distinct buffer and every name that refers to it.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) names: Vec<String>,
    pub(crate) tensor: Tensor,
}
/// Group `dict` by buffer (aliases become one item) in insertion order: the sender's items.
pub(crate) fn group(dict: TensorDict) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    // (pointer, len) -> groups with that buffer; dtype/shape are checked on the candidates.
    let mut by_buf: std::collections::HashMap<(usize, usize), Vec<usize>> =
        std::collections::HashMap::new();
    for (name, t) in dict.iter() {
        let key = (t.data().as_ptr() as usize, t.data().len());
        let cands = by_buf.entry(key).or_default();
        // An empty buffer has no identity worth sharing (all empty Bytes look alike).
        let hit = (!t.data().is_empty())
            .then(|| {
                cands
                    .iter()
                    .copied()
                    .find(|&g| groups[g].tensor.is_alias_of(t))
            })
            .flatten();
        match hit {
            Some(g) => groups[g].names.push(name.to_string()),
            None => {
                cands.push(groups.len());
                groups.push(Group {
                    names: vec![name.to_string()],
                    tensor: t.clone(),
                });
            }
        }
    }
    groups
}

/// An [`ItemSource`] over a [`TensorDict`]: item `i` is the `i`-th distinct tensor as a
/// one-tensor safetensors blob; aliases of it are listed in the blob's metadata, and the
/// first item's blob carries the dict's own `__metadata__` (under
/// [`METADATA_KEY`](super::METADATA_KEY)). A dict without tensors has no item to carry
/// metadata: [`TensorDictObject::from_tensors`] refuses one that has some.
#[derive(Debug)]
pub struct TensorSource {
    /// `None` after release (the tensors are dropped).
    groups: RwLock<Option<Vec<Group>>>,
    /// The dict's `__metadata__`, sent with item 0.
    metadata: BTreeMap<String, String>,
    /// Per item: data length (the size hint), kept after release.
    sizes: Vec<u64>,
}

impl TensorSource {
    /// Group `dict` by buffer (aliases become one item) in insertion order.
    pub fn new(dict: TensorDict) -> Self {
        let metadata = dict.metadata().clone();
        let groups = group(dict);
        let sizes = groups
            .iter()
            .map(|g| g.tensor.data().len() as u64)
            .collect();
        Self {
            groups: RwLock::new(Some(groups)),
            metadata,
            sizes,
        }
    }
}

impl ItemSource for TensorSource {
    fn item_count(&self) -> u64 {
        self.sizes.len() as u64
    }

    fn produce_item(&self, index: u64) -> Result<Bytes, ItemError> {
        self.produce_item_parts(index).map(ferry_core::chunk::join)
    }

    /// The blob's header (made here, a few hundred bytes) and the tensor's own memory: an
    /// item costs no copy of its data however often it is produced (a receiver behind the
    /// cache gets it produced again).
    fn produce_item_parts(&self, index: u64) -> Result<Vec<Bytes>, ItemError> {
        let err = |reason: String| ItemError { index, reason };
        let guard = self.groups.read().unwrap_or_else(|p| p.into_inner());
        let groups = guard
            .as_ref()
            .ok_or_else(|| err("tensor dict requested after release".into()))?;
        let g = usize::try_from(index)
            .ok()
            .and_then(|i| groups.get(i))
            .ok_or_else(|| err("no such item".into()))?;
        let metadata = (index == 0).then_some(&self.metadata);
        let header = encode_item_header(&g.names, &g.tensor, metadata)
            .map_err(|e| err(format!("serializing {:?}: {e}", g.names[0])))?;
        Ok(vec![Bytes::from(header), g.tensor.data().clone()])
    }

    fn item_size_hint(&self, index: u64) -> Option<u64> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.sizes.get(i))
            .copied()
    }

    fn release(&self) {
        *self.groups.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A tensor dict served as a shared, cached item object.
pub type TensorDictObject = CacheableObject<TensorSource>;

impl CacheableObject<TensorSource> {
    /// Serve `dict` (one tensor per item by default, see [`CacheOptions`]).
    pub fn from_tensors(dict: TensorDict, options: CacheOptions) -> Result<Self, ObjectsError> {
        if dict.is_empty() && !dict.metadata().is_empty() {
            return Err(ObjectsError::InvalidTensor {
                name: "__metadata__".into(),
                why: "a tensor dict without tensors has no item to carry its metadata; send the file as a file".into(),
            });
        }
        CacheableObject::new(TensorSource::new(dict), options)
    }
}
