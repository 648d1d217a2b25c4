//! `ferry.Ticket`: a ticket read into its fields (from either written form), and how every
//! receiving function takes its `ticket` argument — a `str` in either form, or a `Ticket`.

use std::hash::{Hash, Hasher};

use ferry::ticket::Ticket;
use pyo3::prelude::*;

use crate::errors;

/// A ticket read into its fields. `ferry.Ticket(s)` reads the compact `ferry1...` form and the
/// `ferry+tcp://...` URL form alike; `str(t)` is the compact form, `t.url` the URL form (what
/// an NVFlare receiver needs: address, sender and ref id are readable there).
#[pyclass(module = "ferry._ferry", name = "Ticket", frozen)]
#[derive(Clone)]
pub struct PyTicket {
    pub(crate) inner: Ticket,
}

#[pymethods]
impl PyTicket {
    #[new]
    fn new(ticket: &str) -> PyResult<Self> {
        Ok(Self {
            inner: parse(ticket)?,
        })
    }

    /// `file`, `tensors` or `set` (a whole `ferry serve` of a directory or several paths).
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.as_str()
    }

    /// Where a receiver writes it, relative to its output directory (for a set: a label).
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    /// The pinned size: a file's bytes, a tensor dict's tensor bytes, a set manifest's bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.size
    }

    /// The pinned digest (64 hex digits): BLAKE3 of a file or set manifest, the tensor-dict
    /// digest of a tensor dict.
    #[getter]
    fn blake3(&self) -> &str {
        &self.inner.blake3
    }

    /// The sender's cell name (FQCN).
    #[getter]
    fn source(&self) -> &str {
        &self.inner.source
    }

    /// `HOST:PORT` of the sender's listener.
    #[getter]
    fn address(&self) -> &str {
        &self.inner.addr
    }

    /// The ref id the receiver pulls.
    #[getter]
    fn ref_id(&self) -> &str {
        &self.inner.ref_id
    }

    /// Whether the sender listens with mutual TLS (receivers need `tls=`).
    #[getter]
    fn tls(&self) -> bool {
        self.inner.tls
    }

    /// The compact form, `ferry1...` (also `str(ticket)`).
    #[getter]
    fn compact(&self) -> String {
        self.inner.to_compact()
    }

    /// The URL form, `ferry+tcp://HOST:PORT/SENDER/REF?kind=..&name=..&size=..&b3=..`.
    #[getter]
    fn url(&self) -> String {
        self.inner.to_url()
    }

    fn __str__(&self) -> String {
        self.inner.to_compact()
    }

    fn __repr__(&self) -> String {
        format!(
            "ferry.Ticket(kind={:?}, name={:?}, size={}, source={:?}, address={:?})",
            self.inner.kind.as_str(),
            self.inner.name,
            self.inner.size,
            self.inner.source,
            self.inner.addr
        )
    }

    /// Equal to another `Ticket` of the same fields, or to a string of either form that reads
    /// as one.
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<PyTicket>() {
            Ok(t) => t.get().inner == self.inner,
            Err(_) => other
                .extract::<String>()
                .ok()
                .and_then(|s| s.parse::<Ticket>().ok())
                .is_some_and(|t| t == self.inner),
        }
    }

    fn __hash__(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner.to_compact().hash(&mut h);
        h.finish()
    }
}

/// Read a ticket string (either form); a malformed one is a `UsageError`.
pub fn parse(s: &str) -> PyResult<Ticket> {
    s.parse().map_err(|e| errors::usage(format!("{e}")))
}

/// The `ticket` argument of a receiving function: a `ferry.Ticket` or a string of either form.
pub fn from_arg(arg: &Bound<'_, PyAny>) -> PyResult<Ticket> {
    if let Ok(t) = arg.cast::<PyTicket>() {
        return Ok(t.get().inner.clone());
    }
    match arg.extract::<String>() {
        Ok(s) => parse(&s),
        Err(_) => Err(errors::usage(format!(
            "ticket: expected a str (ferry1... or ferry+tcp://...) or a ferry.Ticket, got {}",
            arg.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))),
    }
}
