//! The receiving functions: `get` (a ticket's object into a directory), `download_tensors`
//! (a tensor dict into memory, as buffers numpy and torch wrap without copying) and
//! `download_bytes`.
//!
//! Each call makes its own cell, connects it to the ticket's sender, downloads, and shuts the
//! cell down; the transfer runs on the runtime with the GIL released (see [`crate::runtime`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry::fetch::{Fetch, FetchOptions};
use ferry::objects::TensorDictConsumer;
use ferry::ticket::{Kind, Ticket};
use ferry::{
    download_bytes as dl_bytes, download_object, DownloadError, DownloadOptions, DownloadProgress,
    DownloadService, ServiceOptions,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use tokio_util::sync::CancellationToken;

use crate::cells::{build_cell, connect_failure, receiver_name, Tls};
use crate::errors;
use crate::runtime::{block_on, CancelToken};

/// Progress of one download, as passed to a `progress=` callback.
#[pyclass(module = "ferry._ferry", frozen)]
#[derive(Clone)]
pub struct Progress {
    /// Payload bytes received so far.
    #[pyo3(get)]
    bytes_done: u64,
    /// Total bytes, when known (from the ticket, or once the sender advertised them).
    #[pyo3(get)]
    total_bytes: Option<u64>,
    /// Chunks received so far.
    #[pyo3(get)]
    chunks_done: u64,
    /// Seconds since the download started.
    #[pyo3(get)]
    elapsed: f64,
    /// Mean rate so far, bytes per second.
    #[pyo3(get)]
    bytes_per_sec: f64,
    /// `start`, `active`, `completed`, `failed` or `aborted`.
    #[pyo3(get)]
    state: String,
}

#[pymethods]
impl Progress {
    fn __repr__(&self) -> String {
        format!(
            "ferry.Progress(state={:?}, bytes_done={}, total_bytes={:?}, bytes_per_sec={:.0})",
            self.state, self.bytes_done, self.total_bytes, self.bytes_per_sec
        )
    }
}

impl Progress {
    fn from(p: &DownloadProgress, size_hint: Option<u64>) -> Self {
        let total_bytes = p.total_bytes.or(size_hint);
        Self {
            // A tensor dict's items carry small safetensors headers on top of the tensor bytes
            // the total counts: never report more than the total.
            bytes_done: total_bytes.map_or(p.bytes_done, |t| p.bytes_done.min(t)),
            total_bytes,
            chunks_done: p.chunks_done,
            elapsed: p.elapsed.as_secs_f64(),
            bytes_per_sec: p.bytes_per_sec,
            state: format!("{:?}", p.state).to_lowercase(),
        }
    }
}

/// The newest progress report not yet handed to Python (the download thread writes, the
/// waiting thread takes).
type Latest = Arc<Mutex<Option<Progress>>>;

/// Everything a receiving call shares: the parsed ticket, the cell to make, the options.
struct Call {
    ticket: Ticket,
    name: String,
    tls: Option<Tls>,
    opts: DownloadOptions,
    cancel: CancellationToken,
    progress: Option<Py<PyAny>>,
    latest: Latest,
}

impl Call {
    #[allow(clippy::too_many_arguments)]
    fn new(
        ticket: &str,
        name: Option<String>,
        tls: Option<Tls>,
        progress: Option<Py<PyAny>>,
        request_timeout: f64,
        cancel: Option<&CancelToken>,
    ) -> PyResult<Self> {
        let ticket: Ticket = ticket.parse().map_err(|e| errors::usage(format!("{e}")))?;
        if ticket.tls && tls.is_none() {
            return Err(errors::usage(
                "this ticket is for a TLS sender (ferry+stcp://); pass tls=ferry.TLS(cert=..., key=..., ca=...)",
            ));
        }
        if !(request_timeout.is_finite() && request_timeout > 0.0) {
            return Err(errors::usage(format!(
                "request_timeout={request_timeout}: expected a positive number of seconds"
            )));
        }
        let name = receiver_name(name, tls.as_ref())?;
        let cancel = cancel.map(|c| c.token.clone()).unwrap_or_default();
        let latest: Latest = Arc::default();
        let mut opts = DownloadOptions {
            per_request_timeout: Duration::from_secs_f64(request_timeout),
            cancel: Some(cancel.clone()),
            // Reports are handed to Python once per tick of the waiting thread; none sooner.
            progress_interval: crate::runtime::TICK,
            ..DownloadOptions::default()
        };
        if progress.is_some() {
            let latest = Arc::clone(&latest);
            let hint = Some(ticket.size);
            opts = opts.with_progress(move |p| {
                if let Ok(mut slot) = latest.lock() {
                    *slot = Some(Progress::from(p, hint));
                }
            });
        }
        Ok(Self {
            ticket,
            name,
            tls,
            opts,
            cancel,
            progress,
            latest,
        })
    }

    /// Run `download` on a fresh cell connected to the ticket's sender, with the GIL released;
    /// Ctrl-C cancels it. The cell is shut down whatever happens.
    fn run<T, F, Fut>(self, py: Python<'_>, download: F) -> PyResult<(T, Ticket)>
    where
        T: Send + 'static,
        F: FnOnce(DownloadService, Ticket, DownloadOptions) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, DownloadError>> + Send,
    {
        let cell = build_cell(&self.name, self.tls.as_ref())?;
        let url = self.ticket.url();
        let ticket = self.ticket.clone();
        let opts = self.opts;
        let cancel = self.cancel.clone();
        let fut = async move {
            let connected = tokio::select! {
                r = cell.connect(&url) => r.map_err(|e| Err(ConnectError::Cell(url.clone(), e))),
                _ = cancel.cancelled() => Err(Ok(())),
            };
            // The cell that answered must be the sender the ticket names (or route for it).
            let connected = connected.and_then(|peer| {
                if ticket.is_served_by(peer.as_str()) {
                    Ok(())
                } else {
                    Err(Err(ConnectError::WrongPeer {
                        url: url.clone(),
                        peer: peer.to_string(),
                    }))
                }
            });
            let out = match connected {
                Ok(()) => {
                    let service = DownloadService::new(&cell, ServiceOptions::default());
                    let r = download(service.clone(), ticket, opts).await;
                    service.shutdown().await;
                    Outcome::Done(r)
                }
                Err(Ok(())) => Outcome::CancelledConnecting,
                Err(Err(e)) => Outcome::ConnectFailed(e),
            };
            cell.shutdown().await;
            out
        };
        let progress = self.progress;
        let latest = self.latest;
        let deliver = |py: Python<'_>| -> PyResult<()> {
            let Some(cb) = &progress else { return Ok(()) };
            let next = latest.lock().ok().and_then(|mut s| s.take());
            match next {
                Some(p) => cb.call1(py, (p,)).map(|_| ()),
                None => Ok(()),
            }
        };
        let interrupted = format!("interrupted: download of {} cancelled", self.ticket.name);
        let out = block_on(py, fut, &self.cancel, &interrupted, deliver)?;
        // The last report (completed, failed or aborted) arrives as the download ends.
        deliver(py)?;
        match out {
            Outcome::Done(r) => r
                .map(|v| (v, self.ticket.clone()))
                .map_err(|e| errors::download_failed(e, &self.ticket, None)),
            Outcome::CancelledConnecting => Err(errors::interrupted(
                "interrupted while connecting to the sender",
            )),
            Outcome::ConnectFailed(ConnectError::Cell(url, e)) => Err(connect_failure(&url, &e)),
            Outcome::ConnectFailed(ConnectError::WrongPeer { url, peer }) => {
                Err(errors::usage(format!(
                    "the listener at {url} is the cell {peer:?}, but the ticket names the sender {:?}; this ticket does not belong to that address, or another program listens there: ask the sender for a fresh ticket",
                    self.ticket.source
                )))
            }
        }
    }
}

/// How the connect-and-download future ended.
enum Outcome<T> {
    Done(Result<T, DownloadError>),
    CancelledConnecting,
    ConnectFailed(ConnectError),
}

/// Why no usable connection to the ticket's sender was made.
enum ConnectError {
    /// The cell could not connect (the URL, the error).
    Cell(String, ferry::cellnet::CellnetError),
    /// Another cell answered at the ticket's address.
    WrongPeer { url: String, peer: String },
}

/// Download the object of `ticket` into `out_dir` (created if missing); returns the path.
///
/// A file is written as NAME.part, verified (size and BLAKE3) and renamed; with
/// `resume=True` a kept NAME.part is continued and kept again on failure. A tensor dict
/// (kind=tensors) is written as one .safetensors file.
#[pyfunction]
#[pyo3(signature = (ticket, out_dir, *, resume=false, overwrite=false, name=None, tls=None, progress=None, request_timeout=60.0, cancel=None))]
#[allow(clippy::too_many_arguments)]
pub fn get(
    py: Python<'_>,
    ticket: &str,
    out_dir: PathBuf,
    resume: bool,
    overwrite: bool,
    name: Option<String>,
    tls: Option<Tls>,
    progress: Option<Py<PyAny>>,
    request_timeout: f64,
    cancel: Option<PyRef<'_, CancelToken>>,
) -> PyResult<PathBuf> {
    let call = Call::new(
        ticket,
        name,
        tls,
        progress,
        request_timeout,
        cancel.as_deref(),
    )?;
    let dest = out_dir.join(&call.ticket.name);
    if dest.is_dir() {
        return Err(errors::usage(format!(
            "{} is a directory; remove it or pick another out_dir",
            dest.display()
        )));
    }
    if dest.exists() && !overwrite {
        return Err(errors::usage(format!(
            "{} already exists; pass overwrite=True to replace it, or pick another out_dir",
            dest.display()
        )));
    }
    if call.ticket.kind == Kind::Set {
        return Err(errors::usage(
            "this ticket names a set of objects: fetch it with the `ferry get` command",
        ));
    }
    if resume && call.ticket.kind == Kind::Tensors {
        return Err(errors::usage(
            "resume=True applies to files; a tensor dict ticket is downloaded whole",
        ));
    }
    let fopts = FetchOptions {
        overwrite,
        resume,
        ..FetchOptions::default()
    };
    let part = format!("{}.part", dest.display());
    let ticket_copy = call.ticket.clone();
    let r = call.run(py, move |service, ticket, opts| async move {
        let fetch = Fetch::open(&ticket, &out_dir, fopts).await?;
        fetch.run(&service, opts).await.map(|f| f.path)
    });
    match r {
        Ok((path, _)) => Ok(path),
        // Map again with the .part path when resuming (the generic mapping does not know it).
        Err(e) if resume => Err(with_part(py, e, &ticket_copy, &part)),
        Err(e) => Err(e),
    }
}

/// Rewrite the advice of a failure of a resumable download to name the kept `.part` file.
fn with_part(py: Python<'_>, e: PyErr, t: &Ticket, part: &str) -> PyErr {
    let msg = e.value(py).to_string();
    let keep = format!(
        "the data so far is kept in {part}; call again with resume=True and a fresh ticket to continue"
    );
    let msg = msg.replace(
        "nothing was left at the destination; pass resume=True to keep partial data across attempts",
        &keep,
    );
    if e.is_instance_of::<errors::Interrupted>(py) {
        errors::interrupted(format!("{} cancelled; partial data kept in {part}", t.name))
    } else if e.is_instance_of::<errors::TransferError>(py) {
        errors::transfer(msg)
    } else {
        e
    }
}

/// One received tensor's memory, exposed to numpy through `__array_interface__` as a flat
/// `uint8` array (the Python layer views it with the tensor's dtype and shape). numpy keeps
/// this object alive as the array's base, and this object keeps ferry's buffer alive: no copy.
#[pyclass(module = "ferry._ferry", frozen)]
pub struct TensorBuffer {
    /// Read-only: a slice of the frame the tensor arrived in (held, never read here).
    _shared: Option<Bytes>,
    /// Writable: a private copy (`writable=True`).
    owned: Option<Vec<u8>>,
    /// Address of the first byte, taken once when the buffer was made (for `owned`, from
    /// `as_mut_ptr` before the `Vec` was moved in; moving a `Vec` does not move its heap data).
    addr: usize,
    len: usize,
}

impl TensorBuffer {
    fn shared(b: Bytes) -> Self {
        Self {
            addr: b.as_ptr() as usize,
            len: b.len(),
            _shared: Some(b),
            owned: None,
        }
    }

    fn owned(mut v: Vec<u8>) -> Self {
        Self {
            addr: v.as_mut_ptr() as usize,
            len: v.len(),
            _shared: None,
            owned: Some(v),
        }
    }
}

#[pymethods]
impl TensorBuffer {
    /// numpy's array interface (version 3): a flat uint8 array over this buffer.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", (self.len,))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (self.addr, self.readonly()))?;
        Ok(d)
    }

    /// Bytes in the buffer.
    #[getter]
    fn nbytes(&self) -> usize {
        self.len
    }

    /// Whether arrays over this buffer are read-only (they are unless `writable=True`).
    #[getter]
    fn readonly(&self) -> bool {
        self.owned.is_none()
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        format!(
            "ferry.TensorBuffer({} bytes, {})",
            self.len,
            if self.readonly() {
                "read-only"
            } else {
                "writable"
            }
        )
    }
}

/// Download a tensor dict into memory: a list of `(name, dtype, shape, TensorBuffer)` in the
/// sender's order. Aliased names (views of one buffer on the sender) share one buffer again.
#[pyfunction]
#[pyo3(signature = (ticket, *, writable=false, name=None, tls=None, progress=None, request_timeout=60.0, cancel=None))]
#[allow(clippy::too_many_arguments)]
pub fn download_tensors<'py>(
    py: Python<'py>,
    ticket: &str,
    writable: bool,
    name: Option<String>,
    tls: Option<Tls>,
    progress: Option<Py<PyAny>>,
    request_timeout: f64,
    cancel: Option<PyRef<'_, CancelToken>>,
) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    let call = Call::new(
        ticket,
        name,
        tls,
        progress,
        request_timeout,
        cancel.as_deref(),
    )?;
    if call.ticket.kind != Kind::Tensors {
        return Err(errors::usage(format!(
            "{} is a {} ticket, not a tensor dict; use ferry.get() or ferry.download_bytes()",
            call.ticket.name,
            call.ticket.kind.as_str()
        )));
    }
    let (dict, _) = call.run(py, |service, ticket, opts| async move {
        let rid = ferry::core::RefId::new(ticket.ref_id.clone());
        // Held to the ticket's pin (the tensor-dict digest) whatever the sender sends.
        let consumer = TensorDictConsumer::new().pin(ticket.pin());
        let mut c = download_object(&service, &ticket.source, &rid, consumer, opts).await?;
        c.take()
            .ok_or_else(|| DownloadError::Local("download completed without tensors".into()))
    })?;
    // Aliases: (address, length) of a tensor already turned into a buffer → that buffer.
    let mut seen: HashMap<(usize, usize), Py<TensorBuffer>> = HashMap::new();
    let mut out = Vec::with_capacity(dict.len());
    for (name, t) in dict {
        let key = (t.data().as_ptr() as usize, t.data().len());
        let buf = match seen.get(&key) {
            Some(b) if !t.data().is_empty() => b.clone_ref(py),
            _ => {
                let b = if writable {
                    // Copy with the GIL released; the frame is released when `t` goes, so the
                    // peak stays near one dict.
                    let data = t.data().clone();
                    TensorBuffer::owned(py.detach(move || data.to_vec()))
                } else {
                    TensorBuffer::shared(t.data().clone())
                };
                let b = Py::new(py, b)?;
                seen.insert(key, b.clone_ref(py));
                b
            }
        };
        out.push(PyTuple::new(
            py,
            [
                name.into_pyobject(py)?.into_any(),
                t.dtype().to_string().into_pyobject(py)?.into_any(),
                PyTuple::new(py, t.shape())?.into_any(),
                buf.into_bound(py).into_any(),
            ],
        )?);
    }
    Ok(out)
}

/// Download an object served as bytes or a file (kind=file) into memory, as `bytes`.
#[pyfunction]
#[pyo3(signature = (ticket, *, name=None, tls=None, progress=None, request_timeout=60.0, cancel=None))]
pub fn download_bytes<'py>(
    py: Python<'py>,
    ticket: &str,
    name: Option<String>,
    tls: Option<Tls>,
    progress: Option<Py<PyAny>>,
    request_timeout: f64,
    cancel: Option<PyRef<'_, CancelToken>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let call = Call::new(
        ticket,
        name,
        tls,
        progress,
        request_timeout,
        cancel.as_deref(),
    )?;
    if call.ticket.kind != Kind::File {
        return Err(errors::usage(format!(
            "{} is a {} ticket, not bytes or a file; use ferry.download_tensors() for a tensor dict, the `ferry get` command for a set",
            call.ticket.name,
            call.ticket.kind.as_str()
        )));
    }
    let (data, ticket) = call.run(py, |service, ticket, opts| async move {
        let rid = ferry::core::RefId::new(ticket.ref_id.clone());
        dl_bytes(&service, &ticket.source, &rid, opts).await
    })?;
    // A bytes object's chunks carry no pin of their own: hold the result to the ticket's.
    let got = (data.len() as u64, py.detach(|| blake3::hash(&data)));
    if got.0 != ticket.size || got.1.to_hex().as_str() != ticket.blake3 {
        return Err(errors::transfer(format!(
            "{}: the sender sent {} bytes with BLAKE3 {}, the ticket pins {} bytes with BLAKE3 {}; nothing was kept",
            ticket.name,
            got.0,
            got.1.to_hex(),
            ticket.size,
            ticket.blake3
        )));
    }
    Ok(PyBytes::new(py, &data))
}
