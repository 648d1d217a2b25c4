//! The writer half of a connection: frames queued by the cell are written with vectored I/O,
//! control frames first, in batches; a peer that stops reading is dropped after
//! `Limits::send_timeout` without progress (f3-wire.md §1.1, §1.2).
//!
//! A sender need not hand its frame to the writer task: when nothing is queued before it and
//! the socket is free, [`WriteQueue::send`] writes the frame itself, without waiting (one
//! non-blocking vectored write). Whatever the socket does not take at once — the tail of a
//! large frame, a flush TLS still owes — goes to the writer task ahead of everything queued,
//! so frames never interleave and never overtake one queued before them. A request/reply
//! round trip thus crosses two task hand-offs fewer (caller → writer, handler → writer).
//!
//! A frame with a file region in its payload always goes through the writer task: on plain
//! TCP the region is sent with `sendfile(2)` (under the same stall bound) and the bytes before
//! it with `MSG_MORE` (they leave together), elsewhere read in pieces and written. A file that no longer holds its region leaves a short frame on the
//! wire; the connection is then closed.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::driver::{WriteHalf, WriteStream};
use crate::error::CellnetError;
use crate::frame::{FrameType, OutFrame, PREFIX_LEN};
use crate::segment::Segment;

/// Frames written with one vectored write at most.
const WRITE_BATCH: usize = 32;
/// Buffers handed to one vectored write at most (a batch with more takes several writes).
const MAX_IOV: usize = 64;
/// Slices of one frame written from a stack array of this size when they fit (the prefix,
/// the header block and up to 6 payload segments); more take [`MAX_IOV`].
const FEW_IOV: usize = 8;

/// Per-connection prefix counters (f3-wire.md §1.1).
pub(crate) struct Counters {
    sequence: u16,
    stream_id: u16,
}

impl Counters {
    pub(crate) fn next(&mut self, t: FrameType) -> (u16, u16) {
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

/// The frames of `batch` as the segments to write: prefix, headers, payload segments each.
fn frame_bufs(batch: Vec<OutFrame>, counters: &mut Counters) -> Vec<Segment> {
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
    let mut bufs: Vec<Segment> = Vec::with_capacity(parts.len() * 3);
    for (at, f) in parts {
        bufs.push(Segment::Bytes(prefixes.slice(at..at + PREFIX_LEN)));
        bufs.push(Segment::Bytes(f.headers));
        bufs.extend(f.payload);
    }
    bufs
}

/// Write what a direct write left (first: it is the tail of a frame on the wire), then
/// `batch`, then flush.
async fn write_batch(io: &mut Io, batch: Vec<OutFrame>, stall: Duration) -> std::io::Result<()> {
    let mut bufs: Vec<Segment> = std::mem::take(&mut io.rest)
        .into_iter()
        .map(Segment::Bytes)
        .collect();
    bufs.extend(frame_bufs(batch, &mut io.counters));
    io.owes_flush = false;
    write_all_segments(io.wr.as_mut(), &mut bufs, stall).await?;
    stalled(stall, io.wr.flush()).await
}

/// The socket's write half and what goes with it; held by whoever writes.
struct Io {
    wr: WriteHalf,
    counters: Counters,
    /// What a direct write could not put on the socket at once (the tail of its frame): the
    /// writer task writes it before anything else.
    rest: Vec<Bytes>,
    /// A direct write left data in the transport's buffer (TLS) that a flush must push out.
    owes_flush: bool,
    /// The writer task has ended: nothing more is written.
    closed: bool,
}

/// What the senders and the writer task share.
struct Shared {
    io: Mutex<Io>,
    /// Data frames accepted and not yet written, a direct write's unwritten tail counted as
    /// one: a sender writes directly only while this is 0, so it never overtakes a frame
    /// queued before it.
    unwritten: AtomicUsize,
    /// Wakes the writer task for a direct write's tail (a permit is kept if it is busy).
    tail: Notify,
}

/// The sending side of a connection's writer (kept by the connection).
pub(crate) struct WriteQueue {
    tx: mpsc::Sender<OutFrame>,
    /// Control frames, written before queued data.
    ctl_tx: mpsc::Sender<OutFrame>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue")
            .field("unwritten", &self.shared.unwritten.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The writer task's side: run it with [`writer_task`].
pub(crate) struct Writer {
    rx: mpsc::Receiver<OutFrame>,
    ctl_rx: mpsc::Receiver<OutFrame>,
    shared: Arc<Shared>,
}

/// A writer for `wr`: `data` frames may be queued before senders wait, `control` control
/// frames before they are dropped.
pub(crate) fn writer(wr: WriteHalf, data: usize, control: usize) -> (WriteQueue, Writer) {
    let (tx, rx) = mpsc::channel(data);
    let (ctl_tx, ctl_rx) = mpsc::channel(control);
    let shared = Arc::new(Shared {
        io: Mutex::new(Io {
            wr,
            counters: Counters {
                sequence: 0,
                stream_id: 16,
            },
            rest: Vec::new(),
            owes_flush: false,
            closed: false,
        }),
        unwritten: AtomicUsize::new(0),
        tail: Notify::new(),
    });
    let q = WriteQueue {
        tx,
        ctl_tx,
        shared: Arc::clone(&shared),
    };
    (q, Writer { rx, ctl_rx, shared })
}

/// Counts a data frame as unwritten until it is queued; dropped unqueued (the send failed
/// or was cancelled), it takes the count back.
struct Unwritten<'a>(Option<&'a AtomicUsize>);

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.0 {
            n.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl WriteQueue {
    fn count(&self) -> Unwritten<'_> {
        self.shared.unwritten.fetch_add(1, Ordering::SeqCst);
        Unwritten(Some(&self.shared.unwritten))
    }

    /// Send a data frame: written at once if nothing is queued and the socket is free, else
    /// queued, waiting while the queue is full. Fails only if the connection is closed.
    pub async fn send(&self, f: OutFrame) -> Result<(), CellnetError> {
        let Some(f) = self.try_direct(f)? else {
            return Ok(());
        };
        let mut counted = self.count();
        self.tx.send(f).await.map_err(|_| closed())?;
        counted.0 = None;
        Ok(())
    }

    /// Send a data frame if that needs no waiting (written at once, or room in the queue).
    pub fn try_send(&self, f: OutFrame) -> Result<(), CellnetError> {
        let Some(f) = self.try_direct(f)? else {
            return Ok(());
        };
        let mut counted = self.count();
        self.tx.try_send(f).map_err(|_| closed())?;
        counted.0 = None;
        Ok(())
    }

    /// Send a data frame if that needs no waiting (written at once, or room in the queue);
    /// `Some(f)` back if the queue is full (the caller sends it with [`WriteQueue::send`]).
    pub fn offer(&self, f: OutFrame) -> Result<Option<OutFrame>, CellnetError> {
        let Some(f) = self.try_direct(f)? else {
            return Ok(None);
        };
        let mut counted = self.count();
        match self.tx.try_send(f) {
            Ok(()) => {
                counted.0 = None;
                Ok(None)
            }
            Err(mpsc::error::TrySendError::Full(f)) => Ok(Some(f)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
        }
    }

    /// Queue a control frame without waiting, ahead of queued data; `false` if the control
    /// queue is full (the frame is dropped).
    pub fn send_control(&self, f: OutFrame) -> Result<bool, CellnetError> {
        match self.ctl_tx.try_send(f) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
        }
    }

    /// Write `f` from the caller if no data frame is queued or being written and the socket
    /// is free; `Some(f)` back if it must be queued instead. Never waits: the socket is
    /// polled once, and what it does not take is left to the writer task (so a cancelled
    /// caller can never leave half a frame behind).
    fn try_direct(&self, f: OutFrame) -> Result<Option<OutFrame>, CellnetError> {
        let shared = &*self.shared;
        // a file region may take many writes: the writer task sends it
        if f.has_file() || shared.unwritten.load(Ordering::SeqCst) != 0 {
            return Ok(Some(f));
        }
        let Ok(mut io) = shared.io.try_lock() else {
            return Ok(Some(f));
        };
        if io.closed {
            return Err(closed());
        }
        // A frame counted after the first look was queued before us: it goes first. (The
        // writer task takes the lock before it writes and uncounts after, so nothing counted
        // can be in flight while we hold the lock with the count at 0.)
        if shared.unwritten.load(Ordering::SeqCst) != 0 {
            return Ok(Some(f));
        }
        let io = &mut *io;
        let (sid, seq) = io.counters.next(f.frame_type);
        let prefix = match f.prefix(sid, seq) {
            Ok(p) => p.to_bytes(),
            Err(e) => {
                // as the writer task does with such a frame
                error!("frame not sent: {e}");
                return Ok(None);
            }
        };
        let mut cx = Context::from_waker(Waker::noop());
        // on the stack: a frame written whole (the usual case) costs no allocation
        let (written, ok) = poll_write_frame(io.wr.as_mut(), &mut cx, &prefix, &f);
        let done = ok
            && written == f.wire_len()
            // written; a transport that buffers (TLS) may still owe a flush
            && matches!(
                Pin::new(&mut io.wr).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            );
        if !done {
            // the writer task finishes the frame, or meets the failure and handles it
            io.rest = frame_rest(&prefix, f, written);
            io.owes_flush = true;
            shared.unwritten.fetch_add(1, Ordering::SeqCst);
            shared.tail.notify_one();
        }
        Ok(None)
    }
}

/// Write the frame `f` behind `prefix` without waiting: as much as the writer takes now.
/// Returns the bytes written and false if the writer failed (or wrote nothing).
fn poll_write_frame(
    w: &mut dyn WriteStream,
    cx: &mut Context<'_>,
    prefix: &[u8],
    f: &OutFrame,
) -> (usize, bool) {
    let total = f.wire_len();
    let mut written = 0;
    while written < total {
        // A frame is mostly a prefix, a header block and a segment or two: their slices
        // fit a small array on the stack, where clearing MAX_IOV of them for each write
        // was half the cost of this function.
        let r = if 2 + f.payload.len() <= FEW_IOV {
            let mut slices = [IoSlice::new(&[]); FEW_IOV];
            let k = gather(&mut slices, prefix, f, written);
            Pin::new(&mut *w).poll_write_vectored(cx, &slices[..k])
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let k = gather(&mut slices, prefix, f, written);
            Pin::new(&mut *w).poll_write_vectored(cx, &slices[..k])
        };
        match r {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return (written, false),
            Poll::Ready(Ok(n)) => written += n,
            Poll::Pending => return (written, true),
        }
    }
    (written, true)
}

/// The slices of what is left of frame `f` (behind `prefix`) once `written` bytes of it are
/// on the wire, as many as `slices` holds; their number.
fn gather<'f>(
    slices: &mut [IoSlice<'f>],
    prefix: &'f [u8],
    f: &'f OutFrame,
    written: usize,
) -> usize {
    let mut k = 0;
    let mut skip = written;
    let parts = [prefix, &f.headers[..]].into_iter().chain(
        f.payload
            .iter()
            .filter_map(|s| s.as_bytes().map(|b| &b[..])),
    );
    for part in parts {
        if k == slices.len() {
            break;
        }
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        slices[k] = IoSlice::new(&part[skip..]);
        skip = 0;
        k += 1;
    }
    k
}

/// What is left of frame `f` (behind `prefix`) once `written` bytes of it are on the wire.
fn frame_rest(prefix: &[u8], f: OutFrame, written: usize) -> Vec<Bytes> {
    let mut rest = Vec::with_capacity(2 + f.payload.len());
    let mut skip = written;
    if skip < prefix.len() {
        rest.push(Bytes::copy_from_slice(&prefix[skip..]));
        skip = 0;
    } else {
        skip -= prefix.len();
    }
    let parts = std::iter::once(f.headers).chain(f.payload.into_iter().filter_map(|s| match s {
        Segment::Bytes(b) => Some(b),
        Segment::File(_) => None, // never here: frames with file regions go to the writer task
    }));
    for mut b in parts {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        b.advance(skip);
        skip = 0;
        rest.push(b);
    }
    rest
}

fn closed() -> CellnetError {
    CellnetError::ConnectionClosed("the connection is closed".into())
}

/// The next queued frame, control frames first; `true` for a data frame.
fn try_next(
    ctl_rx: &mut mpsc::Receiver<OutFrame>,
    rx: &mut mpsc::Receiver<OutFrame>,
) -> Option<(OutFrame, bool)> {
    ctl_rx
        .try_recv()
        .map(|f| (f, false))
        .or_else(|_| rx.try_recv().map(|f| (f, true)))
        .ok()
}

/// Write queued frames until the connection closes (what is queued is flushed first, unless
/// the peer stopped reading).
///
/// A write that fails (the peer reset or closed the connection) cancels `broken`, not
/// `close`: what the peer sent before it went may still be unread in the socket (a cancel or
/// confirm followed by the peer's close), and the reader reads it before closing. A peer that
/// stops reading for `send_timeout` is closed at once.
pub(crate) async fn writer_task(
    w: Writer,
    close: CancellationToken,
    broken: CancellationToken,
    send_timeout: Duration,
) {
    let Writer {
        mut rx,
        mut ctl_rx,
        shared,
    } = w;
    let mut ctl_open = true;
    loop {
        let mut closing = false;
        // control frames (PONG, ACK, ERROR, RETURN) go first: they are small and a peer's
        // stream window may be waiting for them
        let first = tokio::select! {
            biased;
            // the tail of a direct write: nothing may be written before it
            _ = shared.tail.notified() => None,
            f = ctl_rx.recv(), if ctl_open => match f {
                Some(f) => Some((f, false)),
                None => {
                    ctl_open = false;
                    continue;
                }
            },
            f = rx.recv() => match f {
                Some(f) => Some((f, true)),
                None => break,
            },
            _ = close.cancelled() => {
                closing = true;
                None
            }
        };
        // data frames in the batch (uncounted once written); control frames are not counted
        let mut data = 0;
        let mut batch: Vec<OutFrame> = Vec::new();
        let mut next = first.or_else(|| try_next(&mut ctl_rx, &mut rx));
        while let Some((f, is_data)) = next.take() {
            data += usize::from(is_data);
            batch.push(f);
            if closing || batch.len() < WRITE_BATCH {
                next = try_next(&mut ctl_rx, &mut rx);
            }
        }
        let mut io = shared.io.lock().await;
        let tail = usize::from(io.owes_flush);
        if !batch.is_empty() || tail > 0 {
            let r = write_batch(&mut io, batch, send_timeout).await;
            // uncounted under the lock: a direct write sees 0 only once these are written
            shared.unwritten.fetch_sub(data + tail, Ordering::SeqCst);
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    // Dropping what is queued returns the chunks' byte budget at once, long
                    // before the peer's requests time out.
                    warn!(
                        "the peer read nothing for {send_timeout:?} (Limits::send_timeout); closing the connection and dropping what was queued for it"
                    );
                    close.cancel();
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // a frame whose length lies is on the wire: nothing can follow it
                    warn!("a frame could not be sent whole: {e}; closing the connection (the peer sees it drop and may retry)");
                    close.cancel();
                    break;
                }
                Err(e) => {
                    debug!("write failed: {e}; reading what the peer sent before it went");
                    broken.cancel();
                    break;
                }
            }
        }
        drop(io);
        if closing {
            break;
        }
    }
    rx.close();
    ctl_rx.close();
    let mut io = shared.io.lock().await;
    io.closed = true;
    io.rest.clear();
    let _ = tokio::time::timeout(Duration::from_secs(1), io.wr.shutdown()).await;
}

mod segments;

use segments::stalled;
pub(crate) use segments::write_all_segments;

#[cfg(test)]
mod file_tests;
#[cfg(test)]
mod tests;
