//! The `sm__` stream machines ([`crate::stream`]) on real connections: sending a blob as a
//! stream (the ACKs reach the sending task through a watch), handing received chunks to the
//! reassembler once the connection paid for them ([`crate::held`]), sending what it decides
//! (ACKs, ERRORs), and a timer for idle streams. Streams ask nothing of the cell above: a
//! complete blob, or a receiver's abort of a streamed request, is returned as a
//! [`StreamEvent`] for the cell to deliver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::connection::Conn;
use crate::envelope::stream::{ChunkHead, ChunkOut, StreamMsg};
use crate::error::CellnetError;
use crate::headers::Headers;
use crate::held::AccountHandle;
use crate::limits::Limits;
use crate::log_limit::limited;
use crate::message::Payload;
use crate::outbound::Outbound;
use crate::segment::{in_memory, read_into_memory};
use crate::stream::recv::{Arrival, Held, Reassembler, RecvLimits, RecvOutput, StreamKey};
use crate::stream::send::{SendError, SendStream};

/// What the receiver of a stream this cell sends has said so far.
#[derive(Clone, Debug, Default)]
struct Feedback {
    /// Bytes acknowledged (the highest `sm__os` seen).
    acked: u64,
    /// The receiver aborted the stream.
    abort: Option<String>,
}

/// A stream this cell is sending, as the reader tasks see it.
struct Sending {
    feedback: watch::Sender<Feedback>,
    /// `sm__ri` of a streamed request (a receiver's abort fails its waiter).
    ri: Option<String>,
}

/// Memory a connection paid for kept chunks: given back when dropped.
pub(crate) struct Charge {
    account: AccountHandle,
    conn: u64,
    n: usize,
}

impl Held for Charge {
    fn absorb(&mut self, mut other: Charge) -> Option<Charge> {
        if other.conn != self.conn {
            return Some(other);
        }
        self.n += std::mem::take(&mut other.n);
        None
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.account.release(self.n);
    }
}

/// What a stream message means for the cell.
pub(crate) enum StreamEvent {
    /// A blob arrived complete on `conn`: the headers of its chunk 0 and its bytes.
    Blob {
        /// The connection the stream started on.
        conn: Arc<Conn>,
        /// Its origin.
        origin: String,
        /// Chunk 0's headers.
        headers: Headers,
        /// The blob.
        blob: Bytes,
    },
    /// The receiver aborted the streamed request `ri`.
    Aborted {
        /// `sm__ri`.
        ri: String,
        /// `sm__em`.
        why: String,
    },
}

/// A blob to send as a stream.
pub(crate) struct Outgoing<'a> {
    /// The destination cell.
    pub target: &'a str,
    /// The blob's own headers (copied into every chunk).
    pub blob: Headers,
    /// `sm__ch`, `sm__tp`.
    pub channel: &'a str,
    /// See `channel`.
    pub topic: &'a str,
    /// The blob.
    pub payload: Payload,
    /// `sm__ri` of a streamed request or reply.
    pub ri: Option<&'a str>,
    /// The connection to use if no route leads to `target`.
    pub fallback: Option<&'a Arc<Conn>>,
}

/// The streams of a cell, both ways.
pub(crate) struct Streams {
    limits: Limits,
    incoming: Mutex<Reassembler<Arc<Conn>, Charge>>,
    outgoing: DashMap<u64, Sending>,
    next: AtomicU64,
}

/// Removes a sending stream from the table however its task ends (finished, failed, or its
/// future dropped by a timeout).
struct Registered<'a>(&'a DashMap<u64, Sending>, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

impl Streams {
    /// Streams under these limits.
    pub fn new(limits: &Limits) -> Self {
        Streams {
            limits: limits.clone(),
            incoming: Mutex::new(Reassembler::new(RecvLimits {
                max_stream_bytes: limits.max_stream_bytes,
                max_streams_per_peer: limits.max_streams_per_peer,
                ack_interval: limits.stream_ack_interval,
                idle: limits.stream_idle_timeout,
            })),
            outgoing: DashMap::new(),
            next: AtomicU64::new(0),
        }
    }

    fn incoming(&self) -> MutexGuard<'_, Reassembler<Arc<Conn>, Charge>> {
        self.incoming.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh stream id, unique per sender: µs timestamp at first use, then a counter
    /// (NVFlare uses the same shape, ≈1.8e15).
    fn next_id(&self) -> u64 {
        if self.next.load(Ordering::Relaxed) == 0 {
            let seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(1);
            let _ = self
                .next
                .compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
        }
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Send a blob as a stream: chunks go as the window allows; fails if the receiver aborts
    /// or ACKs stop coming while the window is full (`Limits::stream_idle_timeout`).
    pub async fn send(&self, out: &Outbound, s: Outgoing<'_>) -> Result<(), CellnetError> {
        let encoding = s.payload.encoding();
        let segments = read_into_memory(s.payload.into_segments()).await?;
        let total: usize = segments.iter().map(Bytes::len).sum();
        if total > self.limits.max_stream_bytes {
            return Err(CellnetError::MessageTooBig {
                size: total,
                max: self.limits.max_stream_bytes,
            });
        }
        let sid = self.next_id();
        let (tx, mut feedback) = watch::channel(Feedback::default());
        let sending = Sending {
            feedback: tx,
            ri: s.ri.map(str::to_string),
        };
        self.outgoing.insert(sid, sending);
        let _registered = Registered(&self.outgoing, sid);
        let chunk_size = self.limits.stream_chunk_size;
        let window = self.limits.stream_window as u64;
        let idle = self.limits.stream_idle_timeout;
        let mut sm = SendStream::new(segments, chunk_size, window, idle);
        let apply = |sm: &mut SendStream, f: &Feedback| {
            if let Some(why) = &f.abort {
                sm.on_abort(why.clone());
            }
            sm.on_ack(f.acked, Instant::now());
        };
        let mut chunks = 0;
        loop {
            apply(&mut sm, &feedback.borrow_and_update());
            while let Some(c) = sm.poll_transmit(Instant::now()) {
                let head = ChunkOut {
                    sid,
                    seq: c.seq,
                    last: c.last,
                    offset: c.offset,
                    total: total as u64,
                    encoding,
                    channel: s.channel,
                    topic: s.topic,
                    ri: s.ri,
                    first: (c.seq == 0).then_some((chunk_size as u64, window)),
                    len: c.len,
                };
                let h = out.stamp().stream_chunk(&s.blob, s.target, &head);
                out.send(s.target, h, in_memory(c.parts), s.fallback)
                    .await?;
                chunks += 1;
                apply(&mut sm, &feedback.borrow_and_update());
            }
            match sm.outcome() {
                Some(Ok(())) => {
                    debug!(sid, target = %s.target, total, chunks, "stream sent");
                    return Ok(());
                }
                Some(Err(SendError::Aborted(why))) => return Err(CellnetError::Stream(why)),
                Some(Err(SendError::Stalled(d))) => {
                    return Err(CellnetError::Timeout(format!(
                        "no ACK progress on stream {sid} for {d:?}"
                    )))
                }
                None => {}
            }
            let deadline = sm.poll_timeout().unwrap_or_else(|| Instant::now() + idle);
            tokio::select! {
                changed = feedback.changed() => if changed.is_err() {
                    return Err(CellnetError::Stream("stream cancelled".into()));
                },
                _ = tokio::time::sleep_until(deadline) => sm.handle_timeout(Instant::now()),
            }
        }
    }

    /// A message on `sm__STREAM` from `origin` (a proven name) on `conn`. Waits only for
    /// memory to keep a chunk (see [`crate::held`]).
    pub async fn on_message(
        &self,
        out: &Outbound,
        conn: &Arc<Conn>,
        origin: String,
        topic: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Option<StreamEvent> {
        let msg = match StreamMsg::parse(topic, &headers) {
            Ok(m) => m,
            Err(why) => {
                limited!(conn.log, warn, %origin, "{why}; dropped");
                return None;
            }
        };
        match msg {
            StreamMsg::Chunk(head) => {
                return self
                    .on_chunk(out, conn, origin, head, headers, payload)
                    .await
            }
            StreamMsg::SenderAbort { sid, why } => {
                limited!(conn.log, warn, %origin, sid, "sender aborted the stream: {why}");
                self.incoming().abort(&(origin, sid));
            }
            StreamMsg::ReceiverAbort { sid, why, ri } => {
                limited!(conn.log, warn, %origin, sid, "receiver aborted the stream: {why}");
                let ours = self.outgoing.get(&sid).and_then(|o| {
                    o.feedback.send_modify(|f| f.abort = Some(why.clone()));
                    o.ri.clone()
                });
                return ours.or(ri).map(|ri| StreamEvent::Aborted { ri, why });
            }
            StreamMsg::Ack { sid, offset } => {
                if let Some(o) = self.outgoing.get(&sid) {
                    o.feedback.send_if_modified(|f| {
                        let more = offset > f.acked;
                        if more {
                            f.acked = offset;
                        }
                        more
                    });
                }
            }
            StreamMsg::Stray { sid } => debug!(%origin, sid, "sm__ERROR without dt=6; ignored"),
        }
        None
    }

    async fn on_chunk(
        &self,
        out: &Outbound,
        conn: &Arc<Conn>,
        origin: String,
        head: ChunkHead,
        headers: Headers,
        payload: Bytes,
    ) -> Option<StreamEvent> {
        let key: StreamKey = (origin, head.sid);
        // A chunk that has to wait for the rest of its stream is paid for before it is
        // kept: the charge may close a stale connection to make room, or be refused, which
        // aborts this stream.
        let cost = self.incoming().cost(&key, &head, payload.len());
        if let Err(why) = conn.account.charge(cost).await {
            self.incoming().abort(&key);
            let why = format!("stream aborted: {why}");
            limited!(conn.log, warn, origin = %key.0, sid = key.1, "{why}");
            send_errors(out, conn, &key, &headers, &why);
            return None;
        }
        let paid = Charge {
            account: conn.account.clone(),
            conn: conn.id,
            n: cost,
        };
        let arrival = Arrival {
            key,
            conn_id: conn.id,
            via: conn.clone(),
            head,
            headers,
            payload,
        };
        let outputs: Vec<RecvOutput<Arc<Conn>>> = {
            let mut rx = self.incoming();
            rx.handle_chunk(arrival, paid, Instant::now());
            std::iter::from_fn(|| rx.poll_output()).collect()
        };
        let mut event = None;
        for o in outputs {
            match o {
                RecvOutput::Ack {
                    key,
                    via,
                    offset,
                    seq,
                } => {
                    let h = out.stamp().stream_ack(&key.0, key.1, offset, seq);
                    out.send_detached(&key.0, h, Some(&via));
                }
                RecvOutput::Refuse {
                    key,
                    via,
                    why,
                    chunk,
                } => {
                    limited!(via.log, warn, origin = %key.0, sid = key.1, "stream refused: {why}");
                    send_errors(out, &via, &key, &chunk, &why);
                }
                RecvOutput::Complete {
                    key,
                    via,
                    headers,
                    blob,
                } => {
                    debug!(origin = %key.0, sid = key.1, bytes = blob.len(), "stream complete");
                    event = Some(StreamEvent::Blob {
                        conn: via,
                        origin: key.0,
                        headers,
                        blob,
                    });
                }
                RecvOutput::Expired { key, via } => expired(&key, &via, &self.limits),
            }
        }
        event
    }

    /// Connection `id` closed: drop the streams that started on it (they cannot complete,
    /// and their memory is charged to it).
    pub fn drop_connection(&self, id: u64) {
        let n = self.incoming().drop_connection(id);
        if n > 0 {
            debug!(
                streams = n,
                "connection closed; its unfinished streams are dropped"
            );
        }
    }

    /// Drop idle streams at their deadline, until `stop`.
    pub async fn run_timer(&self, stop: CancellationToken) {
        loop {
            let next = self.incoming().poll_timeout();
            let wake = next.unwrap_or_else(|| Instant::now() + self.limits.stream_idle_timeout);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.cancelled() => return,
            }
            let outputs: Vec<RecvOutput<Arc<Conn>>> = {
                let mut rx = self.incoming();
                rx.handle_timeout(Instant::now());
                std::iter::from_fn(|| rx.poll_output()).collect()
            };
            for o in outputs {
                if let RecvOutput::Expired { key, via } = o {
                    expired(&key, &via, &self.limits);
                }
            }
        }
    }
}

fn expired(key: &StreamKey, via: &Conn, limits: &Limits) {
    let idle = limits.stream_idle_timeout;
    limited!(via.log, warn, origin = %key.0, sid = key.1, "stream idle for {idle:?}; dropped");
}

/// Reject stream `key`: the ERROR pair, echoing `chunk`'s channel, topic and `sm__ri`.
fn send_errors(out: &Outbound, conn: &Arc<Conn>, key: &StreamKey, chunk: &Headers, why: &str) {
    for h in out.stamp().stream_errors(&key.0, key.1, why, chunk) {
        out.send_detached(&key.0, h, Some(conn));
    }
}
