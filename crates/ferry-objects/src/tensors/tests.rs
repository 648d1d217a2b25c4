//! Unit tests of tensor dicts, their producer and both consumers.

use super::*;
use crate::cacheable::{CacheOptions, ExpectedReceivers, ItemSource, COUNT, START};
use crate::testutil::{drive, pattern};
use crate::ObjectsError;
use bytes::Bytes;
use ferry_core::{ChunkData, ConsumeError, Consumer, Downloadable, State};
use std::fs::OpenOptions;

fn tensor(dtype: Dtype, shape: &[usize], seed: u64) -> Tensor {
    let len = super::tensor::byte_len(dtype, shape).unwrap();
    Tensor::new(dtype, shape.to_vec(), Bytes::from(pattern(len, seed))).unwrap()
}

/// A dict with several dtypes, an empty tensor, a scalar and two aliases of one buffer.
fn sample() -> TensorDict {
    let mut d = TensorDict::new();
    d.insert("layer.0.weight", tensor(Dtype::F32, &[16, 8], 1))
        .unwrap();
    d.insert("layer.0.bias", tensor(Dtype::F32, &[16], 2))
        .unwrap();
    d.insert("emb", tensor(Dtype::BF16, &[10, 4], 3)).unwrap();
    d.insert("steps", tensor(Dtype::I64, &[], 4)).unwrap();
    d.insert("mask", tensor(Dtype::BOOL, &[7], 5)).unwrap();
    d.insert("empty", tensor(Dtype::F64, &[0, 3], 6)).unwrap();
    let shared = tensor(Dtype::F16, &[4, 4], 7);
    d.insert("tied.a", shared.clone()).unwrap();
    d.insert("tied.b", shared.clone()).unwrap();
    d.insert("tied.c", shared).unwrap();
    d
}

#[test]
fn tensors_validate_their_size_and_names() {
    assert!(matches!(
        Tensor::new(Dtype::F32, vec![3], Bytes::from_static(&[0; 11])),
        Err(ObjectsError::InvalidTensor { .. })
    ));
    assert!(Tensor::new(Dtype::F32, vec![usize::MAX, 2], Bytes::new()).is_err());
    let mut d = TensorDict::new();
    d.insert("a", tensor(Dtype::U8, &[1], 0)).unwrap();
    assert!(d.insert("a", tensor(Dtype::U8, &[1], 0)).is_err());
    assert!(d
        .insert("__metadata__", tensor(Dtype::U8, &[1], 0))
        .is_err());
}

#[test]
fn a_dict_gives_its_tensors_by_value_in_insertion_order() {
    let d = sample();
    let by_ref: Vec<(String, Tensor)> = d.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    let by_value: Vec<(String, Tensor)> = d.into_iter().collect();
    assert_eq!(by_value, by_ref);
    assert_eq!(by_value[0].0, "layer.0.weight");
    assert!(by_value[6].1.is_alias_of(&by_value[8].1));
}

#[test]
fn aliases_are_one_item() {
    let src = TensorSource::new(sample());
    assert_eq!(src.item_count(), 7, "9 names, 3 of them one buffer");
    // same bytes but another buffer is not an alias
    let mut d = TensorDict::new();
    d.insert("x", tensor(Dtype::U8, &[4], 9)).unwrap();
    d.insert("y", tensor(Dtype::U8, &[4], 9)).unwrap();
    assert_eq!(TensorSource::new(d).item_count(), 2);
}

#[test]
fn memory_consumer_rebuilds_the_dict_with_aliases_shared() {
    let dict = sample();
    let obj = TensorDictObject::from_tensors(dict.clone(), CacheOptions::default()).unwrap();
    let mut c = TensorDictConsumer::new();
    let delivery = c.delivery();
    drive(&obj, &mut c, None, |v| v.reverse()).unwrap();
    let got = c.take().unwrap();
    assert_eq!(got, dict);
    assert!(!delivery.is_ready(), "take() empties the delivery too");
    let a = got.get("tied.a").unwrap();
    assert!(
        a.is_alias_of(got.get("tied.c").unwrap()),
        "aliases share one buffer"
    );
}

#[test]
fn items_are_python_loadable_one_tensor_blobs() {
    let obj = TensorDictObject::from_tensors(sample(), CacheOptions::default()).unwrap();
    let data = match obj.produce(None, "a").unwrap() {
        ferry_core::Produced::Data { data, .. } => data,
        other => panic!("{other:?}"),
    };
    let ChunkData::Items(items) = data.into_joined() else {
        panic!("items")
    };
    let st = safetensors::SafeTensors::deserialize(&items[0]).unwrap();
    assert_eq!(st.names(), vec!["layer.0.weight"]);
}

#[test]
fn items_are_served_from_the_tensors_own_memory() {
    let dict = sample();
    let obj = TensorDictObject::from_tensors(dict.clone(), CacheOptions::default()).unwrap();
    let first = dict.get("layer.0.weight").unwrap().data().clone();
    // produced twice (the second as for a receiver behind the cache): never a copy of the data
    for requester in ["a", "b"] {
        obj.clear_cache();
        let data = match obj.produce(None, requester).unwrap() {
            ferry_core::Produced::Data { data, .. } => data,
            other => panic!("{other:?}"),
        };
        let ChunkData::ItemParts(items) = data else {
            panic!("a tensor item is its header and the tensor's memory: {data:?}")
        };
        let [header, body] = items[0].as_slice() else {
            panic!("two parts: {:?}", items[0])
        };
        assert_eq!(body.as_ptr(), first.as_ptr(), "the tensor's own buffer");
        assert_eq!(body.len(), first.len());
        let mut blob = header.to_vec();
        blob.extend_from_slice(body);
        let st = safetensors::SafeTensors::deserialize(&blob).unwrap();
        assert_eq!(st.tensor("layer.0.weight").unwrap().data(), &first[..]);
    }
    assert_eq!(obj.stats().productions, 2);
}

#[test]
fn disk_consumer_writes_a_valid_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let dict = sample();
    let obj = TensorDictObject::from_tensors(
        dict.clone(),
        CacheOptions::default().with_receivers(ExpectedReceivers::Count(1)),
    )
    .unwrap();
    let mut c = SafetensorsFileConsumer::create(dir.path(), "model.safetensors").unwrap();
    drive(&obj, &mut c, None, |v| v.swap(0, 3)).unwrap();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(parsed.len(), 9);
    assert_eq!(TensorDict::load_safetensors(&path).unwrap(), dict);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no part or spool file left");
    // the destination now exists
    assert!(matches!(
        SafetensorsFileConsumer::create(dir.path(), "model.safetensors"),
        Err(ObjectsError::DestinationExists(_))
    ));
    assert!(
        SafetensorsFileConsumer::builder(dir.path(), "model.safetensors")
            .overwrite(true)
            .open()
            .is_ok()
    );
    assert!(SafetensorsFileConsumer::create(dir.path(), "../x").is_err());
}

#[test]
fn whole_file_round_trip_through_from_safetensors() {
    let dict = sample();
    let buf = Bytes::from(dict.to_safetensors().unwrap());
    assert_eq!(TensorDict::from_safetensors(buf).unwrap(), dict);
    assert!(matches!(
        TensorDict::from_safetensors(Bytes::from_static(b"nonsense")),
        Err(ObjectsError::Safetensors { .. })
    ));
}

fn chunk(start: u64, blobs: Vec<Bytes>) -> (State, ChunkData) {
    let st = State::new()
        .with(START, start)
        .with(COUNT, blobs.len() as u64);
    (st, ChunkData::Items(blobs))
}

#[test]
fn malformed_items_fail_with_the_item_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = TensorSource::new(sample()).produce_item(2).unwrap();
    let truncated = good.slice(..good.len() - 3);
    let mut two = TensorDict::new();
    two.insert("p", tensor(Dtype::U8, &[2], 1)).unwrap();
    two.insert("q", tensor(Dtype::U8, &[2], 2)).unwrap();
    let two = Bytes::from(two.to_safetensors().unwrap());
    for (what, blob) in [
        ("truncated", truncated),
        ("garbage", Bytes::from_static(b"\x05\0\0\0\0\0\0\0{bad}")),
        ("two tensors", two),
        ("empty", Bytes::new()),
    ] {
        let (st, data) = chunk(4, vec![blob]);
        let mut m = TensorDictConsumer::new();
        let e = m.consume("r", &st, data.clone()).unwrap_err();
        assert!(matches!(e, ConsumeError::Integrity(_)), "{what}: {e}");
        assert!(e.to_string().contains("item 4"), "{what}: {e}");
        let mut d = SafetensorsFileConsumer::create(dir.path(), "t.safetensors").unwrap();
        let e = d.consume("r", &st, data).unwrap_err();
        assert!(e.to_string().contains("item 4"), "{what}: {e}");
        d.failed("r", &e.to_string());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{what}");
    }
    // a name delivered twice by two items
    let mut m = TensorDictConsumer::new();
    let (st, data) = chunk(0, vec![good.clone(), good]);
    let e = m.consume("r", &st, data).unwrap_err();
    assert!(e.to_string().contains("item 1"), "{e}");
    // wrong shape
    let mut m = TensorDictConsumer::new();
    assert!(matches!(
        m.consume("r", &st, ChunkData::Bytes(Bytes::new())),
        Err(ConsumeError::BadChunk(_))
    ));
}

#[test]
fn missing_items_fail_at_completion() {
    let dir = tempfile::tempdir().unwrap();
    let obj = TensorDictObject::from_tensors(sample(), CacheOptions::default()).unwrap();
    let mut d = SafetensorsFileConsumer::create(dir.path(), "t.safetensors").unwrap();
    let e = drive(&obj, &mut d, None, |v| {
        v.remove(2);
    })
    .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn disk_write_error_fails_with_the_os_error_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let obj = TensorDictObject::from_tensors(sample(), CacheOptions::default()).unwrap();
    let mut d = SafetensorsFileConsumer::create(dir.path(), "t.safetensors").unwrap();
    d.replace_spool_for_test(OpenOptions::new().write(true).open("/dev/full").unwrap());
    let e = drive(&obj, &mut d, None, |_| {}).unwrap_err();
    let ConsumeError::Io { source, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(source.raw_os_error(), Some(28), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn memory_consumer_keeps_the_senders_order_when_items_arrive_out_of_order() {
    let src = TensorSource::new(sample());
    let n = src.item_count();
    let mut m = TensorDictConsumer::new();
    for i in (0..n).rev() {
        let (st, data) = chunk(i, vec![src.produce_item(i).unwrap()]);
        m.consume("r", &st, data).unwrap();
    }
    m.completed("r").unwrap();
    let got: Vec<String> = m
        .take()
        .unwrap()
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    let want: Vec<String> = sample().iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(got, want);
}

mod pinned {
    use super::*;
    use crate::verify::{Pin, Verified};

    fn serve(dict: &TensorDict) -> TensorDictObject {
        TensorDictObject::from_tensors(dict.clone(), CacheOptions::default()).unwrap()
    }

    #[test]
    fn the_digest_is_the_documented_definition() {
        // One item, by hand: names, dtype, shape and bytes, little-endian u64 lengths.
        let mut d = TensorDict::new();
        d.insert(
            "w",
            Tensor::new(Dtype::U8, vec![2], Bytes::from_static(b"ab")).unwrap(),
        )
        .unwrap();
        let mut item = Vec::new();
        for part in [
            &1u64.to_le_bytes()[..],
            &1u64.to_le_bytes(),
            b"w",
            &2u64.to_le_bytes(),
            b"U8",
            &1u64.to_le_bytes(),
            &2u64.to_le_bytes(),
            &2u64.to_le_bytes(),
            b"ab",
        ] {
            item.extend_from_slice(part);
        }
        let mut top = b"ferry-tensors/1".to_vec();
        top.extend_from_slice(&1u64.to_le_bytes());
        top.extend_from_slice(blake3::hash(&item).as_bytes());
        assert_eq!(tensor_dict_pin(&d), Pin::new(2, blake3::hash(&top)));
        // order, names, dtype, shape and bytes all count
        let base = tensor_dict_pin(&sample());
        let mut renamed = TensorDict::new();
        for (n, t) in sample().iter() {
            renamed
                .insert(if n == "emb" { "emb2" } else { n }, t.clone())
                .unwrap();
        }
        assert_ne!(tensor_dict_pin(&renamed).blake3, base.blake3);
        let mut reshaped = TensorDict::new();
        for (n, t) in sample().iter() {
            let t = if n == "layer.0.weight" {
                Tensor::new(t.dtype(), vec![8, 16], t.data().clone()).unwrap()
            } else {
                t.clone()
            };
            reshaped.insert(n, t).unwrap();
        }
        assert_ne!(tensor_dict_pin(&reshaped).blake3, base.blake3);
        assert_eq!(tensor_dict_pin(&reshaped).size, base.size);
    }

    #[test]
    fn both_consumers_verify_the_pinned_dict_in_any_order() {
        let dict = sample();
        let pin = tensor_dict_pin(&dict);
        let mut c = TensorDictConsumer::new().pin(pin);
        assert!(c.blocks(), "hashing goes to the pool");
        drive(&serve(&dict), &mut c, None, |v| v.reverse()).unwrap();
        assert_eq!(c.verified(), Verified::Pinned(pin));
        assert_eq!(c.take().unwrap(), dict);
        let dir = tempfile::tempdir().unwrap();
        let mut d = SafetensorsFileConsumer::builder(dir.path(), "m.safetensors")
            .pin(pin)
            .open()
            .unwrap();
        drive(&serve(&dict), &mut d, None, |v| v.swap(0, 2)).unwrap();
        assert_eq!(d.verified(), Verified::Pinned(pin));
        assert!(dir.path().join("m.safetensors").exists());
    }

    #[test]
    fn other_content_fails_and_leaves_nothing() {
        let pinned = tensor_dict_pin(&sample());
        // same names, dtypes, shapes and size; one tensor's bytes differ
        let mut other = TensorDict::new();
        for (n, t) in sample().iter() {
            let t = if n == "emb" {
                tensor(Dtype::BF16, &[10, 4], 99)
            } else {
                t.clone()
            };
            other.insert(n, t).unwrap();
        }
        assert_eq!(tensor_dict_pin(&other).size, pinned.size);
        let mut c = TensorDictConsumer::new().pin(pinned);
        let e = drive(&serve(&other), &mut c, None, |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor-dict digest mismatch") && e.contains(&pinned.hex()),
            "{e}"
        );
        assert!(c.take().is_none());
        let dir = tempfile::tempdir().unwrap();
        let mut d = SafetensorsFileConsumer::builder(dir.path(), "m.safetensors")
            .pin(pinned)
            .open()
            .unwrap();
        let e = drive(&serve(&other), &mut d, None, |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor-dict digest mismatch"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // more tensor data than pinned: refused as it arrives
        let mut bigger = sample();
        bigger
            .insert("extra", tensor(Dtype::F32, &[64], 11))
            .unwrap();
        let mut c = TensorDictConsumer::new().pin(pinned);
        let e = drive(&serve(&bigger), &mut c, None, |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the ticket pins") && e.contains("bytes of tensor data so far"),
            "{e}"
        );
    }
}

/// The safetensors `__metadata__` of a served dict (`{"format": "pt"}` for a PyTorch
/// checkpoint) comes back on the received dict and in the written file, pinned by the digest.
mod metadata {
    use super::*;
    use crate::verify::{Pin, Verified};
    use std::collections::BTreeMap;

    fn with_meta() -> TensorDict {
        sample().with_metadata(BTreeMap::from([
            ("format".to_string(), "pt".to_string()),
            ("note".to_string(), "ünïcode, \"quotes\"".to_string()),
        ]))
    }

    fn serve(dict: &TensorDict) -> TensorDictObject {
        TensorDictObject::from_tensors(dict.clone(), CacheOptions::default()).unwrap()
    }

    #[test]
    fn files_keep_their_metadata() {
        let dict = with_meta();
        let buf = dict.to_safetensors().unwrap();
        let back = TensorDict::from_safetensors(Bytes::from(buf)).unwrap();
        assert_eq!(back.metadata(), dict.metadata());
        assert_eq!(back, dict);
        assert_ne!(back, sample(), "metadata counts in equality");
    }

    #[test]
    fn both_consumers_get_it_back_in_any_order() {
        let dict = with_meta();
        let pin = tensor_dict_pin(&dict);
        assert_ne!(pin, tensor_dict_pin(&sample()), "metadata is pinned");
        assert_eq!(pin.size, tensor_dict_pin(&sample()).size);
        for (label, order) in [
            ("in order", (|_: &mut Vec<_>| {}) as fn(&mut Vec<_>)),
            ("reversed", |v: &mut Vec<_>| v.reverse()),
        ] {
            let mut c = TensorDictConsumer::new().pin(pin);
            drive(&serve(&dict), &mut c, None, order).unwrap();
            assert_eq!(c.verified(), Verified::Pinned(pin));
            let got = c.take().unwrap();
            assert_eq!(got.metadata(), dict.metadata(), "{label}");
            let mut unpinned = TensorDictConsumer::new();
            drive(&serve(&dict), &mut unpinned, None, order).unwrap();
            assert_eq!(unpinned.take().unwrap(), dict, "{label}");

            let dir = tempfile::tempdir().unwrap();
            let mut d = SafetensorsFileConsumer::builder(dir.path(), "m.safetensors")
                .pin(pin)
                .open()
                .unwrap();
            drive(&serve(&dict), &mut d, None, order).unwrap();
            let file = TensorDict::load_safetensors(dir.path().join("m.safetensors")).unwrap();
            assert_eq!(file.metadata(), dict.metadata(), "{label}");
            assert_eq!(file, dict, "{label}");
        }
    }

    #[test]
    fn metadata_other_than_pinned_fails() {
        // the pin says "no metadata", the sender adds some; and the reverse
        for (pinned, sent) in [(sample(), with_meta()), (with_meta(), sample())] {
            let mut c = TensorDictConsumer::new().pin(tensor_dict_pin(&pinned));
            let e = drive(&serve(&sent), &mut c, None, |_| {})
                .unwrap_err()
                .to_string();
            assert!(e.contains("tensor-dict digest mismatch"), "{e}");
        }
    }

    #[test]
    fn the_digest_appends_the_metadata_as_documented() {
        let mut d = TensorDict::new();
        d.insert("w", tensor(Dtype::U8, &[2], 1)).unwrap();
        let plain = tensor_dict_pin(&d);
        let d = d.with_metadata(BTreeMap::from([
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]));
        let item = item_hash(&["w"], Dtype::U8, &[2], d.get("w").unwrap().data());
        let mut top = TENSORS_DIGEST_DOMAIN.to_vec();
        top.extend_from_slice(&1u64.to_le_bytes());
        top.extend_from_slice(&item);
        assert_eq!(plain.blake3, blake3::hash(&top), "no metadata: as before");
        top.extend_from_slice(&2u64.to_le_bytes());
        for s in ["a", "1", "b", "2"] {
            top.extend_from_slice(&(s.len() as u64).to_le_bytes());
            top.extend_from_slice(s.as_bytes());
        }
        assert_eq!(tensor_dict_pin(&d), Pin::new(2, blake3::hash(&top)));
    }

    #[test]
    fn an_empty_dict_cannot_carry_metadata() {
        let empty = TensorDict::new().with_metadata(BTreeMap::from([("a".into(), "b".into())]));
        let e = TensorDictObject::from_tensors(empty, CacheOptions::default()).unwrap_err();
        assert!(e.to_string().contains("send the file as a file"), "{e}");
    }
}
