//! Python interop: files written by the disk consumer load with Python's safetensors, and files
//! written by Python's safetensors are served as tensor dicts and rebuilt exactly.
//! Uses the interop venv (FERRY_INTEROP_PYTHON); fails, never skips, when it is missing.

mod common;

use bytes::Bytes;
use common::{pattern, pull, run_python};
use ferry_objects::tensors::Dtype;
use ferry_objects::{
    CacheOptions, SafetensorsFileConsumer, Tensor, TensorDict, TensorDictConsumer, TensorDictObject,
};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn numpy_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F64 => "float64",
        Dtype::F32 => "float32",
        Dtype::F16 => "float16",
        Dtype::I64 => "int64",
        Dtype::I32 => "int32",
        Dtype::I8 => "int8",
        Dtype::U8 => "uint8",
        Dtype::BOOL => "bool",
        _ => unreachable!("not used here"),
    }
}

/// Tensors numpy can hold, with finite float values (random bit patterns would include NaNs,
/// which compare unequal), an alias pair and a scalar.
fn numpy_friendly_dict() -> TensorDict {
    let mut d = TensorDict::new();
    let floats: Vec<u8> = (0..64 * 3)
        .flat_map(|i| (i as f32 * 0.25 - 7.0).to_le_bytes())
        .collect();
    d.insert(
        "fc.weight",
        Tensor::new(Dtype::F32, vec![64, 3], Bytes::from(floats)).unwrap(),
    )
    .unwrap();
    let doubles: Vec<u8> = (0..10)
        .flat_map(|i| (i as f64 / 3.0).to_le_bytes())
        .collect();
    d.insert(
        "fc.bias",
        Tensor::new(Dtype::F64, vec![10], Bytes::from(doubles)).unwrap(),
    )
    .unwrap();
    let ints = Bytes::from(pattern(8 * 12, 3));
    d.insert("counts", Tensor::new(Dtype::I64, vec![3, 4], ints).unwrap())
        .unwrap();
    d.insert(
        "bytes",
        Tensor::new(Dtype::U8, vec![2, 3, 5], Bytes::from(pattern(30, 4))).unwrap(),
    )
    .unwrap();
    let bools: Vec<u8> = pattern(9, 5).iter().map(|b| b & 1).collect();
    d.insert(
        "mask",
        Tensor::new(Dtype::BOOL, vec![9], Bytes::from(bools)).unwrap(),
    )
    .unwrap();
    let halves: Vec<u8> = (0..16u16)
        .flat_map(|i| (0x3c00u16 + i).to_le_bytes())
        .collect();
    let tied = Tensor::new(Dtype::F16, vec![4, 4], Bytes::from(halves)).unwrap();
    d.insert("tied.in", tied.clone()).unwrap();
    d.insert("tied.out", tied).unwrap();
    d.insert(
        "step",
        Tensor::new(Dtype::I32, vec![], Bytes::from_static(&[7, 0, 0, 0])).unwrap(),
    )
    .unwrap();
    d
}

const CHECK_FILE: &str = r#"
import json, sys
from safetensors.numpy import load_file
arrays = load_file(sys.argv[1])
print(json.dumps({k: [str(v.dtype), list(v.shape), v.tobytes().hex()] for k, v in arrays.items()}))
"#;

#[test]
fn disk_consumer_output_loads_in_python_to_equal_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let dict = numpy_friendly_dict();
    let obj = TensorDictObject::from_tensors(dict.clone(), CacheOptions::default()).unwrap();
    let mut consumer = SafetensorsFileConsumer::create(dir.path(), "model.safetensors").unwrap();
    pull(&obj, &mut consumer).unwrap();
    let path = dir.path().join("model.safetensors");
    let out = run_python(CHECK_FILE, &[path.to_str().unwrap()]);
    let got: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(got.len(), dict.len(), "{out}");
    for (name, t) in dict.iter() {
        let want = serde_json::json!([numpy_name(t.dtype()), t.shape(), hex(t.data())]);
        assert_eq!(got.get(name), Some(&want), "tensor {name}");
    }
}

const MAKE_FILE: &str = r#"
import sys
import numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(20261128)
arrays = {
    "encoder.layers.0.attn.q_proj.weight": rng.standard_normal((48, 32)).astype(np.float32),
    "encoder.layers.0.attn.q_proj.bias": rng.standard_normal(32).astype(np.float32),
    "encoder.norm.weight": rng.standard_normal(17).astype(np.float16),
    "head": rng.standard_normal((5, 3, 2)).astype(np.float64),
    "vocab_ids": rng.integers(-2**40, 2**40, size=(100,), dtype=np.int64),
    "flags": rng.integers(0, 2, size=(13,)).astype(np.bool_),
    "pixels": rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8),
    "scalar": np.array(3.5, dtype=np.float32),
    "empty": np.zeros((0, 4), dtype=np.int32),
}
save_file(arrays, sys.argv[1], metadata={"format": "np"})
"#;

const COMPARE_FILES: &str = r#"
import sys
import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
assert sorted(a) == sorted(b), (sorted(a), sorted(b))
meta = [safe_open(p, framework="numpy").metadata() for p in sys.argv[1:3]]
assert meta[0] == meta[1], meta
for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert np.array_equal(a[k], b[k]), k
print("equal", len(a))
"#;

#[test]
fn python_written_file_is_served_and_rebuilt_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("from_python.safetensors");
    run_python(MAKE_FILE, &[src.to_str().unwrap()]);
    let dict = TensorDict::load_safetensors(&src).unwrap();
    assert_eq!(dict.len(), 9);
    assert_eq!(
        dict.metadata().get("format").map(String::as_str),
        Some("np"),
        "the file's __metadata__ is read"
    );

    // in memory (equality covers the metadata)
    let obj = TensorDictObject::from_tensors(dict.clone(), CacheOptions::default()).unwrap();
    let mut mem = TensorDictConsumer::new();
    pull(&obj, &mut mem).unwrap();
    assert_eq!(mem.take().unwrap(), dict);

    // on disk, then checked by Python against the original
    let obj = TensorDictObject::from_tensors(dict.clone(), CacheOptions::default()).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let mut disk = SafetensorsFileConsumer::create(out_dir.path(), "rebuilt.safetensors").unwrap();
    pull(&obj, &mut disk).unwrap();
    let rebuilt = out_dir.path().join("rebuilt.safetensors");
    assert_eq!(TensorDict::load_safetensors(&rebuilt).unwrap(), dict);
    let out = run_python(
        COMPARE_FILES,
        &[src.to_str().unwrap(), rebuilt.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "equal 9");
}

#[test]
fn python_reads_each_served_item_as_a_one_tensor_safetensors_blob() {
    // What an NVFlare TensorConsumer does with every item: safetensors load of the bytes. The
    // first item also carries the dict's __metadata__ (ferry.metadata): Python ignores it.
    let dict = numpy_friendly_dict().with_metadata(
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect(),
    );
    let obj = TensorDictObject::from_tensors(dict, CacheOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut state = None;
    use ferry_core::{ChunkData, Downloadable, Produced};
    while let Produced::Data { data, state: s } = obj.produce(state.as_ref(), "py").unwrap() {
        // Each item's parts one after the other: the bytes its `bin` carries on the wire.
        let ChunkData::Items(items) = data.into_joined() else {
            panic!("items expected")
        };
        for it in items {
            let p = dir.path().join(format!("item{}.bin", paths.len()));
            std::fs::write(&p, &it).unwrap();
            paths.push(p.to_string_lossy().into_owned());
        }
        state = Some(s);
    }
    let script = r#"
import sys
from safetensors.numpy import load
names = []
for p in sys.argv[1:]:
    d = load(open(p, "rb").read())
    assert len(d) == 1, d.keys()
    names += list(d)
print(",".join(names))
"#;
    let args: Vec<&str> = paths.iter().map(|s| s.as_str()).collect();
    let out = run_python(script, &args);
    // 8 names, the alias pair travels as one item under its first name
    assert_eq!(
        out.trim(),
        "fc.weight,fc.bias,counts,bytes,mask,tied.in,step"
    );
}
