//! Cells for Python callers: `ferry.TLS` (mutual TLS from PEM files) and the naming and
//! connecting rules shared by every receiving function.

use std::path::PathBuf;

use ferry::cellnet::{Cell, CellnetError, TlsConfig};
use pyo3::prelude::*;

use crate::errors;

/// What to tell the user about TLS files, appended to every TLS error.
const TLS_HINT: &str = "pass PEM files: cert (this cell's certificate), key (its private key), ca (the root CA that signed both sides)";

/// Mutual TLS settings: this cell's certificate and key, and the CA both sides trust.
///
/// The files are read and checked when the object is made, so a wrong path is a `UsageError`
/// here rather than in the middle of a transfer. A receiver under TLS is named after the
/// certificate's common name unless `name=` is given (the sender checks that the CN is the
/// first segment of the receiver's name).
#[pyclass(module = "ferry._ferry", name = "TLS", frozen, from_py_object)]
#[derive(Clone)]
pub struct Tls {
    pub(crate) config: TlsConfig,
    /// The certificate's CN: the default cell name of a TLS receiver.
    pub(crate) common_name: Option<String>,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: PathBuf,
}

#[pymethods]
impl Tls {
    #[new]
    #[pyo3(signature = (cert, key, ca))]
    fn new(cert: PathBuf, key: PathBuf, ca: PathBuf) -> PyResult<Self> {
        for (what, path) in [("cert", &cert), ("key", &key), ("ca", &ca)] {
            if !path.is_file() {
                return Err(errors::usage(format!(
                    "TLS {what} {}: no such file; {TLS_HINT}",
                    path.display()
                )));
            }
        }
        let config = TlsConfig::from_pem_files(&ca, &cert, &key)
            .map_err(|e| errors::usage(format!("TLS files unusable ({e}); {TLS_HINT}")))?;
        let pem = std::fs::read(&cert)
            .map_err(|e| errors::usage(format!("TLS cert {}: {e}", cert.display())))?;
        let common_name = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .and_then(Result::ok)
            .and_then(|c| ferry::cellnet::common_name(&c));
        Ok(Self {
            config,
            common_name,
            cert,
            key,
            ca,
        })
    }

    /// The certificate file.
    #[getter]
    fn cert(&self) -> PathBuf {
        self.cert.clone()
    }

    /// The private key file.
    #[getter]
    fn key(&self) -> PathBuf {
        self.key.clone()
    }

    /// The CA file.
    #[getter]
    fn ca(&self) -> PathBuf {
        self.ca.clone()
    }

    /// The certificate's common name (the default name of a TLS receiver), if it has one.
    #[getter]
    fn common_name(&self) -> Option<String> {
        self.common_name.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "ferry.TLS(cert={:?}, key={:?}, ca={:?})",
            self.cert.display().to_string(),
            self.key.display().to_string(),
            self.ca.display().to_string()
        )
    }
}

/// Check a cell name given by the caller (`what` names the argument).
pub fn check_name(what: &str, name: &str) -> PyResult<()> {
    ferry::core::validate_fqcn(name).map_err(|e| {
        errors::usage(format!(
            "{what}={name:?}: {e}; a cell name is dot-separated segments of letters, digits, _ ~ -"
        ))
    })
}

/// Build a cell named `name`, with TLS when given.
pub fn build_cell(name: &str, tls: Option<&Tls>) -> PyResult<Cell> {
    check_name("name", name)?;
    let builder = Cell::builder(name).map_err(|e| errors::usage(format!("name={name:?}: {e}")))?;
    Ok(match tls {
        Some(t) => builder.tls(t.config.clone()).build(),
        None => builder.build(),
    })
}

/// The name of a receiving cell: the caller's, else the TLS certificate's CN, else this
/// process's (`ferry-py-PID`, as `ferry get` is `ferry-get-PID`): a process counts as one
/// receiver, whatever it downloads, and its overlapping calls share one cell
/// ([`crate::pool`]).
pub fn receiver_name(name: Option<String>, tls: Option<&Tls>) -> PyResult<String> {
    match (name, tls) {
        (Some(n), _) => Ok(n),
        (None, Some(t)) => t.common_name.clone().ok_or_else(|| {
            errors::usage("the TLS certificate has no common name; pass name= explicitly")
        }),
        (None, None) => Ok(format!("ferry-py-{}", std::process::id())),
    }
}

/// Explain a failed `connect` to a sender.
pub fn connect_failure(url: &str, e: &CellnetError) -> PyErr {
    match e {
        CellnetError::PeerIdentity { certificate, claimed } => errors::usage(format!(
            "the listener at {url} presented a certificate for {certificate:?} but calls itself {claimed:?}; it cannot prove to be the sender: check the address in the ticket, and that the sender runs with its own certificate"
        )),
        CellnetError::OwnIdentity { certificate, fqcn, .. } => errors::usage(format!(
            "the TLS certificate is for {certificate:?} but this receiver is named {fqcn:?}: peers accept a cell only under the name its certificate CN gives as the first segment; pass name={certificate:?} or the certificate issued for that name"
        )),
        CellnetError::Refused(why) => errors::usage(format!(
            "the sender at {url} refused this receiver ({why}); {}",
            if why.contains("authenticated as") {
                "the CN of the TLS certificate must be the first segment of name="
            } else {
                "another receiver is connected under this name: pass another name="
            }
        )),
        CellnetError::Tls(why) if why.contains("refused our TLS certificate") => errors::usage(format!(
            "the sender at {url} refused our TLS certificate ({why}); the cert must be signed by the CA the sender trusts, with a CN equal to the first segment of name="
        )),
        CellnetError::Tls(why) => errors::usage(format!(
            "TLS with the sender at {url} failed ({why}); check that ca is the CA that signed the sender's certificate and that cert/key belong together"
        )),
        CellnetError::Busy(why) => errors::transfer(format!(
            "sender busy: the sender at {url} refused the connection ({}); try again later",
            why.strip_prefix("busy: ").unwrap_or(why)
        )),
        CellnetError::Handshake(why) | CellnetError::ConnectionClosed(why)
            if url.starts_with("stcp://") =>
        {
            errors::transfer(format!(
                "the sender at {url} closed the connection during the handshake ({why}); with TLS, the CN of the cert must be the first segment of name= and be signed by the sender's CA"
            ))
        }
        CellnetError::Handshake(why) | CellnetError::ConnectionClosed(why) => errors::transfer(format!(
            "the sender at {url} closed the connection during the handshake ({why}); it may be overloaded or shutting down, or another program listens there: try again, and check the address in the ticket"
        )),
        CellnetError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => errors::transfer(format!(
            "nothing listens at {url} (connection refused); is the sender still running there, and is this the address in its ticket?"
        )),
        other => errors::transfer(format!(
            "cannot reach the sender at {url} ({other}); check the address in the ticket and that the port is open"
        )),
    }
}
