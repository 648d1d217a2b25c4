//! Objects made of items, produced once and shared by every receiver through a byte-bounded
//! cache (NVFlare's `CacheableObject` / `ItemConsumer` family).
//!
//! - [`ItemSource`]: what the owner implements: item count, produce item `i`, optional size
//!   hint and prefetch.
//! - [`CacheableObject`]: the [`Downloadable`](ferry_core::Downloadable) over a source, with
//!   state `{"start": s, "count": c}`; the state of the next request acknowledges items
//!   `[s, s + c)` for that receiver, and an item is dropped from the cache once every expected
//!   receiver acknowledged it.
//! - [`ItemTracker`]: the receiving side's bookkeeping (shape checks, duplicates, completeness)
//!   for consumers of item objects.

mod object;
mod options;
mod source;
#[cfg(test)]
mod tests;
mod tracker;

pub use object::{CacheStats, CacheableObject};
pub use options::{CacheOptions, ChunkPacking, ExpectedReceivers, DEFAULT_CACHE_BUDGET};
pub use source::{ItemError, ItemSource};
pub use tracker::{ItemTracker, DEFAULT_MAX_ITEMS};

/// State key: index of the first item of the chunk just sent.
pub const START: &str = "start";
/// State key: number of items in the chunk just sent.
pub const COUNT: &str = "count";
