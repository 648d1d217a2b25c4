//! Transport drivers: they turn a URL into byte streams (TCP, mutual TLS over TCP, or an
//! in-process pipe). Framing and the protocol above are the same for all of them.

pub(crate) mod inproc;
pub(crate) mod tcp;
#[cfg(feature = "tls")]
pub mod tls;

use std::fs::File;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::CellnetError;

/// The read half of a connection.
pub(crate) type ReadHalf = Box<dyn ReadStream>;
/// The write half of a connection.
pub(crate) type WriteHalf = Box<dyn WriteStream>;

/// The write half of a transport, which may also send straight from a file.
pub(crate) trait WriteStream: AsyncWrite + Send + Unpin {
    /// True if [`WriteStream::poll_send_file`] puts file bytes on the wire without copying
    /// them through user space; otherwise the writer reads them and writes them.
    fn sends_files(&self) -> bool {
        false
    }

    /// Write up to `len` bytes of `file` from `offset` (only called when
    /// [`WriteStream::sends_files`]); `Ok(0)` if the file holds nothing at `offset`.
    fn poll_send_file(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _file: &File,
        _offset: u64,
        _len: usize,
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(std::io::ErrorKind::Unsupported.into()))
    }

    /// A vectored write of bytes that a file region follows at once (a frame's head before
    /// its file payload). A transport that sends files may hold them back until the region's
    /// bytes join them, so the head does not leave as a small packet of its own.
    fn poll_write_vectored_before_file(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, bufs)
    }
}

/// The read half of a transport, which may also be told how many bytes the reader needs
/// before it can make progress.
pub(crate) trait ReadStream: AsyncRead + Send + Unpin {
    /// The reader can do nothing with fewer than `n` more bytes (the rest of a large frame's
    /// body): a transport that can defer its readiness until then does so, so that the
    /// reader is not woken for every segment; `1` restores the usual readiness. `n` counts
    /// bytes on the wire, so only a transport whose wire bytes are the reader's bytes (plain
    /// TCP) may act on it; the others ignore it. End of stream and errors wake the reader
    /// whatever `n` is.
    fn wake_at(&mut self, _n: usize) {}

    /// Bytes that arrived and wait to be read, if the transport defers its readiness and can
    /// tell; `None` otherwise. The reader asks before it declares a frame stalled: bytes that
    /// trickle in below the threshold of [`ReadStream::wake_at`] do not wake it.
    fn queued(&self) -> Option<usize> {
        None
    }
}

/// TLS and in-process pipes: readiness as usual. (Under TLS the record layer and rustls's own
/// buffer make the socket's bytes differ from the frame's, so a threshold could wait for
/// bytes that rustls already read: a frame that ends exactly would not be delivered.)
impl<T: AsyncRead + Send> ReadStream for tokio::io::ReadHalf<T> {}

/// Pipes and in-memory bytes in tests.
impl ReadStream for tokio::io::DuplexStream {}
#[cfg(test)]
impl ReadStream for std::io::Cursor<Vec<u8>> {}

/// TLS and in-process pipes: file regions are read and written.
impl<T: AsyncRead + AsyncWrite + Send> WriteStream for tokio::io::WriteHalf<T> {}

/// An established byte stream, split, plus what the transport knows about the peer.
pub(crate) struct Transport {
    pub rd: ReadHalf,
    pub wr: WriteHalf,
    /// The peer's address, for logs.
    pub peer_addr: String,
    /// Under TLS: the CN of the peer's certificate, which the first segment of the name the
    /// peer claims (HELLO on the accepting side, READY on the connecting side) must equal.
    pub peer_cn: Option<String>,
}

/// A parsed cell URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Url {
    /// `tcp://HOST:PORT`
    Tcp(String),
    /// `stcp://HOST:PORT` (mutual TLS)
    Stcp(String),
    /// `inproc://NAME` (in-process pipe, for tests)
    Inproc(String),
}

impl Url {
    /// Parse `tcp://HOST:PORT`, `stcp://HOST:PORT` or `inproc://NAME`.
    pub fn parse(url: &str) -> Result<Url, CellnetError> {
        let bad = |reason: &str| CellnetError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("missing scheme://"))?;
        if rest.is_empty() {
            return Err(bad("missing address"));
        }
        let host_port = |rest: &str| -> Result<String, CellnetError> {
            let rest = rest.trim_end_matches('/');
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected HOST:PORT"))?;
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            port.parse::<u16>().map_err(|_| bad("bad port"))?;
            Ok(rest.to_string())
        };
        match scheme {
            "tcp" => Ok(Url::Tcp(host_port(rest)?)),
            "stcp" => Ok(Url::Stcp(host_port(rest)?)),
            "inproc" => Ok(Url::Inproc(rest.to_string())),
            other => Err(bad(&format!("unsupported scheme {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Url::parse("tcp://127.0.0.1:0").unwrap(),
            Url::Tcp("127.0.0.1:0".into())
        );
        assert_eq!(
            Url::parse("stcp://localhost:8002").unwrap(),
            Url::Stcp("localhost:8002".into())
        );
        assert_eq!(
            Url::parse("tcp://[::1]:80").unwrap(),
            Url::Tcp("[::1]:80".into())
        );
        assert_eq!(
            Url::parse("tcp://h:8002/").unwrap(),
            Url::Tcp("h:8002".into())
        );
        assert_eq!(Url::parse("inproc://x").unwrap(), Url::Inproc("x".into()));
        for bad in [
            "",
            "tcp://",
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "http://h:1",
            "h:1",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
