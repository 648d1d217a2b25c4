//! Mutual TLS (rustls, ring provider) around the same F3 byte stream (f3-wire.md §6.1).
//!
//! Both sides present a certificate signed by the project's root CA and verify the peer's
//! chain against it. Host names are **not** checked (as NVFlare). On both sides the peer
//! certificate's common name must equal the first segment of the FQCN the peer claims in its
//! HELLO (accepting side) or READY (connecting side); the cell checks that in the F3
//! handshake, and checks its own certificate against its own name before it listens or
//! connects.
//!
//! Layout: `config` ([`TlsConfig`]: PEM files, the rustls acceptor and connector), `verify`
//! (the server-certificate verifier that checks the CA but not the host name), `der` (the
//! certificate's CN and X.509 version, read from its DER); this file runs the TLS handshakes.

mod config;
mod der;
mod verify;

use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use rustls::pki_types::{CertificateDer, ServerName};

use super::Transport;
use crate::error::{describe_tls_io, CellnetError};
use config::tls_err;

pub use config::TlsConfig;
pub use der::common_name;

/// A failed TLS handshake: the rustls error inside the I/O error when there is one (see
/// `describe_tls_io`), else the I/O error itself (reset or closed mid-handshake); `Tls`
/// either way, since the connection failed at the TLS step.
fn handshake_err(e: std::io::Error) -> CellnetError {
    CellnetError::Tls(describe_tls_io(&e).unwrap_or_else(|| format!("handshake: {e}")))
}

/// TLS handshake on an accepted socket; returns the transport with the client's CN.
pub(crate) async fn accept(
    acceptor: &TlsAcceptor,
    s: TcpStream,
) -> Result<Transport, CellnetError> {
    let _ = s.set_nodelay(true);
    let peer_addr = peer_addr(&s);
    let tls = acceptor.accept(s).await.map_err(handshake_err)?;
    let peer_cn = peer_cn(
        tls.get_ref().1.peer_certificates(),
        "client certificate has no CN",
    )?;
    Ok(transport(tls, peer_addr, peer_cn))
}

/// TLS handshake on a connected socket.
pub(crate) async fn connect(
    connector: &TlsConnector,
    host: &str,
    s: TcpStream,
) -> Result<Transport, CellnetError> {
    let peer_addr = peer_addr(&s);
    // Any syntactically valid name works: the verifier does not check it.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
        ServerName::try_from("ferry.invalid".to_string()).expect("valid DNS name")
    });
    let tls = connector.connect(name, s).await.map_err(handshake_err)?;
    let peer_cn = peer_cn(
        tls.get_ref().1.peer_certificates(),
        "the peer's certificate has no CN",
    )?;
    Ok(transport(tls, peer_addr, peer_cn))
}

/// The socket's peer address for logs (`?` when the socket cannot tell).
fn peer_addr(s: &TcpStream) -> String {
    s.peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The CN of the peer's leaf certificate, if it presented one; `missing` is the error when
/// the certificate has none.
fn peer_cn(
    certs: Option<&[CertificateDer<'_>]>,
    missing: &str,
) -> Result<Option<String>, CellnetError> {
    certs
        .and_then(|c| c.first())
        .map(|c| common_name(c).ok_or_else(|| tls_err(missing)))
        .transpose()
}

/// The established TLS stream, split into the transport's halves.
fn transport<S>(tls: S, peer_addr: String, peer_cn: Option<String>) -> Transport
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(tls);
    Transport {
        rd: Box::new(rd),
        wr: Box::new(wr),
        peer_addr,
        peer_cn,
    }
}

#[cfg(test)]
mod tests;
