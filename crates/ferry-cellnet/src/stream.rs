//! The `sm__*` byte-stream protocol (f3-wire.md §4): sending a blob as chunks with a window
//! driven by ACKs, and reassembling received chunks (out of order, duplicates, limits), with
//! ACKs and ERRORs. Streamed requests carry `sm__ri`; their replies are streams on
//! `return_only` carrying the same `sm__ri`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::cell::{CellInner, ReplyTo};
use crate::connection::Conn;
use crate::envelope::stream::{reply_topic, Blob, ChunkHead, ChunkOut, StreamMsg};
use crate::error::CellnetError;
use crate::headers::{stream_keys as sk, Headers};
use crate::log_limit::limited;
use crate::message::{Message, Payload};
use crate::return_code::ReturnCode;
use crate::router::{ReplyFrom, WaitKey};

/// What a stream in reassembly costs beyond its bytes (its headers, its table entry): charged
/// when it starts, so that streams without payload are not free.
const STREAM_OVERHEAD: usize = 1024;
/// What each kept chunk costs beyond its bytes.
const CHUNK_OVERHEAD: usize = 64;

/// Progress of a stream this cell sends.
#[derive(Clone, Debug, Default)]
pub(crate) struct Progress {
    /// Bytes the receiver has acknowledged.
    pub acked: u64,
    /// Set when the receiver aborted the stream.
    pub error: Option<String>,
}

pub(crate) struct OutStream {
    progress: watch::Sender<Progress>,
    /// `sm__ri` of a streamed request (to fail its waiter on an ERROR).
    ri: Option<String>,
}

/// A stream being reassembled. Every byte it keeps is a copy of exactly that chunk (it pins
/// no frame buffer) and is charged to the account of the connection it arrives on; dropping
/// the reassembly, for whatever reason, gives the charge back.
struct Reassembly {
    /// Headers of the first chunk received (every chunk carries the blob headers).
    headers: Headers,
    /// Whether `headers` came from chunk 0 (preferred: it carries the optional hints).
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
    /// The connection the chunks arrive on (ACKs fall back to it; it pays for the memory).
    conn: Arc<Conn>,
    /// Bytes charged to `conn`'s account for this stream.
    charged: usize,
}

impl Reassembly {
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

impl Drop for Reassembly {
    fn drop(&mut self) {
        self.conn.account.release(self.charged);
    }
}

/// A charge made before the stream state is locked: given back on drop unless it was moved
/// into a reassembly.
struct Charge<'a> {
    conn: &'a Conn,
    n: usize,
}

impl Charge<'_> {
    fn into_stream(mut self, r: &mut Reassembly) {
        r.charged += std::mem::take(&mut self.n);
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.conn.account.release(self.n);
    }
}

/// Completed streams remembered so that late duplicate chunks (a reliable sender retrying
/// before our final ACK reached it) are re-acknowledged instead of starting a new stream.
const RECENT_STREAMS: usize = 256;

/// A stream's key: (origin FQCN, `sm__id`).
type StreamKey = (String, u64);

/// Stream state of a cell.
#[derive(Default)]
pub(crate) struct StreamState {
    incoming: Mutex<HashMap<StreamKey, Reassembly>>,
    /// (origin, sm__id) → (bytes consumed, last seq) of recently completed streams.
    recent: Mutex<std::collections::VecDeque<(StreamKey, (u64, u64))>>,
    pub outgoing: DashMap<u64, OutStream>,
    next: AtomicU64,
}

impl StreamState {
    /// A fresh stream id, unique per sender: µs timestamp at first use, then a counter
    /// (NVFlare uses the same shape, ≈1.8e15).
    pub fn next_id(&self) -> u64 {
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

    /// Drop reassemblies idle for longer than `idle` (called from heartbeat ticks).
    pub fn sweep(&self, idle: std::time::Duration) {
        let now = Instant::now();
        let mut map = self.incoming.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(origin, sid), r| {
            let keep = now.duration_since(r.last_activity) < idle;
            if !keep {
                limited!(r.conn.log, warn, %origin, sid, "stream idle for {idle:?}; dropped");
            }
            keep
        });
    }

    /// Drop the reassemblies whose chunks arrive on connection `id` (it closed: they cannot
    /// complete, and their memory is charged to it).
    pub fn drop_connection(&self, id: u64) {
        let dropped: Vec<Reassembly> = {
            let mut map = self.incoming.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<StreamKey> = map
                .iter()
                .filter(|(_, r)| r.conn.id == id)
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        if !dropped.is_empty() {
            debug!(
                streams = dropped.len(),
                "connection closed; its unfinished streams are dropped"
            );
        }
    }
}

/// Split segments into chunks of at most `size` bytes (zero-copy slices).
fn chunks(segments: Vec<Bytes>, size: usize) -> Vec<Vec<Bytes>> {
    let mut out: Vec<Vec<Bytes>> = Vec::new();
    let mut cur: Vec<Bytes> = Vec::new();
    let mut cur_len = 0;
    for mut s in segments {
        while !s.is_empty() {
            let take = (size - cur_len).min(s.len());
            cur.push(s.split_to(take));
            cur_len += take;
            if cur_len == size {
                out.push(std::mem::take(&mut cur));
                cur_len = 0;
            }
        }
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

impl CellInner {
    /// Send `payload` as a stream to `target`. `app_headers` are the blob headers copied into
    /// every chunk; `ri` makes it a streamed request (or reply, on `return_only`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_stream(
        self: &Arc<Self>,
        target: &str,
        sid: u64,
        app_headers: Headers,
        channel: &str,
        topic: &str,
        payload: Payload,
        ri: Option<String>,
        fallback: Option<&Arc<Conn>>,
    ) -> Result<(), CellnetError> {
        let pe = payload.encoding();
        let segments = payload.into_segments();
        let total: usize = segments.iter().map(Bytes::len).sum();
        if total > self.limits.max_stream_bytes {
            return Err(CellnetError::MessageTooBig {
                size: total,
                max: self.limits.max_stream_bytes,
            });
        }
        let (ptx, mut prx) = watch::channel(Progress::default());
        self.streams.outgoing.insert(
            sid,
            OutStream {
                progress: ptx,
                ri: ri.clone(),
            },
        );
        let chunk_size = self.limits.stream_chunk_size;
        let window = self.limits.stream_window as u64;
        let parts = chunks(segments, chunk_size);
        let n = parts.len();
        let mut offset = 0u64;
        for (seq, part) in parts.into_iter().enumerate() {
            // flow control: wait while more than a window is unacknowledged
            loop {
                let p = prx.borrow_and_update().clone();
                if let Some(e) = p.error {
                    return Err(CellnetError::Stream(e));
                }
                if offset.saturating_sub(p.acked) <= window {
                    break;
                }
                match tokio::time::timeout(self.limits.stream_idle_timeout, prx.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(CellnetError::Stream("stream cancelled".into())),
                    Err(_) => {
                        return Err(CellnetError::Timeout(format!(
                            "no ACK progress on stream {sid} for {:?}",
                            self.limits.stream_idle_timeout
                        )))
                    }
                }
            }
            let len: usize = part.iter().map(Bytes::len).sum();
            let c = ChunkOut {
                sid,
                seq: seq as u64,
                last: seq + 1 == n,
                offset,
                total: total as u64,
                encoding: pe,
                channel,
                topic,
                ri: ri.as_deref(),
                first: (seq == 0).then_some((chunk_size as u64, window)),
                len,
            };
            let h = self.stamp().stream_chunk(&app_headers, target, &c);
            self.send_message(target, h, part, fallback, None).await?;
            offset += len as u64;
        }
        debug!(sid, %target, total, chunks = n, "stream sent");
        Ok(())
    }

    /// A message on `sm__STREAM` (called by the reader task; waits only for memory to keep a
    /// chunk, see [`crate::held`]).
    pub(crate) async fn on_stream(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        origin: String,
        topic: &str,
        headers: Headers,
        payload: Bytes,
    ) {
        let msg = match StreamMsg::parse(topic, &headers) {
            Ok(m) => m,
            Err(why) => {
                limited!(conn.log, warn, %origin, "{why}; dropped");
                return;
            }
        };
        match msg {
            StreamMsg::SenderAbort { sid, why } => {
                limited!(conn.log, warn, %origin, sid, "sender aborted the stream: {why}");
                self.streams
                    .incoming
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(origin, sid));
            }
            StreamMsg::Chunk(c) => self.on_chunk(conn, origin, c, headers, payload).await,
            StreamMsg::ReceiverAbort { sid, why, ri } => {
                limited!(conn.log, warn, %origin, sid, "receiver aborted the stream: {why}");
                let ri = self
                    .streams
                    .outgoing
                    .get(&sid)
                    .map(|o| {
                        o.progress.send_modify(|p| p.error = Some(why.clone()));
                        o.ri.clone()
                    })
                    .unwrap_or(None)
                    .or(ri);
                if let Some(ri) = ri {
                    let failed = Message::error(ReturnCode::CommError, why);
                    let key = WaitKey::StreamReply(ri);
                    self.router.resolve(&key, ReplyFrom::Anyone, failed);
                }
            }
            StreamMsg::Ack { sid, offset } => {
                if let Some(o) = self.streams.outgoing.get(&sid) {
                    o.progress.send_if_modified(|p| {
                        if offset > p.acked {
                            p.acked = offset;
                            true
                        } else {
                            false
                        }
                    });
                }
            }
            StreamMsg::Stray { sid } => debug!(%origin, sid, "sm__ERROR without dt=6; ignored"),
        }
    }

    async fn on_chunk(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        origin: String,
        c: ChunkHead,
        headers: Headers,
        payload: Bytes,
    ) {
        let (sid, seq) = (c.sid, c.seq);
        let max = self.limits.max_stream_bytes;
        let key = (origin.clone(), sid);
        // A chunk that has to wait for the rest of its stream is kept, and paid for, before
        // anything is stored: the charge may close a stale connection to make room, or be
        // refused, which aborts this stream. (A one-chunk stream is handed on at once.)
        let one_chunk = seq == 0 && c.last;
        let is_new = !self
            .streams
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key);
        let cost = if one_chunk {
            0
        } else {
            payload.len() + CHUNK_OVERHEAD + if is_new { STREAM_OVERHEAD } else { 0 }
        };
        if let Err(why) = conn.account.charge(cost).await {
            let dropped = self
                .streams
                .incoming
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            drop(dropped);
            let why = format!("stream aborted: {why}");
            limited!(conn.log, warn, %origin, sid, "{why}");
            self.send_stream_error(conn, &origin, sid, &headers, &why);
            return;
        }
        let charge = Charge { conn, n: cost };
        let mut map = self
            .streams
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&key) {
            let done = self
                .streams
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v);
            if let Some((os, sq)) = done {
                drop(map);
                debug!(%origin, sid, seq, "chunk of a completed stream; re-acknowledged");
                self.send_stream_ack(conn, &origin, sid, os, sq);
                return;
            }
            let size = c.size;
            let from_origin = map.keys().filter(|(o, _)| *o == origin).count();
            let from_conn = map.values().filter(|r| r.conn.id == conn.id).count();
            let refuse = if size > max as u64 {
                Some(format!("stream of {size} bytes exceeds the limit of {max}"))
            } else if from_origin.max(from_conn) >= self.limits.max_streams_per_peer {
                Some(format!(
                    "more than {} concurrent streams from {origin} or its connection",
                    self.limits.max_streams_per_peer
                ))
            } else {
                None
            };
            if let Some(why) = refuse {
                drop(map);
                limited!(conn.log, warn, %origin, sid, "stream refused: {why}");
                self.send_stream_error(conn, &origin, sid, &headers, &why);
                return;
            }
            map.insert(
                key.clone(),
                Reassembly {
                    headers: headers.clone(),
                    headers_from_first: seq == 0,
                    chunks: Vec::new(),
                    chunk_bytes: 0,
                    single: None,
                    next_seq: 0,
                    pending: BTreeMap::new(),
                    pending_bytes: 0,
                    final_seq: None,
                    acked_bytes: 0,
                    ack_every: c
                        .window
                        .map(|w| (w as usize / 2).max(1))
                        .unwrap_or(usize::MAX)
                        .min(self.limits.stream_ack_interval),
                    last_activity: Instant::now(),
                    conn: conn.clone(),
                    charged: 0,
                },
            );
        }
        let Some(r) = map.get_mut(&key) else { return };
        r.last_activity = Instant::now();
        if seq == 0 && !r.headers_from_first {
            if let Some(w) = c.window {
                r.ack_every = r.ack_every.min((w as usize / 2).max(1));
            }
            r.headers = headers;
            r.headers_from_first = true;
        }
        if c.last {
            r.final_seq = Some(seq);
        }
        let duplicate = seq < r.next_seq || r.pending.contains_key(&seq);
        if !duplicate {
            if r.total() + payload.len() > max {
                let dropped = map.remove(&key);
                drop(map);
                drop(dropped);
                let why = format!("stream exceeds the limit of {max} bytes");
                limited!(conn.log, warn, %origin, sid, "{why}");
                let h = Headers::new();
                self.send_stream_error(conn, &origin, sid, &h, &why);
                return;
            }
            if seq == r.next_seq {
                if one_chunk {
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
                r.pending.insert(seq, Bytes::copy_from_slice(&payload));
            }
            charge.into_stream(r);
        }
        let consumed = r.consumed();
        let complete = r.final_seq.is_some_and(|f| r.next_seq > f);
        if complete || consumed - r.acked_bytes >= r.ack_every {
            r.acked_bytes = consumed;
            let last_seq = r.next_seq.saturating_sub(1);
            let ack_conn = r.conn.clone();
            self.send_stream_ack(&ack_conn, &origin, sid, consumed as u64, last_seq);
        }
        if !complete {
            return;
        }
        let Some(r) = map.remove(&key) else { return };
        drop(map);
        {
            let mut recent = self
                .streams
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if recent.len() >= RECENT_STREAMS {
                recent.pop_front();
            }
            recent.push_back((key, (consumed as u64, r.next_seq.saturating_sub(1))));
        }
        self.stream_complete(origin, sid, r);
    }

    fn stream_complete(self: &Arc<Self>, origin: String, sid: u64, mut r: Reassembly) {
        let blob = r.take_blob();
        let conn = r.conn.clone();
        let head = Blob::from_chunk_headers(std::mem::take(&mut r.headers), &origin);
        // complete: the blob is the handler's now, not unfinished data
        drop(r);
        let Blob {
            headers: h,
            channel,
            topic,
            encoding: pe,
            ri,
        } = head.clone();
        debug!(%origin, sid, bytes = blob.len(), %channel, %topic, "stream complete");
        let payload = Payload::from_wire(pe.as_deref(), blob);
        if head.is_reply() {
            let Some(ri) = ri else {
                limited!(conn.log, warn, %origin, sid, "streamed reply without sm__ri; dropped");
                return;
            };
            let msg = match payload {
                Ok(p) => Message {
                    headers: h,
                    payload: p,
                },
                Err(e) => Message::error(ReturnCode::CommError, format!("bad reply payload: {e}")),
            };
            let key = WaitKey::StreamReply(ri.clone());
            if !self.router.resolve(&key, ReplyFrom::Anyone, msg) {
                limited!(conn.log, warn, %origin, %ri, "unexpected streamed reply (nobody waits for it); dropped");
            }
            return;
        }
        let reply_to = match ri {
            Some(ri) => ReplyTo::Stream(ri),
            None => ReplyTo::Nobody,
        };
        match payload {
            Ok(p) => self.dispatch_request(
                &conn,
                Message {
                    headers: h,
                    payload: p,
                },
                reply_to,
            ),
            Err(e) => {
                limited!(conn.log, warn, %origin, "undecodable streamed payload: {e}");
                let mut m = Message::error(ReturnCode::InvalidRequest, e.to_string());
                m.headers
                    .insert(crate::headers::keys::ORIGIN, origin.as_str());
                m.headers
                    .insert(crate::headers::keys::CHANNEL, channel.as_str());
                m.headers
                    .insert(crate::headers::keys::TOPIC, topic.as_str());
                if let ReplyTo::Stream(ri) = reply_to {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let sid = me.streams.next_id();
                        let tp = reply_topic(&channel, &topic);
                        let blob = m.headers.clone();
                        let _ = me
                            .send_stream(
                                &origin,
                                sid,
                                blob,
                                sk::RETURN_ONLY,
                                &tp,
                                Payload::None,
                                Some(ri),
                                Some(&conn),
                            )
                            .await;
                        me.streams.outgoing.remove(&sid);
                    });
                }
            }
        }
    }

    fn send_stream_ack(&self, conn: &Arc<Conn>, origin: &str, sid: u64, os: u64, sq: u64) {
        let h = self.stamp().stream_ack(origin, sid, os, sq);
        self.send_message_detached(origin, h, Vec::new(), Some(conn));
    }

    /// Reject a stream: an ERROR on `sm__ERROR` (2.9) and the same on `sm__ACK` (≤ 2.8).
    fn send_stream_error(
        &self,
        conn: &Arc<Conn>,
        origin: &str,
        sid: u64,
        chunk: &Headers,
        why: &str,
    ) {
        for h in self.stamp().stream_errors(origin, sid, why, chunk) {
            self.send_message_detached(origin, h, Vec::new(), Some(conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
