//! Options of a [`CacheableObject`](crate::CacheableObject).

/// How items are grouped into chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkPacking {
    /// Exactly `n` items per chunk (fewer in the last). The object advertises a
    /// [`PlanLayout::Items`](ferry_core::PlanLayout::Items) plan, so ferry receivers keep
    /// several requests in flight.
    PerChunk(u64),
    /// NVFlare's packing: the first item always (even when it alone exceeds the limit), then
    /// further items while the running total stays strictly below `max` bytes; an item whose
    /// size hint would reach the limit is not produced. No plan (chunk sizes depend on data).
    /// `max` is a chunk size: `1..=`[`MAX_CHUNK_SIZE`](crate::MAX_CHUNK_SIZE).
    MaxBytes(u64),
}

/// Who must acknowledge an item before it leaves the cache: `Unknown` (NVFlare's
/// `num_receivers == 0`: an item is dropped at its first acknowledgement, so there is
/// effectively no sharing), `Count(n)` (any `n` distinct receivers) or `Ids` (these receivers;
/// acknowledgements from others do not count). The same type the engine hands every object in
/// [`Downloadable::set_transaction`](ferry_core::Downloadable::set_transaction).
pub use ferry_core::ExpectedReceivers;

/// Options of a [`CacheableObject`](crate::CacheableObject).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheOptions {
    /// Chunk packing; default one item per chunk with a plan.
    pub packing: ChunkPacking,
    /// Bytes the cache (stored items plus prefetch reservations) may hold; an item that does
    /// not fit is served uncached. Default [`DEFAULT_CACHE_BUDGET`].
    pub cache_budget: u64,
    /// How many items past a chunk to offer to [`ItemSource::prefetch_item`](crate::ItemSource::prefetch_item); default 2.
    pub prefetch_depth: u64,
    /// Expected receivers. Default unknown, which means: learn them from the transaction the
    /// object is added to (NVFlare reads `num_receivers` there). Anything else is kept as
    /// given. Also settable later with
    /// [`CacheableObject::set_expected_receivers`](crate::CacheableObject::set_expected_receivers).
    pub receivers: ExpectedReceivers,
}

/// Default cache budget: 256 MiB.
pub const DEFAULT_CACHE_BUDGET: u64 = 256 << 20;

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            packing: ChunkPacking::PerChunk(1),
            cache_budget: DEFAULT_CACHE_BUDGET,
            prefetch_depth: 2,
            receivers: ExpectedReceivers::Unknown,
        }
    }
}

impl CacheOptions {
    /// These options with `receivers` expected.
    pub fn with_receivers(mut self, receivers: ExpectedReceivers) -> Self {
        self.receivers = receivers;
        self
    }

    /// These options with a cache budget of `bytes`.
    pub fn with_budget(mut self, bytes: u64) -> Self {
        self.cache_budget = bytes;
        self
    }

    /// These options with `packing`.
    pub fn with_packing(mut self, packing: ChunkPacking) -> Self {
        self.packing = packing;
        self
    }
}
