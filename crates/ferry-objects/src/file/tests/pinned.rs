//! A pinned file consumer holds the sender to the pin whatever it sends, and its resume
//! record keeps only what is durable and belongs to the pinned content.

use super::*;
use crate::verify::{Pin, Verified};

fn pin_of(data: &[u8]) -> Pin {
    Pin::new(data.len() as u64, blake3::hash(data))
}

fn bytes_chunk(end: u64, data: &[u8]) -> (State, ChunkData) {
    (
        State::new().with(RECEIVED_BYTES, end),
        ChunkData::Bytes(Bytes::copy_from_slice(data)),
    )
}

/// What a sender without a plan (NVFlare) does: `data` in order, `chunk` bytes at a time.
fn send_in_order(c: &mut FileConsumer, data: &[u8], chunk: usize) -> Result<(), ConsumeError> {
    let r = (|| {
        for at in (0..data.len()).step_by(chunk.max(1)) {
            let end = (at + chunk).min(data.len());
            let (s, d) = bytes_chunk(end as u64, &data[at..end]);
            c.consume("R1", &s, d)?;
        }
        c.completed("R1")
    })();
    if let Err(e) = &r {
        c.failed("R1", &e.to_string());
    }
    r
}

#[test]
fn a_sender_without_plan_is_held_to_the_pin() {
    let dst = tempfile::tempdir().unwrap();
    let good = pattern(10_000, 1);
    let pin = pin_of(&good);
    let open = || {
        FileConsumer::builder(dst.path(), "out")
            .pin(pin)
            .open()
            .unwrap()
    };

    // other bytes of the same size: refused at completion, nothing left
    let mut c = open();
    let e = send_in_order(&mut c, &pattern(10_000, 2), 1000).unwrap_err();
    assert!(matches!(e, ConsumeError::Integrity(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("the ticket's digest") && msg.contains(&pin.hex()),
        "{msg}"
    );
    assert!(
        names_in(dst.path()).is_empty(),
        "{:?}",
        names_in(dst.path())
    );

    // more bytes than pinned: refused at the first byte beyond, nothing left
    let mut c = open();
    let mut long = good.clone();
    long.extend_from_slice(b"trailer");
    let e = send_in_order(&mut c, &long, 4096).unwrap_err();
    assert!(
        e.to_string()
            .contains("bytes [8192, 10007) but the ticket pins 10000 bytes"),
        "{e}"
    );
    assert!(names_in(dst.path()).is_empty());

    // fewer bytes: incomplete
    let mut c = open();
    let e = send_in_order(&mut c, &good[..9000], 1000).unwrap_err();
    assert!(e.to_string().contains("received 9000 of 10000"), "{e}");
    assert!(names_in(dst.path()).is_empty());

    // the pinned content: verified against the pin
    let mut c = open();
    send_in_order(&mut c, &good, 999).unwrap();
    assert_eq!(c.verified(), Verified::Pinned(pin));
    assert_eq!(fs::read(dst.path().join("out")).unwrap(), good);
}

#[test]
fn a_plan_that_contradicts_the_pin_is_refused_before_any_byte() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, data) = write_file(src.path(), "f", 5000);
    let obj = FileObject::builder(&p)
        .chunk_size(1000)
        .digest(true)
        .open()
        .unwrap();
    let plan = obj.plan().unwrap();
    let other = pattern(5000, 99);
    let mut c = FileConsumer::builder(dst.path(), "out")
        .pin(pin_of(&other))
        .open()
        .unwrap();
    let e = c.plan_received(&plan).unwrap_err().to_string();
    assert!(
        e.contains("offers content with BLAKE3") && e.contains("the ticket pins"),
        "{e}"
    );
    c.failed("R1", "refused");
    let mut c = FileConsumer::builder(dst.path(), "out")
        .pin(Pin::new(4000, blake3::hash(&data)))
        .open()
        .unwrap();
    let e = c.plan_received(&plan).unwrap_err().to_string();
    assert!(e.contains("offers 5000 bytes, the ticket pins 4000"), "{e}");
    c.failed("R1", "refused");
    // a chunk off the plan's grid is refused
    let mut c = FileConsumer::builder(dst.path(), "out")
        .pin(pin_of(&data))
        .open()
        .unwrap();
    c.plan_received(&plan).unwrap();
    let (s, d) = bytes_chunk(1500, &data[500..1500]);
    assert!(matches!(
        c.consume("R1", &s, d),
        Err(ConsumeError::BadChunk(_))
    ));
    c.failed("R1", "bad chunk");
    // a plan without digest: the pin still decides
    let mut c = FileConsumer::builder(dst.path(), "out")
        .pin(pin_of(&data))
        .open()
        .unwrap();
    let no_digest = FileObject::builder(&p).chunk_size(1000).open().unwrap();
    drive(&no_digest, &mut c, None, |v| v.reverse()).unwrap();
    assert_eq!(c.verified(), Verified::Pinned(pin_of(&data)));
    assert!(names_in(dst.path()) == vec!["out"]);
}

#[test]
fn unpinned_reports_what_the_sender_advertised_or_nothing() {
    let src = tempfile::tempdir().unwrap();
    let (p, data) = write_file(src.path(), "f", 3000);
    let obj = FileObject::builder(&p)
        .chunk_size(1000)
        .digest(true)
        .open()
        .unwrap();
    let mut c = FileConsumer::create(src.path(), "a").unwrap();
    drive(&obj, &mut c, None, |_| {}).unwrap();
    assert_eq!(c.verified(), Verified::SenderAdvertised(pin_of(&data)));
    let mut c = FileConsumer::create(src.path(), "b").unwrap();
    send_in_order(&mut c, &data, 1000).unwrap();
    assert_eq!(c.verified(), Verified::Unverified);
}

/// A crash (no cleanup at all) with a hole in the part: the record names only the durable
/// contiguous prefix, and a resume cuts the part to it and verifies the whole file.
#[test]
fn after_a_crash_only_the_recorded_prefix_is_trusted() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (p, data) = write_file(src.path(), "f", 20_000);
    let obj = FileObject::builder(&p)
        .chunk_size(1000)
        .digest(true)
        .open()
        .unwrap();
    let pin = pin_of(&data);
    let mut c = FileConsumer::builder(dst.path(), "out")
        .pin(pin)
        .keep_part_for_resume(true)
        .sync_every(2500)
        .open()
        .unwrap();
    let record = c.record_path().to_path_buf();
    c.plan_received(&obj.plan().unwrap()).unwrap();
    let chunks = all_chunks(&obj, "a", None);
    // chunks 0..=5 in order, then 7..=12 past a hole at 6 (a pipelined window)
    for i in (0..=5).chain(7..=12) {
        let (s, d) = chunks[i].clone();
        c.consume("R1", &s, d).unwrap();
    }
    // checkpoints at 3000 and 6000 (every 2500 bytes of contiguous progress)
    let text = fs::read_to_string(&record).unwrap();
    assert!(text.contains("\"prefix\":6000"), "{text}");
    std::mem::forget(c); // kill -9: no cleanup, no final record
    assert_eq!(
        fs::metadata(dst.path().join("out.part")).unwrap().len(),
        13_000
    );

    let mut c = FileConsumer::builder(dst.path(), "out")
        .pin(pin)
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    assert_eq!(c.resumed_from(), 6000);
    assert_eq!(
        fs::metadata(dst.path().join("out.part")).unwrap().len(),
        6000
    );
    let st = c.resume_state();
    drive_without_plan(&obj, &mut c, st, None).unwrap();
    assert_eq!(c.verified(), Verified::Pinned(pin));
    assert_eq!(fs::read(dst.path().join("out")).unwrap(), data);
    assert_eq!(names_in(dst.path()), vec!["out"]);
}

#[test]
fn a_crash_before_the_first_checkpoint_resumes_from_zero() {
    let dst = tempfile::tempdir().unwrap();
    let data = pattern(8000, 5);
    let pin = pin_of(&data);
    let mut c = FileConsumer::builder(dst.path(), "out")
        .pin(pin)
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    let (s, d) = bytes_chunk(4000, &data[..4000]);
    c.consume("R1", &s, d).unwrap();
    std::mem::forget(c);
    let mut c = FileConsumer::builder(dst.path(), "out")
        .pin(pin)
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    assert_eq!(c.resumed_from(), 0);
    send_in_order(&mut c, &data, 1500).unwrap();
    assert_eq!(fs::read(dst.path().join("out")).unwrap(), data);
}

#[test]
fn a_part_of_other_content_is_refused_or_discarded_before_any_byte() {
    let dst = tempfile::tempdir().unwrap();
    let old = pattern(6000, 1);
    let new = pattern(6000, 2);
    let keep = |pin| {
        FileConsumer::builder(dst.path(), "out")
            .pin(pin)
            .keep_part_for_resume(true)
            .origin("ferry-sender/R-old")
    };
    let mut c = keep(pin_of(&old)).open().unwrap();
    let (s, d) = bytes_chunk(3000, &old[..3000]);
    c.consume("R1", &s, d).unwrap();
    c.failed("R1", "interrupted");
    assert_eq!(names_in(dst.path()), vec!["out.part", "out.part.ferry"]);

    let e = keep(pin_of(&new)).open().unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ObjectsError::OtherContent { .. }), "{msg}");
    assert!(
        msg.contains(&pin_of(&old).hex())
            && msg.contains(&pin_of(&new).hex())
            && msg.contains("ferry-sender/R-old"),
        "{msg}"
    );
    assert_eq!(
        names_in(dst.path()),
        vec!["out.part", "out.part.ferry"],
        "kept as it was"
    );

    let mut c = keep(pin_of(&new)).discard_other_part(true).open().unwrap();
    assert_eq!(c.resumed_from(), 0);
    assert!(c.discarded_part().unwrap().contains("other content"));
    send_in_order(&mut c, &new, 1000).unwrap();
    assert_eq!(fs::read(dst.path().join("out")).unwrap(), new);
}

#[test]
fn a_part_without_a_record_is_discarded() {
    let dst = tempfile::tempdir().unwrap();
    let data = pattern(3000, 3);
    fs::write(dst.path().join("out.part"), vec![0u8; 2000]).unwrap();
    fs::write(dst.path().join("out.part.plan"), b"{}").unwrap();
    let mut c = FileConsumer::builder(dst.path(), "out")
        .pin(pin_of(&data))
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    assert_eq!(c.resumed_from(), 0);
    assert!(c.discarded_part().unwrap().contains("no resume record"));
    send_in_order(&mut c, &data, 1000).unwrap();
    assert_eq!(names_in(dst.path()), vec!["out"]);
}
