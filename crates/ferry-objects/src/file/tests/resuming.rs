//! Resuming a kept part: the whole file is verified, a stale part is replaced, a part of
//! other content is refused, and a resumed download without a plan is still held to its size
//! and digest.

use super::*;

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
