//! The one error type of this crate.

use crate::frame::FrameError;
use crate::return_code::ReturnCode;

/// Everything that can go wrong in ferry-cellnet.
///
/// Errors that concern one message map to an NVFlare [`ReturnCode`] through
/// [`CellnetError::return_code`], which is what a requester sees in the reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The peer refused the connection during the handshake and said why (its READY carried
    /// a refusal: the name is held by a live connection, the certificate is for another name).
    #[error("the peer refused the connection: {0}")]
    Refused(String),
    /// Under TLS, the peer's certificate names another cell than the FQCN it claims in its
    /// HELLO/READY (the CN must be the FQCN's first segment).
    #[error("authenticated as {certificate:?} but claimed endpoint {claimed:?}: a peer's certificate CN must be the first segment of the cell name it uses")]
    PeerIdentity {
        /// The CN of the peer's certificate.
        certificate: String,
        /// The FQCN the peer claimed.
        claimed: String,
    },
    /// This cell's own certificate is for another name than the cell's FQCN: every peer would
    /// refuse it, so the cell refuses to listen or connect with it.
    #[error("this cell is named {fqcn:?} but its TLS certificate is for {certificate:?}: the certificate CN must be the first segment of the cell name; use the certificate issued for {root:?} or name the cell after the certificate")]
    OwnIdentity {
        /// The CN of this cell's certificate.
        certificate: String,
        /// This cell's FQCN.
        fqcn: String,
        /// The FQCN's first segment (what the CN should be).
        root: String,
    },
    /// A TLS file is unusable: not PEM, no certificate or key in it, an X.509 v1 certificate,
    /// a certificate without a common name.
    #[error("{file} {path}: {problem}")]
    Certificate {
        /// Which of the three files.
        file: TlsFile,
        /// Its path (`<memory>` when loaded from bytes).
        path: String,
        /// What is wrong and what to do.
        problem: String,
    },
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
    /// The peer refused the connection because it is busy (its READY said so: too many
    /// connections from our address, or in all). Trying again later may work.
    #[error("the peer is busy and refused the connection: {0}")]
    Busy(String),
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
        if let Some(why) = describe_tls_io(&e) {
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
            CellnetError::LimitReached(_) | CellnetError::Busy(_) => ReturnCode::ServiceUnavailable,
            CellnetError::Headers(_) | CellnetError::Payload(_) => ReturnCode::InvalidRequest,
            CellnetError::PeerIdentity { .. } | CellnetError::OwnIdentity { .. } => {
                ReturnCode::AuthenticationError
            }
            _ => ReturnCode::CommError,
        }
    }
}

/// The TLS error carried by an I/O error, in words, if it carries one. tokio-rustls reports
/// every rustls failure (certificate refused by us, the peer's alert, a malformed record) as
/// `std::io::Error` wrapping a `rustls::Error`. A received alert that concerns certificates
/// means the peer refused ours: with TLS 1.3 the client's handshake is over before the
/// server has checked the client certificate, so the client meets that refusal as an alert
/// on its first read. `decrypt_error` counts too: rustls sends it for a certificate whose
/// signature does not verify (signed by a look-alike CA with the same name).
#[cfg(feature = "tls")]
pub(crate) fn describe_tls_io(e: &std::io::Error) -> Option<String> {
    use rustls::AlertDescription as A;
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::CertificateRequired
            | A::AccessDenied
            | A::DecryptError),
        ) => format!("the peer refused our TLS certificate (alert {alert:?})"),
        rustls::Error::AlertReceived(alert) => {
            format!("the peer ended the TLS session (alert {alert:?})")
        }
        other => other.to_string(),
    })
}

/// The three files of a TLS configuration, to say which one a problem is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFile {
    /// The root CA certificate(s) that peers' certificates must be signed by.
    Ca,
    /// This cell's certificate (chain), leaf first.
    Cert,
    /// This cell's private key.
    Key,
}

impl std::fmt::Display for TlsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsFile::Ca => "CA certificate",
            TlsFile::Cert => "certificate",
            TlsFile::Key => "private key",
        })
    }
}

/// Result alias of this crate.
pub type Result<T, E = CellnetError> = std::result::Result<T, E>;
