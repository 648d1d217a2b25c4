//! A kept download part and its resume record `NAME.part.ferry` as a later `ferry get --resume`
//! finds them on disk (left by a crash, an older ferry, another download, or a hostile local
//! user): `FileConsumer` with `keep_part_for_resume` reads and checks the record, cuts the part
//! to the recorded prefix and re-hashes it, then takes the rest of the object as chunks and
//! completes (or fails) against the pin.
//!
//! Input: a selector byte (pin or not, discard other content or refuse it), then records (see
//! `ferry_fuzz::records`): the record file, the part file, then chunks of the object.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use ferry_core::{ChunkData, Consumer, State};
use ferry_fuzz::records::Records;
use ferry_fuzz::{within, Limit, DECODER_FIXED};
use ferry_objects::{FileConsumer, Pin};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // the record as JSON values, the part re-hashed through a bounded buffer, chunk copies
    per_byte: 32,
    fixed: DECODER_FIXED + 2 * 1024 * 1024,
};

/// The content the pinned downloads expect: 3000 bytes, byte i = (31 i + 5) mod 256 (the file
/// `fuzz/capture/capture.py` makes `ferry serve` pin for the seed records).
fn pin() -> Pin {
    static PIN: OnceLock<Pin> = OnceLock::new();
    *PIN.get_or_init(|| {
        let content: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(31) + 5) as u8)
            .collect();
        Pin::new(content.len() as u64, blake3::hash(&content))
    })
}

/// Where the part and its record live: on tmpfs when there is one. The consumer fsyncs the
/// record and its directory on every open, which costs milliseconds on a disk and would hold
/// the target to a few dozen inputs a second.
fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            if let Ok(d) = tempfile::tempdir_in(shm) {
                return d;
            }
        }
        tempfile::tempdir().expect("temp dir")
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let (dir, pin) = (dir(), pin());
    let part = dir.join("object.bin.part");
    let record = dir.join("object.bin.part.ferry");
    let final_path = dir.join("object.bin");
    for p in [&part, &record, &final_path] {
        let _ = std::fs::remove_file(p);
    }
    let mut rd = Records::new(data);
    let sel = rd.byte();
    if let Some(r) = rd.next_record() {
        std::fs::write(&record, r).expect("write the record");
    }
    if let Some(p) = rd.next_record() {
        std::fs::write(&part, p).expect("write the part");
    }
    within(LIMIT, data.len(), || {
        let mut b = FileConsumer::builder(dir, "object.bin")
            .keep_part_for_resume(true)
            .discard_other_part(sel & 2 != 0)
            .max_size(64 * 1024)
            .origin("server/Rfile");
        if sel & 1 != 0 {
            b = b.pin(pin);
        }
        let Ok(mut c) = b.open() else { return };
        let mut end = c.resumed_from();
        while let Some(chunk) = rd.next_record() {
            end += chunk.len() as u64;
            let state = State::new().with("received_bytes", end);
            let chunk = ChunkData::Bytes(Bytes::copy_from_slice(chunk));
            if let Err(e) = c.consume("Rfile", &state, chunk) {
                c.failed("Rfile", &e.to_string());
                return;
            }
        }
        if let Err(e) = c.completed("Rfile") {
            c.failed("Rfile", &e.to_string());
        }
    });
});
