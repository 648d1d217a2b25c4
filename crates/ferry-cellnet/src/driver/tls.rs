//! Mutual TLS (rustls, ring provider) around the same F3 byte stream (f3-wire.md §6.1).
//!
//! Both sides present a certificate signed by the project's root CA and verify the peer's
//! chain against it. Host names are **not** checked (as NVFlare). On both sides the peer
//! certificate's common name must equal the first segment of the FQCN the peer claims in its
//! HELLO (accepting side) or READY (connecting side); the cell checks that in the F3
//! handshake, and checks its own certificate against its own name before it listens or
//! connects.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::Transport;
use crate::error::{CellnetError, TlsFile};
use crate::fqcn::Fqcn;

/// Certificates and key of a cell for `stcp://` URLs.
///
/// ```no_run
/// # fn main() -> Result<(), ferry_cellnet::CellnetError> {
/// use ferry_cellnet::{Cell, TlsConfig};
/// let tls = TlsConfig::from_pem_files("rootCA.pem", "site-1.crt", "site-1.key")?;
/// let cell = Cell::builder("site-1")?.tls(tls).build();
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TlsConfig {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    // PrivateKeyDer is not Clone; keep one copy behind an Arc.
    key: Arc<PrivateKeyDer<'static>>,
    /// false = server-only TLS (NVFlare's `connection_security: tls`).
    require_client_cert: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> CellnetError {
    CellnetError::Tls(e.to_string())
}

/// A failed TLS handshake: the rustls error inside the I/O error when there is one (see
/// [`describe_tls_io`]), else the I/O error itself (reset or closed mid-handshake); `Tls`
/// either way, since the connection failed at the TLS step.
fn handshake_err(e: std::io::Error) -> CellnetError {
    CellnetError::Tls(describe_tls_io(&e).unwrap_or_else(|| format!("handshake: {e}")))
}

/// The TLS error carried by an I/O error, in words, if it carries one. tokio-rustls reports
/// every rustls failure (certificate refused by us, the peer's alert, a malformed record) as
/// `std::io::Error` wrapping a `rustls::Error`. A received alert that concerns certificates
/// means the peer refused ours: with TLS 1.3 the client's handshake is over before the
/// server has checked the client certificate, so the client meets that refusal as an alert
/// on its first read. `decrypt_error` counts too: rustls sends it for a certificate whose
/// signature does not verify (signed by a look-alike CA with the same name).
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

/// What a PEM file that holds nothing usable most likely is, for the error message.
fn not_pem_hint(pem: &[u8]) -> &'static str {
    if pem.starts_with(&[0x30, 0x82]) || pem.starts_with(&[0x30, 0x81]) {
        "it looks like DER (binary); convert it with `openssl x509 -in FILE -inform der -out FILE.pem` (keys: `openssl pkey -inform der`)"
    } else if pem.windows(11).any(|w| w == b"-----BEGIN ") {
        "it holds PEM blocks, but not of the kind expected here"
    } else {
        "it is not a PEM file (text starting with -----BEGIN ...-----)"
    }
}

fn file_err(file: TlsFile, path: &str, problem: impl Into<String>) -> CellnetError {
    CellnetError::Certificate {
        file,
        path: path.to_string(),
        problem: problem.into(),
    }
}

/// The certificates of a PEM file, at least one.
fn pem_certs(
    file: TlsFile,
    path: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, CellnetError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(file, path, format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(
            file,
            path,
            format!("no certificate in it: {}", not_pem_hint(pem)),
        ));
    }
    Ok(certs)
}

impl TlsConfig {
    /// From PEM bytes: the root CA certificate(s), this cell's certificate chain (leaf first)
    /// and its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CellnetError> {
        Self::from_pem_named(
            ("<memory>", ca_pem),
            ("<memory>", cert_pem),
            ("<memory>", key_pem),
        )
    }

    /// [`TlsConfig::from_pem`] with the file names to put in error messages.
    fn from_pem_named(
        (ca_path, ca_pem): (&str, &[u8]),
        (cert_path, cert_pem): (&str, &[u8]),
        (key_path, key_pem): (&str, &[u8]),
    ) -> Result<Self, CellnetError> {
        let mut roots = RootCertStore::empty();
        for c in pem_certs(TlsFile::Ca, ca_path, ca_pem)? {
            roots.add(c).map_err(|e| {
                file_err(
                    TlsFile::Ca,
                    ca_path,
                    format!("not a usable CA certificate: {e}"),
                )
            })?;
        }
        let chain = pem_certs(TlsFile::Cert, cert_path, cert_pem)?;
        match cert_version(&chain[0]) {
            Some(3) => {}
            Some(v) => {
                return Err(file_err(
                    TlsFile::Cert,
                    cert_path,
                    format!(
                        "an X.509 v{v} certificate; TLS peers (rustls, NVFlare) need X.509 v3 with extensions. \
                         `openssl x509 -req` makes v1 unless it is given extensions: re-issue it with \
                         `-extfile cell.ext` (basicConstraints=CA:FALSE, keyUsage, extendedKeyUsage, subjectAltName), \
                         or use `ferry certs issue`"
                    ),
                ))
            }
            None => {
                return Err(file_err(
                    TlsFile::Cert,
                    cert_path,
                    "not a well-formed X.509 certificate",
                ))
            }
        }
        if common_name(&chain[0]).is_none() {
            return Err(file_err(
                TlsFile::Cert,
                cert_path,
                "the certificate has no subject common name (CN); peers identify a cell by its CN, which must be the first segment of the cell name",
            ));
        }
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| file_err(TlsFile::Key, key_path, format!("unreadable PEM: {e}")))?
            .ok_or_else(|| {
                file_err(
                    TlsFile::Key,
                    key_path,
                    format!("no private key in it: {}", not_pem_hint(key_pem)),
                )
            })?;
        let cfg = TlsConfig {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
            require_client_cert: true,
        };
        // the key must belong to the certificate (rustls checks when it builds a config)
        cfg.acceptor().map_err(|e| {
            file_err(
                TlsFile::Key,
                key_path,
                format!("does not go with the certificate {cert_path} ({e})"),
            )
        })?;
        Ok(cfg)
    }

    /// From PEM files (NVFlare's `rootCA.pem`, `client.crt`/`server.crt`, `*.key`). Errors
    /// name the file at fault ([`CellnetError::Certificate`]).
    pub fn from_pem_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, CellnetError> {
        let read = |file: TlsFile, p: &Path| {
            std::fs::read(p).map_err(|e| file_err(file, &p.display().to_string(), e.to_string()))
        };
        let (ca, cert, key) = (ca.as_ref(), cert.as_ref(), key.as_ref());
        let (ca_pem, cert_pem, key_pem) = (
            read(TlsFile::Ca, ca)?,
            read(TlsFile::Cert, cert)?,
            read(TlsFile::Key, key)?,
        );
        Self::from_pem_named(
            (&ca.display().to_string(), &ca_pem),
            (&cert.display().to_string(), &cert_pem),
            (&key.display().to_string(), &key_pem),
        )
    }

    /// The common name of this cell's certificate: the FQCN root its peers accept.
    pub fn common_name(&self) -> Option<String> {
        self.chain.first().and_then(common_name)
    }

    /// Refuse to run a cell named `fqcn` with a certificate for another name: every peer
    /// would refuse the connection, and a listener would claim a name it cannot prove.
    pub(crate) fn check_identity(&self, fqcn: &Fqcn) -> Result<(), CellnetError> {
        let cn = self.common_name().unwrap_or_default();
        if cn != fqcn.root() {
            return Err(CellnetError::OwnIdentity {
                certificate: cn,
                fqcn: fqcn.to_string(),
                root: fqcn.root().to_string(),
            });
        }
        Ok(())
    }

    /// Whether a listener requires client certificates (default true: mutual TLS). Without
    /// them the CN check cannot be made and any FQCN is accepted.
    pub fn require_client_cert(mut self, yes: bool) -> Self {
        self.require_client_cert = yes;
        self
    }

    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, CellnetError> {
        let p = provider();
        let builder = rustls::ServerConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?;
        let builder = if self.require_client_cert {
            let v = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), p)
                .build()
                .map_err(tls_err)?;
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        let cfg = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }

    pub(crate) fn connector(&self) -> Result<TlsConnector, CellnetError> {
        let p = provider();
        let verifier = Arc::new(CaOnlyVerifier {
            roots: self.roots.clone(),
            provider: p.clone(),
        });
        let cfg = rustls::ClientConfig::builder_with_provider(p)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        Ok(TlsConnector::from(Arc::new(cfg)))
    }
}

/// Verifies the server chain against the root CA but not the host name (NVFlare's rule).
#[derive(Debug)]
struct CaOnlyVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CaOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS handshake on an accepted socket; returns the transport with the client's CN.
pub(crate) async fn accept(
    acceptor: &TlsAcceptor,
    s: TcpStream,
) -> Result<Transport, CellnetError> {
    let _ = s.set_nodelay(true);
    let peer_addr = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let tls = acceptor.accept(s).await.map_err(handshake_err)?;
    let peer_cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| common_name(c).ok_or_else(|| tls_err("client certificate has no CN")))
        .transpose()?;
    let (rd, wr) = tokio::io::split(tls);
    Ok(Transport {
        rd: Box::new(rd),
        wr: Box::new(wr),
        peer_addr,
        peer_cn,
    })
}

/// TLS handshake on a connected socket.
pub(crate) async fn connect(
    connector: &TlsConnector,
    host: &str,
    s: TcpStream,
) -> Result<Transport, CellnetError> {
    let peer_addr = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    // Any syntactically valid name works: the verifier does not check it.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
        ServerName::try_from("ferry.invalid".to_string()).expect("valid DNS name")
    });
    let tls = connector.connect(name, s).await.map_err(handshake_err)?;
    let peer_cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| common_name(c).ok_or_else(|| tls_err("the peer's certificate has no CN")))
        .transpose()?;
    let (rd, wr) = tokio::io::split(tls);
    Ok(Transport {
        rd: Box::new(rd),
        wr: Box::new(wr),
        peer_addr,
        peer_cn,
    })
}

/// Minimal DER reader: one TLV at the start of `b` → (tag, content, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let l0 = *b.get(1)? as usize;
    let (len, hdr) = if l0 < 0x80 {
        (l0, 2)
    } else {
        let n = l0 & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    if end > b.len() {
        return None;
    }
    Some((tag, &b[hdr..end], &b[end..]))
}

/// The X.509 version of a DER certificate (1, 2 or 3), `None` if it is not one. v1 has no
/// `[0]` version field in its TBSCertificate.
fn cert_version(cert: &CertificateDer<'_>) -> Option<u8> {
    const SEQ: u8 = 0x30;
    let (tag, cert, _) = tlv(cert.as_ref())?;
    if tag != SEQ {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != SEQ {
        return None;
    }
    let (tag, version, _) = tlv(tbs)?;
    if tag != 0xa0 {
        return Some(1);
    }
    match tlv(version)? {
        (0x02, [v], _) if *v <= 2 => Some(v + 1),
        _ => None,
    }
}

/// The subject common name (OID 2.5.4.3) of a DER certificate. The certificate has already
/// been verified against the CA by rustls; this only walks its structure, bounds-checked.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    const SEQ: u8 = 0x30;
    let (tag, cert, _) = tlv(cert.as_ref())?;
    if tag != SEQ {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != SEQ {
        return None;
    }
    let mut rest = tbs;
    // optional [0] version
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r;
    }
    // serial, signature algorithm, issuer, validity, subject
    let mut fields = Vec::with_capacity(5);
    for _ in 0..5 {
        let (tag, content, r) = tlv(rest)?;
        fields.push((tag, content));
        rest = r;
    }
    let (tag, subject) = fields[4];
    if tag != SEQ {
        return None;
    }
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (_set_tag, set, r) = tlv(rdns)?;
        rdns = r;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (_, atv, r) = tlv(atvs)?;
            atvs = r;
            let (oid_tag, oid, val) = tlv(atv)?;
            if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                let (vtag, v, _) = tlv(val)?;
                return match vtag {
                    // UTF8String, PrintableString, IA5String, T61String
                    0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8(v.to_vec()).ok(),
                    // BMPString (UTF-16BE)
                    0x1e if v.len() % 2 == 0 => {
                        let units: Vec<u16> = v
                            .chunks_exact(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect();
                        String::from_utf16(&units).ok()
                    }
                    _ => None,
                };
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_cn(cn: &str) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ferry");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn extracts_cn() {
        assert_eq!(
            common_name(&cert_with_cn("site-1")).as_deref(),
            Some("site-1")
        );
        assert_eq!(
            common_name(&cert_with_cn("server")).as_deref(),
            Some("server")
        );
    }

    #[test]
    fn io_errors_carrying_rustls_errors_are_tls_errors() {
        use std::io::{Error, ErrorKind};
        let alert = |a| Error::new(ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
        // The peer refused our certificate.
        let e = CellnetError::from(alert(rustls::AlertDescription::UnknownCA));
        assert!(
            matches!(&e, CellnetError::Tls(why) if why.contains("refused our TLS certificate")),
            "{e:?}"
        );
        let e = CellnetError::from(alert(rustls::AlertDescription::DecryptError));
        assert!(
            matches!(&e, CellnetError::Tls(why) if why.contains("refused our TLS certificate")),
            "{e:?}"
        );
        // Another alert: still TLS, but not a certificate refusal.
        let e = CellnetError::from(alert(rustls::AlertDescription::HandshakeFailure));
        assert!(
            matches!(&e, CellnetError::Tls(why) if why.contains("HandshakeFailure") && !why.contains("certificate")),
            "{e:?}"
        );
        // We refused theirs.
        let e = CellnetError::from(Error::new(
            ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert!(
            matches!(&e, CellnetError::Tls(why) if why.contains("UnknownIssuer")),
            "{e:?}"
        );
        // Plain socket errors stay I/O errors, with their kind.
        let e = CellnetError::from(Error::from(ErrorKind::ConnectionRefused));
        assert!(
            matches!(&e, CellnetError::Io(io) if io.kind() == ErrorKind::ConnectionRefused),
            "{e:?}"
        );
        let e = CellnetError::from(Error::other("not tls"));
        assert!(matches!(e, CellnetError::Io(_)), "{e:?}");
        // During the TLS handshake every failure is a TLS failure.
        assert!(matches!(
            handshake_err(Error::from(ErrorKind::ConnectionReset)),
            CellnetError::Tls(_)
        ));
    }

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = n.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    /// The same certificate as X.509 v1: its TBSCertificate without the `[0]` version field
    /// (the signature no longer matches, which the version check does not look at).
    fn as_v1(cert: &CertificateDer<'_>) -> CertificateDer<'static> {
        let (_, body, _) = tlv(cert.as_ref()).unwrap();
        let (_, tbs, rest) = tlv(body).unwrap();
        let (tag, _, tbs_rest) = tlv(tbs).unwrap();
        assert_eq!(tag, 0xa0);
        let mut inner = der(0x30, tbs_rest);
        inner.extend_from_slice(rest);
        CertificateDer::from(der(0x30, &inner))
    }

    fn pem(der: &[u8]) -> String {
        use std::fmt::Write;
        let b64 = base64_encode(der);
        let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            let _ = writeln!(s, "{}", std::str::from_utf8(line).unwrap());
        }
        s.push_str("-----END CERTIFICATE-----\n");
        s
    }

    fn base64_encode(b: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn versions() {
        let v3 = cert_with_cn("site-1");
        assert_eq!(cert_version(&v3), Some(3));
        let v1 = as_v1(&v3);
        assert_eq!(cert_version(&v1), Some(1));
        assert_eq!(common_name(&v1).as_deref(), Some("site-1"));
        assert_eq!(cert_version(&CertificateDer::from(vec![0x30, 0x00])), None);
    }

    /// (CA PEM, certificate PEM, key PEM) of a self-signed v3 certificate for `cn`.
    fn self_signed(cn: &str) -> (String, String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), cert.pem(), key.serialize_pem())
    }

    fn problem(r: Result<TlsConfig, CellnetError>) -> (TlsFile, String) {
        match r {
            Err(CellnetError::Certificate { file, problem, .. }) => (file, problem),
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    #[test]
    fn v1_certificates_are_refused_with_the_fix() {
        let (ca, cert, key) = self_signed("site-1");
        assert!(TlsConfig::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).is_ok());
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let v1 = pem(&as_v1(&der));
        let (file, why) = problem(TlsConfig::from_pem(
            ca.as_bytes(),
            v1.as_bytes(),
            key.as_bytes(),
        ));
        assert_eq!(file, TlsFile::Cert);
        assert!(why.contains("X.509 v1") && why.contains("v3"), "{why}");
        assert!(why.contains("-extfile"), "{why}");
    }

    #[test]
    fn files_that_are_not_pem_say_which_file() {
        let (ca, cert, key) = self_signed("site-1");
        let junk = b"this is not a certificate".as_slice();
        let (file, why) = problem(TlsConfig::from_pem(junk, cert.as_bytes(), key.as_bytes()));
        assert_eq!(file, TlsFile::Ca);
        assert!(why.contains("not a PEM file"), "{why}");
        let (file, _) = problem(TlsConfig::from_pem(ca.as_bytes(), junk, key.as_bytes()));
        assert_eq!(file, TlsFile::Cert);
        let (file, why) = problem(TlsConfig::from_pem(ca.as_bytes(), cert.as_bytes(), junk));
        assert_eq!(file, TlsFile::Key);
        assert!(why.contains("no private key"), "{why}");
        // a key for another certificate
        let (_, _, other_key) = self_signed("site-1");
        let (file, why) = problem(TlsConfig::from_pem(
            ca.as_bytes(),
            cert.as_bytes(),
            other_key.as_bytes(),
        ));
        assert_eq!(file, TlsFile::Key);
        assert!(why.contains("does not go with the certificate"), "{why}");
        // a DER file where PEM is expected
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, why) = problem(TlsConfig::from_pem(
            der.as_ref(),
            cert.as_bytes(),
            key.as_bytes(),
        ));
        assert!(why.contains("DER"), "{why}");
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(
            common_name(&CertificateDer::from(vec![0x30, 0x82, 0xff])),
            None
        );
        assert_eq!(common_name(&CertificateDer::from(vec![])), None);
        assert_eq!(common_name(&CertificateDer::from(vec![0x30, 0x00])), None);
        let good = cert_with_cn("x");
        for cut in [1, 10, 50, good.len() / 2] {
            let _ = common_name(&CertificateDer::from(good[..cut].to_vec()));
        }
    }
}
