//! The NumPy item format: `.npy` arrays ([`npy`]) in an uncompressed `.npz` zip ([`zip`]).
//! It knows nothing of objects, caches or downloads.

mod npy;
mod zip;

pub(super) use npy::invalid;
pub use npy::{descr_item_size, NdArray};
pub(crate) use zip::encode_npz_into;
pub use zip::{decode_npz, encode_npz};

#[cfg(test)]
mod tests;
