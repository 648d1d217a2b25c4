//! Peer scheduling (`ferry_peers__*`), both directions: what receivers send the sender's peer
//! coordinator (join, report, source failed) as cellnet payloads read by the coordinator
//! (`request_body`, refused unread above 64 KiB), decoded and handed to a live sans-IO
//! `Scheduler` per shared ref on a virtual clock whose timeouts fire as the coordinator's timer
//! fires them; and what the sender answers, as a receiver reads it (`peer_reply`). Hostile
//! sequences — joins under other names, reports of positions that go back, complete claims,
//! lies about sources, silences — reach the scheduler's tree.
//!
//! Input: a selector byte (fan-out, receiver cap), then records (see `ferry_fuzz::records`);
//! each record is one message: its first byte picks the direction and topic, the receiver, the
//! time that passes and the payload encoding; the rest is the payload.
//!
//! Beyond "no crash": the coordinator's own replies read back at the receiver; no receiver is
//! told to pull from itself; following each receiver's source never loops (a cycle of peers
//! would wait on each other forever).
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_cellnet::{Headers, Message, Payload};
use ferry_core::peers::message::{Answer, TOPIC_FAILED, TOPIC_JOIN, TOPIC_REPORT};
use ferry_core::peers::{Directive, Scheduler, SchedulerConfig, Source};
use ferry_fuzz::records::Records;
use ferry_fuzz::{within, Limit, DECODER_FIXED, VALUE_TREE_PER_BYTE};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // a FOBS payload with datum sections is folded back through a value tree (`main_body`);
    // the decoded request's strings and the scheduler's nodes (a handful of names)
    per_byte: VALUE_TREE_PER_BYTE + 8,
    fixed: DECODER_FIXED + 64 * 1024,
};

/// The ref the coordinator schedules (seeds use it; others are "not shared").
const SHARED: &str = "R0b3e4a3c2d1e4f5a9b8c7d6e5f4a3b2c";
/// Names the cellnet proved (a request's origin); the last is not a valid FQCN.
const RECEIVERS: [&str; 8] = [
    "site-1",
    "site-2",
    "site-3",
    "site-4",
    "site-1.job7",
    "server",
    "site-5",
    "bad name",
];
const ENCODINGS: [Option<&str>; 2] = [Some("fobs"), Some("bytes")];
/// Seconds that pass before a record (timeouts: stall 10 s, silence 15 s by default).
const STEPS: [u64; 4] = [0, 1, 6, 16];

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut rd = Records::new(data);
    let sel = rd.byte();
    let cfg = SchedulerConfig {
        fan_out: 1 + usize::from(sel & 3),
        max_receivers: 2 + usize::from((sel >> 2) & 7),
        ..SchedulerConfig::default()
    };
    within(LIMIT, data.len(), || {
        let mut refs = HashMap::from([(SHARED.to_string(), Scheduler::new(cfg))]);
        let mut now = t0;
        while let Some(rec) = rd.next_record() {
            let Some((&pick, body)) = rec.split_first() else {
                continue;
            };
            now += Duration::from_secs(STEPS[usize::from(pick >> 5) & 3]);
            ferry::fuzzing::peer_timeouts(&mut refs, now);
            let Ok(payload) = Payload::from_wire(
                ENCODINGS[usize::from(pick >> 7)],
                Bytes::copy_from_slice(body),
            ) else {
                continue;
            };
            let msg = Message {
                headers: Headers::new(),
                payload,
            };
            let origin = RECEIVERS[usize::from(pick >> 2) & 7];
            let topic = match pick & 3 {
                0 => TOPIC_JOIN,
                1 => TOPIC_REPORT,
                2 => TOPIC_FAILED,
                _ => {
                    // a reply as a receiver reads it
                    let _ = ferry::fuzzing::peer_reply(&msg);
                    continue;
                }
            };
            let reply = ferry::fuzzing::peer_request(&mut refs, topic, origin, &msg, now);
            let wire = round_trip(reply);
            match ferry::fuzzing::peer_reply(&wire) {
                Ok(Answer::Pull(Source::Peer(p)))
                | Ok(Answer::Directive(Directive::Switch(Source::Peer(p)))) => {
                    assert_ne!(p.fqcn, origin, "{origin} was told to pull from itself");
                }
                Ok(_) => {}
                Err(e) => {
                    // only a request refused before decoding is an error reply
                    assert!(
                        e.starts_with("invalid_request"),
                        "the coordinator's reply did not read back: {e}"
                    );
                }
            }
            for s in refs.values() {
                assert_no_loop(s);
            }
        }
    });
});

/// The reply as the receiver gets it: encoded as the cell sends it, parsed as it receives it.
fn round_trip(reply: Message) -> Message {
    let headers = reply.headers.clone();
    let encoding = reply.payload.encoding();
    let bytes: Vec<u8> = ferry_cellnet::fobs::concat(&reply.payload.into_segments()).to_vec();
    let payload = Payload::from_wire(Some(encoding), Bytes::from(bytes)).expect("own reply parses");
    Message { headers, payload }
}

/// Following sources from any receiver ends at the origin (or a receiver being moved).
fn assert_no_loop(s: &Scheduler) {
    // Every receiver is a start: a chain that ends moves on to the next start.
    'starts: for start in RECEIVERS {
        let mut at = start.to_string();
        for _ in 0..=RECEIVERS.len() {
            match s.source_of(&at) {
                Some(Source::Peer(p)) => at = p.fqcn,
                _ => continue 'starts,
            }
        }
        panic!("the sources from {start} loop");
    }
}
