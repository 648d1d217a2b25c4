//! Writing a frame's segments to a stream: runs of bytes with vectored writes, file regions
//! with the transport's `sendfile` or read in pieces, every write bounded by the stall timeout.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;

use super::MAX_IOV;
use crate::driver::WriteStream;
use crate::segment::{read_exact_at, shrank, FileRegion, Segment};

/// Write all segments, runs of bytes with vectored writes, advancing over partial writes;
/// file regions with the transport's `sendfile` or, where it has none, read in pieces and
/// written. Each write must make progress within `stall`: a peer that stops reading fails
/// the write with `TimedOut` after `stall`, however much is queued, while a slow peer that
/// keeps reading never does. A file that no longer holds a region fails with
/// `UnexpectedEof` (the frame on the wire is then short: the connection must be closed).
pub(crate) async fn write_all_segments(
    w: &mut dyn WriteStream,
    segs: &mut [Segment],
    stall: Duration,
) -> std::io::Result<()> {
    let mut i = 0;
    while i < segs.len() {
        match &mut segs[i] {
            Segment::Bytes(b) if b.is_empty() => {
                i += 1;
                continue;
            }
            Segment::Bytes(_) => {}
            Segment::File(r) => {
                write_region(w, r, stall).await?;
                i += 1;
                continue;
            }
        }
        let n = {
            // on the stack: a large batch takes many partial writes, none of them allocates
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            // the run of bytes ends at a file region, which the transport sends from the file
            let mut before_file = false;
            for s in &segs[i..] {
                let Segment::Bytes(b) = s else {
                    before_file = w.sends_files();
                    break;
                };
                if k == MAX_IOV {
                    break;
                }
                if !b.is_empty() {
                    slices[k] = IoSlice::new(b);
                    k += 1;
                }
            }
            if before_file {
                let slices = &slices[..k];
                stalled(
                    stall,
                    std::future::poll_fn(|cx| {
                        Pin::new(&mut *w).poll_write_vectored_before_file(cx, slices)
                    }),
                )
                .await?
            } else {
                stalled(stall, w.write_vectored(&slices[..k])).await?
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        while n > 0 && i < segs.len() {
            let Segment::Bytes(b) = &mut segs[i] else {
                break;
            };
            let l = b.len();
            if n >= l {
                n -= l;
                i += 1;
            } else {
                b.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Bytes of a file region read into memory at a time where the transport cannot send from
/// the file (TLS encrypts in user space anyway).
pub(super) const COPY_CHUNK: usize = 256 * 1024;

/// Write the file region `r`, advancing it over what is written.
async fn write_region(
    w: &mut dyn WriteStream,
    r: &mut FileRegion,
    stall: Duration,
) -> std::io::Result<()> {
    if w.sends_files() {
        while !r.is_empty() {
            let (file, offset, len) = (r.file(), r.offset(), r.len());
            let n = stalled(
                stall,
                std::future::poll_fn(|cx| Pin::new(&mut *w).poll_send_file(cx, file, offset, len)),
            )
            .await?;
            if n == 0 {
                return Err(shrank(std::io::ErrorKind::UnexpectedEof.into()));
            }
            r.advance(n);
        }
        return Ok(());
    }
    while !r.is_empty() {
        let want = r.len().min(COPY_CHUNK);
        let (file, offset) = (Arc::clone(r.file()), r.offset());
        // a cold page cache blocks the read: off the runtime's threads
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            read_exact_at(&file, &mut buf, offset).map(|()| Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        let mut one = [Segment::Bytes(chunk)];
        write_bytes(w, &mut one, stall).await?;
        r.advance(want);
    }
    Ok(())
}

/// Write a run of byte segments (no file regions) with vectored writes.
async fn write_bytes(
    w: &mut dyn WriteStream,
    segs: &mut [Segment],
    stall: Duration,
) -> std::io::Result<()> {
    debug_assert!(segs.iter().all(|s| s.as_bytes().is_some()));
    Box::pin(write_all_segments(w, segs, stall)).await
}

/// `op`, failed with `TimedOut` if it does not complete within `stall`.
pub(super) async fn stalled<T>(
    stall: Duration,
    op: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(stall, op)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
