//! The two stream machines talking over a bad link on virtual time: chunks and ACKs travel as
//! real header maps (encoded, decoded, parsed), each copy is lost, duplicated or delayed (so
//! reordered) at random from a seed, and time jumps from one event to the next. A failing
//! case is a seed and a few numbers: proptest prints them and the run replays exactly.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio::time::Instant;

use super::recv::{Arrival, Reassembler, RecvLimits, RecvOutput, CHUNK_OVERHEAD, STREAM_OVERHEAD};
use super::send::{SendError, SendStream};
use super::tests::Paid;
use crate::envelope::stream::{ChunkOut, StreamMsg};
use crate::envelope::Stamp;
use crate::fqcn::Fqcn;
use crate::headers::{stream_keys as sk, Headers};

const IDLE: Duration = Duration::from_secs(60);
const SID: u64 = 42;

/// splitmix64: small, seedable, good enough to pick fates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p` (in percent).
    fn chance(&mut self, percent: u8) -> bool {
        self.next() % 100 < u64::from(percent)
    }
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    blob_len: usize,
    chunk_size: usize,
    window: u64,
    ack_interval: usize,
    /// Loss of a copy, in percent, sender → receiver and back.
    loss_data: u8,
    loss_ack: u8,
    /// Chance that a message travels twice.
    dup: u8,
    /// Each copy takes 0..=max_delay_ms (so later messages overtake earlier ones).
    max_delay_ms: u64,
    seed: u64,
}

enum Msg {
    /// Headers (encoded) and bytes of a chunk.
    Chunk(Bytes, Bytes),
    /// Headers (encoded) of an ACK.
    Ack(Bytes),
}

#[derive(Default)]
struct Net {
    /// (arrival, tie-break, message), unordered.
    flying: Vec<(Instant, u64, Msg)>,
    sent: u64,
}

impl Net {
    fn send(&mut self, rng: &mut Rng, s: &Scenario, now: Instant, loss: u8, m: impl Fn() -> Msg) {
        let copies = 1 + usize::from(rng.chance(s.dup));
        for _ in 0..copies {
            if rng.chance(loss) {
                continue;
            }
            let delay = Duration::from_millis(rng.next() % (s.max_delay_ms + 1));
            self.sent += 1;
            self.flying.push((now + delay, self.sent, m()));
        }
    }

    fn next_time(&self) -> Option<Instant> {
        self.flying.iter().map(|f| f.0).min()
    }

    fn pop_due(&mut self, now: Instant) -> Option<Msg> {
        let i = (0..self.flying.len())
            .filter(|&i| self.flying[i].0 <= now)
            .min_by_key(|&i| (self.flying[i].0, self.flying[i].1))?;
        Some(self.flying.swap_remove(i).2)
    }
}

struct Report {
    delivered: Vec<Bytes>,
    /// Chunks (by seq) of which at least one copy reached the receiver.
    seqs_arrived: BTreeSet<u64>,
    chunks: u64,
    last_arrival: Option<Instant>,
    expired_at: Option<Instant>,
    sender: Option<(Instant, Result<(), SendError>)>,
    /// When the sender last handed out a chunk, and last saw its ACK level rise.
    last_transmit: Instant,
    last_ack_rise: Instant,
    held_at_end: usize,
}

fn run(s: Scenario) -> Report {
    let me = Fqcn::new("sender").unwrap();
    let stamp = Stamp { me: &me, at: 0.0 };
    let mut rng = Rng(s.seed);
    let blob: Bytes = (0..s.blob_len).map(|i| (i * 7 % 251) as u8).collect();
    let t0 = Instant::now();
    let mut now = t0;
    let mut tx = SendStream::new(vec![blob.clone()], s.chunk_size, s.window, IDLE);
    let limits = RecvLimits {
        max_stream_bytes: 1 << 20,
        max_streams_per_peer: 4,
        ack_interval: s.ack_interval,
        idle: IDLE,
    };
    let mut rx: Reassembler<u64, Paid> = Reassembler::new(limits);
    let pool: Rc<Cell<usize>> = Rc::default();
    let mut net = Net::default();
    let mut acked = 0u64;
    let mut r = Report {
        delivered: Vec::new(),
        seqs_arrived: BTreeSet::new(),
        chunks: 0,
        last_arrival: None,
        expired_at: None,
        sender: None,
        last_transmit: t0,
        last_ack_rise: t0,
        held_at_end: 0,
    };
    let bound = s.blob_len + (s.blob_len / s.chunk_size + 1) * CHUNK_OVERHEAD + STREAM_OVERHEAD;
    for _ in 0..1_000_000 {
        while let Some(c) = tx.poll_transmit(now) {
            assert!(
                c.offset - acked <= s.window,
                "chunk at {} went with only {acked} acknowledged (window {})",
                c.offset,
                s.window
            );
            r.chunks += 1;
            r.last_transmit = now;
            let out = ChunkOut {
                sid: SID,
                seq: c.seq,
                last: c.last,
                offset: c.offset,
                total: s.blob_len as u64,
                encoding: "bytes",
                channel: "ch",
                topic: "tp",
                ri: None,
                first: (c.seq == 0).then_some((s.chunk_size as u64, s.window)),
                len: c.len,
            };
            let h = Bytes::from(
                stamp
                    .stream_chunk(&Headers::new(), "receiver", &out)
                    .encode(),
            );
            let mut body = BytesMut::new();
            c.parts.iter().for_each(|p| body.extend_from_slice(p));
            let body = body.freeze();
            net.send(&mut rng, &s, now, s.loss_data, || {
                Msg::Chunk(h.clone(), body.clone())
            });
        }
        if r.sender.is_none() {
            if let Some(o) = tx.outcome() {
                r.sender = Some((now, o));
            }
        }
        let next = [net.next_time(), tx.poll_timeout(), rx.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(t) = next else {
            r.held_at_end = pool.get();
            return r;
        };
        assert!(t >= now, "time went back");
        now = t;
        while let Some(m) = net.pop_due(now) {
            match m {
                Msg::Chunk(h, body) => {
                    let headers = Headers::decode(&h).unwrap();
                    let Ok(StreamMsg::Chunk(head)) = StreamMsg::parse(sk::TOPIC_DATA, &headers)
                    else {
                        panic!("a chunk that does not parse as one");
                    };
                    r.seqs_arrived.insert(head.seq);
                    r.last_arrival = Some(now);
                    let key = ("sender".to_string(), head.sid);
                    let cost = rx.cost(&key, &head, body.len());
                    let a = Arrival {
                        key,
                        conn_id: 1,
                        via: 1,
                        head,
                        headers,
                        payload: body,
                    };
                    rx.handle_chunk(a, Paid::new(&pool, 1, cost), now);
                    assert!(pool.get() <= bound, "held {} > {bound}", pool.get());
                }
                Msg::Ack(h) => {
                    let headers = Headers::decode(&h).unwrap();
                    let Ok(StreamMsg::Ack { sid, offset }) =
                        StreamMsg::parse(sk::TOPIC_ACK, &headers)
                    else {
                        panic!("an ACK that does not parse as one");
                    };
                    assert_eq!(sid, SID);
                    if offset > acked {
                        acked = offset;
                        r.last_ack_rise = now;
                    }
                    tx.on_ack(offset, now);
                }
            }
            drain(&mut rx, &mut net, &mut rng, &s, &stamp, now, &mut r);
        }
        tx.handle_timeout(now);
        rx.handle_timeout(now);
        drain(&mut rx, &mut net, &mut rng, &s, &stamp, now, &mut r);
    }
    panic!("the simulation did not settle");
}

#[allow(clippy::too_many_arguments)]
fn drain(
    rx: &mut Reassembler<u64, Paid>,
    net: &mut Net,
    rng: &mut Rng,
    s: &Scenario,
    stamp: &Stamp<'_>,
    now: Instant,
    r: &mut Report,
) {
    while let Some(o) = rx.poll_output() {
        match o {
            RecvOutput::Ack { offset, seq, .. } => {
                let h = Bytes::from(stamp.stream_ack("sender", SID, offset, seq).encode());
                net.send(rng, s, now, s.loss_ack, || Msg::Ack(h.clone()));
            }
            RecvOutput::Complete { blob, .. } => r.delivered.push(blob),
            RecvOutput::Expired { .. } => r.expired_at = Some(now),
            RecvOutput::Refuse { why, .. } => panic!("refused within the limits: {why}"),
        }
    }
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        (0usize..4096, 1usize..700, 1u64..3000, 1usize..2000),
        (0u8..15, 0u8..40, 0u8..40, 0u64..3000, any::<u64>()),
    )
        .prop_map(|((blob_len, chunk_size, window, ack_interval), rest)| {
            let (loss_data, loss_ack, dup, max_delay_ms, seed) = rest;
            Scenario {
                blob_len,
                chunk_size,
                window,
                ack_interval,
                loss_data,
                loss_ack,
                dup,
                max_delay_ms,
                seed,
            }
        })
}

fn check(s: Scenario) -> Result<(), TestCaseError> {
    let r = run(s);
    let blob: Bytes = (0..s.blob_len).map(|i| (i * 7 % 251) as u8).collect();
    let (sent_at, sent) = r.sender.clone().expect("the sender finished or gave up");
    let all_arrived = r.seqs_arrived.len() as u64 == r.chunks && sent.is_ok();
    // delivered at most once, and only ever the blob itself
    prop_assert!(r.delivered.len() <= 1);
    prop_assert!(r.delivered.iter().all(|b| *b == blob));
    if all_arrived {
        prop_assert_eq!(r.delivered.len(), 1, "every chunk arrived: one blob");
        prop_assert_eq!(r.expired_at, None);
    } else {
        prop_assert!(r.delivered.is_empty(), "a chunk never arrived: no blob");
        // dropped exactly when the idle timeout after the last chunk ran out
        let last = r.last_arrival;
        prop_assert_eq!(r.expired_at, last.map(|t| t + IDLE));
    }
    match sent {
        Ok(()) => {}
        Err(SendError::Stalled(idle)) => {
            prop_assert!(
                s.loss_data > 0 || s.loss_ack > 0,
                "stalled on a lossless link"
            );
            let since = r.last_transmit.max(r.last_ack_rise);
            prop_assert_eq!(
                sent_at,
                since + idle,
                "gave up exactly at the idle deadline"
            );
        }
        Err(e) => prop_assert!(false, "unexpected failure {:?}", e),
    }
    prop_assert_eq!(r.held_at_end, 0, "everything paid for was given back");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_stream_over_a_bad_link_is_delivered_once_or_dropped_on_time(s in scenario()) {
        check(s)?;
    }
}

#[test]
fn duplicates_and_reordering_alone_never_lose_a_stream() {
    for seed in 0..50 {
        let s = Scenario {
            blob_len: 3000,
            chunk_size: 100,
            window: 400,
            ack_interval: 250,
            loss_data: 0,
            loss_ack: 0,
            dup: 50,
            max_delay_ms: 2000,
            seed,
        };
        let r = run(s);
        assert_eq!(r.delivered.len(), 1, "seed {seed}");
        assert!(matches!(r.sender, Some((_, Ok(())))), "seed {seed}");
    }
}

#[test]
fn lost_acks_stall_a_full_window_until_the_idle_timeout() {
    let s = Scenario {
        blob_len: 4000,
        chunk_size: 100,
        window: 300,
        ack_interval: 100,
        loss_data: 0,
        loss_ack: 100,
        dup: 0,
        max_delay_ms: 10,
        seed: 1,
    };
    let r = run(s);
    let (at, res) = r.sender.unwrap();
    assert_eq!(res, Err(SendError::Stalled(IDLE)));
    assert_eq!(at, r.last_transmit + IDLE);
    // the chunks that went are dropped by the receiver on its own idle timeout
    assert!(r.delivered.is_empty());
    assert_eq!(r.expired_at, r.last_arrival.map(|t| t + IDLE));
    assert_eq!(r.held_at_end, 0);
}
