//! Plain TCP (tokio, TCP_NODELAY on, as NVFlare). File regions go out with `sendfile(2)`
//! on Linux: the kernel copies from the page cache to the socket, the sender's CPU never
//! touches the bytes.

use std::fs::File;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

use super::{Transport, WriteStream};
use crate::error::CellnetError;

/// Bind a listener; returns it and the bound `HOST:PORT` (port 0 resolved).
pub(crate) async fn bind(addr: &str) -> Result<(TcpListener, std::net::SocketAddr), CellnetError> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Connect with TCP_NODELAY.
pub(crate) async fn connect(addr: &str) -> Result<TcpStream, CellnetError> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Wrap an established socket.
pub(crate) fn transport(s: TcpStream) -> Transport {
    let _ = s.set_nodelay(true);
    let peer_addr = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let (rd, wr) = s.into_split();
    Transport {
        rd: Box::new(rd),
        wr: Box::new(TcpWrite(wr)),
        peer_addr,
        peer_cn: None,
    }
}

/// The write half of a TCP socket, which sends file regions with `sendfile(2)`.
pub(crate) struct TcpWrite(pub(crate) OwnedWriteHalf);

impl AsyncWrite for TcpWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Bytes one `sendfile(2)` call is asked for at most (Linux sends at most 0x7ffff000; the
/// socket buffer bounds what one call on a non-blocking socket really takes).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SENDFILE_MAX: usize = 0x7fff_f000;

#[cfg(any(target_os = "linux", target_os = "android"))]
impl WriteStream for TcpWrite {
    fn sends_files(&self) -> bool {
        true
    }

    fn poll_send_file(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        len: usize,
    ) -> Poll<std::io::Result<usize>> {
        let s: &TcpStream = self.0.as_ref();
        loop {
            std::task::ready!(s.poll_write_ready(cx))?;
            // the readiness is cleared when the socket's buffer is full (WouldBlock), and the
            // loop waits for the next write readiness
            let mut at = offset;
            match s.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::fs::sendfile(s, file, Some(&mut at), len.min(SENDFILE_MAX))
                    .map_err(std::io::Error::from)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    /// `sendmsg(MSG_MORE)`: the kernel holds the bytes (a frame's head) until the
    /// `sendfile(2)` that follows appends the region's, and they leave together. Sent alone
    /// under TCP_NODELAY, the head was one small packet per chunk, and one more wakeup of the
    /// receiver, which read it and waited for the body.
    fn poll_write_vectored_before_file(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        use rustix::net::{SendAncillaryBuffer, SendFlags};
        let s: &TcpStream = self.0.as_ref();
        loop {
            std::task::ready!(s.poll_write_ready(cx))?;
            match s.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::net::sendmsg(
                    s,
                    bufs,
                    &mut SendAncillaryBuffer::default(),
                    SendFlags::MORE | SendFlags::NOSIGNAL,
                )
                .map_err(std::io::Error::from)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

/// Elsewhere file regions are read and written like on TLS.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl WriteStream for TcpWrite {}
