//! A file producer built with `file_chunks(true)`: chunks are regions of the open file,
//! made without reading, at once (no blocking-pool hand-off), and the file's changes are
//! still caught.

use super::*;

#[test]
fn file_chunks_are_regions_of_the_file_and_round_trip() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, data) = write_file(src.path(), "f.bin", 100_003);
    // larger than the in-place read limit: a region is still made at once
    let obj = FileObject::builder(&p)
        .chunk_size(8 << 20)
        .digest(true)
        .file_chunks(true)
        .open()
        .unwrap();
    let first = obj
        .try_produce_now(None, "r")
        .expect("made at once")
        .unwrap();
    let Produced::Data { data: chunk, .. } = first else {
        panic!("expected data, got {first:?}")
    };
    let ChunkData::File(region) = &chunk else {
        panic!("expected a file region, got {chunk:?}")
    };
    assert_eq!((region.offset(), region.len()), (0, 100_003));
    assert_eq!(region.read().unwrap(), Bytes::from(data.clone()));

    let small = FileObject::builder(&p)
        .chunk_size(4096)
        .digest(true)
        .file_chunks(true)
        .open()
        .unwrap();
    let mut c = FileConsumer::create(dst.path(), "out.bin").unwrap();
    drive(&small, &mut c, None, |v| v.reverse()).unwrap();
    assert_eq!(fs::read(dst.path().join("out.bin")).unwrap(), data);
}

/// A file that changed before a chunk is produced fails the download with the producer's
/// logical error, as with read chunks.
#[test]
fn a_file_changed_before_produce_is_refused_with_file_chunks() {
    let src = tempfile::tempdir().unwrap();
    let (p, _) = write_file(src.path(), "f.bin", 10_000);
    let obj = FileObject::builder(&p)
        .chunk_size(4096)
        .file_chunks(true)
        .open()
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(5_000)
        .unwrap();
    match obj.produce(None, "r").unwrap() {
        Produced::Error { reason } => assert!(reason.contains("changed"), "{reason}"),
        other => panic!("expected an error, got {other:?}"),
    }
}
