//! `ferry.Sender`: a cell listening for receivers, its download service, and one transaction
//! whose objects (files, tensor dicts, bytes) are handed out as tickets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry::cellnet::Cell;
use ferry::core::service::{ServiceConfig, ServiceEvent};
use ferry::core::{Downloadable, RefId, TransferOutcome, TxConfig};
use ferry::objects::tensors::tensor_dict_pin;
use ferry::objects::{
    BytesObject, CacheOptions, ExpectedReceivers, FileObject, TensorDict, TensorDictObject,
};
use ferry::ticket::{advertised_addr, check_relative_name, Kind, Ticket};
use ferry::{DownloadService, ObjectDownloader, ServiceOptions};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyMapping};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cells::{build_cell, check_name, Tls};
use crate::errors;
use crate::memory::{bytes_from_py, tensor_from_py};
use crate::runtime::{block_on, block_on_quick, runtime};

/// Default `cache_bytes`: tensor items (a header and a copy of one tensor) kept for receivers
/// that are behind. The dict itself is already in memory, so a miss only costs the copy again;
/// a small cache keeps the sender near the dict's own size.
const DEFAULT_CACHE_BYTES: u64 = 16 << 20;

/// Throttle of the sender's progress events (only produced when `on_event` is set).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// What a transaction ended with: `Sender.wait()` returns it.
#[pyclass(module = "ferry._ferry", frozen)]
pub struct Outcome {
    /// `completed`, `failed` or `aborted` (NVFlare's outcome statuses).
    #[pyo3(get)]
    status: String,
    /// Why (`all_receivers_succeeded`, `timeout`, `deleted`, ...).
    #[pyo3(get)]
    reason: String,
    /// How the transaction ended (`finished`, `timeout`, `deleted`, `shutdown`).
    #[pyo3(get)]
    done_status: String,
    /// Per ticket (in the order the objects were added), the final status of each receiver
    /// (`success` or `failed`).
    receivers: Vec<(String, BTreeMap<String, String>)>,
}

#[pymethods]
impl Outcome {
    /// Whether every expected receiver got every object.
    #[getter]
    fn completed(&self) -> bool {
        self.status == "completed"
    }

    /// `{ticket: {receiver: "success" | "failed"}}` for every object of the transaction.
    #[getter]
    fn receivers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (t, m) in &self.receivers {
            let inner = PyDict::new(py);
            for (k, v) in m {
                inner.set_item(k, v)?;
            }
            d.set_item(t, inner)?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "ferry.Outcome(status={:?}, reason={:?}, receivers={:?})",
            self.status, self.reason, self.receivers
        )
    }
}

/// One lifecycle event of a sender's transaction, passed to `on_event`.
#[pyclass(module = "ferry._ferry", frozen)]
pub struct Event {
    /// `downloaded_to_one`, `downloaded_to_all`, `progress` or `transaction_done`.
    #[pyo3(get)]
    kind: &'static str,
    /// The object's ticket (not for `transaction_done`).
    #[pyo3(get)]
    ticket: Option<String>,
    /// The receiver (`downloaded_to_one`, `progress`).
    #[pyo3(get)]
    receiver: Option<String>,
    /// `success` or `failed` (`downloaded_to_one`).
    #[pyo3(get)]
    status: Option<String>,
    /// Bytes served to the receiver so far (`progress`).
    #[pyo3(get)]
    bytes_done: Option<u64>,
    outcome: Option<Py<Outcome>>,
}

#[pymethods]
impl Event {
    /// The outcome (`transaction_done`).
    #[getter]
    fn outcome(&self, py: Python<'_>) -> Option<Py<Outcome>> {
        self.outcome.as_ref().map(|o| o.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        format!(
            "ferry.Event(kind={:?}, receiver={:?}, status={:?}, bytes_done={:?})",
            self.kind, self.receiver, self.status, self.bytes_done
        )
    }
}

/// The tickets of a sender's objects as (ref id, ticket), in the order they were added (for
/// outcomes, events and `Sender.tickets`).
type Tickets = Arc<Mutex<Vec<(String, String)>>>;

/// The ticket of `rid`, or the bare ref id if it has none.
fn ticket_of(tickets: &Tickets, rid: &str) -> String {
    tickets
        .lock()
        .ok()
        .and_then(|m| m.iter().find(|(r, _)| r == rid).map(|(_, t)| t.clone()))
        .unwrap_or_else(|| rid.to_string())
}

fn outcome_of(o: &TransferOutcome, tickets: &Tickets) -> Outcome {
    Outcome {
        status: o.status.as_str().to_string(),
        reason: o.reason.to_string(),
        done_status: o.done_status.as_str().to_string(),
        receivers: o
            .refs
            .iter()
            .map(|(rid, st)| {
                (
                    ticket_of(tickets, rid.as_str()),
                    st.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().to_string()))
                        .collect(),
                )
            })
            .collect(),
    }
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
    #[pyo3(signature = (listen="tcp://127.0.0.1:0", *, name="ferry-sender", receivers=1, allow=None, tls=None, timeout=600.0, advertise=None, chunk_size=1_048_576, cache_bytes=DEFAULT_CACHE_BYTES, on_event=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        listen: &str,
        name: &str,
        receivers: usize,
        allow: Option<Vec<String>>,
        tls: Option<Tls>,
        timeout: f64,
        advertise: Option<String>,
        chunk_size: u64,
        cache_bytes: u64,
        on_event: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        check_name("name", name)?;
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(errors::usage(format!(
                "timeout={timeout}: expected a positive number of seconds"
            )));
        }
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
        let expected = match &allow {
            Some(ids) => ExpectedReceivers::Ids(ids.clone()),
            None => ExpectedReceivers::Count(receivers),
        };
        let mut cfg = TxConfig::new(Duration::from_secs_f64(timeout));
        cfg = match &allow {
            Some(ids) => cfg.with_receiver_ids(ids.clone()),
            None => cfg.with_num_receivers(receivers),
        };
        if on_event.is_some() {
            cfg = cfg.with_progress(PROGRESS_INTERVAL);
        }
        let tx = match ObjectDownloader::new(&service, cfg) {
            Ok(tx) => tx,
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
        let obj = py
            .detach(|| {
                FileObject::builder(&path)
                    .chunk_size(chunk)
                    .digest(true)
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
            if o.is_some() {
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
        }
        .to_string();
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

/// Deliver the transaction's events to `cb` from a thread of its own (so a slow callback never
/// stalls a transfer); an exception in `cb` is reported through `sys.unraisablehook` and the
/// next event is delivered. Ends after `transaction_done`, or when the service shuts down.
fn spawn_event_thread(
    cb: Py<PyAny>,
    mut rx: tokio::sync::broadcast::Receiver<ServiceEvent>,
    tx_id: ferry::core::TxId,
    tickets: Tickets,
    done: watch::Sender<bool>,
) {
    let run = move || {
        let ticket_of = |rid: &RefId| ticket_of(&tickets, rid.as_str());
        loop {
            let ev = match runtime().block_on(rx.recv()) {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "on_event is slower than the events; some were dropped"
                    );
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            let (event, last) = match &ev {
                ServiceEvent::DownloadedToOne {
                    tx_id: t,
                    ref_id,
                    receiver,
                    status,
                    ..
                } if *t == tx_id => (
                    Event {
                        kind: "downloaded_to_one",
                        ticket: Some(ticket_of(ref_id)),
                        receiver: Some(receiver.clone()),
                        status: Some(status.as_str().to_string()),
                        bytes_done: None,
                        outcome: None,
                    },
                    false,
                ),
                ServiceEvent::DownloadedToAll { tx_id: t, ref_id } if *t == tx_id => (
                    Event {
                        kind: "downloaded_to_all",
                        ticket: Some(ticket_of(ref_id)),
                        receiver: None,
                        status: None,
                        bytes_done: None,
                        outcome: None,
                    },
                    false,
                ),
                ServiceEvent::Progress(p) if p.tx_id.as_ref() == Some(&tx_id) => (
                    Event {
                        kind: "progress",
                        ticket: Some(ticket_of(&p.ref_id)),
                        receiver: p.receiver.clone(),
                        status: None,
                        bytes_done: Some(p.bytes_done),
                        outcome: None,
                    },
                    false,
                ),
                ServiceEvent::TransactionDone { outcome, .. } if outcome.tx_id == tx_id => {
                    let o = outcome_of(outcome, &tickets);
                    let event = Python::attach(|py| {
                        Py::new(py, o).map(|o| Event {
                            kind: "transaction_done",
                            ticket: None,
                            receiver: None,
                            status: None,
                            bytes_done: None,
                            outcome: Some(o),
                        })
                    });
                    match event {
                        Ok(e) => (e, true),
                        Err(_) => break,
                    }
                }
                _ => continue,
            };
            Python::attach(|py| {
                if let Err(e) = cb.call1(py, (event,)) {
                    e.write_unraisable(py, Some(cb.bind(py)));
                }
            });
            if last {
                break;
            }
        }
        let _ = done.send(true);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("ferry-events".into())
        .spawn(run)
    {
        tracing::warn!(error = %e, "cannot start the event thread; on_event will not be called");
    }
}
