//! The seed corpora of the fuzz targets `peer_messages`, `outboard_reply` and `object_ref`
//! (`fuzz/seeds/TARGET/`), written by the real encoders: peer-scheduling requests and the
//! scheduler's replies as a receiver and the sender's coordinator put them on the wire, the
//! outboards of real objects as a sender computes and sends them, pass-through refs as an
//! origin puts them into a message. Each seed is laid out as its target reads it (a selector
//! byte, then the target's fields; see each target's docs).
//!
//! `committed_fuzz_seeds_are_what_the_encoders_write` fails when an encoder changed and the
//! seeds were not regenerated; regenerate them with
//! `FERRY_WRITE_FUZZ_SEEDS=1 cargo test -p ferry --test fuzz_seeds`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::passthrough::ObjectRef;
use ferry::relay::outboard::{Outboard, GROUP};
use ferry_cellnet::{Message, MsgpackBody};
use ferry_core::peers::message::{
    encode_request, FailedRequest, JoinRequest, ReportRequest, ScheduleReply,
};
use ferry_core::peers::{FailureKind, PeerOffer, Scheduler, SchedulerConfig};
use ferry_core::RefId;

/// The ref the `peer_messages` target schedules.
const SHARED: &str = "R0b3e4a3c2d1e4f5a9b8c7d6e5f4a3b2c";
/// The target's receivers, by index.
const RECEIVERS: [&str; 5] = ["site-1", "site-2", "site-3", "site-4", "site-1.job7"];

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds")
}

/// A payload's bytes as a cell puts them on the wire.
fn wire(msg: Message) -> Vec<u8> {
    ferry_cellnet::fobs::concat(&msg.payload.into_segments()).to_vec()
}

fn msgpack(body: Vec<u8>) -> Vec<u8> {
    wire(Message::from_msgpack(MsgpackBody::from_bytes(Bytes::from(
        body,
    ))))
}

/// `len: u16 BE` then the record (the fuzz harness's record layout).
fn record(out: &mut Vec<u8>, pick: u8, payload: &[u8]) {
    let len = u16::try_from(payload.len() + 1).expect("small record");
    out.extend_from_slice(&len.to_be_bytes());
    out.push(pick);
    out.extend_from_slice(payload);
}

/// The `peer_messages` pick byte: topic (0 join, 1 report, 2 failed, 3 a reply read by a
/// receiver), receiver index, seconds step index (0, 1, 6, 16 s), FOBS encoding.
fn pick(topic: u8, receiver: usize, step: u8) -> u8 {
    topic | (receiver as u8) << 2 | step << 5
}

fn offer(i: usize) -> PeerOffer {
    PeerOffer {
        fqcn: RECEIVERS[i].into(),
        url: format!("tcp://10.0.0.{}:8{i:03}", i + 10),
    }
}

/// A scheduling conversation: each request a receiver sends and the reply it reads, the reply
/// made by a real scheduler fed the same requests.
struct Conversation {
    s: Scheduler,
    now: Instant,
    out: Vec<u8>,
}

const STEPS: [u64; 4] = [0, 1, 6, 16];

impl Conversation {
    fn new(sel: u8) -> Self {
        let cfg = SchedulerConfig {
            fan_out: 1 + usize::from(sel & 3),
            max_receivers: 2 + usize::from((sel >> 2) & 7),
            ..SchedulerConfig::default()
        };
        Self {
            s: Scheduler::new(cfg),
            now: Instant::now(),
            out: vec![sel],
        }
    }

    fn step(&mut self, step: u8) {
        self.now += Duration::from_secs(STEPS[usize::from(step)]);
        if self.s.poll_timeout().is_some_and(|t| t <= self.now) {
            self.s.handle_timeout(self.now);
        }
    }

    fn reply(&mut self, r: ScheduleReply, receiver: usize) {
        record(&mut self.out, pick(3, receiver, 0), &msgpack(r.encode()));
    }

    fn join(&mut self, i: usize, serve: bool, position: u64, step: u8) {
        self.step(step);
        let req = JoinRequest {
            ref_id: SHARED.into(),
            position,
            offer: serve.then(|| offer(i)),
        };
        record(
            &mut self.out,
            pick(0, i, step),
            &msgpack(encode_request(&req)),
        );
        let r = self
            .s
            .join(RECEIVERS[i], req.offer, position, self.now)
            .map_or_else(
                |e| ScheduleReply::refused(e.to_string()),
                ScheduleReply::pull,
            );
        self.reply(r, i);
    }

    fn report(&mut self, i: usize, position: u64, complete: bool, step: u8) {
        self.step(step);
        let req = ReportRequest {
            ref_id: SHARED.into(),
            position,
            complete,
            // odd receivers serve others and say how much (the sender's per-source report)
            served: (i % 2 == 1).then_some(position / 2),
        };
        record(
            &mut self.out,
            pick(1, i, step),
            &msgpack(encode_request(&req)),
        );
        // as the coordinator does: the served count first, then the report
        if let Some(served) = req.served {
            self.s.record_served(RECEIVERS[i], served);
        }
        let r = self
            .s
            .report(RECEIVERS[i], position, complete, self.now)
            .map_or_else(
                |e| ScheduleReply::refused(e.to_string()),
                ScheduleReply::directive,
            );
        self.reply(r, i);
    }

    fn failed(&mut self, i: usize, position: u64, lied: bool, step: u8) {
        self.step(step);
        let req = FailedRequest {
            ref_id: SHARED.into(),
            position,
            lied,
            reason: if lied {
                "the file's BLAKE3 does not match the ticket".into()
            } else {
                "connection closed by the peer".into()
            },
        };
        record(
            &mut self.out,
            pick(2, i, step),
            &msgpack(encode_request(&req)),
        );
        let kind = if lied {
            FailureKind::Lied
        } else {
            FailureKind::Failed
        };
        let r = self
            .s
            .source_failed(RECEIVERS[i], kind, position, self.now)
            .map_or_else(
                |e| ScheduleReply::refused(e.to_string()),
                ScheduleReply::pull,
            );
        self.reply(r, i);
    }
}

const MIB: u64 = 1 << 20;

fn peer_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    // a pipelined chain of three serving receivers and one that does not serve
    let mut c = Conversation::new(0);
    c.join(0, true, 0, 0);
    c.join(1, true, 0, 0);
    c.join(2, true, 0, 1);
    c.join(3, false, 0, 1);
    for round in 1..4u64 {
        for i in 0..4 {
            c.report(i, round * (4 - i as u64) * MIB, false, 1);
        }
    }
    c.report(0, 16 * MIB, true, 1);
    c.report(1, 16 * MIB, true, 1);
    seeds.push(("chain-of-four".to_string(), c.out));
    // a lying source is reported and banned; its child moves
    let mut c = Conversation::new(1);
    c.join(0, true, 0, 0);
    c.join(1, true, 0, 0);
    c.join(2, true, 0, 0);
    c.report(1, 3 * MIB, false, 1);
    c.failed(2, 0, true, 1);
    c.failed(1, 2 * MIB, false, 1);
    c.report(2, MIB, false, 1);
    seeds.push(("a-source-lies".to_string(), c.out));
    // silences and stalls: timeouts fire between reports
    let mut c = Conversation::new(2);
    c.join(0, true, 0, 0);
    c.join(1, true, 0, 0);
    c.join(4, true, 5 * MIB, 0);
    c.report(1, MIB, false, 2);
    c.report(4, 5 * MIB, false, 3);
    c.report(0, 9 * MIB, false, 3);
    c.join(0, true, 9 * MIB, 1);
    seeds.push(("silence-and-stall".to_string(), c.out));
    // a cap of two receivers: the third pulls from the origin, untracked, and its report is
    // refused; a ref that is not shared
    let mut c = Conversation::new(0);
    c.join(0, true, 0, 0);
    c.join(1, true, 0, 0);
    c.join(2, true, 0, 0);
    c.report(2, MIB, false, 1);
    let other = JoinRequest {
        ref_id: "R00000000000000000000000000000000".into(),
        position: 0,
        offer: None,
    };
    record(&mut c.out, pick(0, 3, 0), &msgpack(encode_request(&other)));
    c.reply(
        ScheduleReply::refused(format!("{} is not shared with peers", other.ref_id)),
        3,
    );
    seeds.push(("capped-and-not-shared".to_string(), c.out));
    seeds
}

/// The `outboard_reply` target's objects (the same bytes and sizes as the target's).
const SIZES: [u64; 8] = [
    0,
    1,
    1024,
    GROUP - 1,
    GROUP,
    GROUP + 1,
    2 * GROUP,
    3 * GROUP + 5,
];

fn outboard_seeds() -> Vec<(String, Vec<u8>)> {
    let n = SIZES[SIZES.len() - 1] as usize + 1;
    let data: Vec<u8> = (0..n).map(|i| (i * 13 + i / 4099) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("object");
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut seeds = Vec::new();
    for (i, &size) in SIZES.iter().enumerate() {
        let o = Outboard::compute(&file, size).unwrap();
        let payload = wire(Message::from_value(o.to_value()));
        let groups = size.div_ceil(GROUP).max(1);
        // the last group is checked; the probe asks about the group past the end
        let sel = i as u8 | ((groups - 1) as u8) << 5;
        let mut seed = vec![sel];
        seed.extend_from_slice(&groups.to_be_bytes());
        seed.extend_from_slice(&payload);
        if i == 6 {
            // the same outboard under another pinned root (refused)
            let mut wrong = seed.clone();
            wrong[0] |= 8;
            seeds.push((format!("object-of-{size}-bytes-other-root"), wrong));
        }
        seeds.push((format!("object-of-{size}-bytes"), seed));
    }
    seeds
}

fn object_ref_seeds() -> Vec<(String, Vec<u8>)> {
    let data = b"weights of round 7";
    let refs = [
        (
            "unpinned",
            ObjectRef::new("server", &RefId::new("R6f1c2a3b4d5e6f708192a3b4c5d6e7f8")),
        ),
        (
            "pinned",
            ObjectRef::new("server", &RefId::new("R6f1c2a3b4d5e6f708192a3b4c5d6e7f8"))
                .pinned(data.len() as u64, blake3::hash(data)),
        ),
        (
            "job-cell-nvflare-ref-id",
            ObjectRef::new(
                "site-1.job7",
                &RefId::new("0f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0"),
            )
            .pinned(140 << 30, blake3::hash(b"checkpoint")),
        ),
    ];
    refs.into_iter()
        .map(|(name, r)| {
            let mut seed = vec![0u8];
            seed.extend_from_slice(&wire(Message::from_value(r.to_value())));
            (name.to_string(), seed)
        })
        .collect()
}

fn all_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut all = Vec::new();
    for (name, s) in peer_seeds() {
        all.push(("peer_messages", name, s));
    }
    for (name, s) in outboard_seeds() {
        all.push(("outboard_reply", name, s));
    }
    for (name, s) in object_ref_seeds() {
        all.push(("object_ref", name, s));
    }
    all
}

#[test]
fn committed_fuzz_seeds_are_what_the_encoders_write() {
    let write = std::env::var_os("FERRY_WRITE_FUZZ_SEEDS").is_some();
    let mut stale = Vec::new();
    for (target, name, seed) in all_seeds() {
        let path = seeds_dir().join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &seed).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&seed[..]) {
            stale.push(format!("{target}/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "fuzz seeds that today's encoders write differently (or that are missing): {stale:?}; \
         regenerate with FERRY_WRITE_FUZZ_SEEDS=1 cargo test -p ferry --test fuzz_seeds"
    );
}

#[test]
fn the_seeds_reach_the_decoders_accepting_paths() {
    // every outboard of a real object verifies against its root (the target then runs the
    // group checks), and every ref reads back: the seeds start the fuzzer past the refusals
    for (_, name, seed) in all_seeds() {
        if name.starts_with("object-of-") && !name.ends_with("other-root") {
            let i = usize::from(seed[0] & 7);
            let n = SIZES[i] as usize;
            let data: Vec<u8> = (0..n).map(|i| (i * 13 + i / 4099) as u8).collect();
            let msg = Message {
                headers: Default::default(),
                payload: ferry_cellnet::Payload::from_wire(
                    Some("fobs"),
                    Bytes::copy_from_slice(&seed[9..]),
                )
                .unwrap(),
            };
            let v = msg.value().unwrap();
            Outboard::verified(&v, SIZES[i], &blake3::hash(&data)).unwrap();
        }
    }
    for (name, seed) in object_ref_seeds() {
        let msg = Message {
            headers: Default::default(),
            payload: ferry_cellnet::Payload::from_wire(
                Some("fobs"),
                Bytes::copy_from_slice(&seed[1..]),
            )
            .unwrap(),
        };
        ObjectRef::from_value(&msg.value().unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
