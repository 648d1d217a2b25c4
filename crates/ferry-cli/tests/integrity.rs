//! What lands is what the ticket pins: `ferry get` against hostile senders (other bytes, no
//! plan, a lying plan, more bytes than pinned), after a kill -9 with holes in the part, with a
//! part of other content, with cut-short tickets, and for tensor dicts.

mod common;
#[path = "integrity/sender.rs"]
mod sender;

use common::*;
use ferry::objects::tensors::{tensor_dict_pin, Dtype};
use ferry::objects::{CacheOptions, Tensor, TensorDict, TensorDictObject};
use ferry::ticket::Kind;
use sender::{pin_of, Gate, Sender, Stream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

/// `ferry get TICKET -o OUT EXTRA...`, expecting exit `code`; returns stderr.
fn get(ticket: &str, out: &Path, extra: &[&str], code: i32) -> String {
    let a = ferry()
        .args(["get", ticket, "-o", path_str(out)])
        .args(extra)
        .assert()
        .code(code);
    stderr(&a)
}

#[test]
fn a_sender_without_plan_cannot_pass_other_bytes() {
    let sender = Sender::start(8);
    let d = tempfile::tempdir().unwrap();
    let pinned = random_file(&d.path().join("a"), 8 * MIB, 1);
    let other = random_file(&d.path().join("b"), 8 * MIB, 2);
    let rid = sender.offer(Arc::new(Stream::new(other, MIB)));
    let ticket = sender.ticket(&rid, Kind::File, "model.bin", pin_of(&pinned));
    let out = d.path().join("out");
    let err = get(&ticket, &out, &[], 1);
    assert!(
        err.contains("model.bin is not what the ticket pins")
            && err.contains(&format!("expected {}", pin_of(&pinned).hex()))
            && !err.contains("verified:"),
        "{err}"
    );
    assert!(list(&out).is_empty(), "{:?}", list(&out));
}

#[test]
fn more_bytes_than_the_ticket_pins_fail_at_the_first_byte_beyond() {
    let sender = Sender::start(8);
    let d = tempfile::tempdir().unwrap();
    let pinned = random_file(&d.path().join("a"), 8 * MIB, 3);
    let mut longer = pinned.clone();
    longer.extend(random_file(&d.path().join("b"), 5 * MIB, 4));
    let stream = Stream::new(longer, MIB);
    let produced = Arc::clone(&stream.produced);
    let rid = sender.offer(Arc::new(stream));
    let ticket = sender.ticket(&rid, Kind::File, "model.bin", pin_of(&pinned));
    let out = d.path().join("out");
    let err = get(&ticket, &out, &[], 1);
    assert!(
        err.contains("the sender sent bytes [8388608, 9437184) but the ticket pins 8388608 bytes"),
        "{err}"
    );
    assert!(list(&out).is_empty(), "{:?}", list(&out));
    // it stopped at the first chunk beyond the pin, not after 13 MiB
    assert!(produced.load(Ordering::Relaxed) <= 9 * MIB as u64);
}

#[test]
fn a_plan_cannot_vouch_for_other_bytes() {
    let sender = Sender::start(8);
    let d = tempfile::tempdir().unwrap();
    let pinned = random_file(&d.path().join("a"), 4 * MIB + 17, 5);
    let other = random_file(&d.path().join("b"), 4 * MIB + 17, 6);
    let out = d.path().join("out");
    // a plan that repeats the ticket's size and digest, over other bytes (pipelined)
    let lying = Stream::new(other.clone(), 256 << 10)
        .with_plan(pinned.len() as u64, Some(pin_of(&pinned).hex()));
    let rid = sender.offer(Arc::new(lying));
    let err = get(
        &sender.ticket(&rid, Kind::File, "m.bin", pin_of(&pinned)),
        &out,
        &[],
        1,
    );
    assert!(err.contains("m.bin is not what the ticket pins"), "{err}");
    assert!(list(&out).is_empty());
    // an honest plan of other content: refused before any byte
    let honest = Stream::new(other.clone(), 256 << 10)
        .with_plan(other.len() as u64, Some(pin_of(&other).hex()));
    let produced = Arc::clone(&honest.produced);
    let rid = sender.offer(Arc::new(honest));
    let err = get(
        &sender.ticket(&rid, Kind::File, "m.bin", pin_of(&pinned)),
        &out,
        &[],
        1,
    );
    assert!(
        err.contains(&format!(
            "the sender offers content with BLAKE3 {}, the ticket pins {}",
            pin_of(&other).hex(),
            pin_of(&pinned).hex()
        )),
        "{err}"
    );
    assert!(produced.load(Ordering::Relaxed) <= (256 << 10));
    assert!(list(&out).is_empty());
}

#[test]
fn the_pinned_content_verifies_and_json_says_what_was_checked() {
    let sender = Sender::start(8);
    let d = tempfile::tempdir().unwrap();
    let data = random_file(&d.path().join("a"), 3 * MIB + 5, 7);
    let pin = pin_of(&data);
    let rid = sender.offer(Arc::new(Stream::new(data.clone(), MIB)));
    let ticket = sender.ticket(&rid, Kind::File, "ok.bin", pin);
    let out = d.path().join("out");
    let a = ferry()
        .args(["--json", "get", &ticket, "-o", path_str(&out)])
        .assert()
        .success();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&a.get_output().stdout)
        .lines()
        .map(json)
        .collect();
    let progress: Vec<_> = lines.iter().filter(|l| l["event"] == "progress").collect();
    assert!(!progress.is_empty());
    for p in &progress {
        assert_eq!(p["total"], data.len() as u64, "total from the start: {p}");
        assert_eq!(p["resumed_from"], 0);
    }
    let done = lines.iter().find(|l| l["event"] == "done").unwrap();
    assert_eq!(done["blake3"], pin.hex());
    assert_eq!(done["verified"], "size + BLAKE3 pinned by the ticket");
    assert_eq!(done["size"], data.len() as u64);
    assert_eq!(done["bytes"], data.len() as u64);
    assert_eq!(done["resumed_from"], 0);
    assert_eq!(std::fs::read(out.join("ok.bin")).unwrap(), data);
}

/// Poll `cond` until it holds (the condition is an event on disk; the deadline is 100× what
/// it takes on a busy machine).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn recorded_prefix(record: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(record).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["prefix"].as_u64()
}

/// kill -9 while later chunks were written past one held back: the resume keeps only the
/// recorded, durable prefix, and the final file is byte-identical (never a file with a hole
/// marked verified).
#[test]
fn kill_9_with_holes_then_resume_gives_the_exact_file() {
    const CHUNK: usize = 64 << 10;
    const HELD: usize = 10; // chunk index the sender holds back
    let sender = Sender::start(8);
    let d = tempfile::tempdir().unwrap();
    let data = random_file(&d.path().join("a"), 64 * CHUNK + 333, 8);
    let pin = pin_of(&data);
    let gate = Arc::new(Gate::default());
    let stream = Stream::new(data.clone(), CHUNK)
        .with_plan(data.len() as u64, Some(pin.hex()))
        .with_gate(HELD * CHUNK, Arc::clone(&gate));
    let rid = sender.offer(Arc::new(stream));
    let ticket = sender.ticket(&rid, Kind::File, "w.bin", pin);
    let out = d.path().join("out");
    let part = out.join("w.bin.part");
    let record = out.join("w.bin.part.ferry");
    let mut first = Proc::spawn(&[
        "get",
        &ticket,
        "-o",
        path_str(&out),
        "--resume",
        "--sync-every",
        "64KiB",
    ]);
    // chunks 0..HELD are durable and recorded; the window's later chunks are written
    wait_until("the checkpoint before the held chunk", || {
        recorded_prefix(&record) == Some((HELD * CHUNK) as u64)
    });
    wait_until("chunks written past the held one", || {
        std::fs::metadata(&part).map_or(0, |m| m.len()) >= ((HELD + 4) * CHUNK) as u64
    });
    first.child.kill().unwrap(); // SIGKILL: no cleanup
    first.child.wait().unwrap();
    assert!(!out.join("w.bin").exists());
    let len = std::fs::metadata(&part).unwrap().len();
    assert!(
        len > (HELD * CHUNK) as u64,
        "the part has a hole at chunk {HELD}: {len} bytes"
    );

    gate.open();
    let err = get(&ticket, &out, &["--resume"], 0);
    assert!(
        err.contains("resumed at 640.00 KiB of 4.00 MiB")
            && err.contains("verified: size + BLAKE3 pinned by the ticket"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("w.bin")).unwrap(), data);
    assert_eq!(list(&out), ["w.bin"]);
}

#[test]
fn a_part_of_other_content_is_refused_before_any_byte_is_fetched() {
    const CHUNK: usize = 64 << 10;
    let sender = Sender::start(8);
    let d = tempfile::tempdir().unwrap();
    let old = random_file(&d.path().join("old"), 32 * CHUNK, 9);
    let new = random_file(&d.path().join("new"), 40 * CHUNK, 10);
    let gate = Arc::new(Gate::default());
    let stream = Stream::new(old.clone(), CHUNK).with_gate(5 * CHUNK, Arc::clone(&gate));
    let old_rid = sender.offer(Arc::new(stream));
    let out = d.path().join("out");
    let record = out.join("m.bin.part.ferry");
    // An interrupted get of the old content leaves its verified part.
    let mut first = Proc::spawn(&[
        "get",
        &sender.ticket(&old_rid, Kind::File, "m.bin", pin_of(&old)),
        "-o",
        path_str(&out),
        "--resume",
        "--sync-every",
        "64KiB",
    ]);
    wait_until("a checkpoint", || {
        recorded_prefix(&record) == Some(5 * CHUNK as u64)
    });
    first.signal("INT");
    assert_eq!(first.wait().code(), Some(130), "{}", first.stderr_text());
    gate.open();
    let before = list(&out);
    assert_eq!(before, ["m.bin.part", "m.bin.part.ferry"]);

    // The same name, other content: refused, nothing fetched, the part left as it was.
    let stream = Stream::new(new.clone(), CHUNK);
    let produced = Arc::clone(&stream.produced);
    let new_rid = sender.offer(Arc::new(stream));
    let ticket = sender.ticket(&new_rid, Kind::File, "m.bin", pin_of(&new));
    let a = ferry()
        .args(["get", &ticket, "-o", path_str(&out), "--resume"])
        .assert()
        .code(2);
    let err = stderr(&a);
    assert!(
        err.contains("holds part of other content")
            && err.contains(&pin_of(&old).hex())
            && err.contains(&pin_of(&new).hex())
            && err.contains(&format!("ferry-sender/{old_rid}"))
            && err.contains("nothing was fetched")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(produced.load(Ordering::Relaxed), 0, "nothing fetched");
    assert_eq!(list(&out), before);

    // --force discards it and starts over.
    let err = get(&ticket, &out, &["--resume", "--force"], 0);
    assert!(err.contains("starting m.bin over"), "{err}");
    assert_eq!(std::fs::read(out.join("m.bin")).unwrap(), new);
    assert_eq!(list(&out), ["m.bin"]);
}

#[test]
fn cut_short_tickets_exit_2_with_a_hint_to_quote() {
    let d = tempfile::tempdir().unwrap();
    let whole = format!(
        "ferry+tcp://127.0.0.1:9/ferry-sender/R1?kind=file&name=a.bin&size=3&b3={}",
        "ab".repeat(32)
    );
    // what `ferry get ferry+tcp://...?kind=file&name=...` leaves after the shell's `&`
    for cut in [
        whole.split('&').next().unwrap(),
        whole.split('?').next().unwrap(),
    ] {
        let a = ferry()
            .args(["get", cut, "-o", path_str(d.path())])
            .assert()
            .code(2);
        let err = stderr(&a);
        assert!(
            err.contains("single quotes") && err.contains("no "),
            "{err}"
        );
    }
    assert!(list(d.path()).is_empty());
}

fn dict(seed: u8) -> TensorDict {
    let mut d = TensorDict::new();
    for (i, shape) in [[64usize, 32], [128, 16], [8, 8]].iter().enumerate() {
        let n = shape[0] * shape[1] * 4;
        let data: Vec<u8> = (0..n)
            .map(|k| (k as u8).wrapping_mul(seed).wrapping_add(i as u8))
            .collect();
        d.insert(
            format!("layer.{i}.weight"),
            Tensor::new(Dtype::F32, shape.to_vec(), data.into()).unwrap(),
        )
        .unwrap();
    }
    d
}

#[test]
fn tensor_tickets_pin_the_dict() {
    let sender = Sender::start(8);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let served = || {
        let obj = TensorDictObject::from_tensors(dict(3), CacheOptions::default()).unwrap();
        Arc::new(obj) as Arc<dyn ferry::core::Downloadable>
    };
    // the same names, dtypes and shapes, other values
    let rid = sender.offer(served());
    let ticket = sender.ticket(
        &rid,
        Kind::Tensors,
        "m.safetensors",
        tensor_dict_pin(&dict(5)),
    );
    let err = get(&ticket, &out, &[], 1);
    assert!(
        err.contains("m.safetensors is not what the ticket pins: tensor-dict digest mismatch"),
        "{err}"
    );
    assert!(list(&out).is_empty(), "{:?}", list(&out));
    let rid = sender.offer(served());
    let ticket = sender.ticket(
        &rid,
        Kind::Tensors,
        "m.safetensors",
        tensor_dict_pin(&dict(3)),
    );
    let err = get(&ticket, &out, &[], 0);
    assert!(
        err.contains("verified: size + BLAKE3 pinned by the ticket"),
        "{err}"
    );
    let got = TensorDict::load_safetensors(out.join("m.safetensors")).unwrap();
    assert_eq!(tensor_dict_pin(&got), tensor_dict_pin(&dict(3)));
}
