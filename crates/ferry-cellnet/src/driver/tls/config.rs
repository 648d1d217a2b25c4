//! [`TlsConfig`]: a cell's CA, certificate chain and key, read from PEM with errors that name
//! the file at fault and say what to do, and the rustls acceptor and connector built from
//! them.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::der::{cert_version, common_name};
use super::verify::CaOnlyVerifier;
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

pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn tls_err(e: impl std::fmt::Display) -> CellnetError {
    CellnetError::Tls(e.to_string())
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
