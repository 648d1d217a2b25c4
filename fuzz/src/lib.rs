//! Shared parts of ferry's fuzz targets (`fuzz_targets/`): the allocation budget every target
//! runs under, and the per-target limits (documented in `fuzz/README.md` and
//! `docs/security.md`, section Fuzzing).

pub mod budget;
pub mod items;
pub mod objects;
pub mod records;

pub use budget::{within, Limit};

#[global_allocator]
static ALLOC: budget::Counting = budget::Counting;

/// Fixed allowance of the pure decoders: scratch buffers, error messages, small maps.
pub const DECODER_FIXED: usize = 256 * 1024;

/// Per-byte allowance of decoders that build a `rmpv::Value` tree: one msgpack node can be one
/// input byte, and a node is a 32-byte `Value` (a map entry two of them, in a `Vec` that may
/// have doubled its capacity), so 128 bytes per input byte is the honest cost of a tree.
/// Anything that needs more copies what the peer sent or allocates what it claims.
pub const VALUE_TREE_PER_BYTE: usize = 128;
