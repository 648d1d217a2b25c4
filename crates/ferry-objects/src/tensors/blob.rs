//! One item = one safetensors blob holding one tensor (plus, for aliases, the other names).

use super::tensor::{byte_len, Tensor};
use bytes::Bytes;
use ferry_core::ConsumeError;
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// `__metadata__` key of an item blob listing the other names of an aliased tensor, as a JSON
/// array of strings.
pub const ALIASES_KEY: &str = "ferry.aliases";

/// `__metadata__` key of the first item's blob carrying the dict's own safetensors
/// `__metadata__` (a JSON object of strings). Python's safetensors (NVFlare's receivers) ignore
/// a blob's metadata, so it costs them nothing; ferry's consumers put it back on the dict.
pub const METADATA_KEY: &str = "ferry.metadata";

/// Serialize one tensor under `names[0]`, listing `names[1..]` as aliases.
#[cfg(test)]
pub(crate) fn encode_item(
    names: &[String],
    tensor: &Tensor,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let mut out = encode_item_header(names, tensor, None)?;
    out.extend_from_slice(tensor.data());
    Ok(out)
}

/// The header of the blob of one tensor under `names[0]`, listing `names[1..]` as aliases and
/// carrying `dict_metadata` (the first item only): the length prefix and JSON that safetensors
/// writes, which depend only on the names, dtype, shape and metadata. The blob is this header
/// followed by the tensor's bytes, so a sender serves it as two parts without copying the
/// tensor.
pub(crate) fn encode_item_header(
    names: &[String],
    tensor: &Tensor,
    dict_metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let mut meta = HashMap::new();
    if names.len() > 1 {
        let aliases = serde_json::to_string(&names[1..]).unwrap_or_else(|_| "[]".into());
        meta.insert(ALIASES_KEY.to_string(), aliases);
    }
    if let Some(m) = dict_metadata.filter(|m| !m.is_empty()) {
        let json = serde_json::to_string(m).unwrap_or_else(|_| "{}".into());
        meta.insert(METADATA_KEY.to_string(), json);
    }
    let meta = (!meta.is_empty()).then_some(meta);
    safetensors::serialize([(names[0].as_str(), HeaderOnly(tensor))], meta)
}

/// A tensor that shows safetensors its dtype, shape and length but no data: serializing it
/// yields the blob's header alone.
struct HeaderOnly<'a>(&'a Tensor);

impl View for HeaderOnly<'_> {
    fn dtype(&self) -> Dtype {
        View::dtype(&self.0)
    }
    fn shape(&self) -> &[usize] {
        self.0.shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&[])
    }
    fn data_len(&self) -> usize {
        self.0.data().len()
    }
}

/// The content of one item blob, before its names are checked against the dict.
#[derive(Debug)]
pub(crate) struct DecodedItem {
    /// First the stored name, then the aliases.
    pub names: Vec<String>,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Offset and length of the tensor data inside the blob.
    pub data_start: usize,
    pub data_len: usize,
    /// The dict's `__metadata__`, carried by the first item only.
    pub dict_metadata: Option<BTreeMap<String, String>>,
}

impl DecodedItem {
    /// The tensor, as a zero-copy slice of `blob`.
    pub(crate) fn tensor(&self, index: u64, blob: &Bytes) -> Result<Tensor, ConsumeError> {
        let end = self.data_start + self.data_len;
        if end > blob.len() {
            return Err(ConsumeError::Integrity(format!(
                "item {index}: tensor data [{}, {end}) beyond the blob's {} bytes",
                self.data_start,
                blob.len()
            )));
        }
        Tensor::new(
            self.dtype,
            self.shape.clone(),
            blob.slice(self.data_start..end),
        )
        .map_err(|e| ConsumeError::Integrity(format!("item {index}: {e}")))
    }
}

/// Parse item `index`: exactly one tensor, optional aliases; errors name the item.
pub(crate) fn decode_item(index: u64, blob: &[u8]) -> Result<DecodedItem, ConsumeError> {
    let bad = |why: String| {
        ConsumeError::Integrity(format!("item {index}: malformed safetensors blob: {why}"))
    };
    let (n, meta) =
        safetensors::SafeTensors::read_metadata(blob).map_err(|e| bad(e.to_string()))?;
    let names = meta.offset_keys();
    let [name] = names.as_slice() else {
        return Err(bad(format!("expected one tensor, found {}", names.len())));
    };
    let info = meta
        .info(name)
        .ok_or_else(|| bad(format!("tensor {name:?} has no info")))?;
    let len = byte_len(info.dtype, &info.shape).map_err(&bad)?;
    let (s, e) = info.data_offsets;
    if e - s != len {
        return Err(bad(format!(
            "tensor {name:?} has {} bytes, expected {len}",
            e - s
        )));
    }
    let mut all = vec![name.clone()];
    if let Some(aliases) = meta.metadata().as_ref().and_then(|m| m.get(ALIASES_KEY)) {
        let list: Vec<String> = serde_json::from_str(aliases)
            .map_err(|e| bad(format!("bad {ALIASES_KEY} metadata: {e}")))?;
        for a in list {
            if a == "__metadata__" || all.contains(&a) {
                return Err(bad(format!("bad alias name {a:?}")));
            }
            all.push(a);
        }
    }
    let dict_metadata = match meta.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)) {
        None => None,
        Some(_) if index != 0 => {
            return Err(bad(format!(
                "{METADATA_KEY} belongs in the first item only"
            )))
        }
        Some(json) => Some(
            serde_json::from_str::<BTreeMap<String, String>>(json)
                .map_err(|e| bad(format!("bad {METADATA_KEY} metadata: {e}")))?,
        ),
    };
    Ok(DecodedItem {
        names: all,
        dtype: info.dtype,
        shape: info.shape.clone(),
        data_start: 8 + n + s,
        data_len: len,
        dict_metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(bytes: &'static [u8]) -> Tensor {
        Tensor::new(Dtype::U8, vec![bytes.len()], Bytes::from_static(bytes)).unwrap()
    }

    #[test]
    fn round_trip_with_aliases() {
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let blob = Bytes::from(encode_item(&names, &t(b"xyz")).unwrap());
        let d = decode_item(0, &blob).unwrap();
        assert_eq!(d.names, names);
        assert_eq!(d.tensor(0, &blob).unwrap(), t(b"xyz"));
    }

    #[test]
    fn blobs_are_byte_identical_to_safetensors_serialize() {
        let data: Vec<u8> = (0..=255u8).cycle().take(4 * 37).collect();
        let tensor = Tensor::new(Dtype::F32, vec![37], Bytes::from(data)).unwrap();
        for names in [
            vec!["layer.0.weight".to_string()],
            vec!["w".to_string(), "tied.w".to_string()],
        ] {
            let meta = (names.len() > 1).then(|| {
                HashMap::from([(
                    ALIASES_KEY.to_string(),
                    serde_json::to_string(&names[1..]).unwrap(),
                )])
            });
            let reference = safetensors::serialize([(names[0].as_str(), &tensor)], meta).unwrap();
            // The header, then the tensor's bytes: what safetensors writes for the tensor.
            let mut out = encode_item_header(&names, &tensor, None).unwrap();
            out.extend_from_slice(tensor.data());
            assert_eq!(out, reference, "{names:?}");
        }
    }

    #[test]
    fn truncated_and_garbage_blobs_name_the_item() {
        let blob = encode_item(&["w".to_string()], &t(b"abcd")).unwrap();
        for bad in [
            &blob[..blob.len() - 1],
            &blob[..5],
            b"garbage!garbage!".as_slice(),
        ] {
            let e = decode_item(7, bad).unwrap_err().to_string();
            assert!(e.contains("item 7"), "{e}");
        }
        let two = safetensors::serialize([("a", &t(b"x")), ("b", &t(b"y"))], None).unwrap();
        let e = decode_item(3, &two).unwrap_err().to_string();
        assert!(e.contains("item 3") && e.contains("one tensor"), "{e}");
    }

    #[test]
    fn the_first_item_carries_the_dict_metadata() {
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let names = vec!["a".to_string(), "b".to_string()];
        let mut blob = encode_item_header(&names, &t(b"xyz"), Some(&meta)).unwrap();
        blob.extend_from_slice(b"xyz");
        let d = decode_item(0, &blob).unwrap();
        assert_eq!(d.dict_metadata.as_ref(), Some(&meta));
        assert_eq!(d.names, names, "aliases travel beside it");
        // only the first item may carry it, and it must be a JSON object of strings
        let e = decode_item(1, &blob).unwrap_err().to_string();
        assert!(e.contains("item 1") && e.contains("first item only"), "{e}");
        for bad in ["[1]", "{\"a\": 1}", "not json"] {
            let m = HashMap::from([(METADATA_KEY.to_string(), bad.to_string())]);
            let blob = safetensors::serialize([("w", &t(b"x"))], Some(m)).unwrap();
            let e = decode_item(0, &blob).unwrap_err().to_string();
            assert!(e.contains("bad ferry.metadata"), "{bad}: {e}");
        }
        // an empty map is not sent
        let mut blob = encode_item_header(&names[..1], &t(b"x"), Some(&BTreeMap::new())).unwrap();
        blob.extend_from_slice(b"x");
        assert_eq!(blob, encode_item(&names[..1], &t(b"x")).unwrap());
    }
}
