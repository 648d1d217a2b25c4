//! What a `ferry.Sender` tells Python about its transaction: the `Outcome` it ended with, and
//! the lifecycle `Event`s delivered to `on_event` from a thread of their own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ferry::core::service::{FinalCause, ServiceEvent};
use ferry::core::{DownloadStatus, RefId, TransferOutcome, TxId};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::runtime::{block_on, runtime};
use tokio_util::sync::CancellationToken;

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
#[derive(Default)]
pub struct Event {
    /// `progress`, `downloaded_to_one`, `downloaded_to_all`, `refused`, `withdrew` or
    /// `transaction_done`.
    #[pyo3(get)]
    kind: &'static str,
    /// The object's ticket (`progress`, `downloaded_to_one`, `downloaded_to_all`, `refused`).
    #[pyo3(get)]
    ticket: Option<String>,
    /// The receiver (`progress`, `downloaded_to_one`, `refused`, `withdrew`).
    #[pyo3(get)]
    receiver: Option<String>,
    /// `success` or `failed` (`downloaded_to_one`).
    #[pyo3(get)]
    status: Option<String>,
    /// Why a receiver failed (`downloaded_to_one` with status `failed`), in words.
    #[pyo3(get)]
    cause: Option<String>,
    /// The refusal code (`refused`): `NOT_EXPECTED_RECEIVER` (not in `allow`) or
    /// `RECEIVER_LIMIT_REACHED` (every place of `receivers=` is taken).
    #[pyo3(get)]
    refusal: Option<&'static str>,
    /// The receiver that took the place of one whose connection closed (`withdrew`; `None`
    /// when it cancelled and its place is open again).
    #[pyo3(get)]
    replaced_by: Option<String>,
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
        let mut s = format!("ferry.Event(kind={:?}", self.kind);
        let fields: [(&str, Option<String>); 6] = [
            ("receiver", self.receiver.clone()),
            ("status", self.status.clone()),
            ("cause", self.cause.clone()),
            ("refusal", self.refusal.map(str::to_string)),
            ("replaced_by", self.replaced_by.clone()),
            ("bytes_done", self.bytes_done.map(|b| b.to_string())),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                s.push_str(&format!(", {k}={v:?}"));
            }
        }
        s + ")"
    }
}

/// Why a receiver failed, in words (the `cause` of a failed `downloaded_to_one`).
fn cause_words(cause: FinalCause) -> &'static str {
    match cause {
        FinalCause::Served => "the sender could not produce it",
        FinalCause::Confirmed => "the receiver could not keep it",
        FinalCause::Cancelled => "cancelled by the receiver",
        FinalCause::AcquireBudget => "it never pulled in time",
        FinalCause::IdleBudget => "it was silent for too long",
        FinalCause::Disconnected => {
            "its connection was lost and it did not come back within reconnect_timeout"
        }
    }
}

/// The tickets of a sender's objects as (ref id, ticket), in the order they were added (for
/// outcomes, events and `Sender.tickets`).
pub type Tickets = Arc<Mutex<Vec<(String, String)>>>;

/// The ticket of `rid`, or the bare ref id if it has none.
pub fn ticket_of(tickets: &Tickets, rid: &str) -> String {
    tickets
        .lock()
        .ok()
        .and_then(|m| m.iter().find(|(r, _)| r == rid).map(|(_, t)| t.clone()))
        .unwrap_or_else(|| rid.to_string())
}

pub fn outcome_of(o: &TransferOutcome, tickets: &Tickets) -> Outcome {
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

/// The name of the thread that calls `on_event`.
pub const EVENT_THREAD: &str = "ferry-events";

/// Deliver the transaction's events to `cb` from a thread of its own (so a slow callback never
/// stalls a transfer); an exception in `cb` is reported through `sys.unraisablehook` and the
/// next event is delivered. Ends after `transaction_done`, or when the service shuts down.
pub fn spawn_event_thread(
    cb: Py<PyAny>,
    mut rx: tokio::sync::broadcast::Receiver<ServiceEvent>,
    tx_id: TxId,
    tickets: Tickets,
    done: watch::Sender<bool>,
) {
    let run = move || {
        let ticket_of = |rid: &RefId| Some(ticket_of(&tickets, rid.as_str()));
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
                    cause,
                } if *t == tx_id => (
                    Event {
                        kind: "downloaded_to_one",
                        ticket: ticket_of(ref_id),
                        receiver: Some(receiver.clone()),
                        status: Some(status.as_str().to_string()),
                        cause: (*status == DownloadStatus::Failed)
                            .then(|| cause_words(*cause).to_string()),
                        ..Event::default()
                    },
                    false,
                ),
                ServiceEvent::DownloadedToAll { tx_id: t, ref_id } if *t == tx_id => (
                    Event {
                        kind: "downloaded_to_all",
                        ticket: ticket_of(ref_id),
                        ..Event::default()
                    },
                    false,
                ),
                ServiceEvent::Progress(p) if p.tx_id.as_ref() == Some(&tx_id) => (
                    Event {
                        kind: "progress",
                        ticket: ticket_of(&p.ref_id),
                        receiver: p.receiver.clone(),
                        bytes_done: Some(p.bytes_done),
                        ..Event::default()
                    },
                    false,
                ),
                ServiceEvent::Refused {
                    tx_id: t,
                    ref_id,
                    receiver,
                    refusal,
                } if *t == tx_id => (
                    Event {
                        kind: "refused",
                        ticket: ticket_of(ref_id),
                        receiver: Some(receiver.clone()),
                        refusal: Some(refusal.as_str()),
                        ..Event::default()
                    },
                    false,
                ),
                ServiceEvent::ReceiverWithdrew {
                    tx_id: t,
                    receiver,
                    replaced_by,
                } if *t == tx_id => (
                    Event {
                        kind: "withdrew",
                        receiver: Some(receiver.clone()),
                        replaced_by: replaced_by.clone(),
                        ..Event::default()
                    },
                    false,
                ),
                ServiceEvent::TransactionDone { outcome, .. } if outcome.tx_id == tx_id => {
                    let o = outcome_of(outcome, &tickets);
                    let event = Python::attach(|py| {
                        Py::new(py, o).map(|o| Event {
                            kind: "transaction_done",
                            outcome: Some(o),
                            ..Event::default()
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
        .name(EVENT_THREAD.into())
        .spawn(run)
    {
        tracing::warn!(error = %e, "cannot start the event thread; on_event will not be called");
    }
}

/// Whether this is the thread that calls `on_event` (a callback calling `wait` must not wait
/// for itself).
pub fn on_event_thread() -> bool {
    std::thread::current().name() == Some(EVENT_THREAD)
}

/// Wait (the GIL released) until the event thread has called on_event with
/// `transaction_done` (`done` turns true), so that `wait` never returns an outcome the callback
/// has not yet been told of. On the event thread itself it returns at once.
pub fn events_delivered(py: Python<'_>, done: &watch::Receiver<bool>) -> PyResult<()> {
    if *done.borrow() || on_event_thread() {
        return Ok(());
    }
    let mut done = done.clone();
    block_on(
        py,
        async move {
            let _ = done.wait_for(|d| *d).await;
        },
        &CancellationToken::new(),
        "interrupted while on_event was still being called",
        |_| Ok(()),
    )
}
