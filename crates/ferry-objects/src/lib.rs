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
pub use tensors::{
    SafetensorsFileConsumer, Tensor, TensorDict, TensorDictConsumer, TensorDictObject, TensorSource,
};
pub use verify::{Pin, StreamVerifier, Verified};

/// Default chunk size of byte-stream objects: 1 MiB (see the crate docs for why).
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;

/// Largest chunk size accepted: 256 MiB (a chunk is one buffer and one message).
pub const MAX_CHUNK_SIZE: u64 = 256 << 20;

fn check_chunk_size(chunk_size: u64) -> Result<(), ObjectsError> {
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(ObjectsError::InvalidOption(format!(
            "chunk size {chunk_size} is outside 1..={MAX_CHUNK_SIZE}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod testutil;
