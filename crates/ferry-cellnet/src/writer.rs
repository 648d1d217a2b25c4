//! The writer half of a connection: frames queued by the cell are written with vectored I/O,
//! control frames first, in batches; a peer that stops reading is dropped after
//! `Limits::send_timeout` without progress (f3-wire.md §1.1, §1.2).

use std::io::IoSlice;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::driver::WriteHalf;
use crate::frame::{FrameType, OutFrame, PREFIX_LEN};

/// Frames written with one vectored write at most.
const WRITE_BATCH: usize = 32;
/// Buffers handed to one vectored write at most (a batch with more takes several writes).
const MAX_IOV: usize = 64;

/// Write all buffers with vectored writes, advancing over partial writes. Each write must
/// make progress within `stall`: a peer that stops reading fails the write with `TimedOut`
/// after `stall`, however much is queued, while a slow peer that keeps reading never does.
pub(crate) async fn write_all_vectored<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    bufs: &mut [Bytes],
    stall: Duration,
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
            stalled(stall, w.write_vectored(&slices[..k])).await?
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

async fn write_batch(
    wr: &mut WriteHalf,
    batch: Vec<OutFrame>,
    counters: &mut Counters,
    stall: Duration,
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
    write_all_vectored(wr.as_mut(), &mut bufs, stall).await?;
    stalled(stall, wr.flush()).await
}

/// `op`, failed with `TimedOut` if it does not complete within `stall`.
async fn stalled<T>(
    stall: Duration,
    op: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(stall, op)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Write queued frames until the connection closes (what is queued is flushed first, unless
/// the peer stopped reading).
///
/// A write that fails (the peer reset or closed the connection) cancels `broken`, not
/// `close`: what the peer sent before it went may still be unread in the socket (a cancel or
/// confirm followed by the peer's close), and the reader reads it before closing. A peer that
/// stops reading for `send_timeout` is closed at once.
pub(crate) async fn writer_task(
    mut wr: WriteHalf,
    mut rx: mpsc::Receiver<OutFrame>,
    mut ctl_rx: mpsc::Receiver<OutFrame>,
    close: CancellationToken,
    broken: CancellationToken,
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
            match write_batch(&mut wr, batch, &mut counters, send_timeout).await {
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
                Err(e) => {
                    debug!("write failed: {e}; reading what the peer sent before it went");
                    broken.cancel();
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

#[cfg(test)]
mod tests {
    use super::*;

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
        write_all_vectored(&mut w, &mut bufs, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(w.0, want);
    }

    /// Accepts the first `n` bytes, then never again (a peer that stopped reading).
    struct Stuck(usize);

    impl AsyncWrite for Stuck {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.0 == 0 {
                return std::task::Poll::Pending;
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            std::task::Poll::Ready(Ok(n))
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

    /// The stall bound counts from the last progress, not from the start of the batch.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_stops_making_progress_fails_after_the_stall_bound() {
        let mut bufs = vec![Bytes::from(vec![1u8; 100])];
        let mut w = Stuck(60);
        let t0 = tokio::time::Instant::now();
        let e = write_all_vectored(&mut w, &mut bufs, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        assert_eq!(bufs[0].len(), 40, "the 60 bytes written stay written");
    }
}
