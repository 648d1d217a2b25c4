//! # ferry-objects — the objects users download every day
//!
//! Built-in [`Downloadable`](ferry_core::Downloadable)s and [`Consumer`](ferry_core::Consumer)s
//! for the Ferry download service. Their states have NVFlare's shapes, so Python peers
//! interoperate:
//!
//! | object | producer | consumers | state |
//! |---|---|---|---|
//! | in-memory bytes | [`BytesObject`] | [`BytesConsumer`] | `{"received_bytes": n}` |
//! | file | [`FileObject`] | [`FileConsumer`] | `{"received_bytes": n}` |
//! | items shared by many receivers | [`CacheableObject`] over an [`ItemSource`] | [`ItemTracker`] helps write one | `{"start": s, "count": c}` |
//! | NumPy array dict (one-key `.npz` items) | [`NpzDictObject`] | [`NpzDictConsumer`] | `{"start": s, "count": c}` |
//! | tensor dict (safetensors) | [`TensorDictObject`] | [`TensorDictConsumer`] (memory), [`SafetensorsFileConsumer`] (disk) | `{"start": s, "count": c}` |
//!
//! Byte-stream objects advertise a [`TransferPlan`](ferry_core::TransferPlan) with their size,
//! chunk size and optionally a BLAKE3 digest; item objects with a fixed number of items per
//! chunk advertise theirs, so ferry receivers keep several requests in flight. NVFlare
//! receivers ignore plans and simply echo states.
//!
//! ## Chunk size
//!
//! The default is [`DEFAULT_CHUNK_SIZE`] = 1 MiB, not NVFlare's 5 MiB: a ferry receiver keeps a
//! window of requests in flight, so a small chunk costs no round trips, while the producer's
//! memory is `chunk × window × receivers` (1 MiB × 8 × 8 = 64 MiB instead of 320 MiB). 1 MiB
//! is also the F3 stream chunk of NVFlare 2.9, so one chunk maps onto one stream frame, and it
//! amortises the per-chunk `pread` + reply overhead well (see `docs/benchmarks.md`).
//!
//! ## Example
//!
//! ```
//! use bytes::Bytes;
//! use ferry_core::{Consumer, Downloadable, Produced};
//! use ferry_objects::{BytesConsumer, BytesObject};
//!
//! let obj = BytesObject::new(Bytes::from_static(b"hello ferry")).with_chunk_size(4).unwrap();
//! let mut consumer = BytesConsumer::new();
//! consumer.plan_received(&obj.plan().unwrap()).unwrap();
//! let mut state = None;
//! loop {
//!     match obj.produce(state.as_ref(), "site-1").unwrap() {
//!         Produced::Data { data, state: next } => {
//!             state = Some(consumer.consume("R1", &next, data).unwrap());
//!         }
//!         Produced::Eof => break,
//!         Produced::Error { reason } | Produced::Invalid { reason } => panic!("{reason}"),
//!     }
//! }
//! consumer.completed("R1").unwrap();
//! assert_eq!(consumer.take().unwrap(), Bytes::from_static(b"hello ferry"));
//! ```

mod buffer_pool;
mod byte_state;
mod bytes_object;
pub mod cacheable;
mod delivery;
mod error;
pub mod file;
mod item_dict;
mod names;
pub mod numpy;
mod ranges;
mod small_writes;
pub mod tensors;
pub mod verify;

pub use byte_state::RECEIVED_BYTES;
pub use bytes_object::{BytesConsumer, BytesObject, DEFAULT_MAX_BYTES};
pub use cacheable::{
    CacheOptions, CacheStats, CacheableObject, ChunkPacking, ExpectedReceivers, ItemError,
    ItemSource, ItemTracker,
};
pub use delivery::Delivery;
pub use error::ObjectsError;
pub use file::{
    FileConsumer, FileConsumerBuilder, FileObject, FileObjectBuilder, DEFAULT_SYNC_EVERY,
};
pub use numpy::{NdArray, NdArrayDict, NpzDictConsumer, NpzDictObject, NpzSource};
pub use ranges::RangeSet;
pub use tensors::{
    SafetensorsFileConsumer, Tensor, TensorDict, TensorDictConsumer, TensorDictObject, TensorSource,
};
pub use verify::{Pin, StreamVerifier, Verified};

/// Default chunk size of byte-stream objects: 1 MiB (see the crate docs for why).
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;

/// Largest chunk size: 64 MiB. A chunk travels as one reply message and each receiver keeps a
/// window of them in flight, so a chunk stays well inside a cell's default frame limit
/// (256 MiB) and a window's worth stays a modest amount of memory.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

/// Smallest chunk size worth offering to a person (the CLI's `--chunk`, the Python bindings'
/// `chunk_size`): 64 KiB. Below it a transfer is mostly per-request overhead. The objects
/// themselves accept chunks down to one byte (tests use tiny ones).
pub const MIN_USEFUL_CHUNK_SIZE: u64 = 64 << 10;

/// The one chunk-size check: `chunk_size` bytes must be in `1..=`[`MAX_CHUNK_SIZE`] (what
/// [`FileObject`], [`BytesObject`] and [`ChunkPacking::MaxBytes`] accept).
pub fn check_chunk_size(chunk_size: u64) -> Result<(), ObjectsError> {
    check_chunk_size_from(chunk_size, 1)
}

/// The same check for a size a person chose: `chunk_size` must also be at least
/// [`MIN_USEFUL_CHUNK_SIZE`]. The error says the range in human units.
pub fn check_useful_chunk_size(chunk_size: u64) -> Result<(), ObjectsError> {
    check_chunk_size_from(chunk_size, MIN_USEFUL_CHUNK_SIZE)
}

fn check_chunk_size_from(chunk_size: u64, min: u64) -> Result<(), ObjectsError> {
    if (min..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Ok(());
    }
    Err(ObjectsError::InvalidOption(format!(
        "chunk size {} is outside {}..={}",
        human(chunk_size),
        human(min),
        human(MAX_CHUNK_SIZE)
    )))
}

/// `n` bytes as `64KiB`, `1MiB` or `12345B` (exact units only).
fn human(n: u64) -> String {
    match n {
        0 => "0B".into(),
        n if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod chunk_size_tests {
    use super::*;

    #[test]
    fn one_range_for_every_chunk_size() {
        assert!(check_chunk_size(1).is_ok());
        assert!(check_chunk_size(MAX_CHUNK_SIZE).is_ok());
        assert!(check_chunk_size(0).is_err());
        assert!(check_chunk_size(MAX_CHUNK_SIZE + 1).is_err());
        assert!(check_useful_chunk_size(MIN_USEFUL_CHUNK_SIZE).is_ok());
        assert!(check_useful_chunk_size(MAX_CHUNK_SIZE).is_ok());
        let low = check_useful_chunk_size(MIN_USEFUL_CHUNK_SIZE - 1).unwrap_err();
        assert_eq!(
            low.to_string(),
            "invalid option: chunk size 65535B is outside 64KiB..=64MiB"
        );
        // every object that takes a chunk size applies it
        let big = MAX_CHUNK_SIZE + 1;
        assert!(BytesObject::new(bytes::Bytes::new())
            .with_chunk_size(big)
            .is_err());
        assert!(BytesObject::new(bytes::Bytes::new())
            .with_chunk_size(MAX_CHUNK_SIZE)
            .is_ok());
    }
}
