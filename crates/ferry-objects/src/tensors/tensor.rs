//! Tensors and tensor dicts.

use crate::ObjectsError;
use bytes::Bytes;
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Byte length of a tensor of `dtype` and `shape`, or why there is none.
pub(crate) fn byte_len(dtype: Dtype, shape: &[usize]) -> Result<usize, String> {
    let elems = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let bits = elems.checked_mul(dtype.bitsize()).ok_or("size overflows")?;
    if bits % 8 != 0 {
        return Err(format!(
            "{elems} elements of {dtype} do not fill whole bytes"
        ));
    }
    Ok(bits / 8)
}

/// One tensor: dtype, shape and its data (row-major, little-endian), shared as [`Bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Bytes,
}

impl Tensor {
    /// A tensor over `data`, whose length must match `dtype` and `shape`.
    pub fn new(dtype: Dtype, shape: Vec<usize>, data: Bytes) -> Result<Self, ObjectsError> {
        let want = byte_len(dtype, &shape).map_err(|why| ObjectsError::InvalidTensor {
            name: String::new(),
            why,
        })?;
        if want != data.len() {
            return Err(ObjectsError::InvalidTensor {
                name: String::new(),
                why: format!(
                    "{dtype} {shape:?} needs {want} bytes, the data has {}",
                    data.len()
                ),
            });
        }
        Ok(Self { dtype, shape, data })
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The data.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Whether `other` is a view of the same buffer (same pointer and length, dtype, shape).
    pub fn is_alias_of(&self, other: &Tensor) -> bool {
        self.data.as_ptr() == other.data.as_ptr()
            && self.data.len() == other.data.len()
            && self.dtype == other.dtype
            && self.shape == other.shape
    }
}

impl View for &Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Named tensors in insertion order; names are unique. A dict also carries the safetensors
/// `__metadata__` of its file (string keys and values, e.g. `{"format": "pt"}`), which travels
/// with it when it is served ([`TensorDictObject`](crate::TensorDictObject)) and is written back
/// by both consumers.
///
/// Equality compares names, tensors (regardless of order) and metadata.
#[derive(Clone, Debug, Default)]
pub struct TensorDict {
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
    /// The safetensors `__metadata__`; empty when the file had none (an empty map is not
    /// written back: `{}` and no metadata mean the same).
    metadata: BTreeMap<String, String>,
}

impl PartialEq for TensorDict {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.metadata == other.metadata
            && self
                .iter()
                .all(|(name, t)| other.get(name).is_some_and(|o| o == t))
    }
}

impl TensorDict {
    /// An empty dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `tensor` under `name`; a name may appear once (`__metadata__` is reserved by the
    /// safetensors format).
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<(), ObjectsError> {
        let name = name.into();
        if name == "__metadata__" {
            return Err(ObjectsError::InvalidTensor {
                name,
                why: "the name is reserved by the safetensors format".into(),
            });
        }
        if self.index.contains_key(&name) {
            return Err(ObjectsError::InvalidTensor {
                name,
                why: "duplicate name".into(),
            });
        }
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push((name, tensor));
        Ok(())
    }

    /// The safetensors `__metadata__` (empty when there is none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Replace the safetensors `__metadata__`.
    pub fn set_metadata(&mut self, metadata: BTreeMap<String, String>) {
        self.metadata = metadata;
    }

    /// This dict with `metadata` as its safetensors `__metadata__`.
    pub fn with_metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata = metadata;
        self
    }

    /// The metadata as safetensors' serializer takes it (`None` when empty).
    pub(crate) fn metadata_for_header(&self) -> Option<HashMap<String, String>> {
        (!self.metadata.is_empty()).then(|| {
            self.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tensors in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Sum of the tensors' data lengths (aliases counted once per name).
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|(_, t)| t.data.len() as u64).sum()
    }

    /// Parse a whole safetensors buffer; tensor data are zero-copy slices of `buf`.
    pub fn from_safetensors(buf: Bytes) -> Result<Self, ObjectsError> {
        let (n, meta) = safetensors::SafeTensors::read_metadata(&buf).map_err(|source| {
            ObjectsError::Safetensors {
                context: "buffer".into(),
                source,
            }
        })?;
        let base = 8 + n;
        let mut dict = TensorDict::new();
        for name in meta.offset_keys() {
            let Some(info) = meta.info(&name) else {
                continue;
            };
            let (s, e) = info.data_offsets;
            let t = Tensor::new(
                info.dtype,
                info.shape.clone(),
                buf.slice(base + s..base + e),
            )
            .map_err(|e| rename(e, &name))?;
            dict.insert(name, t)?;
        }
        if let Some(m) = meta.metadata() {
            dict.metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        Ok(dict)
    }

    /// Read and parse a `.safetensors` file.
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Self, ObjectsError> {
        let path = path.as_ref();
        let buf = std::fs::read(path)
            .map_err(|e| ObjectsError::io(format!("reading {}", path.display()), e))?;
        Self::from_safetensors(Bytes::from(buf)).map_err(|e| match e {
            ObjectsError::Safetensors { source, .. } => ObjectsError::Safetensors {
                context: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Serialize the whole dict as one safetensors buffer (aliases are written once per name;
    /// the metadata, when there is some, as `__metadata__`).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ObjectsError> {
        safetensors::serialize(self.iter(), self.metadata_for_header()).map_err(|source| {
            ObjectsError::Safetensors {
                context: "serializing a tensor dict".into(),
                source,
            }
        })
    }
}

/// The tensors in insertion order, by value (so a caller can release them one by one).
impl IntoIterator for TensorDict {
    type Item = (String, Tensor);
    type IntoIter = std::vec::IntoIter<(String, Tensor)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

fn rename(e: ObjectsError, name: &str) -> ObjectsError {
    match e {
        ObjectsError::InvalidTensor { why, .. } => ObjectsError::InvalidTensor {
            name: name.to_string(),
            why,
        },
        other => other,
    }
}
