//! Tests of the NumPy array dict objects: the dict's rules, the downloadable and the consumer
//! end to end with both packings, bad items named, and release.

use super::*;
use crate::cacheable::{CacheOptions, ChunkPacking, ItemSource};
use crate::testutil::{drive, pattern};
use bytes::Bytes;
use ferry_core::{ChunkData, Consumer, Downloadable, State};

fn arr(dtype: &str, shape: &[u64], seed: u64) -> NdArray {
    let n = descr_item_size(dtype).unwrap() * shape.iter().product::<u64>();
    NdArray::new(dtype, shape.to_vec(), pattern(n as usize, seed).into()).unwrap()
}

fn sample_dict() -> NdArrayDict {
    let mut d = NdArrayDict::new();
    d.insert("layer0.weight", arr("<f4", &[64, 32], 1)).unwrap();
    d.insert("layer1.bias", arr("<f8", &[17], 2)).unwrap();
    d.insert("layer2.index", arr("<i4", &[3, 5, 7], 3)).unwrap();
    d.insert("mask", arr("|u1", &[1000], 4)).unwrap();
    d.insert("flag", arr("|b1", &[3], 5)).unwrap();
    d.insert("scalar", arr("<f8", &[], 6)).unwrap();
    d.insert("empty", arr("<f2", &[0, 4], 7)).unwrap();
    d.insert("big_endian", arr(">i8", &[2, 2], 8)).unwrap();
    d.insert("ünïcode", arr("<U3", &[2], 9)).unwrap();
    d
}
#[test]
fn array_construction_checks_length_and_dtype() {
    assert!(NdArray::new("<f4", vec![2], Bytes::from_static(&[0; 8])).is_ok());
    let e = NdArray::new("<f4", vec![3], Bytes::from_static(&[0; 8])).unwrap_err();
    assert!(e.to_string().contains("needs 12 bytes"), "{e}");
    assert!(NdArray::new("|O8", vec![1], Bytes::from_static(&[0; 8])).is_err());
    assert_eq!(descr_item_size("<M8[ns]"), Ok(8));
    assert_eq!(descr_item_size("<U10"), Ok(40));
    assert_eq!(descr_item_size("|b1"), Ok(1));
    assert_eq!(descr_item_size("?"), Ok(1));
    assert!(descr_item_size("<f4[ns]").is_err());
    assert!(descr_item_size("").is_err());
    let mut d = NdArrayDict::new();
    d.insert("a", arr("<f4", &[1], 1)).unwrap();
    assert!(d.insert("a", arr("<f4", &[1], 1)).is_err());
    assert!(d.insert("", arr("<f4", &[1], 1)).is_err());
}

#[test]
fn object_to_consumer_with_both_packings() {
    let d = sample_dict();
    for packing in [
        ChunkPacking::PerChunk(1),
        ChunkPacking::PerChunk(3),
        ChunkPacking::MaxBytes(2 << 20),
        ChunkPacking::MaxBytes(100),
    ] {
        let obj = NpzDictObject::from_arrays(
            d.clone(),
            CacheOptions::default().with_packing(packing.clone()),
        )
        .unwrap();
        let mut c = NpzDictConsumer::new();
        let delivery = c.delivery();
        drive(&obj, &mut c, None, |chunks| chunks.reverse()).unwrap();
        assert!(delivery.is_ready());
        let got = c.take().unwrap();
        assert_eq!(got, d, "{packing:?}");
        // Chunks arrived in reverse; the dict keeps the sender's order.
        let names: Vec<&str> = got.iter().map(|(n, _)| n).collect();
        let sent: Vec<&str> = d.iter().map(|(n, _)| n).collect();
        assert_eq!(names, sent, "{packing:?}");
        obj.release();
    }
}

#[test]
fn consumer_refuses_a_bad_item_naming_it() {
    let mut c = NpzDictConsumer::new();
    let state = State::new()
        .with(crate::cacheable::START, 4u64)
        .with(crate::cacheable::COUNT, 1u64);
    let err = c
        .consume(
            "R1",
            &state,
            ChunkData::Items(vec![Bytes::from_static(b"junk")]),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("item 4") && err.contains("wrong magic"),
        "{err}"
    );
    c.failed("R1", &err);
    assert!(c.take().is_none());
}

#[test]
fn source_after_release_errors() {
    let src = NpzSource::new(sample_dict());
    assert_eq!(src.item_count(), 9);
    assert_eq!(src.item_size_hint(0), Some(64 * 32 * 4));
    assert!(src.produce_item(0).is_ok());
    assert!(src.produce_item(99).is_err());
    src.release();
    let e = src.produce_item(0).unwrap_err();
    assert!(e.reason.contains("after release"), "{e}");
}
