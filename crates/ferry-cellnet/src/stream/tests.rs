//! Unit tests of the two stream machines, one rule at a time (the simulation in `sim` checks
//! them together over a bad link).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::recv::{
    Arrival, Held, Reassembler, RecvLimits, RecvOutput, CHUNK_OVERHEAD, RECENT_STREAMS,
    STREAM_OVERHEAD,
};
use super::send::{chunks, SendError, SendStream};
use crate::envelope::stream::{ChunkOut, StreamMsg};
use crate::envelope::Stamp;
use crate::fqcn::Fqcn;
use crate::headers::Headers;

/// A payment that counts what is held in a shared pool, per account.
#[derive(Debug)]
pub(super) struct Paid {
    pub pool: Rc<Cell<usize>>,
    pub account: u64,
    pub n: usize,
}

impl Paid {
    pub fn new(pool: &Rc<Cell<usize>>, account: u64, n: usize) -> Paid {
        pool.set(pool.get() + n);
        Paid {
            pool: pool.clone(),
            account,
            n,
        }
    }
}

impl Drop for Paid {
    fn drop(&mut self) {
        self.pool.set(self.pool.get() - self.n);
    }
}

impl Held for Paid {
    fn absorb(&mut self, mut other: Paid) -> Option<Paid> {
        if other.account != self.account {
            return Some(other);
        }
        self.n += std::mem::take(&mut other.n);
        None
    }
}

/// The headers of a real chunk, as the wire carries them, parsed back.
pub(super) fn chunk_headers(
    origin: &str,
    c: &ChunkOut<'_>,
) -> (Headers, crate::envelope::stream::ChunkHead) {
    let me = Fqcn::new(origin).unwrap();
    let h = Stamp { me: &me, at: 0.0 }.stream_chunk(&Headers::new(), "rx", c);
    let h = Headers::decode(&h.encode()).unwrap();
    match StreamMsg::parse(crate::headers::stream_keys::TOPIC_DATA, &h) {
        Ok(StreamMsg::Chunk(head)) => (h, head),
        other => panic!("not a chunk: {other:?}"),
    }
}

fn out(
    sid: u64,
    seq: u64,
    last: bool,
    total: u64,
    window: Option<u64>,
    len: usize,
) -> ChunkOut<'static> {
    ChunkOut {
        sid,
        seq,
        last,
        offset: 0,
        total,
        encoding: "bytes",
        channel: "ch",
        topic: "tp",
        ri: None,
        first: window.map(|w| (4, w)),
        len,
    }
}

fn arrival(origin: &str, conn: u64, c: ChunkOut<'static>, payload: &[u8]) -> Arrival<u64> {
    let (headers, head) = chunk_headers(origin, &c);
    Arrival {
        key: (origin.to_string(), c.sid),
        conn_id: conn,
        via: conn,
        head,
        headers,
        payload: Bytes::copy_from_slice(payload),
    }
}

const LIMITS: RecvLimits = RecvLimits {
    max_stream_bytes: 100,
    max_streams_per_peer: 2,
    ack_interval: 8,
    idle: Duration::from_secs(60),
};

struct Rx {
    r: Reassembler<u64, Paid>,
    pool: Rc<Cell<usize>>,
    now: Instant,
}

impl Rx {
    fn new(limits: RecvLimits) -> Rx {
        Rx {
            r: Reassembler::new(limits),
            pool: Rc::default(),
            now: Instant::now(),
        }
    }

    /// Pay what the reassembler asks, hand the chunk in, return the outputs.
    fn feed(&mut self, a: Arrival<u64>) -> Vec<RecvOutput<u64>> {
        let cost = self.r.cost(&a.key, &a.head, a.payload.len());
        let paid = Paid::new(&self.pool, a.conn_id, cost);
        self.r.handle_chunk(a, paid, self.now);
        std::iter::from_fn(|| self.r.poll_output()).collect()
    }
}

fn acks(outs: &[RecvOutput<u64>]) -> Vec<(u64, u64)> {
    outs.iter()
        .filter_map(|o| match o {
            RecvOutput::Ack { offset, seq, .. } => Some((*offset, *seq)),
            _ => None,
        })
        .collect()
}

fn completed(outs: &[RecvOutput<u64>]) -> Option<Bytes> {
    outs.iter().find_map(|o| match o {
        RecvOutput::Complete { blob, .. } => Some(blob.clone()),
        _ => None,
    })
}

fn refused(outs: &[RecvOutput<u64>]) -> Option<String> {
    outs.iter().find_map(|o| match o {
        RecvOutput::Refuse { why, .. } => Some(why.clone()),
        _ => None,
    })
}

#[test]
fn chunking_is_zero_copy_and_exact() {
    let a = Bytes::from(vec![1u8; 5]);
    let b = Bytes::from(vec![2u8; 7]);
    let c = chunks(vec![a.clone(), b.clone()], 4);
    let lens: Vec<usize> = c.iter().map(|p| p.iter().map(Bytes::len).sum()).collect();
    assert_eq!(lens, [4, 4, 4]);
    assert_eq!(c[0][0].as_ptr(), a.as_ptr());
    let c = chunks(vec![], 4);
    assert_eq!(c.len(), 1);
    assert!(c[0].is_empty());
    let c = chunks(vec![Bytes::from(vec![0u8; 8])], 4);
    assert_eq!(c.len(), 2);
}

#[test]
fn the_sender_waits_while_more_than_a_window_is_unacknowledged() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(60);
    let mut s = SendStream::new(vec![Bytes::from(vec![0u8; 24])], 4, 8, idle);
    let offsets: Vec<u64> = std::iter::from_fn(|| s.poll_transmit(t0))
        .map(|c| c.offset)
        .collect();
    // NVFlare's rule: a chunk waits while sent − acked > window
    assert_eq!(offsets, [0, 4, 8]);
    assert_eq!(s.poll_timeout(), Some(t0 + idle));
    assert_eq!(s.outcome(), None);
    // an old or repeated ACK changes nothing
    s.on_ack(0, t0 + Duration::from_secs(1));
    assert_eq!(s.poll_timeout(), Some(t0 + idle));
    // progress that does not open the window restarts the idle clock
    let t1 = t0 + Duration::from_secs(30);
    s.on_ack(3, t1);
    assert!(s.poll_transmit(t1).is_none());
    assert_eq!(s.poll_timeout(), Some(t1 + idle));
    s.on_ack(4, t1);
    let c = s.poll_transmit(t1).unwrap();
    assert_eq!((c.seq, c.offset, c.last), (3, 12, false));
    assert_eq!(s.poll_timeout(), None);
    assert!(s.poll_transmit(t1).is_none());
    s.handle_timeout(t1 + idle - Duration::from_nanos(1));
    assert_eq!(s.outcome(), None);
    s.handle_timeout(t1 + idle);
    assert_eq!(s.outcome(), Some(Err(SendError::Stalled(idle))));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn an_abort_ends_the_sender_and_an_empty_blob_is_one_final_chunk() {
    let t0 = Instant::now();
    let mut s = SendStream::new(vec![Bytes::from(vec![0u8; 9])], 4, 1 << 20, Duration::ZERO);
    assert!(s.poll_transmit(t0).is_some());
    s.on_abort("no callback".into());
    assert!(s.poll_transmit(t0).is_none());
    assert_eq!(
        s.outcome(),
        Some(Err(SendError::Aborted("no callback".into())))
    );
    let mut e = SendStream::new(Vec::new(), 4, 8, Duration::ZERO);
    let c = e.poll_transmit(t0).unwrap();
    assert_eq!((c.seq, c.len, c.last), (0, 0, true));
    assert_eq!(e.outcome(), Some(Ok(())));
}

#[test]
fn chunks_in_any_order_make_one_blob_with_acks_at_the_interval() {
    let mut rx = Rx::new(LIMITS);
    let data: Vec<u8> = (0..20).collect();
    let piece = |seq: u64| &data[seq as usize * 5..seq as usize * 5 + 5];
    let c = |seq: u64| out(7, seq, seq == 3, 20, (seq == 0).then_some(64), 5);
    let o = rx.feed(arrival("site-1", 1, c(2), piece(2)));
    assert!(o.is_empty(), "out of order: kept, nothing consumed");
    assert_eq!(rx.pool.get(), 5 + CHUNK_OVERHEAD + STREAM_OVERHEAD);
    let o = rx.feed(arrival("site-1", 1, c(0), piece(0)));
    assert!(
        acks(&o).is_empty(),
        "5 bytes consumed: below the 8-byte interval"
    );
    let o = rx.feed(arrival("site-1", 1, c(1), piece(1)));
    assert_eq!(acks(&o), [(15, 2)], "chunks 1 and 2 consumed at once");
    let dup = rx.feed(arrival("site-1", 1, c(1), piece(1)));
    assert!(dup.is_empty());
    let o = rx.feed(arrival("site-1", 1, c(3), piece(3)));
    assert_eq!(acks(&o), [(20, 3)]);
    assert_eq!(completed(&o).as_deref(), Some(&data[..]));
    assert_eq!(rx.pool.get(), 0, "a complete stream holds nothing");
    assert_eq!(rx.r.len(), 0);
    // a late retry is re-acknowledged, not a new stream
    let o = rx.feed(arrival("site-1", 1, c(1), piece(1)));
    assert_eq!(acks(&o), [(20, 3)]);
    assert!(completed(&o).is_none());
    assert_eq!((rx.r.len(), rx.pool.get()), (0, 0));
}

#[test]
fn a_small_window_lowers_the_ack_interval() {
    let mut rx = Rx::new(LIMITS);
    let o = rx.feed(arrival("a", 1, out(1, 0, false, 0, Some(4), 2), b"xy"));
    assert_eq!(acks(&o), [(2, 0)], "window 4: ACK every 2 bytes");
}

#[test]
fn a_one_chunk_stream_costs_nothing_and_is_not_copied() {
    let mut rx = Rx::new(LIMITS);
    let a = arrival("a", 1, out(1, 0, true, 3, Some(64), 3), b"abc");
    let ptr = a.payload.as_ptr();
    assert_eq!(rx.r.cost(&a.key, &a.head, 3), 0);
    let o = rx.feed(a);
    assert_eq!(completed(&o).unwrap().as_ptr(), ptr);
}

#[test]
fn claims_and_growth_beyond_the_limit_are_refused_and_give_memory_back() {
    let mut rx = Rx::new(LIMITS);
    let o = rx.feed(arrival("a", 1, out(1, 0, false, 101, Some(64), 1), b"x"));
    assert_eq!(
        refused(&o).as_deref(),
        Some("stream of 101 bytes exceeds the limit of 100")
    );
    assert_eq!((rx.r.len(), rx.pool.get()), (0, 0));
    // a stream that claims little but sends more
    let big = vec![0u8; 60];
    let o = rx.feed(arrival("a", 1, out(2, 0, false, 10, Some(1000), 60), &big));
    assert!(refused(&o).is_none());
    assert!(rx.pool.get() > 60);
    let o = rx.feed(arrival("a", 1, out(2, 1, false, 10, None, 60), &big));
    assert_eq!(
        refused(&o).as_deref(),
        Some("stream exceeds the limit of 100 bytes")
    );
    assert_eq!((rx.r.len(), rx.pool.get()), (0, 0));
}

#[test]
fn streams_per_origin_and_per_connection_are_capped() {
    let mut rx = Rx::new(LIMITS);
    for sid in [1, 2] {
        assert!(rx
            .feed(arrival("a", 1, out(sid, 0, false, 0, None, 1), b"x"))
            .is_empty());
    }
    let o = rx.feed(arrival("a", 9, out(3, 0, false, 0, None, 1), b"x"));
    assert!(refused(&o)
        .unwrap()
        .starts_with("more than 2 concurrent streams from a"));
    // another origin on the same connection
    let o = rx.feed(arrival("a.b", 1, out(3, 0, false, 0, None, 1), b"x"));
    assert!(refused(&o).is_some());
    // another origin on another connection is fine
    assert!(refused(&rx.feed(arrival("c", 2, out(3, 0, false, 0, None, 1), b"x"))).is_none());
    assert_eq!(rx.r.len(), 3);
    assert_eq!(rx.r.drop_connection(1), 2);
    assert!(rx.r.abort(&("c".to_string(), 3)));
    assert!(!rx.r.abort(&("c".to_string(), 3)));
    assert_eq!((rx.r.len(), rx.pool.get()), (0, 0));
}

#[test]
fn payments_from_two_connections_are_each_given_back() {
    let mut rx = Rx::new(LIMITS);
    rx.feed(arrival("a", 1, out(1, 0, false, 0, None, 4), b"abcd"));
    rx.feed(arrival("a", 2, out(1, 1, false, 0, None, 4), b"efgh"));
    assert!(rx.pool.get() > 8);
    let o = rx.feed(arrival("a", 2, out(1, 2, true, 0, None, 1), b"i"));
    assert_eq!(completed(&o).as_deref(), Some(&b"abcdefghi"[..]));
    assert_eq!(rx.pool.get(), 0);
}

#[test]
fn an_idle_stream_expires_at_its_deadline_exactly() {
    let mut rx = Rx::new(LIMITS);
    assert_eq!(rx.r.poll_timeout(), None);
    let t0 = rx.now;
    rx.feed(arrival("a", 1, out(1, 0, false, 0, None, 1), b"x"));
    rx.now = t0 + Duration::from_secs(10);
    rx.feed(arrival("b", 2, out(1, 0, false, 0, None, 1), b"x"));
    assert_eq!(rx.r.poll_timeout(), Some(t0 + LIMITS.idle));
    rx.r.handle_timeout(t0 + LIMITS.idle - Duration::from_nanos(1));
    assert!(rx.r.poll_output().is_none());
    rx.r.handle_timeout(t0 + LIMITS.idle);
    match rx.r.poll_output() {
        Some(RecvOutput::Expired { key, via }) => assert_eq!((key.0.as_str(), via), ("a", 1)),
        other => panic!("expected an expiry, got {other:?}"),
    }
    assert_eq!(
        rx.r.poll_timeout(),
        Some(t0 + Duration::from_secs(10) + LIMITS.idle)
    );
    assert_eq!(rx.r.len(), 1);
}

#[test]
fn only_the_most_recent_completed_streams_are_remembered() {
    let mut rx = Rx::new(LIMITS);
    for sid in 0..=RECENT_STREAMS as u64 {
        rx.feed(arrival("a", 1, out(sid, 0, true, 1, None, 1), b"x"));
    }
    // stream 0 was forgotten: its late chunk starts a new stream
    let o = rx.feed(arrival("a", 1, out(0, 0, true, 1, None, 1), b"x"));
    assert!(completed(&o).is_some());
    let o = rx.feed(arrival(
        "a",
        1,
        out(RECENT_STREAMS as u64, 0, true, 1, None, 1),
        b"x",
    ));
    assert!(completed(&o).is_none());
    assert_eq!(acks(&o), [(1, 0)]);
}
