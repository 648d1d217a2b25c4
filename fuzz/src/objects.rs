//! Small real objects the download targets serve and consume: bytes, a file, a tensor dict and
//! a NumPy array dict, built once per process (their contents) and wrapped in fresh objects per
//! input (their per-transaction state).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use ferry_core::Downloadable;
use ferry_objects::cacheable::{CacheOptions, ChunkPacking};
use ferry_objects::{
    BytesObject, FileObject, NdArray, NdArrayDict, NpzDictObject, Tensor, TensorDict,
    TensorDictObject,
};
use safetensors::Dtype;

/// Ref ids of the served objects (a request names one of them, or something else).
pub const REF_BYTES: &str = "Rbytes";
/// The file.
pub const REF_FILE: &str = "Rfile";
/// The tensor dict (one tensor per chunk, with a plan).
pub const REF_TENSORS: &str = "Rtensors";
/// The array dict (NVFlare's packing, no plan).
pub const REF_ARRAYS: &str = "Rarrays";

fn pattern(n: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>(),
    )
}

struct Contents {
    bytes: Bytes,
    file: PathBuf,
    tensors: TensorDict,
    arrays: NdArrayDict,
    _dir: tempfile::TempDir,
}

fn contents() -> &'static Contents {
    static C: OnceLock<Contents> = OnceLock::new();
    C.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("object.bin");
        std::fs::write(&file, pattern(3000, 5)).expect("write the served file");
        let mut tensors = TensorDict::new();
        for (i, (dtype, shape)) in [
            (Dtype::F32, vec![4, 3]),
            (Dtype::U8, vec![5]),
            (Dtype::I64, vec![2]),
        ]
        .into_iter()
        .enumerate()
        {
            let len = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            let t = Tensor::new(dtype, shape, pattern(len, i as u8)).expect("tensor");
            tensors
                .insert(format!("layer{i}.w"), t)
                .expect("insert tensor");
        }
        let mut arrays = NdArrayDict::new();
        for (i, (dtype, shape)) in [("<f4", vec![3u64, 2]), ("|u1", vec![7]), ("<i8", vec![])]
            .into_iter()
            .enumerate()
        {
            let n = shape.iter().product::<u64>() as usize;
            let item = ferry_objects::numpy::descr_item_size(dtype).expect("dtype") as usize;
            let a = NdArray::new(dtype, shape, pattern(n * item, 9 + i as u8)).expect("array");
            arrays.insert(format!("a{i}"), a).expect("insert array");
        }
        Contents {
            bytes: pattern(2500, 1),
            file,
            tensors,
            arrays,
            _dir: dir,
        }
    })
}

/// Fresh objects over the shared contents, with their ref ids.
pub fn served() -> Vec<(&'static str, Arc<dyn Downloadable>)> {
    let c = contents();
    let bytes = BytesObject::new(c.bytes.clone())
        .with_chunk_size(1000)
        .expect("chunk size")
        .with_digest();
    let file = FileObject::builder(&c.file)
        .chunk_size(1024)
        .open()
        .expect("open the served file");
    let tensors = TensorDictObject::from_tensors(c.tensors.clone(), CacheOptions::default())
        .expect("tensor object");
    let arrays = NpzDictObject::from_arrays(
        c.arrays.clone(),
        CacheOptions::default().with_packing(ChunkPacking::MaxBytes(100)),
    )
    .expect("array object");
    vec![
        (REF_BYTES, Arc::new(bytes) as Arc<dyn Downloadable>),
        (REF_FILE, Arc::new(file)),
        (REF_TENSORS, Arc::new(tensors)),
        (REF_ARRAYS, Arc::new(arrays)),
    ]
}
