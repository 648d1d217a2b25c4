//! NumPy array dicts served item by item as one-key `.npz` blobs, as NVFlare's
//! `ArrayDownloadable` / `ArrayConsumer` (`app_common/np/np_downloader.py`) do.
//!
//! An NVFlare numpy item is what `np.savez(stream, allow_pickle=False, **{name: array})`
//! writes: an uncompressed (stored) zip archive holding one entry `NAME.npy`, an `.npy` file.
//! The object's state is the cacheable `{"start": s, "count": c}` and the chunk data a list of
//! such blobs (NVFlare packs items up to 2 MiB per chunk, [`ChunkPacking::MaxBytes`](crate::ChunkPacking::MaxBytes)).
//!
//! - `format`: the item format on its own, with no object in sight — `format/npy.rs`
//!   ([`NdArray`]: a dtype (NumPy's `descr` string, e.g. `"<f4"`), a shape and the C-order
//!   data, and its `.npy` header) and `format/zip.rs` ([`encode_npz`] / [`decode_npz`]: the
//!   `.npz` container).
//! - `dict.rs`: [`NdArrayDict`], named arrays in insertion order.
//! - `object.rs`: [`NpzSource`] / [`NpzDictObject`], the producer, one item per array, and
//!   [`NpzDictConsumer`], which rebuilds the dict (array data are zero-copy slices of the
//!   items).
//!
//! Each module uses only the ones listed before it.
//!
//! ## Format notes
//!
//! - `.npy` (format 1.0; 2.0 and 3.0 are read too): magic `\x93NUMPY`, major, minor, header
//!   length (u16 LE for 1.0, u32 LE for 2.0/3.0), then a Python dict literal
//!   `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces and a
//!   final `\n` so the data start at a multiple of 64. The data follow, row-major.
//! - Only plain dtypes are supported (`b i u f c ? S a U V M m` with a size); object arrays
//!   (`O`, they need pickle) and structured dtypes (a list `descr`) are refused, as is
//!   `fortran_order: True` (a column-major buffer would be misread as row-major).
//! - Zip: NumPy writes every local header in ZIP64 form (sizes `0xFFFFFFFF`, real sizes in
//!   extra field `0x0001`), entries stored (method 0), fixed timestamp 1980-01-01. The writer
//!   here does the same, so its blobs are what NumPy writes up to the `.npy` header padding;
//!   the central directory and end record switch to ZIP64 only past 4 GiB. The reader walks
//!   the local headers (ZIP64 or not, with or without a data descriptor), verifies each
//!   entry's CRC-32 and stops at the central directory; compressed (`savez_compressed`) and
//!   encrypted entries are refused.

mod dict;
mod format;
mod object;

pub use dict::NdArrayDict;
pub use format::{decode_npz, descr_item_size, encode_npz, NdArray};
pub use object::{NpzDictConsumer, NpzDictObject, NpzSource};

#[cfg(test)]
mod tests;
