//! The file consumer's write path: names and destinations, chunks in any order or out of
//! place, corrupted or missing bytes, OS write errors.

use super::*;

#[test]
fn consumer_refuses_escaping_names_and_existing_destinations() {
    let dst = tempfile::tempdir().unwrap();
    for bad in ["../evil", "a/b", "..", "", "/abs"] {
        assert!(
            matches!(
                FileConsumer::create(dst.path(), bad),
                Err(ObjectsError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    fs::write(dst.path().join("exists"), b"old").unwrap();
    assert!(matches!(
        FileConsumer::create(dst.path(), "exists"),
        Err(ObjectsError::DestinationExists(_))
    ));
    let src = tempfile::tempdir().unwrap();
    let (p, data) = write_file(src.path(), "f", 1000);
    let obj = FileObject::builder(&p).chunk_size(64).open().unwrap();
    let mut c = FileConsumer::builder(dst.path(), "exists")
        .overwrite(true)
        .open()
        .unwrap();
    drive(&obj, &mut c, None, |_| {}).unwrap();
    assert_eq!(fs::read(dst.path().join("exists")).unwrap(), data);
    assert!(FileConsumer::create(dst.path().join("nodir"), "x").is_err());
}

#[test]
fn corrupted_chunk_fails_and_leaves_nothing() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, _) = write_file(src.path(), "f", 10_000);
    let obj = FileObject::builder(&p)
        .chunk_size(1000)
        .digest(true)
        .open()
        .unwrap();
    for keep in [false, true] {
        let mut c = FileConsumer::builder(dst.path(), "out")
            .keep_part_for_resume(keep)
            .open()
            .unwrap();
        let e = drive(&obj, &mut c, None, |v| {
            if let ChunkData::Bytes(b) = &mut v[7].1 {
                let mut m = b.to_vec();
                m[500] ^= 0x40;
                *b = Bytes::from(m);
            }
        })
        .unwrap_err();
        assert!(matches!(e, ConsumeError::Integrity(_)), "{e}");
        assert!(e.to_string().contains("BLAKE3 digest mismatch"), "{e}");
        assert!(
            names_in(dst.path()).is_empty(),
            "keep={keep}: {:?}",
            names_in(dst.path())
        );
    }
}

#[test]
fn missing_chunks_and_bad_shapes_are_refused() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, _) = write_file(src.path(), "f", 1000);
    let obj = FileObject::builder(&p).chunk_size(100).open().unwrap();
    let mut c = FileConsumer::create(dst.path(), "out").unwrap();
    let e = drive(&obj, &mut c, None, |v| {
        v.remove(3);
    })
    .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    assert!(names_in(dst.path()).is_empty());

    let mut c = FileConsumer::create(dst.path(), "out").unwrap();
    c.plan_received(&obj.plan().unwrap()).unwrap();
    let s = State::new().with(RECEIVED_BYTES, 100u64);
    assert!(matches!(
        c.consume("r", &s, ChunkData::Items(vec![Bytes::new()])),
        Err(ConsumeError::BadChunk(_))
    ));
    let beyond = State::new().with(RECEIVED_BYTES, 1100u64);
    assert!(matches!(
        c.consume("r", &beyond, ChunkData::Bytes(Bytes::from(vec![0; 100]))),
        Err(ConsumeError::BadChunk(_))
    ));
    assert!(matches!(
        c.consume(
            "r",
            &State::new(),
            ChunkData::Bytes(Bytes::from(vec![0; 100]))
        ),
        Err(ConsumeError::BadChunk(_))
    ));
    let items_plan = ferry_core::TransferPlan {
        layout: ferry_core::PlanLayout::Items {
            count: 1,
            per_chunk: 1,
        },
        total_bytes: None,
        blake3: None,
    };
    assert!(c.plan_received(&items_plan).is_err());
    drop(c);
    assert!(names_in(dst.path()).is_empty(), "drop cleans the part file");
}

#[test]
fn disk_write_error_fails_with_the_os_error_and_cleans_up() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, _) = write_file(src.path(), "f", 5000);
    let obj = FileObject::builder(&p).chunk_size(1000).open().unwrap();
    let mut c = FileConsumer::create(dst.path(), "out").unwrap();
    assert!(dst.path().join("out.part").exists());
    c.replace_file_for_test(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap(),
    );
    let e = drive(&obj, &mut c, None, |_| {}).unwrap_err();
    let ConsumeError::Io { source, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(source.raw_os_error(), Some(28), "ENOSPC: {e}");
    assert!(
        names_in(dst.path()).is_empty(),
        "{:?}",
        names_in(dst.path())
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        /// Any arrival order, with duplicates, yields the exact file and a passing digest.
        #[test]
        fn any_order_with_duplicates_rebuilds_the_file(
            len in 0usize..20_000,
            chunk in 1u64..3000,
            order in proptest::collection::vec(any::<u16>(), 0..64),
            dups in proptest::collection::vec(any::<u16>(), 0..8),
        ) {
            let src = tempfile::tempdir().unwrap();
            let (p, data) = write_file(src.path(), "f", len);
            let obj = FileObject::builder(&p).chunk_size(chunk).digest(true).open().unwrap();
            let mut c = FileConsumer::create(src.path(), "out").unwrap();
            drive(&obj, &mut c, None, |v| {
                let n = v.len();
                if n > 1 {
                    for (i, k) in order.iter().enumerate() {
                        v.swap(i % n, *k as usize % n);
                    }
                }
                if n > 0 {
                    for d in &dups {
                        let x = v[*d as usize % n].clone();
                        v.push(x);
                    }
                }
            }).unwrap();
            prop_assert_eq!(fs::read(src.path().join("out")).unwrap(), data);
        }
    }
}

#[test]
fn without_a_plan_chunks_must_continue_the_prefix() {
    let dst = tempfile::tempdir().unwrap();
    let mut c = FileConsumer::create(dst.path(), "out").unwrap();
    let s = |end: u64| State::new().with(RECEIVED_BYTES, end);
    let chunk = || ChunkData::Bytes(Bytes::from_static(b"abcd"));
    c.consume("r", &s(4), chunk()).unwrap();
    c.consume("r", &s(4), chunk()).unwrap(); // a retry
    assert!(matches!(
        c.consume("r", &s(1 << 40), chunk()),
        Err(ConsumeError::BadChunk(_))
    ));
    c.consume("r", &s(8), chunk()).unwrap();
    c.completed("r").unwrap();
    assert_eq!(fs::read(dst.path().join("out")).unwrap(), b"abcdabcd");
}
