//! `ferry.Sender`: a cell listening for receivers, its download service, and one transaction
//! whose objects (files, tensor dicts, bytes) are handed out as tickets.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry::cellnet::Cell;
use ferry::core::service::ServiceConfig;
use ferry::core::{Downloadable, RefId, TransferOutcome, TxConfig};
use ferry::objects::tensors::tensor_dict_pin;
use ferry::objects::{
    BytesObject, CacheOptions, ExpectedReceivers, FileObject, TensorDict, TensorDictObject,
};
use ferry::ticket::{advertised_addr, check_relative_name, Kind, Ticket};
use ferry::{DownloadError, DownloadService, ObjectDownloader, ServiceOptions};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMapping};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cells::{build_cell, check_name, Tls};
use crate::errors;
use crate::events::{
    events_delivered, on_event_thread, outcome_of, spawn_event_thread, Outcome, Tickets,
};
use crate::memory::{bytes_from_py, tensor_from_py};
use crate::runtime::{block_on, block_on_quick, runtime};

/// Default `cache_bytes`: tensor items kept ready for receivers that are behind. An item is
/// a header made here followed by the array's own memory (no copy), so the cache holds no
/// tensor data of its own and a miss only costs making the header again; the budget counts
/// items at their full size, so 8 MiB keeps about two 4 MiB items.
const DEFAULT_CACHE_BYTES: u64 = 8 << 20;

/// Throttle of the sender's progress events (only produced when `on_event` is set).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Default `reconnect_timeout` (as `ferry serve --reconnect-timeout`).
const DEFAULT_RECONNECT_SECS: f64 = 30.0;

/// How the tickets a sender hands out are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TicketFormat {
    /// `ferry1...`.
    Compact,
    /// `ferry+tcp://HOST:PORT/SENDER/REF?...`.
    Url,
}

/// Serve files, tensor dicts and bytes to receivers, as one transaction.
#[pyclass(module = "ferry._ferry", frozen)]
pub struct Sender {
    cell: Cell,
    service: DownloadService,
    tx: ObjectDownloader,
    name: String,
    bound: String,
    addr: String,
    chunk_size: u64,
    ticket_format: TicketFormat,
    tickets: Tickets,
    closed: AtomicBool,
    /// Who the transaction expects (tensor items leave the cache once all of them have one).
    expected: ExpectedReceivers,
    /// Bytes of tensor items kept for receivers that are behind (`cache_bytes=`).
    cache_bytes: u64,
    /// The outcome once seen: the service forgets it when it shuts down (`close`).
    final_outcome: Mutex<Option<TransferOutcome>>,
    /// `true` once the event thread has delivered `transaction_done` (or there is none).
    events_done: watch::Receiver<bool>,
}

#[pymethods]
impl Sender {
    #[new]
    #[pyo3(signature = (listen="tcp://127.0.0.1:0", *, name="ferry-sender", receivers=1, allow=None, tls=None, timeout=600.0, reconnect_timeout=DEFAULT_RECONNECT_SECS, advertise=None, chunk_size=1_048_576, cache_bytes=DEFAULT_CACHE_BYTES, ticket_format="compact", on_event=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        listen: &str,
        name: &str,
        receivers: usize,
        allow: Option<Vec<String>>,
        tls: Option<Tls>,
        timeout: f64,
        reconnect_timeout: f64,
        advertise: Option<String>,
        chunk_size: u64,
        cache_bytes: u64,
        ticket_format: &str,
        on_event: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        check_name("name", name)?;
        ferry::ticket::check_sender_name(name).map_err(|e| {
            errors::usage(format!(
                "name is {e}: receivers could not read this sender's tickets; choose a shorter cell name"
            ))
        })?;
        for (what, secs) in [
            ("timeout", timeout),
            ("reconnect_timeout", reconnect_timeout),
        ] {
            if !(secs.is_finite() && secs > 0.0) {
                return Err(errors::usage(format!(
                    "{what}={secs}: expected a positive number of seconds"
                )));
            }
        }
        let ticket_format = match ticket_format {
            "compact" => TicketFormat::Compact,
            "url" => TicketFormat::Url,
            other => {
                return Err(errors::usage(format!(
                    "ticket_format={other:?}: expected \"compact\" (ferry1...) or \"url\" (ferry+tcp://...)"
                )))
            }
        };
        if !(64 << 10..=64 << 20).contains(&chunk_size) {
            return Err(errors::usage(format!(
                "chunk_size={chunk_size}: expected 64 KiB to 64 MiB"
            )));
        }
        let allow = allow.filter(|a| !a.is_empty());
        if let Some(a) = &allow {
            for n in a {
                check_name("allow", n)?;
            }
        } else if receivers == 0 {
            return Err(errors::usage(
                "receivers=0: a transaction needs at least one expected receiver",
            ));
        }
        let url = match (listen.strip_prefix("tcp://"), listen.starts_with("stcp://")) {
            (Some(rest), _) if tls.is_some() => format!("stcp://{rest}"),
            (Some(_), _) => listen.to_string(),
            (None, true) if tls.is_some() => listen.to_string(),
            (None, true) => {
                return Err(errors::usage(format!(
                    "listen={listen:?} needs tls=ferry.TLS(cert=..., key=..., ca=...)"
                )))
            }
            (None, false) => {
                return Err(errors::usage(format!(
                    "listen={listen:?}: expected tcp://HOST:PORT (e.g. tcp://0.0.0.0:7051)"
                )))
            }
        };
        let cell = build_cell(name, tls.as_ref())?;
        let bound = match block_on_quick(py, cell.listen(&url)) {
            Ok(b) => b,
            Err(e) => {
                return Err(errors::usage(format!(
                    "cannot listen on {url} ({e}); pick another address or port with listen=\"tcp://HOST:PORT\""
                )))
            }
        };
        let service = {
            let _rt = runtime().enter();
            DownloadService::new(
                &cell,
                ServiceOptions {
                    engine: ServiceConfig {
                        // Pulls from cells outside `allow` get invalid_request and the reason.
                        refuse_undeclared: true,
                        ..ServiceConfig::default()
                    },
                    ..ServiceOptions::default()
                },
            )
        };
        let events = on_event.as_ref().map(|_| service.events());
        // A receiver whose connection closed fails after reconnect_timeout unless it is back.
        let mut cfg = TxConfig::new(Duration::from_secs_f64(timeout))
            .with_reconnect_timeout(Duration::from_secs_f64(reconnect_timeout));
        cfg = match &allow {
            Some(ids) => cfg.with_receiver_ids(ids.clone()),
            None => cfg.with_num_receivers(receivers),
        };
        if on_event.is_some() {
            cfg = cfg.with_progress(PROGRESS_INTERVAL);
        }
        // What the tensor caches learn is what the engine enforces: one translation, its own.
        let started = cfg
            .expected_receivers()
            .map_err(DownloadError::from)
            .and_then(|expected| Ok((expected, ObjectDownloader::new(&service, cfg)?)));
        let (expected, tx) = match started {
            Ok(started) => started,
            Err(e) => {
                block_on_quick(py, async {
                    service.shutdown().await;
                    cell.shutdown().await;
                });
                return Err(errors::usage(format!("cannot start the transaction: {e}")));
            }
        };
        let tickets: Tickets = Arc::default();
        let (done_tx, events_done) = watch::channel(on_event.is_none());
        if let (Some(cb), Some(rx)) = (on_event, events) {
            spawn_event_thread(cb, rx, tx.tx_id().clone(), Arc::clone(&tickets), done_tx);
        }
        Ok(Self {
            addr: advertised_addr(&bound, advertise.as_deref()),
            cell,
            service,
            tx,
            name: name.to_string(),
            bound,
            chunk_size,
            ticket_format,
            tickets,
            closed: AtomicBool::new(false),
            expected,
            cache_bytes,
            final_outcome: Mutex::new(None),
            events_done,
        })
    }

    /// The URL the sender's cell listens on (the port chosen, when listen had port 0).
    #[getter]
    fn url(&self) -> String {
        self.bound.clone()
    }

    /// `HOST:PORT` written into tickets.
    #[getter]
    fn address(&self) -> String {
        self.addr.clone()
    }

    /// The sender's cell name (FQCN).
    #[getter]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// The transaction id.
    #[getter]
    fn tx_id(&self) -> String {
        self.tx.tx_id().to_string()
    }

    /// The tickets handed out so far, in the order the objects were added.
    #[getter]
    fn tickets(&self) -> Vec<String> {
        self.tickets
            .lock()
            .map(|m| m.iter().map(|(_, t)| t.clone()).collect())
            .unwrap_or_default()
    }

    /// Serve a file (read chunk by chunk, never whole in memory). Its BLAKE3 digest is
    /// computed now and pinned in the ticket. `name` is where receivers write it (default:
    /// the file's name). Returns the ticket.
    #[pyo3(signature = (path, *, name=None))]
    fn add_file(&self, py: Python<'_>, path: PathBuf, name: Option<String>) -> PyResult<String> {
        self.check_open()?;
        let name = match name {
            Some(n) => n,
            None => path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    errors::usage(format!(
                        "{}: cannot name it in a ticket; pass name=",
                        path.display()
                    ))
                })?,
        };
        check_relative_name(&name).map_err(|why| errors::usage(format!("name={name:?}: {why}")))?;
        let chunk = self.chunk_size;
        // plain TCP sends file chunks straight from the file (sendfile); TLS reads them
        let file_chunks = self.cell.sends_files_zero_copy();
        let obj = py
            .detach(|| {
                FileObject::builder(&path)
                    .chunk_size(chunk)
                    .digest(true)
                    .file_chunks(file_chunks)
                    .open()
            })
            .map_err(|e| errors::usage(format!("cannot serve {}: {e}", path.display())))?;
        let (size, digest) = (obj.size(), obj.digest().map(str::to_string));
        let digest = digest
            .ok_or_else(|| errors::usage(format!("{}: no digest was computed", path.display())))?;
        self.add(Arc::new(obj), Kind::File, Some(name), size, digest)
    }

    /// Serve a tensor dict: a mapping of names to numpy arrays or torch tensors (CPU,
    /// C-contiguous), served from their own memory without copying. Do not modify them until
    /// the transaction is over. `name` is the .safetensors file `ferry get` writes (default:
    /// REF.safetensors). Returns the ticket.
    #[pyo3(signature = (tensors, *, name=None))]
    fn add_tensors(&self, tensors: &Bound<'_, PyAny>, name: Option<String>) -> PyResult<String> {
        self.check_open()?;
        let mapping = tensors.cast::<PyMapping>().map_err(|_| {
            errors::usage(format!(
                "add_tensors expects a mapping of names to arrays, got {}",
                tensors
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let mut dict = TensorDict::new();
        for item in mapping.items()?.iter() {
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
            let key: String = k.extract().map_err(|_| {
                errors::usage(format!(
                    "tensor names must be str, got {}",
                    k.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?;
            let t = tensor_from_py(&key, &v)?;
            dict.insert(key.clone(), t)
                .map_err(|e| errors::usage(format!("tensor {key:?}: {e}")))?;
        }
        if let Some(n) = &name {
            check_relative_name(n).map_err(|why| errors::usage(format!("name={n:?}: {why}")))?;
        }
        // The ticket pins the tensor-dict digest (items in the order they are served).
        let pin = tensor_dict_pin(&dict);
        let opts = CacheOptions {
            cache_budget: self.cache_bytes,
            ..CacheOptions::default().with_receivers(self.expected.clone())
        };
        let obj = TensorDictObject::from_tensors(dict, opts)
            .map_err(|e| errors::usage(format!("cannot serve the tensors: {e}")))?;
        let rid = self
            .tx
            .add_object(Arc::new(obj))
            .map_err(|e| errors::usage(format!("cannot serve the tensors: {e}")))?;
        Ok(self.ticket_for(rid, Kind::Tensors, name, pin.size, pin.hex()))
    }

    /// Serve bytes (a `bytes` object is served without copying; other bytes-like objects are
    /// copied once). `name` is the file `ferry get` writes (default: the ref id). Returns the
    /// ticket; `ferry.download_bytes(ticket)` gets the bytes back.
    #[pyo3(signature = (data, *, name=None))]
    fn add_bytes(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        name: Option<String>,
    ) -> PyResult<String> {
        self.check_open()?;
        let b = match data.cast::<PyBytes>() {
            Ok(b) => b.clone(),
            Err(_) => py
                .get_type::<PyBytes>()
                .call1((data,))
                .map_err(|_| {
                    errors::usage(format!(
                        "add_bytes expects bytes or a bytes-like object, got {}",
                        data.get_type()
                            .name()
                            .map(|n| n.to_string())
                            .unwrap_or_default()
                    ))
                })?
                .cast_into::<PyBytes>()
                .map_err(|_| errors::usage("bytes() did not return bytes"))?,
        };
        if let Some(n) = &name {
            check_relative_name(n).map_err(|why| errors::usage(format!("name={n:?}: {why}")))?;
        }
        let data: Bytes = bytes_from_py(&b)?;
        let chunk = self.chunk_size;
        let obj = py.detach(move || {
            BytesObject::new(data)
                .with_chunk_size(chunk)
                .map(BytesObject::with_digest)
        });
        let obj = obj.map_err(|e| errors::usage(e.to_string()))?;
        let (size, digest) = (obj.len(), obj.digest().map(str::to_string));
        let digest = digest.ok_or_else(|| errors::usage("no digest was computed for the bytes"))?;
        self.add(Arc::new(obj), Kind::File, name, size, digest)
    }

    /// Wait until the transaction is over (every expected receiver has every object, or it
    /// failed, timed out or was deleted) and return its outcome; `None` if `timeout` seconds
    /// passed first. Ctrl-C deletes the transaction (receivers in progress fail) and raises
    /// `ferry.Interrupted`.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Outcome>> {
        if let Some(t) = timeout {
            if !(t.is_finite() && t >= 0.0) {
                return Err(errors::usage(format!(
                    "timeout={t}: expected a number of seconds >= 0"
                )));
            }
        }
        if let Some(o) = self.known_outcome() {
            // Over before `wait` was called: on_event may still be catching up.
            events_delivered(py, &self.events_done)?;
            return Ok(Some(outcome_of(&o, &self.tickets)));
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(errors::usage("the sender is closed"));
        }
        let waiter = self.tx.waiter();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let tx = self.tx.tx_id().clone();
        let service = self.service.clone();
        let mut events_done = self.events_done.clone();
        let on_event_thread = on_event_thread();
        let limit = timeout.map(Duration::from_secs_f64);
        let fut = async move {
            let wait = async {
                match limit {
                    Some(l) => tokio::time::timeout(l, waiter.wait()).await.ok().flatten(),
                    None => waiter.wait().await,
                }
            };
            let o = tokio::select! {
                o = wait => o,
                _ = stop.cancelled() => {
                    if let Err(e) = service.delete_transaction(&tx) {
                        tracing::debug!(error = %e, "delete after interrupt");
                    }
                    waiter.wait().await
                }
            };
            if o.is_some() && !on_event_thread {
                // Let on_event see transaction_done before wait() returns.
                let _ = events_done.wait_for(|d| *d).await;
            }
            o
        };
        let o = block_on(
            py,
            fut,
            &cancel,
            "interrupted: the transaction was deleted (receivers in progress will fail)",
            |_| Ok(()),
        )?;
        if let (Some(o), Ok(mut slot)) = (&o, self.final_outcome.lock()) {
            *slot = Some(o.clone());
        }
        Ok(o.map(|o| outcome_of(&o, &self.tickets)))
    }

    /// The outcome if the transaction is over, else `None` (never waits).
    #[getter]
    fn outcome(&self) -> Option<Outcome> {
        self.known_outcome().map(|o| outcome_of(&o, &self.tickets))
    }

    /// Delete the transaction now: receivers in progress fail, the objects are released.
    fn delete(&self) -> PyResult<()> {
        if self.known_outcome().is_some() {
            return Ok(());
        }
        self.tx
            .delete_transaction()
            .map_err(|e| errors::usage(format!("cannot delete the transaction: {e}")))
    }

    /// Delete the transaction (if not over) and stop listening. Idempotent.
    fn close(&self, py: Python<'_>) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.delete();
        let service = self.service.clone();
        let cell = self.cell.clone();
        let waiter = self.tx.waiter();
        let o = block_on_quick(py, async move {
            // A deleted transaction settles at once; keep its outcome for `outcome`/`wait`.
            let o = waiter.wait_timeout(Duration::from_secs(10)).await;
            service.shutdown().await;
            cell.shutdown().await;
            o
        });
        if let (Some(o), Ok(mut slot)) = (o, self.final_outcome.lock()) {
            if slot.is_none() {
                *slot = Some(o);
            }
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "ferry.Sender(name={:?}, url={:?}, objects={})",
            self.name,
            self.bound,
            self.tickets.lock().map(|t| t.len()).unwrap_or(0)
        )
    }
}

impl Sender {
    /// The outcome if the transaction is over (kept after `close`).
    fn known_outcome(&self) -> Option<TransferOutcome> {
        let kept = self.final_outcome.lock().ok().and_then(|o| o.clone());
        kept.or_else(|| self.tx.waiter().outcome())
    }

    fn check_open(&self) -> PyResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(errors::usage("the sender is closed"));
        }
        if self.known_outcome().is_some() {
            return Err(errors::usage(
                "the transaction is over; make a new Sender for more objects",
            ));
        }
        Ok(())
    }

    fn add(
        &self,
        obj: Arc<dyn Downloadable>,
        kind: Kind,
        name: Option<String>,
        size: u64,
        digest: String,
    ) -> PyResult<String> {
        let rid = self
            .tx
            .add_object(obj)
            .map_err(|e| errors::usage(format!("cannot add the object: {e}")))?;
        Ok(self.ticket_for(rid, kind, name, size, digest))
    }

    fn ticket_for(
        &self,
        rid: RefId,
        kind: Kind,
        name: Option<String>,
        size: u64,
        digest: String,
    ) -> String {
        let name = name.unwrap_or_else(|| match kind {
            Kind::File => rid.to_string(),
            Kind::Tensors => format!("{rid}.safetensors"),
            // A Sender never hands out sets (the `ferry` command does).
            Kind::Set => rid.to_string(),
        });
        let t = Ticket {
            tls: self.bound.starts_with("stcp://"),
            addr: self.addr.clone(),
            source: self.name.clone(),
            ref_id: rid.to_string(),
            kind,
            name,
            size,
            blake3: digest,
        };
        let t = match self.ticket_format {
            TicketFormat::Compact => t.to_compact(),
            TicketFormat::Url => t.to_url(),
        };
        if let Ok(mut m) = self.tickets.lock() {
            m.push((rid.to_string(), t.clone()));
        }
        t
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Garbage-collected without close(): the same clean-up, in the background.
        if self.tx.waiter().outcome().is_none() {
            let _ = self.tx.delete_transaction();
        }
        let service = self.service.clone();
        let cell = self.cell.clone();
        runtime().spawn(async move {
            service.shutdown().await;
            cell.shutdown().await;
        });
    }
}
