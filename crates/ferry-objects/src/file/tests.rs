//! Unit tests of the file producer and consumer (real files in temp dirs).

use super::*;
use crate::testutil::{all_chunks, drive, pattern};
use crate::{ObjectsError, RECEIVED_BYTES};
use bytes::Bytes;
use ferry_core::{ChunkData, ConsumeError, Consumer, Downloadable, Produced, State};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

fn write_file(dir: &Path, name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let p = dir.join(name);
    let data = pattern(len, len as u64 + 1);
    fs::write(&p, &data).unwrap();
    (p, data)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn file_round_trip_out_of_order_with_digest() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, data) = write_file(src.path(), "f.bin", 100_003);
    let obj = FileObject::builder(&p)
        .chunk_size(4096)
        .digest(true)
        .open()
        .unwrap();
    assert_eq!(obj.digest().unwrap(), blake3::hash(&data).to_hex().as_str());
    let plan = obj.plan().unwrap();
    assert_eq!(plan.total_bytes, Some(100_003));
    let mut c = FileConsumer::create(dst.path(), "out.bin").unwrap();
    drive(&obj, &mut c, None, |v| {
        // swap neighbours: every other chunk lands ahead of the hash cursor
        for i in (0..v.len() - 1).step_by(2) {
            v.swap(i, i + 1);
        }
    })
    .unwrap();
    assert_eq!(fs::read(dst.path().join("out.bin")).unwrap(), data);
    assert_eq!(names_in(dst.path()), vec!["out.bin"]);
}

#[test]
fn empty_file_round_trip() {
    let src = tempfile::tempdir().unwrap();
    let (p, _) = write_file(src.path(), "empty", 0);
    let obj = FileObject::builder(&p).digest(true).open().unwrap();
    assert_eq!(obj.produce(None, "a").unwrap(), Produced::Eof);
    let mut c = FileConsumer::create(src.path(), "copy").unwrap();
    drive(&obj, &mut c, None, |_| {}).unwrap();
    assert_eq!(fs::read(src.path().join("copy")).unwrap(), b"");
}

#[test]
fn producer_applies_nvflare_state_rules() {
    let src = tempfile::tempdir().unwrap();
    let (p, data) = write_file(src.path(), "f", 10);
    let obj = FileObject::builder(&p).chunk_size(4).open().unwrap();
    let st = |v: rmpv::Value| State::new().with(RECEIVED_BYTES, v);
    let Produced::Data { data: d, state } = obj.produce(Some(&State::new()), "a").unwrap() else {
        panic!("absent key reads from 0")
    };
    assert_eq!(d, ChunkData::Bytes(Bytes::copy_from_slice(&data[..4])));
    assert_eq!(state, st(4u64.into()));
    let Produced::Data { data: d, state } = obj.produce(Some(&st(8u64.into())), "a").unwrap()
    else {
        panic!()
    };
    assert_eq!(d, ChunkData::Bytes(Bytes::copy_from_slice(&data[8..])));
    assert_eq!(state, st(10u64.into()));
    assert_eq!(
        obj.produce(Some(&st(10u64.into())), "a").unwrap(),
        Produced::Eof
    );
    assert_eq!(
        obj.produce(Some(&st(11u64.into())), "a").unwrap(),
        Produced::Eof,
        "beyond the end"
    );
    for bad in [
        rmpv::Value::from(-4i64),
        "4".into(),
        1.5f64.into(),
        rmpv::Value::Array(vec![]),
    ] {
        assert!(
            matches!(
                obj.produce(Some(&st(bad.clone())), "a").unwrap(),
                Produced::Invalid { .. }
            ),
            "{bad:?}"
        );
    }
    obj.release();
    assert!(obj.produce(None, "a").is_err());
}

/// A digest is computed once per file content: opening the unchanged file again reuses it,
/// while a rewrite — even one that keeps the size and restores the modification time — is
/// hashed again (its status-change time moved).
#[test]
fn digests_are_reused_only_for_unchanged_files() {
    let src = tempfile::tempdir().unwrap();
    let (p, _) = write_file(src.path(), "model.bin", 3 * 4096 + 5);
    let first = FileObject::builder(&p).digest(true).open().unwrap();
    assert!(!first.digest_was_cached());
    let again = FileObject::builder(&p).digest(true).open().unwrap();
    assert!(again.digest_was_cached(), "unchanged file: digest reused");
    assert_eq!(again.digest(), first.digest());
    assert!(
        FileObject::builder(&p).open().unwrap().digest().is_none(),
        "digest off: none"
    );
    // Same size, same modification time, other bytes.
    let mtime = fs::metadata(&p).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut other = fs::read(&p).unwrap();
    other[0] ^= 0xff;
    fs::write(&p, &other).unwrap();
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), mtime);
    let changed = FileObject::builder(&p).digest(true).open().unwrap();
    assert!(!changed.digest_was_cached(), "rewritten file: hashed again");
    assert_eq!(
        changed.digest().unwrap(),
        blake3::hash(&other).to_hex().as_str()
    );
    assert_ne!(changed.digest(), first.digest());
}

/// `try_produce_now` (page-cache reads on the async thread) answers exactly what `produce`
/// answers, for data, EOF, bad states, a changed file and a released object.
#[test]
fn non_blocking_produce_answers_what_produce_answers() {
    let src = tempfile::tempdir().unwrap();
    let (p, _) = write_file(src.path(), "f", 3 * 4096 + 17);
    let obj = FileObject::builder(&p).chunk_size(4096).open().unwrap();
    let st = |v: rmpv::Value| State::new().with(RECEIVED_BYTES, v);
    let mut states = vec![None];
    for off in [4096u64, 8192, 12288, 12305, 99999] {
        states.push(Some(st(off.into())));
    }
    states.push(Some(st("bad".into())));
    let mut inline = 0;
    for state in &states {
        let blocking = obj.produce(state.as_ref(), "a").unwrap();
        match obj.try_produce_now(state.as_ref(), "a") {
            Some(now) => {
                inline += 1;
                assert_eq!(now.unwrap(), blocking, "{state:?}");
            }
            None => assert!(
                obj.nowait_unsupported
                    .load(std::sync::atomic::Ordering::Relaxed),
                "a freshly written file is in the page cache"
            ),
        }
    }
    if inline > 0 {
        // A change is seen the same way on both paths.
        OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"more")
            .unwrap();
        let now = obj.try_produce_now(None, "a").expect("in the page cache");
        assert!(matches!(now.unwrap(), Produced::Error { .. }));
    }
    obj.release();
    if inline > 0 {
        assert!(obj.try_produce_now(None, "a").expect("answered").is_err());
    }
    assert!(obj.produce(None, "a").is_err());
}

#[test]
fn producer_options_are_checked() {
    let src = tempfile::tempdir().unwrap();
    let (p, _) = write_file(src.path(), "f", 10);
    assert!(matches!(
        FileObject::builder(&p).chunk_size(0).open(),
        Err(ObjectsError::InvalidOption(_))
    ));
    assert!(matches!(
        FileObject::open(src.path().join("missing")),
        Err(ObjectsError::Io { .. })
    ));
    assert!(matches!(
        FileObject::open(src.path()),
        Err(ObjectsError::InvalidOption(_))
    ));
}

#[test]
fn a_file_changed_under_the_producer_fails_the_download() {
    let src = tempfile::tempdir().unwrap();
    // grows
    let (p, _) = write_file(src.path(), "grow", 100);
    let obj = FileObject::builder(&p).chunk_size(10).open().unwrap();
    assert!(matches!(
        obj.produce(None, "a").unwrap(),
        Produced::Data { .. }
    ));
    OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    let Produced::Error { reason } = obj.produce(None, "a").unwrap() else {
        panic!("growth not detected")
    };
    assert!(reason.contains("changed"), "{reason}");
    // shrinks
    let (p, _) = write_file(src.path(), "shrink", 100);
    let obj = FileObject::builder(&p).chunk_size(10).open().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(50)
        .unwrap();
    let st = State::new().with(RECEIVED_BYTES, 60u64);
    assert!(matches!(
        obj.produce(Some(&st), "a").unwrap(),
        Produced::Error { .. }
    ));
    assert!(matches!(
        obj.produce(None, "a").unwrap(),
        Produced::Error { .. }
    ));
    // same size, new content: the modification time tells
    let (p, _) = write_file(src.path(), "same", 100);
    let obj = FileObject::builder(&p).chunk_size(10).open().unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at_compat(b"XXXX", 0);
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
        .unwrap();
    assert!(matches!(
        obj.produce(None, "a").unwrap(),
        Produced::Error { .. }
    ));
}

trait WriteAt {
    fn write_all_at_compat(&self, buf: &[u8], off: u64);
}
impl WriteAt for File {
    fn write_all_at_compat(&self, buf: &[u8], off: u64) {
        std::os::unix::fs::FileExt::write_all_at(self, buf, off).unwrap();
    }
}

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

#[test]
fn resume_from_a_kept_part_verifies_the_whole_file() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, data) = write_file(src.path(), "f", 10_500);
    let obj = FileObject::builder(&p)
        .chunk_size(1000)
        .digest(true)
        .open()
        .unwrap();
    // First attempt: chunks 0..3 and 6 arrive, then the download fails.
    let mut c = FileConsumer::builder(dst.path(), "out")
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    assert!(c.resume_state().is_none());
    c.plan_received(&obj.plan().unwrap()).unwrap();
    let chunks = all_chunks(&obj, "a", None);
    let chunks = chunks.as_slice();
    for i in [0, 1, 2, 6] {
        let (s, d) = chunks[i].clone();
        c.consume("r", &s, d).unwrap();
    }
    // a half chunk beyond the prefix does not count
    c.failed("r", "network down");
    assert_eq!(
        fs::metadata(dst.path().join("out.part")).unwrap().len(),
        3000
    );
    drop(c);
    assert!(dst.path().join("out.part").exists(), "kept after drop");

    // Second attempt resumes at 3000 and checks the digest over the whole file.
    let mut c = FileConsumer::builder(dst.path(), "out")
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    let st = c.resume_state().unwrap();
    assert_eq!(st, State::new().with(RECEIVED_BYTES, 3000u64));
    drive(&obj, &mut c, Some(st), |_| {}).unwrap();
    assert_eq!(fs::read(dst.path().join("out")).unwrap(), data);
    assert_eq!(names_in(dst.path()), vec!["out"]);

    // A kept part whose bytes changed under its record is caught by the digest (the kept
    // prefix is read back and hashed) and discarded.
    fs::remove_file(dst.path().join("out")).unwrap();
    fail_after_prefix(&obj, dst.path(), 2);
    fs::write(dst.path().join("out.part"), vec![0u8; 2000]).unwrap();
    let mut c = FileConsumer::builder(dst.path(), "out")
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    let st = c.resume_state();
    assert_eq!(c.resumed_from(), 2000);
    let e = drive_without_plan(&obj, &mut c, st, None).unwrap_err();
    assert!(e.to_string().contains("BLAKE3 digest mismatch"), "{e}");
    assert!(names_in(dst.path()).is_empty());
}

#[test]
fn without_keep_a_stale_part_is_replaced_and_a_symlink_is_not_followed() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let victim = src.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, dst.path().join("out.part")).unwrap();
    let (p, data) = write_file(src.path(), "f", 3000);
    let obj = FileObject::builder(&p).chunk_size(1000).open().unwrap();
    let mut c = FileConsumer::builder(dst.path(), "out")
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    assert!(
        c.resume_state().is_none(),
        "a symlink is never resumed from"
    );
    drive(&obj, &mut c, None, |_| {}).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(fs::read(dst.path().join("out")).unwrap(), data);
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

/// Feed chunks from `first` on without telling the consumer the plan (what a receiver engine
/// does for a resumed download: the producer sends plans to first requests only).
fn drive_without_plan(
    obj: &FileObject,
    c: &mut FileConsumer,
    first: Option<State>,
    corrupt: Option<usize>,
) -> Result<(), ConsumeError> {
    let r = (|| {
        for (i, (s, mut d)) in all_chunks(obj, "a", first).into_iter().enumerate() {
            if corrupt == Some(i) {
                if let ChunkData::Bytes(b) = &d {
                    let mut v = b.to_vec();
                    v[0] ^= 0x80;
                    d = ChunkData::Bytes(Bytes::from(v));
                }
            }
            c.consume("r", &s, d)?;
        }
        c.completed("r")
    })();
    if let Err(e) = &r {
        c.failed("r", &e.to_string());
    }
    r
}

fn fail_after_prefix(obj: &FileObject, dir: &Path, chunks: usize) {
    let mut c = FileConsumer::builder(dir, "out")
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    c.plan_received(&obj.plan().unwrap()).unwrap();
    for (s, d) in all_chunks(obj, "a", None).into_iter().take(chunks) {
        c.consume("r", &s, d).unwrap();
    }
    c.failed("r", "link lost");
    assert_eq!(names_in(dir), vec!["out.part", "out.part.ferry"]);
}

#[test]
fn a_resumed_download_without_plan_still_verifies_size_and_digest() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, data) = write_file(src.path(), "f", 9_999);
    let obj = FileObject::builder(&p)
        .chunk_size(1000)
        .digest(true)
        .open()
        .unwrap();

    // corrupted after resume: the kept plan's digest catches it
    fail_after_prefix(&obj, dst.path(), 4);
    let mut c = FileConsumer::builder(dst.path(), "out")
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    let st = c.resume_state();
    assert_eq!(st, Some(State::new().with(RECEIVED_BYTES, 4000u64)));
    let e = drive_without_plan(&obj, &mut c, st, Some(2)).unwrap_err();
    assert!(e.to_string().contains("BLAKE3 digest mismatch"), "{e}");
    assert!(
        names_in(dst.path()).is_empty(),
        "{:?}",
        names_in(dst.path())
    );

    // clean resume
    fail_after_prefix(&obj, dst.path(), 4);
    let mut c = FileConsumer::builder(dst.path(), "out")
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    let st = c.resume_state();
    drive_without_plan(&obj, &mut c, st, None).unwrap();
    assert_eq!(fs::read(dst.path().join("out")).unwrap(), data);
    assert_eq!(names_in(dst.path()), vec!["out"]);
}

#[test]
fn a_kept_part_of_another_object_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, _) = write_file(src.path(), "f", 5000);
    let obj = FileObject::builder(&p)
        .chunk_size(1000)
        .digest(true)
        .open()
        .unwrap();
    fail_after_prefix(&obj, dst.path(), 2);
    let (p2, _) = write_file(src.path(), "g", 6000);
    let other = FileObject::builder(&p2)
        .chunk_size(1000)
        .digest(true)
        .open()
        .unwrap();
    let mut c = FileConsumer::builder(dst.path(), "out")
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    let e = c.plan_received(&other.plan().unwrap()).unwrap_err();
    assert!(matches!(e, ConsumeError::Integrity(_)), "{e}");
    c.failed("r", &e.to_string());
    // an unreadable record: start over instead of trusting the part
    fail_after_prefix(&obj, dst.path(), 2);
    fs::write(dst.path().join("out.part.ferry"), b"{not json").unwrap();
    let c = FileConsumer::builder(dst.path(), "out")
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    assert!(c.resume_state().is_none());
    assert!(c
        .discarded_part()
        .unwrap()
        .contains("unusable resume record"));
    // unpinned and no digest advertised yet: nothing to tie a part to, so no record
    assert_eq!(names_in(dst.path()), vec!["out.part"]);
}

mod pinned;
