//! Splitting frames off a connection's read half with memory bounded by what actually
//! arrived, never by what a prefix announces.
//!
//! - Prefixes and frames of at most [`READ_CHUNK`] bytes are read many at a time into one
//!   small buffer and copied out of it, so a frame a handler keeps alive pins only its own
//!   bytes, and the buffer is reused in place.
//! - A larger frame gets a buffer of its own (recycled from a small per-connection pool) that
//!   grows as its bytes arrive, doubling at most and by [`GROW_MAX`] at most, with fallible
//!   allocation. Each growth is
//!   charged to the connection's account with the cell's held-memory budget first
//!   ([`crate::held`]); a charge that cannot be met closes the connection.
//! - Until the handshake is done the frame limit is `max_handshake_frame_size` (HELLO is
//!   ~100 bytes), afterwards `max_frame_size`.
//! - A frame that stops arriving half-way is dropped and the connection closed once no byte
//!   came for `frame_stall_timeout`.
//! - While a large frame's body arrives, the transport is told how many bytes are still
//!   missing ([`crate::driver::ReadStream::wake_at`]): plain TCP then wakes the reader once
//!   they are there (or the connection ends) instead of for every segment. Before a frame is
//!   declared stalled the reader asks whether bytes arrived below that mark.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::driver::ReadHalf;
use crate::error::CellnetError;
use crate::frame::{Frame, FrameDecoder, FrameError};
use crate::held::AccountHandle;
use crate::log_limit::{limited, LogLimiter};
use crate::prefault;

/// Frames up to this long share the small read buffer; longer ones get a buffer of their own.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// A frame's buffer grows by at most this much at a time: what it holds beyond the bytes
/// received stays below this (or below what arrived, for smaller frames).
const GROW_MAX: usize = 8 * 1024 * 1024;

/// Bytes of idle frame buffers a connection keeps for reuse. A receiver pulling with a window
/// of eight 1 MiB chunks has about nine frames alive at once; a pool smaller than that means
/// fresh allocations (zeroing and a page fault per 4 KiB) for part of every window. Idle
/// buffers are charged to the connection's held-memory account, and kept only if they fit.
const POOL_BYTES: usize = 16 * 1024 * 1024;

/// The limits a reader enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadLimits {
    /// Largest frame accepted (prefix included).
    pub max_frame_size: usize,
    /// Largest header map accepted.
    pub max_header_size: usize,
    /// A frame in progress that gets no byte for this long closes the connection.
    pub stall_timeout: Duration,
}

/// Recycled buffers for frames of their own. A frame's `Bytes` owns its buffer; when the last
/// slice of it is dropped the buffer comes back here, if there is room in the pool and in the
/// connection's account.
#[derive(Clone, Default)]
struct BufferPool(Arc<Mutex<PoolState>>);

#[derive(Default)]
struct PoolState {
    free: Vec<Vec<u8>>,
    /// Charges idle buffers to the connection (readers in unit tests have none).
    account: Option<AccountHandle>,
    /// The reader is gone: nothing is kept any more.
    closed: bool,
}

impl BufferPool {
    fn with_account(account: Option<AccountHandle>) -> Self {
        BufferPool(Arc::new(Mutex::new(PoolState {
            free: Vec::new(),
            account,
            closed: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty idle buffer for a frame of `len` bytes, if one suits: at least `len` bytes
    /// but not more than twice that (a frame must not pin much more than its own size), else
    /// the largest smaller one. Its charge moves with it (the caller accounts it now).
    fn take(&self, len: usize) -> Option<Vec<u8>> {
        let mut p = self.lock();
        // most recently returned first: its pages are the likeliest to be in cache
        let i = p
            .free
            .iter()
            .rposition(|b| b.capacity() >= len && b.capacity() / 2 <= len)
            .or_else(|| {
                p.free
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.capacity() < len)
                    .max_by_key(|(_, b)| b.capacity())
                    .map(|(i, _)| i)
            })?;
        let mut b = p.free.swap_remove(i);
        b.clear();
        Some(b)
    }

    /// Keep `b` for reuse if it fits the pool and the account; otherwise free it.
    fn give(&self, b: Vec<u8>) {
        let mut p = self.lock();
        let pooled: usize = p.free.iter().map(Vec::capacity).sum();
        let fits = !p.closed
            && pooled + b.capacity() <= POOL_BYTES
            && p.account
                .as_ref()
                .is_none_or(|a| a.try_charge(b.capacity()));
        if fits {
            p.free.push(b);
        }
    }

    /// Free every idle buffer and keep none from now on (the reader is gone).
    fn close(&self) {
        let mut p = self.lock();
        let idle: usize = p.free.iter().map(Vec::capacity).sum();
        if let Some(a) = p.account.take() {
            a.release(idle);
        }
        p.free.clear();
        p.closed = true;
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

/// A small frame's copy: its bytes inline, so that the copy and the count of its references
/// (which the frame's headers and payload share) are one allocation, not two
/// ([`copy_frame`]).
struct SmallFrame<const N: usize> {
    len: usize,
    buf: [u8; N],
}

impl<const N: usize> AsRef<[u8]> for SmallFrame<N> {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

/// Frames up to this long are copied into a [`SmallFrame`].
const SMALL_FRAME_MAX: usize = 4096;

/// A copy of `frame` of its own. A `Bytes` made from a `Vec` allocates a second time, for
/// the reference count, once the frame is split into headers and payload; a frame of up to
/// [`SMALL_FRAME_MAX`] bytes is copied into one allocation of the next power of two from
/// 256 bytes (at most twice its length) that holds both.
fn copy_frame(frame: &[u8]) -> Bytes {
    fn inline<const N: usize>(frame: &[u8]) -> Bytes {
        let mut small = SmallFrame {
            len: frame.len(),
            buf: [0; N],
        };
        small.buf[..frame.len()].copy_from_slice(frame);
        Bytes::from_owner(small)
    }
    match frame.len() {
        0..=256 => inline::<256>(frame),
        257..=512 => inline::<512>(frame),
        513..=1024 => inline::<1024>(frame),
        1025..=2048 => inline::<2048>(frame),
        2049..=SMALL_FRAME_MAX => inline::<SMALL_FRAME_MAX>(frame),
        _ => Bytes::copy_from_slice(frame),
    }
}

/// A frame longer than [`READ_CHUNK`] being read into a buffer of its own.
struct Large {
    buf: Vec<u8>,
    /// The validated frame length.
    len: usize,
}

/// Splits frames off a read half (see the module documentation).
///
/// [`FrameReader::next`] is cancel-safe (the reader task drops it in a `select!` whenever the
/// heartbeat ticks): bytes already read stay in `buf` or in `large`, and a charge is made
/// only together with the allocation it pays for.
pub(crate) struct FrameReader {
    rd: ReadHalf,
    buf: BytesMut,
    limits: ReadLimits,
    /// Until the handshake is done: the smaller frame limit in force.
    handshake_limit: Option<usize>,
    pool: BufferPool,
    large: Option<Large>,
    account: Option<AccountHandle>,
    /// Bytes of `large`'s capacity charged to the account.
    charged: usize,
    /// When the reader last found bytes arrived (or began to wait for a frame's next ones):
    /// a frame in progress must get a byte within the stall timeout.
    last_byte: Instant,
    /// Bytes arrived since `last_byte` was stamped. The clock is read only when a read
    /// begins mid-frame: a read that completes frames and finds the buffer empty again (a
    /// round trip's request or reply) costs no clock read. The stall is then measured from
    /// when the reader began to wait, a few microseconds after the bytes came.
    stamp_due: bool,
    /// Rate limit of the complaints about this peer's frames.
    log: Arc<LogLimiter>,
}

impl FrameReader {
    /// A reader enforcing `limits`, with `handshake_limit` (if any) as the frame limit until
    /// [`FrameReader::handshake_done`]. Large buffers are charged to `account`.
    pub fn new(
        rd: ReadHalf,
        limits: ReadLimits,
        handshake_limit: Option<usize>,
        account: Option<AccountHandle>,
        log: Arc<LogLimiter>,
    ) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
            limits,
            handshake_limit: handshake_limit.map(|h| h.min(limits.max_frame_size)),
            pool: BufferPool::with_account(account.clone()),
            large: None,
            account,
            charged: 0,
            last_byte: Instant::now(),
            stamp_due: false,
            log,
        }
    }

    /// The handshake is done: frames up to `max_frame_size` are accepted from now on.
    pub fn handshake_done(&mut self) {
        self.handshake_limit = None;
    }

    fn decoder(&self) -> FrameDecoder {
        FrameDecoder::new(
            self.handshake_limit.unwrap_or(self.limits.max_frame_size),
            self.limits.max_header_size,
        )
    }

    /// The next frame; `Ok(None)` at a clean end of stream. Fatal framing errors, stalls,
    /// refused charges and I/O errors are `Err` (the connection must close); frames with a
    /// bad header length are logged (rate-limited) and skipped.
    pub async fn next(&mut self) -> Result<Option<Frame>, CellnetError> {
        loop {
            if self.large.is_some() {
                match self.read_large().await? {
                    Some(f) => return Ok(Some(f)),
                    None => continue,
                }
            }
            let decoder = self.decoder();
            let len = match decoder.peek_length(&self.buf) {
                Ok(len) => len,
                Err(e) => return Err(self.fatal(e)),
            };
            match len {
                Some(len) if len > READ_CHUNK => {
                    self.start_large(len)?;
                    continue;
                }
                Some(len) if self.buf.len() >= len => {
                    // a copy of its own: the frame pins only its bytes (at most twice as
                    // many), and `buf` stays unique, so it is reused in place
                    let frame = copy_frame(&self.buf[..len]);
                    self.buf.advance(len);
                    match decoder.split(frame) {
                        Ok(f) => return Ok(Some(f)),
                        Err(e) => {
                            limited!(self.log, error, "frame dropped: {e}");
                            continue;
                        }
                    }
                }
                _ => {}
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let mid_frame = !self.buf.is_empty();
            // a frame's head, or a small frame: every byte may complete one
            self.rd.wake_at(1);
            let n = self.read_timed(mid_frame, ReadInto::Small).await?;
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

    /// A fatal framing error, worded for the phase it happened in.
    fn fatal(&self, e: FrameError) -> CellnetError {
        match (e, self.handshake_limit) {
            (FrameError::TooLong { len, max }, Some(_)) => CellnetError::Handshake(format!(
                "a frame of {len} bytes arrived before the handshake completed; at most {max} bytes are accepted until HELLO/READY"
            )),
            (e, _) => e.into(),
        }
    }

    /// Move what is buffered of a frame of `len` bytes (validated) into a buffer of its own.
    fn start_large(&mut self, len: usize) -> Result<(), CellnetError> {
        let have = self.buf.len().min(len);
        let mut buf = match self.pool.take(len) {
            Some(b) => {
                // its charge as an idle buffer becomes the charge of the frame in progress
                self.charged = b.capacity();
                b
            }
            None => {
                self.charged = 0;
                Vec::new()
            }
        };
        if buf.capacity() < have {
            // `have` bytes are already in memory (in `buf`): moving them is not new memory,
            // but the new buffer is charged from now on
            buf.try_reserve_exact(have)
                .map_err(|e| alloc_failed(have, len, e))?;
            self.charge_now(buf.capacity().saturating_sub(self.charged));
            prefault::spare_capacity(&mut buf);
        }
        buf.extend_from_slice(&self.buf[..have]);
        self.buf.advance(have);
        self.large = Some(Large { buf, len });
        Ok(())
    }

    /// Charge without waiting (bytes already received and held elsewhere a moment ago).
    fn charge_now(&mut self, n: usize) {
        if let Some(a) = &self.account {
            // best effort: if it does not fit, the next growth waits or is refused
            if a.try_charge(n) {
                self.charged += n;
            }
        }
    }

    /// Finish reading the frame in `self.large`. Each read either completes (and is
    /// accounted) or is dropped before consuming anything, so cancellation loses no bytes.
    /// `None` = the frame was dropped (bad header length).
    async fn read_large(&mut self) -> Result<Option<Frame>, CellnetError> {
        loop {
            let Some(large) = self.large.as_ref() else {
                return Ok(None);
            };
            let (filled, len, cap) = (large.buf.len(), large.len, large.buf.capacity());
            if filled == len {
                break;
            }
            if filled == cap {
                // grow: double what is there (at least READ_CHUNK, at most GROW_MAX more),
                // never past the frame
                let target = (cap + cap.clamp(READ_CHUNK, GROW_MAX)).min(len);
                let extra = target - cap;
                if let Some(a) = &self.account {
                    a.charge(extra).await.map_err(|why| {
                        CellnetError::LimitReached(format!(
                            "frame of {len} bytes dropped after {filled} bytes: {why}"
                        ))
                    })?;
                }
                self.charged += extra;
                let large = self
                    .large
                    .as_mut()
                    .ok_or_else(|| CellnetError::ConnectionClosed("frame buffer lost".into()))?;
                if let Err(e) = large.buf.try_reserve_exact(extra) {
                    return Err(alloc_failed(extra, len, e));
                }
                // The bytes of the growth are about to be copied in: fault its pages in at
                // once (memory already charged above, and bounded by what arrived).
                prefault::spare_capacity(&mut large.buf);
            }
            // Not woken before the rest of the body is there (plain TCP; capped there): one
            // wakeup and one read for what was a wakeup per segment that arrived.
            self.rd.wake_at(len - filled);
            let n = self.read_timed(true, ReadInto::Large).await?;
            if n == 0 {
                return Err(CellnetError::ConnectionClosed(format!(
                    "peer closed the connection inside a frame of {len} bytes ({filled} received)"
                )));
            }
        }
        let Some(Large { buf, .. }) = self.large.take() else {
            return Ok(None);
        };
        // The frame leaves the reader: its memory is the handler's now, not unfinished data.
        if let Some(a) = &self.account {
            a.release(self.charged);
        }
        self.charged = 0;
        let bytes = Bytes::from_owner(Pooled {
            buf,
            pool: self.pool.clone(),
        });
        match self.decoder().split(bytes) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                limited!(self.log, error, "frame dropped: {e}");
                Ok(None)
            }
        }
    }

    /// One read into the small buffer or the large frame's spare capacity; while a frame is
    /// in progress it must deliver a byte before the stall deadline.
    async fn read_timed(&mut self, mid_frame: bool, into: ReadInto) -> Result<usize, CellnetError> {
        let stall = self.limits.stall_timeout;
        if mid_frame && self.stamp_due {
            self.last_byte = Instant::now();
            self.stamp_due = false;
        }
        loop {
            let deadline = self.last_byte + stall;
            let read = async {
                match into {
                    ReadInto::Small => self.rd.read_buf(&mut self.buf).await,
                    ReadInto::Large => match self.large.as_mut() {
                        Some(large) => {
                            let room = large.len - large.buf.len();
                            self.rd.read_buf(&mut (&mut large.buf).limit(room)).await
                        }
                        None => Ok(0),
                    },
                }
            };
            let n = if mid_frame {
                match tokio::time::timeout_at(deadline, read).await {
                    Ok(r) => r?,
                    Err(_) => {
                        if self.rd.queued().is_some_and(|q| q > 0) {
                            // Bytes came, too few to meet the transport's low-water mark
                            // (a peer sending slowly): progress, and they are read now.
                            self.rd.wake_at(1);
                            self.last_byte = Instant::now();
                            continue;
                        }
                        return Err(CellnetError::Timeout(format!(
                            "no byte of the frame in progress arrived for {stall:?} (Limits::frame_stall_timeout); frame dropped"
                        )));
                    }
                }
            } else {
                read.await?
            };
            if n > 0 {
                self.stamp_due = true;
            }
            return Ok(n);
        }
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        if let Some(a) = &self.account {
            a.release(self.charged);
        }
        self.pool.close();
    }
}

/// Which buffer a read fills.
#[derive(Clone, Copy)]
enum ReadInto {
    Small,
    Large,
}

fn alloc_failed(n: usize, len: usize, e: std::collections::TryReserveError) -> CellnetError {
    CellnetError::LimitReached(format!(
        "cannot allocate {n} more bytes for a frame of {len} bytes ({e}); connection closed"
    ))
}

#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
mod tests;
