//! Tensor dicts served item by item as one-tensor safetensors blobs, as NVFlare's tensor
//! downloader does.
//!
//! - [`TensorDict`]: named tensors ([`Tensor`]: dtype, shape, little-endian bytes).
//! - [`TensorSource`] / [`TensorDictObject`]: the producer; one item per distinct buffer, so
//!   aliased tensors (views of one buffer: same `Bytes` pointer and length, same dtype and
//!   shape) are sent once and the other names travel in the blob's `__metadata__` under
//!   [`ALIASES_KEY`] (Python's safetensors ignores it and loads the first name); the dict's
//!   own safetensors `__metadata__` travels in the first item's, under [`METADATA_KEY`].
//! - [`TensorDictConsumer`]: rebuilds the dict in memory (tensor data are zero-copy slices of
//!   the received items; aliases share one buffer again).
//! - [`SafetensorsFileConsumer`]: writes one valid `.safetensors` file incrementally, holding
//!   about one item in memory.
//! - [`TensorItemCheck`]: the checks those consumers make, for a receiver that keeps the item
//!   blobs as they are (a relay, which serves them on).

mod blob;
mod check;
mod digest;
mod disk;
mod memory;
mod source;
mod tensor;
#[cfg(test)]
mod tests;

pub use blob::{ALIASES_KEY, METADATA_KEY};
pub use check::{CheckedItem, TensorItemCheck};
pub(crate) use digest::TensorPinCheck;
pub use digest::{item_hash, tensor_dict_pin, TENSORS_DIGEST_DOMAIN};
pub use disk::{SafetensorsFileConsumer, SafetensorsFileConsumerBuilder};
pub use memory::TensorDictConsumer;
pub use safetensors::Dtype;
pub use source::{TensorDictObject, TensorSource};
pub use tensor::{Tensor, TensorDict};
