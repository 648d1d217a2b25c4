//! One connection: a reader task that splits frames off the socket and hands them to the cell,
//! a writer task that writes queued frames with vectored I/O, the HELLO/READY handshake and
//! heartbeats (f3-wire.md §1.3, §1.4).

use std::io::IoSlice;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::cell::CellInner;
use crate::driver::{ReadHalf, Transport, WriteHalf};
use crate::error::CellnetError;
use crate::fqcn::{self, Fqcn};
use crate::frame::{Frame, FrameDecoder, FrameType, OutFrame, APP_ID_CELLNET, PREFIX_LEN};
use crate::msgpack;
use crate::trust::WarnLimiter;

/// Frames queued for the writer before senders wait (backpressure).
const WRITE_QUEUE: usize = 64;
/// Small control frames (PONG, ACK, ERROR, RETURN) queued ahead of data; beyond this the
/// peer is not reading and further control frames are dropped.
const CONTROL_QUEUE: usize = 1024;
/// Frames written with one vectored write at most.
const WRITE_BATCH: usize = 32;
/// Spare room kept in the read buffer so small frames are read many at a time.
const READ_CHUNK: usize = 64 * 1024;
/// How often the heartbeat monitor looks at a connection (NVFlare ticks every 5 s).
const HEARTBEAT_TICK: Duration = Duration::from_secs(5);

/// A connection after the handshake: the cell's routing-table entry for a peer.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Unique per cell; tells an evicted connection from its replacement.
    pub id: u64,
    /// The peer's FQCN (from HELLO or READY).
    pub peer: String,
    /// Peer socket address, for logs.
    pub peer_addr: String,
    tx: mpsc::Sender<OutFrame>,
    /// Control frames, written before queued data (bounded by [`CONTROL_QUEUE`]).
    ctl_tx: mpsc::Sender<OutFrame>,
    /// Cancelled to close the connection (the writer flushes what is queued first).
    pub close: CancellationToken,
    /// Permits for requests from this peer whose handlers are running.
    pub in_flight: Arc<Semaphore>,
    /// True if this cell opened the connection (the peer is our parent and routes for
    /// others); false if the peer connected to us. Decides which origins it may carry.
    pub outbound: bool,
    /// Frames received so far: a liveness probe watches it move.
    rx_frames: AtomicU64,
    /// Liveness probes waiting; while there are any the reader signals `rx_event` per frame
    /// (and only then, so the hot path pays one atomic load).
    probing: AtomicU32,
    rx_event: Notify,
    /// Rate limit of the warnings about messages this connection cannot vouch for.
    pub refusals: WarnLimiter,
}

impl Conn {
    /// Count a received frame (the reader calls this for every frame).
    fn saw_frame(&self) {
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        if self.probing.load(Ordering::Relaxed) > 0 {
            self.rx_event.notify_waiters();
        }
    }

    /// Is the peer still there? Sends a PING and waits up to `timeout` for any frame to
    /// arrive (a PONG, or whatever the peer was sending anyway). A peer that is busy pulling
    /// answers at once; one whose machine died or whose network is gone answers nothing.
    pub async fn is_alive(&self, timeout: Duration) -> bool {
        if self.close.is_cancelled() {
            return false;
        }
        let seen = self.rx_frames.load(Ordering::Relaxed);
        self.probing.fetch_add(1, Ordering::Relaxed);
        self.send_detached(control(FrameType::Ping, nil_payload()));
        let deadline = Instant::now() + timeout;
        let alive = loop {
            let event = self.rx_event.notified();
            if self.rx_frames.load(Ordering::Relaxed) != seen {
                break true;
            }
            tokio::select! {
                _ = event => {}
                _ = tokio::time::sleep_until(deadline) => break false,
                _ = self.close.cancelled() => break false,
            }
        };
        self.probing.fetch_sub(1, Ordering::Relaxed);
        alive
    }

    /// Queue a frame if there is room right now (READY, into a queue nothing else uses yet).
    pub fn try_send(&self, f: OutFrame) -> Result<(), CellnetError> {
        self.tx.try_send(f).map_err(|_| {
            CellnetError::ConnectionClosed(format!("connection to {} is closed", self.peer))
        })
    }

    /// Queue a frame, waiting while the queue is full.
    pub async fn send(&self, f: OutFrame) -> Result<(), CellnetError> {
        self.tx.send(f).await.map_err(|_| {
            CellnetError::ConnectionClosed(format!("connection to {} is closed", self.peer))
        })
    }

    /// Queue a control frame without waiting (from the reader: PONGs, ACKs, ERRORs, RETURNs),
    /// ahead of queued data, so the reader never blocks on its own writer. If even the
    /// control queue is full the peer is not reading at all; the frame is dropped rather than
    /// buffered without bound (a dropped ACK is repeated later, a dropped RETURN makes the
    /// requester time out).
    pub fn send_detached(&self, f: OutFrame) {
        match self.ctl_tx.try_send(f) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(peer = %self.peer, "write queue full; control frame dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!(peer = %self.peer, "dropping frame for a closed connection");
            }
        }
    }
}

/// Seconds since the epoch as float64 (HELLO `timestamp`, `cn__send_time`, `cn__route`).
pub(crate) fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Extra HELLO/READY key: "this endpoint registers a peer before it reads the peer's next
/// frame", i.e. DATA may follow READY at once. NVFlare keeps unknown keys as endpoint
/// properties and ignores them.
const SYNC_KEY: &str = "ferry_sync";

/// Channel/topic of the probe a connecting cell sends to a peer that does not announce
/// [`SYNC_KEY`] (NVFlare): its reply proves the peer has registered us.
pub(crate) const PROBE_TOPIC: &str = "ferry_probe";

/// Extra READY key: the accepting side refuses this connection, and says why (a live cell
/// already has the name, the certificate is for another name, ...). The connection closes
/// right after. NVFlare ignores unknown keys; a ferry cell reports the reason as
/// [`CellnetError::Refused`].
const REFUSED_KEY: &str = "ferry_refused";

/// The payload of HELLO and READY (READY with `refused` set says no).
fn hello_payload(own: &Fqcn, refused: Option<&str>) -> Bytes {
    let mut w = msgpack::MsgpackWriter::new();
    w.map_len(if refused.is_some() { 5 } else { 4 })
        .str("endpoint_name")
        .str(own.as_str())
        .str("timestamp")
        .f64(unix_time())
        .str("fqcn")
        .str(own.as_str())
        .str(SYNC_KEY)
        .bool(true);
    if let Some(why) = refused {
        w.str(REFUSED_KEY).str(why);
    }
    w.finish().to_contiguous()
}

/// The refusal a READY payload carries, if any.
fn hello_refusal(payload: &[u8]) -> Option<String> {
    match msgpack::decode_value(payload, payload.len().max(1)) {
        Ok(Value::Map(entries)) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(REFUSED_KEY))
            .map(|(_, v)| v.as_str().unwrap_or("refused").to_string()),
        _ => None,
    }
}

/// True if a READY/HELLO payload announces [`SYNC_KEY`].
fn hello_sync(payload: &[u8]) -> bool {
    match msgpack::decode_value(payload, payload.len().max(1)) {
        Ok(Value::Map(entries)) => entries
            .iter()
            .any(|(k, v)| k.as_str() == Some(SYNC_KEY) && v.as_bool() == Some(true)),
        _ => false,
    }
}

/// The `endpoint_name` of a HELLO/READY payload.
fn hello_name(payload: &[u8]) -> Result<String, CellnetError> {
    let v = msgpack::decode_value(payload, payload.len().max(1))
        .map_err(|e| CellnetError::Handshake(format!("undecodable HELLO/READY payload: {e}")))?;
    let Value::Map(entries) = v else {
        return Err(CellnetError::Handshake(
            "HELLO/READY payload is not a map".into(),
        ));
    };
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some("endpoint_name"))
        .and_then(|(_, v)| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| CellnetError::Handshake("HELLO/READY without endpoint_name".into()))
}

fn control(frame_type: FrameType, payload: Bytes) -> OutFrame {
    OutFrame {
        frame_type,
        app_id: 0,
        headers: Bytes::new(),
        payload: vec![payload],
    }
}

fn nil_payload() -> Bytes {
    Bytes::from_static(&[0xc0])
}

/// Frames at least this long are read into a recycled buffer of their own instead of the
/// shared read buffer (fresh multi-MiB allocations cost a page fault per 4 KiB).
const LARGE_FRAME: usize = 1024 * 1024;
/// Bytes of large-frame buffers a connection keeps for reuse. A receiver pulling with a window
/// of eight 1 MiB chunks has about nine frames alive at once; a pool smaller than that means
/// fresh allocations (zeroing and a page fault per 4 KiB) for part of every window. The pool
/// only ever holds buffers that were alive at the same time, so an idle connection keeps
/// nothing beyond its peak.
const POOL_BYTES: usize = 16 * 1024 * 1024;

/// Recycled buffers for large frames. A frame's `Bytes` owns its buffer; when the last slice
/// of it is dropped the buffer comes back here (if there is room).
#[derive(Clone, Default)]
struct BufferPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// A buffer of exactly `len` initialized bytes (contents unspecified).
    fn take(&self, len: usize) -> Vec<u8> {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // most recently returned first: its pages are the likeliest to be in cache
        if let Some(i) = pool.iter().rposition(|b| b.capacity() >= len) {
            let mut b = pool.remove(i);
            b.resize(len, 0);
            return b;
        }
        drop(pool);
        vec![0u8; len]
    }

    fn give(&self, b: Vec<u8>) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let pooled: usize = pool.iter().map(Vec::capacity).sum();
        if pooled + b.capacity() <= POOL_BYTES {
            pool.push(b);
        }
    }
}

/// A pooled buffer owned by a `Bytes`; returns itself to the pool when dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

/// Splits frames off a read half, growing its buffer only to validated frame lengths.
///
/// [`FrameReader::next`] is cancel-safe (the reader task drops it in a `select!` whenever the
/// heartbeat ticks): bytes already read stay in `buf` or in `large`.
pub(crate) struct FrameReader {
    rd: ReadHalf,
    buf: BytesMut,
    decoder: FrameDecoder,
    pool: BufferPool,
    /// A large frame being read in place: its buffer and how many bytes are filled.
    large: Option<(Vec<u8>, usize)>,
}

impl FrameReader {
    pub fn new(rd: ReadHalf, decoder: FrameDecoder) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
            decoder,
            pool: BufferPool::default(),
            large: None,
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream. Fatal framing errors and I/O
    /// errors are `Err`; non-fatal ones are logged and the frame is skipped.
    pub async fn next(&mut self) -> Result<Option<Frame>, CellnetError> {
        loop {
            if self.large.is_some() {
                match self.read_large().await? {
                    Some(f) => return Ok(Some(f)),
                    None => continue,
                }
            }
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) if e.is_fatal() => return Err(e.into()),
                Err(e) => {
                    error!("frame dropped: {e}");
                    continue;
                }
            }
            // Only validated lengths reach here (peek_length checked the limit).
            let len = self.decoder.peek_length(&self.buf)?;
            if let Some(len) = len.filter(|&l| l >= LARGE_FRAME) {
                // Move what is buffered of this frame into a pooled buffer of its own; the
                // rest is read in place by read_large.
                let mut big = self.pool.take(len);
                let have = self.buf.len().min(len);
                big[..have].copy_from_slice(&self.buf[..have]);
                self.buf.advance(have);
                self.large = Some((big, have));
                continue;
            }
            let need = len.unwrap_or(PREFIX_LEN).saturating_sub(self.buf.len());
            let want = need.max(READ_CHUNK);
            if self.buf.capacity() - self.buf.len() < want {
                self.buf.reserve(want);
            }
            let n = self.rd.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(CellnetError::ConnectionClosed(format!(
                    "peer closed the connection inside a frame ({} bytes pending)",
                    self.buf.len()
                )));
            }
        }
    }

    /// Finish reading the large frame in `self.large`. Each `read` either completes (and is
    /// accounted) or is dropped before consuming anything, so cancellation loses no bytes.
    /// `None` = the frame was dropped (bad header length).
    async fn read_large(&mut self) -> Result<Option<Frame>, CellnetError> {
        if let Some((big, filled)) = self.large.as_mut() {
            while *filled < big.len() {
                let n = self.rd.read(&mut big[*filled..]).await?;
                if n == 0 {
                    return Err(CellnetError::ConnectionClosed(
                        "peer closed the connection inside a frame".into(),
                    ));
                }
                *filled += n;
            }
        }
        let Some((big, _)) = self.large.take() else {
            return Ok(None);
        };
        let bytes = Bytes::from_owner(Pooled {
            buf: big,
            pool: self.pool.clone(),
        });
        match self.decoder.split(bytes) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                error!("frame dropped: {e}");
                Ok(None)
            }
        }
    }
}

/// Buffers handed to one vectored write at most (a batch with more takes several writes).
const MAX_IOV: usize = 64;

/// Write all buffers with vectored writes, advancing over partial writes.
async fn write_all_vectored<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    bufs: &mut [Bytes],
) -> std::io::Result<()> {
    let mut i = 0;
    while i < bufs.len() {
        if bufs[i].is_empty() {
            i += 1;
            continue;
        }
        let n = {
            // on the stack: a large batch takes many partial writes, none of them allocates
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            for b in bufs[i..].iter().filter(|b| !b.is_empty()).take(MAX_IOV) {
                slices[k] = IoSlice::new(b);
                k += 1;
            }
            w.write_vectored(&slices[..k]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        while n > 0 && i < bufs.len() {
            let l = bufs[i].len();
            if n >= l {
                n -= l;
                i += 1;
            } else {
                bufs[i].advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Per-connection prefix counters (f3-wire.md §1.1).
struct Counters {
    sequence: u16,
    stream_id: u16,
}

impl Counters {
    fn next(&mut self, t: FrameType) -> (u16, u16) {
        self.sequence = self.sequence.wrapping_add(1);
        let sid = match t {
            FrameType::Hello | FrameType::Ready => 1,
            _ => {
                self.stream_id = self.stream_id.wrapping_add(1);
                self.stream_id
            }
        };
        (sid, self.sequence)
    }
}

async fn write_batch(
    wr: &mut WriteHalf,
    batch: Vec<OutFrame>,
    counters: &mut Counters,
) -> std::io::Result<()> {
    let mut prefixes = BytesMut::with_capacity(batch.len() * PREFIX_LEN);
    let mut parts: Vec<(usize, OutFrame)> = Vec::with_capacity(batch.len());
    for f in batch {
        let (sid, seq) = counters.next(f.frame_type);
        match f.prefix(sid, seq) {
            Ok(p) => {
                let at = prefixes.len();
                prefixes.put_slice(&p.to_bytes());
                parts.push((at, f));
            }
            Err(e) => error!("frame not sent: {e}"),
        }
    }
    let prefixes = prefixes.freeze();
    let mut bufs: Vec<Bytes> = Vec::with_capacity(parts.len() * 3);
    for (at, f) in parts {
        bufs.push(prefixes.slice(at..at + PREFIX_LEN));
        bufs.push(f.headers);
        bufs.extend(f.payload);
    }
    write_all_vectored(wr.as_mut(), &mut bufs).await?;
    wr.flush().await
}

async fn writer_task(
    mut wr: WriteHalf,
    mut rx: mpsc::Receiver<OutFrame>,
    mut ctl_rx: mpsc::Receiver<OutFrame>,
    close: CancellationToken,
    send_timeout: Duration,
) {
    let mut counters = Counters {
        sequence: 0,
        stream_id: 16,
    };
    let mut ctl_open = true;
    loop {
        let mut closing = false;
        // control frames (PONG, ACK, ERROR, RETURN) go first: they are small and a peer's
        // stream window may be waiting for them
        let first = tokio::select! {
            biased;
            f = ctl_rx.recv(), if ctl_open => match f {
                Some(f) => Some(f),
                None => {
                    ctl_open = false;
                    continue;
                }
            },
            f = rx.recv() => match f {
                Some(f) => Some(f),
                None => break,
            },
            _ = close.cancelled() => {
                closing = true;
                None
            }
        };
        let mut batch: Vec<OutFrame> = first.into_iter().collect();
        while closing || batch.len() < WRITE_BATCH {
            match ctl_rx.try_recv().or_else(|_| rx.try_recv()) {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            match tokio::time::timeout(send_timeout, write_batch(&mut wr, batch, &mut counters))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!("write failed: {e}");
                    close.cancel();
                    break;
                }
                Err(_) => {
                    warn!("write made no progress for {send_timeout:?}; closing the connection");
                    close.cancel();
                    break;
                }
            }
        }
        if closing {
            break;
        }
    }
    rx.close();
    ctl_rx.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

/// What the handshake learnt.
enum Handshake {
    /// The peer's validated FQCN, and whether it may receive DATA right away (always true
    /// on the accepting side; on the connecting side only if READY announced [`SYNC_KEY`]).
    /// On the accepting side READY is not sent yet: admission ([`CellInner::admit`]) decides
    /// between READY and a refusal.
    Peer(String, bool),
    /// The peer claimed our own name: keep the socket, never register it (NVFlare).
    OwnName,
}

async fn handshake(
    cell: &CellInner,
    reader: &mut FrameReader,
    tx: &mpsc::Sender<OutFrame>,
    active: bool,
    peer_cn: Option<&str>,
) -> Result<Handshake, CellnetError> {
    let closed = || CellnetError::ConnectionClosed("closed during handshake".into());
    if active {
        tx.send(control(FrameType::Hello, hello_payload(&cell.fqcn, None)))
            .await
            .map_err(|_| closed())?;
    }
    loop {
        let Some(frame) = reader.next().await? else {
            return Err(closed());
        };
        match (frame.frame_type(), active) {
            (Some(FrameType::Ready), true) => {
                if let Some(why) = hello_refusal(&frame.payload) {
                    return Err(CellnetError::Refused(why));
                }
                let name = hello_name(&frame.payload)?;
                fqcn::validate(&name).map_err(|r| {
                    CellnetError::Handshake(format!("READY with invalid FQCN {name:?}: {r}"))
                })?;
                check_cn(peer_cn, &name)?;
                return Ok(Handshake::Peer(name, hello_sync(&frame.payload)));
            }
            (Some(FrameType::Hello), false) => {
                let checked = hello_name(&frame.payload).and_then(|name| {
                    fqcn::validate(&name).map_err(|r| {
                        CellnetError::Handshake(format!("HELLO with invalid FQCN {name:?}: {r}"))
                    })?;
                    check_cn(peer_cn, &name)?;
                    Ok(name)
                });
                let name = match checked {
                    Ok(name) => name,
                    Err(e) => {
                        // tell the peer why before closing (a ferry cell reports it)
                        let why = e.to_string();
                        let _ = tx
                            .send(control(
                                FrameType::Ready,
                                hello_payload(&cell.fqcn, Some(&why)),
                            ))
                            .await;
                        return Err(e);
                    }
                };
                if name == cell.fqcn.as_str() {
                    error!("peer claims this cell's own name {name:?}; not registered");
                    // NVFlare answers READY and keeps the socket
                    tx.send(control(FrameType::Ready, hello_payload(&cell.fqcn, None)))
                        .await
                        .map_err(|_| closed())?;
                    return Ok(Handshake::OwnName);
                }
                return Ok(Handshake::Peer(name, true));
            }
            (Some(FrameType::Ping), _) => {
                let _ = tx.try_send(control(FrameType::Pong, nil_payload()));
            }
            (Some(FrameType::Data), _) => {
                error!("DATA frame before the handshake completed; dropped");
            }
            (Some(t), _) => debug!("{t:?} frame during the handshake; dropped"),
            (None, _) => error!(
                "received unsupported frame type {}; dropped",
                frame.prefix.frame_type
            ),
        }
    }
}

/// Under TLS: the certificate CN must be the first segment of the FQCN the peer claims.
fn check_cn(peer_cn: Option<&str>, name: &str) -> Result<(), CellnetError> {
    match peer_cn {
        Some(cn) if name.split('.').next() != Some(cn) => Err(CellnetError::PeerIdentity {
            certificate: cn.to_string(),
            claimed: name.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Run a connection until it closes. `ready` receives the handshake outcome (the peer FQCN).
pub(crate) async fn run(
    cell: Arc<CellInner>,
    t: Transport,
    active: bool,
    ready: Option<oneshot::Sender<Result<Fqcn, CellnetError>>>,
) {
    static IDS: AtomicU64 = AtomicU64::new(1);
    let id = IDS.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "conn",
        id,
        cell = %cell.fqcn,
        addr = %t.peer_addr,
        dir = if active { "out" } else { "in" },
        peer = tracing::field::Empty
    );
    run_inner(cell, t, active, ready, id).instrument(span).await
}

async fn run_inner(
    cell: Arc<CellInner>,
    t: Transport,
    active: bool,
    mut ready: Option<oneshot::Sender<Result<Fqcn, CellnetError>>>,
    id: u64,
) {
    let limits = &cell.limits;
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let close = cell.conns_token.child_token();
    cell.io_tasks
        .spawn(writer_task(t.wr, rx, ctl_rx, close.clone(), limits.send_timeout).in_current_span());
    let mut reader = FrameReader::new(
        t.rd,
        FrameDecoder::new(limits.max_frame_size, limits.max_header_size),
    );

    let hs = tokio::select! {
        r = tokio::time::timeout(
            limits.handshake_timeout,
            handshake(&cell, &mut reader, &tx, active, t.peer_cn.as_deref()),
        ) => r.unwrap_or_else(|_| Err(CellnetError::Timeout("handshake".into()))),
        _ = close.cancelled() => Err(CellnetError::Shutdown),
    };
    let (peer, sync) = match hs {
        Ok(Handshake::Peer(p, sync)) => (p, sync),
        Ok(Handshake::OwnName) => {
            // keep the socket open (NVFlare does) but never route to it
            idle_unregistered(&mut reader, &tx, &close).await;
            close.cancel();
            return;
        }
        Err(e) => {
            warn!("handshake failed: {e}; closing");
            if let Some(r) = ready.take() {
                let _ = r.send(Err(e));
            }
            close.cancel();
            return;
        }
    };
    let conn = Arc::new(Conn {
        id,
        peer: peer.clone(),
        peer_addr: t.peer_addr.clone(),
        tx,
        ctl_tx,
        close: close.clone(),
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight_per_peer)),
        outbound: active,
        rx_frames: AtomicU64::new(0),
        probing: AtomicU32::new(0),
        rx_event: Notify::new(),
        refusals: WarnLimiter::default(),
    });
    tracing::Span::current().record("peer", tracing::field::display(&peer));
    if active {
        cell.register_agent(conn.clone());
    } else {
        // The name is ours only if no live connection holds it; READY goes out as the name
        // is taken, so nothing routed to the peer can overtake it.
        let admitted = tokio::select! {
            r = cell.admit(&conn, control(FrameType::Ready, hello_payload(&cell.fqcn, None))) => r,
            _ = close.cancelled() => Err("shutting down".to_string()),
        };
        if let Err(why) = admitted {
            warn!(peer = %peer, addr = %conn.peer_addr, "connection refused: {why}");
            let _ = conn
                .send(control(
                    FrameType::Ready,
                    hello_payload(&cell.fqcn, Some(&why)),
                ))
                .await;
            close.cancel();
            return;
        }
    }
    info!(peer = %peer, "connected");
    if let Some(r) = ready.take() {
        // peer was validated in the handshake
        let fqcn = Fqcn::new(peer.clone());
        if sync {
            let _ = r.send(fqcn);
        } else {
            // NVFlare sends READY before it registers us and handles frames on a thread
            // pool: a DATA frame right behind READY can be dropped. Report the connection
            // only once a probe request got a reply (any reply) through it.
            let cell2 = cell.clone();
            let peer2 = peer.clone();
            let budget = cell.limits.handshake_timeout;
            cell.io_tasks.spawn(
                async move {
                    cell2.probe(&peer2, budget).await;
                    let _ = r.send(fqcn);
                }
                .in_current_span(),
            );
        }
    }

    let reason = read_loop(&cell, &conn, &mut reader).await;
    info!(peer = %peer, addr = %conn.peer_addr, "connection closed: {reason}");
    close.cancel();
    cell.unregister_agent(&conn);
}

async fn read_loop(cell: &Arc<CellInner>, conn: &Arc<Conn>, reader: &mut FrameReader) -> String {
    let hb = cell.limits.heartbeat_interval;
    let mut tick = tokio::time::interval(HEARTBEAT_TICK.min(hb / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = Instant::now();
    let mut last_ping = Instant::now();
    loop {
        let frame = tokio::select! {
            r = reader.next() => r,
            _ = conn.close.cancelled() => return "closed locally".into(),
            _ = tick.tick() => {
                cell.streams.sweep(cell.limits.stream_idle_timeout);
                let now = Instant::now();
                if now.duration_since(last_rx) >= hb && now.duration_since(last_ping) >= hb {
                    debug!("idle for {:?}; sending PING", now.duration_since(last_rx));
                    last_ping = now;
                    conn.send_detached(control(FrameType::Ping, nil_payload()));
                }
                continue;
            }
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return "peer closed the connection".into(),
            Err(e) => {
                if matches!(e, CellnetError::Frame(_)) {
                    error!("bad frame, closing the connection: {e}");
                }
                return e.to_string();
            }
        };
        last_rx = Instant::now();
        conn.saw_frame();
        match frame.frame_type() {
            Some(FrameType::Data) => {
                if frame.prefix.app_id != APP_ID_CELLNET {
                    warn!("DATA frame for app_id {}; dropped", frame.prefix.app_id);
                    continue;
                }
                cell.on_data(conn, frame).await;
            }
            Some(FrameType::Ping) => conn.send_detached(control(FrameType::Pong, nil_payload())),
            Some(FrameType::Pong) => {}
            Some(t) => debug!("{t:?} frame after the handshake; dropped"),
            None => error!(
                "received unsupported frame type {}; dropped",
                frame.prefix.frame_type
            ),
        }
    }
}

/// A peer that claimed our own name: answer PINGs, drop everything else, until it leaves.
async fn idle_unregistered(
    reader: &mut FrameReader,
    tx: &mpsc::Sender<OutFrame>,
    close: &CancellationToken,
) {
    loop {
        let f = tokio::select! {
            r = reader.next() => r,
            _ = close.cancelled() => return,
        };
        match f {
            Ok(Some(f)) if f.frame_type() == Some(FrameType::Ping) => {
                let _ = tx.try_send(control(FrameType::Pong, nil_payload()));
            }
            Ok(Some(_)) => debug!("frame from an unregistered peer dropped"),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_capture_parses() {
        // f3-wire.md §1.3: HELLO site-1 → server, 69 bytes
        let mut wire = vec![
            0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x01, 0x83, 0xad,
        ];
        wire.extend_from_slice(b"endpoint_name");
        wire.push(0xa6);
        wire.extend_from_slice(b"site-1");
        wire.push(0xa9);
        wire.extend_from_slice(b"timestamp");
        wire.extend_from_slice(&[0xcb, 0x41, 0xda, 0xc2, 0x86, 0x77, 0xde, 0xf7, 0x74, 0xa4]);
        wire.extend_from_slice(b"fqcn");
        wire.push(0xa6);
        wire.extend_from_slice(b"site-1");
        assert_eq!(wire.len(), 69);
        let mut buf = BytesMut::from(&wire[..]);
        let f = FrameDecoder::new(1 << 20, 65535)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(f.frame_type(), Some(FrameType::Hello));
        assert_eq!(hello_name(&f.payload).unwrap(), "site-1");
        // our own HELLO has the same shape and length for the same name
        let ours = control(
            FrameType::Hello,
            hello_payload(&Fqcn::new("site-1").unwrap(), None),
        )
        .to_bytes(1, 1)
        .unwrap();
        // plus the ferry_sync key: 83 -> 84 map, 12 more bytes
        assert_eq!(ours.len(), 69 + 12);
        assert_eq!(&ours[4..16], &wire[4..16]);
        assert_eq!(ours[16], 0x84);
        assert_eq!(&ours[17..36], &wire[17..36]);
        assert!(hello_sync(&ours[16..]));
        assert!(!hello_sync(&wire[16..]));
    }

    #[test]
    fn counters_follow_nvflare() {
        let mut c = Counters {
            sequence: 0,
            stream_id: 16,
        };
        assert_eq!(c.next(FrameType::Hello), (1, 1));
        assert_eq!(c.next(FrameType::Data), (17, 2));
        assert_eq!(c.next(FrameType::Ping), (18, 3));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Whatever arrives, the reader's buffer never grows beyond the frame limit plus one
        /// read chunk, and it never panics.
        #[test]
        fn reader_buffer_stays_bounded(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            prefix_len in proptest::prelude::any::<u32>(),
        ) {
            let max = 1024usize;
            let mut bytes = prefix_len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 1, 0, 17, 0, 2]);
            bytes.extend_from_slice(&input);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let rd: ReadHalf = Box::new(std::io::Cursor::new(bytes));
                let mut r = FrameReader::new(rd, FrameDecoder::new(max, 65535));
                loop {
                    let res = r.next().await;
                    assert!(r.buf.capacity() <= 2 * (max + READ_CHUNK), "buffer grew to {}", r.buf.capacity());
                    match res {
                        Ok(Some(_)) => continue,
                        _ => break,
                    }
                }
            });
        }
    }

    /// A DATA frame on the wire with an empty header map and this payload.
    fn data_frame(payload: &Bytes) -> Bytes {
        OutFrame {
            frame_type: FrameType::Data,
            app_id: APP_ID_CELLNET,
            headers: Bytes::from_static(&[0x80]),
            payload: vec![payload.clone()],
        }
        .to_bytes(17, 2)
        .unwrap()
    }

    #[tokio::test]
    async fn large_frames_use_recycled_buffers() {
        let payload = Bytes::from((0..3 * LARGE_FRAME).map(|i| i as u8).collect::<Vec<u8>>());
        let f = data_frame(&payload);
        let mut wire = f.to_vec();
        wire.extend_from_slice(&f);
        wire.extend_from_slice(
            &control(FrameType::Ping, nil_payload())
                .to_bytes(18, 3)
                .unwrap(),
        );
        let rd: ReadHalf = Box::new(std::io::Cursor::new(wire));
        let mut r = FrameReader::new(rd, FrameDecoder::new(16 * LARGE_FRAME, 65535));
        let a = r.next().await.unwrap().unwrap();
        assert_eq!(a.payload, payload);
        assert_eq!(&a.headers[..], &[0x80]);
        let ptr = a.payload.as_ptr();
        drop(a);
        // the second frame lands in the buffer the first one gave back
        let b = r.next().await.unwrap().unwrap();
        assert_eq!(b.payload, payload);
        assert_eq!(b.payload.as_ptr(), ptr);
        let c = r.next().await.unwrap().unwrap();
        assert_eq!(c.frame_type(), Some(FrameType::Ping));
        assert!(r.next().await.unwrap().is_none());
    }

    /// The reader task drops `next()` whenever the heartbeat ticks; no byte may be lost.
    #[tokio::test]
    async fn next_is_cancel_safe() {
        let payload = Bytes::from(
            (0..2 * LARGE_FRAME + 5)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        let big = data_frame(&payload);
        let small = control(FrameType::Ping, nil_payload())
            .to_bytes(18, 3)
            .unwrap();
        let mut wire = Vec::new();
        for _ in 0..2 {
            wire.extend_from_slice(&small);
            wire.extend_from_slice(&big);
        }
        let (mut tx, rx) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(3000) {
                tx.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let rd: ReadHalf = Box::new(rx);
        let mut r = FrameReader::new(rd, FrameDecoder::new(16 * LARGE_FRAME, 65535));
        let mut got = Vec::new();
        while got.len() < 4 {
            // cancel next() at every await point it reaches
            tokio::select! {
                biased;
                f = r.next() => got.push(f.unwrap().unwrap()),
                _ = tokio::task::yield_now() => {}
            }
        }
        writer.await.unwrap();
        for pair in got.chunks(2) {
            assert_eq!(pair[0].frame_type(), Some(FrameType::Ping));
            assert_eq!(pair[1].payload, payload);
        }
    }

    #[tokio::test]
    async fn truncated_large_frame_is_an_error() {
        let mut wire = vec![0u8; 16];
        wire[..4].copy_from_slice(&(2 * LARGE_FRAME as u32).to_be_bytes());
        wire[6] = 1;
        wire.extend_from_slice(&[0u8; 1000]);
        let rd: ReadHalf = Box::new(std::io::Cursor::new(wire));
        let mut r = FrameReader::new(rd, FrameDecoder::new(16 * LARGE_FRAME, 65535));
        assert!(r.next().await.is_err());
    }

    /// Accepts at most 7 bytes of at most 3 buffers per write: every write is partial.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(7);
            self.0.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut n = 0;
            for b in bufs.iter().take(3) {
                let take = b.len().min(7 - n);
                self.0.extend_from_slice(&b[..take]);
                n += take;
                if n == 7 {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn vectored_writes_survive_partial_writes_and_many_buffers() {
        // more buffers than one write takes, empty ones among them
        let mut bufs: Vec<Bytes> = (0..3 * MAX_IOV)
            .map(|i| Bytes::from(vec![i as u8; i % 6]))
            .collect();
        let want: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let mut w = Trickle(Vec::new());
        write_all_vectored(&mut w, &mut bufs).await.unwrap();
        assert_eq!(w.0, want);
    }

    #[test]
    fn hello_name_rejects_garbage() {
        assert!(hello_name(&[0xc0]).is_err());
        assert!(hello_name(&[0x80]).is_err());
        assert!(hello_name(&[0xc1]).is_err());
        assert!(hello_name(&[0x81, 0xad]).is_err());
    }
}
