//! The item source trait.

use bytes::Bytes;

/// Producing an item failed (answered as a `process_exception`, NVFlare's "produce raised").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("item {index}: {reason}")]
pub struct ItemError {
    /// The item index.
    pub index: u64,
    /// Why, in words.
    pub reason: String,
}

/// An object made of `item_count()` items, each serialized on demand.
///
/// Items must be deterministic: producing item `i` twice yields the same bytes (an item may be
/// produced again after it left the cache). `produce_item` may run concurrently for different
/// receivers.
pub trait ItemSource: Send + Sync + 'static {
    /// Number of items.
    fn item_count(&self) -> u64;

    /// Serialize item `index` (< `item_count()`).
    fn produce_item(&self, index: u64) -> Result<Bytes, ItemError>;

    /// Item `index` as the parts it is the concatenation of, which the object sends one
    /// after the other without joining them: a source whose items are mostly memory it
    /// already holds (a tensor's data behind a small header) serves them without a copy.
    /// The default is [`produce_item`](Self::produce_item) as one part; an override must
    /// yield the same bytes as `produce_item`.
    fn produce_item_parts(&self, index: u64) -> Result<Vec<Bytes>, ItemError> {
        Ok(vec![self.produce_item(index)?])
    }

    /// A lower bound of item `index`'s serialized size, known without serializing it. Used to
    /// pack chunks ([`ChunkPacking::MaxBytes`](crate::ChunkPacking::MaxBytes)), to decide on
    /// prefetch, and for the plan's total size.
    fn item_size_hint(&self, _index: u64) -> Option<u64> {
        None
    }

    /// A hint that item `index` will be requested soon: a source with its own workers may
    /// start serializing it. Return `true` if it did; the cache then reserves the item's
    /// size hint in its byte budget until the item is produced. The default does nothing.
    fn prefetch_item(&self, _index: u64) -> bool {
        false
    }

    /// Drop the source data; called once, from the object's `release` hook.
    fn release(&self) {}
}
