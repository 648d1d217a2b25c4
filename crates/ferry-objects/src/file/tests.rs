//! Unit tests of the file producer and consumer (real files in temp dirs): the producer's
//! here, the consumer's write path in [`writing`], resuming a kept part in [`resuming`], a
//! pinned download in [`pinned`]; the helpers they share.

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

/// Chunks larger than the consumer's write slice and not multiples of it, in reverse order:
/// every slice lands at its offset and is hashed once, and the digest checks.
#[test]
fn chunks_spanning_many_write_slices_round_trip_in_reverse() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, data) = write_file(src.path(), "f.bin", 1_000_003);
    let obj = FileObject::builder(&p)
        .chunk_size(150_001)
        .digest(true)
        .open()
        .unwrap();
    let mut c = FileConsumer::create(dst.path(), "out.bin").unwrap();
    drive(&obj, &mut c, None, |v| v.reverse()).unwrap();
    assert!(matches!(
        c.verified(),
        crate::verify::Verified::SenderAdvertised(_)
    ));
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

mod file_chunks;
mod pinned;
mod resuming;
mod writing;
