//! The receiving side of `sm__` streams, sans-IO: the streams in reassembly (chunks out of
//! order, duplicates, late retries of completed streams), their limits, the ACKs, and the
//! idle timeout. Inputs take `now`; what to send or deliver is polled
//! ([`Reassembler::poll_output`]).
//!
//! Memory: the caller pays for a chunk before handing it in ([`Reassembler::cost`] says how
//! much) and hands in the payment, a [`Held`] value; the reassembler keeps it exactly as long
//! as it keeps the bytes, and drops it (giving the memory back) when the stream completes,
//! is refused, aborted, or times out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::envelope::stream::ChunkHead;
use crate::headers::Headers;

/// What a stream in reassembly costs beyond its bytes (its headers, its table entry): charged
/// when it starts, so that streams without payload are not free.
pub(crate) const STREAM_OVERHEAD: usize = 1024;
/// What each kept chunk costs beyond its bytes.
pub(crate) const CHUNK_OVERHEAD: usize = 64;
/// Completed streams remembered so that late duplicate chunks (a reliable sender retrying
/// before our final ACK reached it) are re-acknowledged instead of starting a new stream.
pub(crate) const RECENT_STREAMS: usize = 256;

/// A stream's key: (origin FQCN, `sm__id`).
pub(crate) type StreamKey = (String, u64);

/// A payment for kept bytes; dropping it gives them back.
pub(crate) trait Held {
    /// Merge `other` into `self` if both pay the same account; otherwise give it back.
    fn absorb(&mut self, other: Self) -> Option<Self>
    where
        Self: Sized;
}

impl Held for () {
    fn absorb(&mut self, _: ()) -> Option<()> {
        None
    }
}

/// Limits of reassembly.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecvLimits {
    /// Largest blob (claimed in `sm__sz` or reached).
    pub max_stream_bytes: usize,
    /// Streams in reassembly per origin and per connection.
    pub max_streams_per_peer: usize,
    /// ACK every this many consumed bytes (at most half the sender's window).
    pub ack_interval: usize,
    /// A stream that receives nothing for this long is dropped.
    pub idle: Duration,
}

/// A chunk as it arrived.
#[derive(Clone, Debug)]
pub(crate) struct Arrival<C> {
    /// Its stream.
    pub key: StreamKey,
    /// The id of the connection it came by.
    pub conn_id: u64,
    /// That connection.
    pub via: C,
    /// What it says about itself.
    pub head: ChunkHead,
    /// All its headers (the blob's own included).
    pub headers: Headers,
    /// Its bytes.
    pub payload: Bytes,
}

/// What the reassembler wants done.
#[derive(Debug)]
pub(crate) enum RecvOutput<C> {
    /// Acknowledge stream `key`: `offset` bytes consumed, chunks up to `seq` in order. `via`
    /// is the connection to use when no route leads to the origin.
    Ack {
        /// The stream.
        key: StreamKey,
        /// Fallback connection.
        via: C,
        /// `sm__os`.
        offset: u64,
        /// `sm__sq`.
        seq: u64,
    },
    /// Reject stream `key` (its state is gone): send the ERROR pair, echoing `chunk`.
    Refuse {
        /// The stream.
        key: StreamKey,
        /// Fallback connection.
        via: C,
        /// `sm__em`.
        why: String,
        /// The headers of the chunk that was refused.
        chunk: Headers,
    },
    /// Stream `key` is complete.
    Complete {
        /// The stream.
        key: StreamKey,
        /// The connection it started on.
        via: C,
        /// The headers of chunk 0 (or of the first chunk that came, if chunk 0 never did).
        headers: Headers,
        /// The whole blob.
        blob: Bytes,
    },
    /// Stream `key` received nothing for the idle timeout and was dropped.
    Expired {
        /// The stream.
        key: StreamKey,
        /// The connection it started on.
        via: C,
    },
}

/// A stream being reassembled. Every byte it keeps is a copy of exactly that chunk (it pins
/// no frame buffer) and is paid for by `held`.
struct Reassembly<C, G> {
    /// Headers of chunk 0, else of the first chunk that came (every chunk carries the blob
    /// headers; chunk 0 also the window).
    headers: Headers,
    headers_from_first: bool,
    /// In-order chunks so far, and their bytes.
    chunks: Vec<Bytes>,
    chunk_bytes: usize,
    /// A stream of exactly one chunk keeps that chunk without copying.
    single: Option<Bytes>,
    next_seq: u64,
    /// Chunks that arrived ahead of `next_seq`.
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: usize,
    final_seq: Option<u64>,
    acked_bytes: usize,
    /// ACK every this many bytes: our interval, but at most half the sender's window
    /// (`sm__ws`) so a sender with a small window never stalls.
    ack_every: usize,
    last_activity: Instant,
    /// The connection the stream started on (ACKs fall back to it; closing it drops the
    /// stream).
    conn_id: u64,
    via: C,
    /// What pays for the kept bytes (one entry per account that paid).
    held: Vec<G>,
}

impl<C, G> Reassembly<C, G> {
    fn total(&self) -> usize {
        self.chunk_bytes + self.pending_bytes + self.single.as_ref().map_or(0, Bytes::len)
    }

    fn consumed(&self) -> usize {
        self.chunk_bytes + self.single.as_ref().map_or(0, Bytes::len)
    }

    /// The blob, once complete (one copy of the in-order chunks).
    fn take_blob(&mut self) -> Bytes {
        if let Some(b) = self.single.take() {
            return b;
        }
        let mut out = BytesMut::with_capacity(self.chunk_bytes);
        for c in self.chunks.drain(..) {
            out.extend_from_slice(&c);
        }
        self.chunk_bytes = 0;
        out.freeze()
    }
}

impl<C, G: Held> Reassembly<C, G> {
    fn pay(&mut self, g: G) {
        let mut g = Some(g);
        for h in &mut self.held {
            match g.take().map(|x| h.absorb(x)) {
                Some(Some(back)) => g = Some(back),
                _ => return,
            }
        }
        if let Some(g) = g {
            self.held.push(g);
        }
    }
}

/// The streams a cell is reassembling.
pub(crate) struct Reassembler<C, G> {
    limits: RecvLimits,
    streams: HashMap<StreamKey, Reassembly<C, G>>,
    /// (stream, (bytes consumed, last seq)) of recently completed streams, oldest first.
    recent: VecDeque<(StreamKey, (u64, u64))>,
    out: VecDeque<RecvOutput<C>>,
}

impl<C: Clone, G: Held> Reassembler<C, G> {
    /// An empty reassembler.
    pub fn new(limits: RecvLimits) -> Self {
        Reassembler {
            limits,
            streams: HashMap::new(),
            recent: VecDeque::new(),
            out: VecDeque::new(),
        }
    }

    /// Streams in reassembly.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// What a chunk of `len` bytes must be paid before [`Reassembler::handle_chunk`]: its
    /// bytes and overhead, plus the stream's if it is new. A one-chunk stream is handed on
    /// at once and costs nothing.
    #[must_use]
    pub fn cost(&self, key: &StreamKey, c: &ChunkHead, len: usize) -> usize {
        if c.seq == 0 && c.last {
            return 0;
        }
        let new = !self.streams.contains_key(key);
        len + CHUNK_OVERHEAD + if new { STREAM_OVERHEAD } else { 0 }
    }

    /// A chunk arrived, paid by `paid` (see [`Reassembler::cost`]).
    pub fn handle_chunk(&mut self, a: Arrival<C>, paid: G, now: Instant) {
        let Arrival {
            key,
            conn_id,
            via,
            head: c,
            headers,
            payload,
        } = a;
        let max = self.limits.max_stream_bytes;
        if !self.streams.contains_key(&key) {
            if let Some(&(_, (offset, seq))) = self.recent.iter().find(|(k, _)| *k == key) {
                self.out.push_back(RecvOutput::Ack {
                    key,
                    via,
                    offset,
                    seq,
                });
                return;
            }
            let from_origin = self.streams.keys().filter(|(o, _)| *o == key.0).count();
            let from_conn = self
                .streams
                .values()
                .filter(|r| r.conn_id == conn_id)
                .count();
            let refuse = if c.size > max as u64 {
                Some(format!(
                    "stream of {} bytes exceeds the limit of {max}",
                    c.size
                ))
            } else if from_origin.max(from_conn) >= self.limits.max_streams_per_peer {
                Some(format!(
                    "more than {} concurrent streams from {} or its connection",
                    self.limits.max_streams_per_peer, key.0
                ))
            } else {
                None
            };
            if let Some(why) = refuse {
                self.refuse(key, via, why, headers);
                return;
            }
            let ack_every = c
                .window
                .map(|w| (w as usize / 2).max(1))
                .unwrap_or(usize::MAX)
                .min(self.limits.ack_interval);
            let r = Reassembly {
                headers: headers.clone(),
                headers_from_first: c.seq == 0,
                chunks: Vec::new(),
                chunk_bytes: 0,
                single: None,
                next_seq: 0,
                pending: BTreeMap::new(),
                pending_bytes: 0,
                final_seq: None,
                acked_bytes: 0,
                ack_every,
                last_activity: now,
                conn_id,
                via: via.clone(),
                held: Vec::new(),
            };
            self.streams.insert(key.clone(), r);
        }
        let Some(r) = self.streams.get_mut(&key) else {
            return;
        };
        r.last_activity = now;
        if c.seq == 0 && !r.headers_from_first {
            if let Some(w) = c.window {
                r.ack_every = r.ack_every.min((w as usize / 2).max(1));
            }
            r.headers = headers.clone();
            r.headers_from_first = true;
        }
        if c.last {
            r.final_seq = Some(c.seq);
        }
        let duplicate = c.seq < r.next_seq || r.pending.contains_key(&c.seq);
        if !duplicate {
            if r.total() + payload.len() > max {
                let why = format!("stream exceeds the limit of {max} bytes");
                self.refuse(key, via, why, headers);
                return;
            }
            if c.seq == r.next_seq {
                if c.seq == 0 && c.last {
                    r.single = Some(payload);
                } else {
                    r.chunk_bytes += payload.len();
                    r.chunks.push(Bytes::copy_from_slice(&payload));
                }
                r.next_seq += 1;
                while let Some(p) = r.pending.remove(&r.next_seq) {
                    r.pending_bytes -= p.len();
                    r.chunk_bytes += p.len();
                    r.chunks.push(p);
                    r.next_seq += 1;
                }
            } else {
                r.pending_bytes += payload.len();
                r.pending.insert(c.seq, Bytes::copy_from_slice(&payload));
            }
            r.pay(paid);
        }
        let consumed = r.consumed();
        let complete = r.final_seq.is_some_and(|f| r.next_seq > f);
        let last_seq = r.next_seq.saturating_sub(1);
        if complete || consumed - r.acked_bytes >= r.ack_every {
            r.acked_bytes = consumed;
            self.out.push_back(RecvOutput::Ack {
                key: key.clone(),
                via: r.via.clone(),
                offset: consumed as u64,
                seq: last_seq,
            });
        }
        if !complete {
            return;
        }
        let Some(mut r) = self.streams.remove(&key) else {
            return;
        };
        if self.recent.len() >= RECENT_STREAMS {
            self.recent.pop_front();
        }
        self.recent
            .push_back((key.clone(), (consumed as u64, last_seq)));
        let blob = r.take_blob();
        // complete: the blob is the receiver's now, not unfinished data (`r.held` is dropped)
        self.out.push_back(RecvOutput::Complete {
            key,
            via: r.via,
            headers: r.headers,
            blob,
        });
    }

    fn refuse(&mut self, key: StreamKey, via: C, why: String, chunk: Headers) {
        self.streams.remove(&key);
        self.out.push_back(RecvOutput::Refuse {
            key,
            via,
            why,
            chunk,
        });
    }

    /// Drop stream `key` (its sender aborted it, or its chunk could not be paid for).
    pub fn abort(&mut self, key: &StreamKey) -> bool {
        self.streams.remove(key).is_some()
    }

    /// Drop the streams that started on connection `id` (it closed: they cannot complete).
    /// Returns how many.
    pub fn drop_connection(&mut self, id: u64) -> usize {
        let before = self.streams.len();
        self.streams.retain(|_, r| r.conn_id != id);
        before - self.streams.len()
    }

    /// When [`Reassembler::handle_timeout`] has work: the earliest idle deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.streams
            .values()
            .map(|r| r.last_activity + self.limits.idle)
            .min()
    }

    /// Drop the streams idle for the timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let idle = self.limits.idle;
        let expired: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.last_activity) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(r) = self.streams.remove(&key) {
                self.out.push_back(RecvOutput::Expired { key, via: r.via });
            }
        }
    }

    /// The next thing to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<RecvOutput<C>> {
        self.out.pop_front()
    }
}
