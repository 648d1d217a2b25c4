//! One receiving call: the ticket, this receiver's cell, the download options, and how the
//! download runs — on a fresh cell connected to the ticket's sender, with the GIL released,
//! progress handed to Python on the caller's thread, Ctrl-C turned into a cancel.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::fetch_set::SetProgress;
use ferry::ticket::{Kind, Ticket};
use ferry::{DownloadError, DownloadOptions, DownloadProgress, DownloadService};
use pyo3::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::cells::{connect_failure, receiver_name, Tls};
use crate::errors;
use crate::pool::Lease;
use crate::runtime::{block_on, CancelToken};

/// Progress of one download (or of a whole set), as passed to a `progress=` callback.
#[pyclass(module = "ferry._ferry", frozen)]
#[derive(Clone)]
pub struct Progress {
    /// Payload bytes received by this call so far (not counting `resumed_from`).
    #[pyo3(get)]
    bytes_done: u64,
    /// Total bytes of the object (or set), when known.
    #[pyo3(get)]
    total_bytes: Option<u64>,
    /// Bytes that were already here when the call started (a kept `.part`, complete files of
    /// a set): the object is `resumed_from + bytes_done` of `total_bytes` along.
    #[pyo3(get)]
    resumed_from: u64,
    /// Chunks received so far (`None` for a set).
    #[pyo3(get)]
    chunks_done: Option<u64>,
    /// Files of a set finished so far (`None` for a single object).
    #[pyo3(get)]
    files_done: Option<usize>,
    /// Files in the set (`None` for a single object).
    #[pyo3(get)]
    files: Option<usize>,
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
        let files = match (self.files_done, self.files) {
            (Some(d), Some(n)) => format!(", files={d}/{n}"),
            _ => String::new(),
        };
        format!(
            "ferry.Progress(state={:?}, bytes_done={}, total_bytes={:?}, resumed_from={}{files}, bytes_per_sec={:.0})",
            self.state, self.bytes_done, self.total_bytes, self.resumed_from, self.bytes_per_sec
        )
    }
}

impl Progress {
    /// A report of one object's download, `resumed_from` bytes having been here before it.
    fn of_object(p: &DownloadProgress, size_hint: u64, resumed_from: u64) -> Self {
        let total_bytes = p.total_bytes.unwrap_or(size_hint);
        Self {
            // A tensor dict's items carry small safetensors headers on top of the tensor bytes
            // the total counts: never report more than the total.
            bytes_done: p.bytes_done.min(total_bytes.saturating_sub(resumed_from)),
            total_bytes: Some(total_bytes),
            resumed_from,
            chunks_done: Some(p.chunks_done),
            files_done: None,
            files: None,
            elapsed: p.elapsed.as_secs_f64(),
            bytes_per_sec: p.bytes_per_sec,
            state: p.state.as_str().to_lowercase(),
        }
    }

    /// A report of a whole set, in state `state`.
    pub fn of_set(p: &SetProgress, state: &str) -> Self {
        let moved = p.bytes.saturating_sub(p.resumed_from);
        let secs = p.elapsed.as_secs_f64();
        Self {
            bytes_done: moved,
            total_bytes: Some(p.total),
            resumed_from: p.resumed_from,
            chunks_done: None,
            files_done: Some(p.files_done),
            files: Some(p.files),
            elapsed: secs,
            bytes_per_sec: if secs > 0.0 { moved as f64 / secs } else { 0.0 },
            state: state.to_string(),
        }
    }
}

/// The newest progress report not yet handed to Python (the download writes, the waiting
/// thread takes).
pub type Latest = Arc<Mutex<Option<Progress>>>;

/// Everything a receiving call shares: the parsed ticket, the cell to make, the options.
pub struct Call {
    /// The ticket being fetched.
    pub ticket: Ticket,
    name: String,
    tls: Option<Tls>,
    /// The download options (progress reports go to [`Call::latest`]).
    pub opts: DownloadOptions,
    cancel: CancellationToken,
    progress: Option<Py<PyAny>>,
    /// The newest report for the `progress=` callback.
    pub latest: Latest,
    /// Bytes already here when the download started (set once the destination is opened).
    pub resumed: Arc<AtomicU64>,
    /// The part file a resumable file download keeps, named in its error messages.
    pub part: Option<PathBuf>,
}

impl Call {
    /// Check the arguments every receiving function shares and make the call (nothing is
    /// connected yet).
    pub fn new(
        ticket: Ticket,
        name: Option<String>,
        tls: Option<Tls>,
        progress: Option<Py<PyAny>>,
        request_timeout: f64,
        cancel: Option<&CancelToken>,
    ) -> PyResult<Self> {
        if ticket.tls && tls.is_none() {
            return Err(errors::usage(
                "this ticket is for a TLS sender (stcp); pass tls=ferry.TLS(cert=..., key=..., ca=...)",
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
        let resumed = Arc::new(AtomicU64::new(0));
        let mut opts = DownloadOptions {
            per_request_timeout: Duration::from_secs_f64(request_timeout),
            cancel: Some(cancel.clone()),
            // Reports are handed to Python once per tick of the waiting thread; none sooner.
            progress_interval: crate::runtime::TICK,
            ..DownloadOptions::default()
        };
        if progress.is_some() {
            let (latest, resumed) = (Arc::clone(&latest), Arc::clone(&resumed));
            let hint = ticket.size;
            opts = opts.with_progress(move |p| {
                let r = resumed.load(Ordering::Relaxed);
                if let Ok(mut slot) = latest.lock() {
                    *slot = Some(Progress::of_object(p, hint, r));
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
            resumed,
            part: None,
        })
    }

    /// This call, if its ticket is of `kind`; else a usage error naming the ticket and its kind,
    /// followed by `otherwise` (what the ticket is not, and which function to call instead).
    pub fn of_kind(self, kind: Kind, otherwise: &str) -> PyResult<Self> {
        if self.ticket.kind != kind {
            return Err(errors::usage(format!(
                "{} is a {} ticket, {otherwise}",
                self.ticket.name,
                self.ticket.kind.as_str()
            )));
        }
        Ok(self)
    }

    /// Whether a `progress=` callback was given.
    pub fn wants_progress(&self) -> bool {
        self.progress.is_some()
    }

    /// Run `download` on this receiver's cell ([`Lease`]) connected to the ticket's sender,
    /// with the GIL released; Ctrl-C cancels it. The lease ends whatever happens.
    pub fn run<T, F, Fut>(self, py: Python<'_>, download: F) -> PyResult<T>
    where
        T: Send + 'static,
        F: FnOnce(DownloadService, Ticket, DownloadOptions) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, DownloadError>> + Send,
    {
        let lease = Lease::acquire(&self.name, self.tls.as_ref())?;
        let url = self.ticket.url();
        let ticket = self.ticket.clone();
        let opts = self.opts;
        let cancel = self.cancel.clone();
        let fut = async move {
            let connected = tokio::select! {
                r = lease.connect(&url) => r.map_err(|e| Err(ConnectError::Cell(url.clone(), e))),
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
                Ok(()) => Outcome::Done(download(lease.service().clone(), ticket, opts).await),
                Err(Ok(())) => Outcome::CancelledConnecting,
                Err(Err(e)) => Outcome::ConnectFailed(e),
            };
            lease.release().await;
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
        let out = match block_on(py, fut, &self.cancel, &interrupted, deliver) {
            Ok(out) => out,
            // Ctrl-C: the download wound down; say what it left.
            Err(e) if e.is_instance_of::<errors::Interrupted>(py) => {
                return Err(errors::cancelled(&self.ticket, self.part.as_deref()))
            }
            Err(e) => return Err(e),
        };
        // The last report (completed, failed or aborted) arrives as the download ends.
        deliver(py)?;
        match out {
            Outcome::Done(r) => {
                r.map_err(|e| errors::download_failed(py, e, &self.ticket, self.part.as_deref()))
            }
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
