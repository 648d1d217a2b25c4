//! The one error type of this crate.

use crate::frame::FrameError;
use crate::return_code::ReturnCode;

/// Everything that can go wrong in ferry-cellnet.
///
/// Errors that concern one message map to an NVFlare [`ReturnCode`] through
/// [`CellnetError::return_code`], which is what a requester sees in the reply.
#[derive(Debug, thiserror::Error)]
pub enum CellnetError {
    /// A string is not a valid FQCN (NVFlare's rules, see [`crate::Fqcn`]).
    #[error("invalid FQCN {fqcn:?}: {reason}")]
    InvalidFqcn {
        /// The rejected string.
        fqcn: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A URL is not `tcp://HOST:PORT`, `stcp://HOST:PORT` or `inproc://NAME`.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The rejected URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A frame violated the framing rules (the connection is closed for fatal ones).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Header map bytes could not be decoded or encoded.
    #[error("bad headers: {0}")]
    Headers(String),
    /// A payload (FOBS container or msgpack body) could not be decoded or encoded.
    #[error("bad payload: {0}")]
    Payload(String),
    /// The HELLO/READY handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// TLS setup or handshake failed, the peer refused our certificate (its alert arrives on
    /// the first read after the handshake), or the peer certificate does not match its FQCN.
    #[error("tls: {0}")]
    Tls(String),
    /// A socket operation failed. I/O errors that carry a TLS error (tokio-rustls wraps
    /// `rustls::Error`s in `std::io::Error`) become [`CellnetError::Tls`] instead (see the
    /// `From<std::io::Error>` impl).
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),
    /// The connection to the peer is gone (closed, reset or evicted).
    #[error("connection closed: {0}")]
    ConnectionClosed(String),
    /// No connection leads to the target.
    #[error("no route to {0}")]
    NoRoute(String),
    /// The message is larger than the configured maximum.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooBig {
        /// Encoded size.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// A configured limit refused the operation (connections, streams, in-flight requests).
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The cell has been shut down.
    #[error("cell is shut down")]
    Shutdown,
    /// A byte stream (`sm__*`) failed or was aborted.
    #[error("stream error: {0}")]
    Stream(String),
}

impl From<std::io::Error> for CellnetError {
    /// `Io`, unless the error carries a `rustls::Error` (a bad or unknown certificate, a
    /// wrong CA, the peer's alert, ...): then `Tls`, so callers can tell "TLS refused" from
    /// "socket failed" whichever step of the connection met it.
    fn from(e: std::io::Error) -> Self {
        #[cfg(feature = "tls")]
        if let Some(why) = crate::driver::tls::describe_tls_io(&e) {
            return CellnetError::Tls(why);
        }
        CellnetError::Io(e)
    }
}

impl CellnetError {
    /// The NVFlare return code a requester sees for this error.
    pub fn return_code(&self) -> ReturnCode {
        match self {
            CellnetError::InvalidFqcn { .. } => ReturnCode::InvalidTarget,
            CellnetError::NoRoute(_) => ReturnCode::TargetUnreachable,
            CellnetError::MessageTooBig { .. } => ReturnCode::MsgTooBig,
            CellnetError::Timeout(_) => ReturnCode::Timeout,
            CellnetError::LimitReached(_) => ReturnCode::ServiceUnavailable,
            CellnetError::Headers(_) | CellnetError::Payload(_) => ReturnCode::InvalidRequest,
            _ => ReturnCode::CommError,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = CellnetError> = std::result::Result<T, E>;
