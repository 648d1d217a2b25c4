//! Plain TCP (tokio, TCP_NODELAY on, as NVFlare). File regions go out with `sendfile(2)`
//! on Linux: the kernel copies from the page cache to the socket, the sender's CPU never
//! touches the bytes. While a large frame's body arrives, the read half asks the kernel
//! (`SO_RCVLOWAT`) not to wake the reader before the bytes it needs are there.

use std::fs::File;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::{ReadStream, Transport, WriteStream};
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
        rd: Box::new(TcpRead { rd, lowat: 1 }),
        wr: Box::new(TcpWrite(wr)),
        peer_addr,
        peer_cn: None,
    }
}

/// The largest receive low-water mark set. Above it the reader is woken more than once per
/// frame, but the socket's receive buffer is never asked to hold more than this before the
/// reader drains it (the kernel caps the mark at half the buffer's limit and grows the buffer
/// to fit; at this size the autotuned buffer of a fast connection already holds it).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const LOWAT_MAX: usize = 512 * 1024;

/// The read half of a TCP socket, which defers its readiness until the bytes the reader
/// needs arrived ([`ReadStream::wake_at`]).
pub(crate) struct TcpRead {
    rd: OwnedReadHalf,
    /// The socket's receive low-water mark as last set (1 = the kernel's default: every
    /// byte wakes the reader). Kept to make a system call only when it changes. (Set only on
    /// Linux.)
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    lowat: usize,
}

impl AsyncRead for TcpRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl ReadStream for TcpRead {
    /// `SO_RCVLOWAT` = `n` (at most [`LOWAT_MAX`]): the socket becomes readable when `n`
    /// bytes are queued, or at end of stream, a reset or an error, which wake it whatever the
    /// mark. A read still returns what is there. Setting the mark re-checks the queue and
    /// wakes the reader at once if it is already met. Best effort: where it cannot be set, the
    /// reader is woken as before.
    fn wake_at(&mut self, n: usize) {
        let n = n.clamp(1, LOWAT_MAX);
        if n == self.lowat {
            return;
        }
        let s: &TcpStream = self.rd.as_ref();
        if lowat::set(s, n).is_ok() {
            self.lowat = n;
        }
    }

    /// `FIONREAD`: the bytes in the receive queue, while a mark above 1 may hide them.
    fn queued(&self) -> Option<usize> {
        if self.lowat <= 1 {
            return None;
        }
        let s: &TcpStream = self.rd.as_ref();
        rustix::io::ioctl_fionread(s)
            .ok()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Elsewhere the mark's effect on readiness differs between systems: readiness as usual.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl ReadStream for TcpRead {}

/// Setting `SO_RCVLOWAT`, which neither rustix, socket2 nor nix offers.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod lowat {
    use std::os::fd::{AsFd, AsRawFd};

    /// Set the socket's receive low-water mark to `n` bytes.
    pub(super) fn set(s: &impl AsFd, n: usize) -> std::io::Result<()> {
        let n = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
        let fd = s.as_fd();
        // SAFETY: `fd` is borrowed from a socket the caller holds open for the duration of
        // the call; the option value is a live `c_int` on this stack frame, passed with its
        // exact size, which the kernel only reads. SO_RCVLOWAT changes when the socket
        // reports readiness, nothing about memory.
        #[allow(unsafe_code)]
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                std::ptr::from_ref(&n).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
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
