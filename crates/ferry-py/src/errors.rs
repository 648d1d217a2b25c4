//! The exception classes of `ferry`, one per category of the `ferry` command's exit codes, and
//! how a [`DownloadError`] becomes one of them with a message that says what to do.
//!
//! | class | CLI exit code | when |
//! |---|---|---|
//! | `UsageError` (`FerryError`) | 2 | bad arguments, unusable files or destinations, malformed tickets |
//! | `TransferError` (`FerryError`) | 1 | the transfer itself failed: sender gone, refused, data did not verify |
//! | `Interrupted` (`KeyboardInterrupt`) | 130 | Ctrl-C or a cancel: the transfer was cancelled cleanly |
//!
//! `Interrupted` derives from `KeyboardInterrupt`, not from `FerryError`, so that an
//! `except Exception:` in user code does not swallow a Ctrl-C.
//!
//! A `FerryError` has a `refusal` attribute: the code a ferry sender refused the pull with
//! (`NOT_EXPECTED_RECEIVER`, `RECEIVER_LIMIT_REACHED`, `TRANSACTION_FINISHED`, `UNKNOWN_REF`,
//! `INVALID_REQUEST`, `SHUT_DOWN`), or `None`; programs match on it, not on the words.

use std::path::Path;

use ferry::core::{DownloadFailure, Refusal, ReturnCode};
use ferry::objects::ObjectsError;
use ferry::ticket::Ticket;
use ferry::DownloadError;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;

/// Failures of a set named one by one in its error; the rest are counted.
const NAMED_FAILURES: usize = 3;

pyo3::create_exception!(
    ferry,
    FerryError,
    PyException,
    "Base class of ferry's errors (except Interrupted, which is a KeyboardInterrupt)."
);
pyo3::create_exception!(
    ferry,
    UsageError,
    FerryError,
    "Bad input: an argument, a ticket, a file or a destination that cannot be used (the CLI's exit code 2). Nothing was transferred."
);
pyo3::create_exception!(
    ferry,
    TransferError,
    FerryError,
    "The transfer failed: the sender is gone or refused, the data did not verify, the transaction failed (the CLI's exit code 1)."
);
pyo3::create_exception!(
    ferry,
    Interrupted,
    PyKeyboardInterrupt,
    "Ctrl-C or a cancel stopped the transfer; the peer was told (the CLI's exit code 130). A KeyboardInterrupt, so `except Exception` does not catch it."
);

/// A usage error with `msg`.
pub fn usage(msg: impl Into<String>) -> PyErr {
    UsageError::new_err(msg.into())
}

/// A transfer error with `msg`.
pub fn transfer(msg: impl Into<String>) -> PyErr {
    TransferError::new_err(msg.into())
}

/// An interruption with `msg`.
pub fn interrupted(msg: impl Into<String>) -> PyErr {
    Interrupted::new_err(msg.into())
}

/// Give the error classes their class-level defaults (`FerryError.refusal = None`).
pub fn init_classes(py: Python<'_>) -> PyResult<()> {
    py.get_type::<FerryError>().setattr("refusal", py.None())
}

/// A transfer error with `msg`, carrying the sender's refusal code.
fn refused_err(py: Python<'_>, msg: String, refusal: Refusal) -> PyErr {
    let e = transfer(msg);
    if let Err(set) = e.value(py).setattr("refusal", refusal.as_str()) {
        return set;
    }
    e
}

/// The part file `part`, if it holds data now: (path, bytes). Read from the disk after the
/// failure, so a message never claims what is not there.
fn kept(part: Option<&Path>) -> Option<(&Path, u64)> {
    part.and_then(|p| Some((p, std::fs::metadata(p).ok()?.len())))
        .filter(|&(_, len)| len > 0)
}

/// The download of `t` was cancelled (Ctrl-C, a cancel token, a cancelled task); `part` is
/// where a resumable file download keeps its data.
pub fn cancelled(t: &Ticket, part: Option<&Path>) -> PyErr {
    interrupted(match kept(part) {
        Some((p, len)) => format!(
            "interrupted: {} cancelled; partial data kept in {} ({len} bytes): call again with resume=True to continue",
            t.name,
            p.display()
        ),
        None => format!("interrupted: {} cancelled; nothing was kept", t.name),
    })
}

/// A failed download of what `t` points to, in one message: what happened (with the sender's
/// own reason when it gave one) and what to do. `part` is the part file a resumable file
/// download keeps (`resume=True`).
pub fn download_failed(py: Python<'_>, e: DownloadError, t: &Ticket, part: Option<&Path>) -> PyErr {
    let kept = kept(part);
    let retry = match kept {
        Some((p, len)) => format!(
            "the {len} bytes received so far are kept in {}; call again with resume=True (and a fresh ticket if this one is over) to continue",
            p.display()
        ),
        None if part.is_some() => "nothing was kept; call again to start over".into(),
        None => "nothing was left at the destination; pass resume=True to keep partial data across attempts".into(),
    };
    let (src, name) = (&t.source, &t.name);
    let said = |d: Option<String>| d.map(|d| format!(" (it said: {d})")).unwrap_or_default();
    match e {
        DownloadError::Cancelled { .. } => cancelled(t, part),
        DownloadError::Failed { failure, .. } => match failure {
            DownloadFailure::RequestFailed {
                rc: rc @ (ReturnCode::AuthenticationError | ReturnCode::Unauthenticated),
                detail,
                ..
            } => transfer(format!(
                "the sender {src} refused this receiver ({}): it serves only its allowed receivers; pass one of those names with name=",
                detail.unwrap_or_else(|| rc.to_string())
            )),
            DownloadFailure::Refused {
                refusal, detail, ..
            } => {
                let said = said(detail);
                let msg = match refusal {
                    Refusal::NotExpectedReceiver => format!(
                        "the sender {src} refused {name}: this receiver is not on its list{said}; it serves only its allowed receivers; pass one of those names with name="
                    ),
                    Refusal::ReceiverLimitReached => format!(
                        "the sender {src} refused {name}: it already serves all the receivers it expects{said}; a receiver coming back after a failure must use the name= it had; otherwise the sender needs more receivers="
                    ),
                    Refusal::TransactionFinished => format!(
                        "the sender {src} no longer serves {name}: its transfer is over{said}; ask for a fresh ticket; {retry}"
                    ),
                    Refusal::UnknownRef => format!(
                        "the sender {src} does not serve {name} (ref {}){said}: the ticket is from another or an older sender; ask for a fresh ticket; {retry}",
                        t.ref_id
                    ),
                    Refusal::InvalidRequest => format!(
                        "the sender {src} refused the request for {name} as invalid{said}; if this is a resumed download, its .part file may be damaged: call again without resume=True; {retry}"
                    ),
                    Refusal::ShutDown => format!(
                        "the sender {src} is shutting down{said}; ask for a fresh ticket when it serves again; {retry}"
                    ),
                };
                refused_err(py, msg, refusal)
            }
            DownloadFailure::RequestFailed {
                rc: ReturnCode::InvalidRequest,
                detail,
                ..
            } => transfer(format!(
                "the sender {src} no longer serves {name}: its transfer was cancelled or is over{}; ask for a fresh ticket; {retry}",
                said(detail)
            )),
            DownloadFailure::RequestFailed { rc, detail, .. } => transfer(format!(
                "lost the sender {src} at {} while downloading {name} ({rc}{}); is the sender still running? {retry}",
                t.addr,
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            )),
            DownloadFailure::ProducerError { .. } => transfer(format!(
                "the sender {src} could not produce {name} (ref {}): the file may have changed or become unreadable there, or the transfer is over; ask for a fresh ticket",
                t.ref_id
            )),
            DownloadFailure::RetriesExhausted { attempts, .. } => transfer(format!(
                "the sender {src} stopped answering ({attempts} attempts for one chunk); check it is alive and reachable, or raise request_timeout; {retry}"
            )),
            DownloadFailure::PlanRefused(why)
            | DownloadFailure::ConsumeFailed(why)
            | DownloadFailure::CompletionFailed(why) => {
                match why.strip_prefix("integrity check failed: ") {
                    Some(what) => transfer(format!(
                        "{name} is not what the ticket pins: {what}; {retry}; the sender {src} sends other content than the ticket names (a changed file, a wrong ticket, or tampering)"
                    )),
                    None => transfer(format!(
                        "{name} could not be received or written ({why}); {retry}"
                    )),
                }
            }
            other => transfer(format!("{name}: {other}; {retry}")),
        },
        DownloadError::Objects(e) => unwritable(&e, t),
        DownloadError::Manifest(why) => transfer(format!(
            "refusing the set {name} from {src}: {why}; nothing was written (the ticket pins this manifest: ask its sender)"
        )),
        DownloadError::Local(why) => usage(format!("{name}: {why}")),
        other => transfer(format!("{name}: {other}; {retry}")),
    }
}

/// A destination that cannot be written: a usage error that says what to change.
fn unwritable(e: &ObjectsError, t: &Ticket) -> PyErr {
    match e {
        ObjectsError::DestinationExists(p) => usage(format!(
            "{} already exists; pass overwrite=True to replace it{}, or pick another out_dir",
            p.display(),
            if t.kind == ferry::ticket::Kind::Set {
                ", resume=True to keep the files of this set that are complete"
            } else {
                ""
            }
        )),
        ObjectsError::OtherContent { why, .. } => usage(format!(
            "{why}; nothing was fetched: remove it, or pass overwrite=True to discard it and start over"
        )),
        other => usage(format!("cannot write {}: {other}", t.name)),
    }
}

/// The failure of a set of which some members did not arrive (`failures`, one error per
/// member, of `files`): the most telling one (interrupted, then bad input, then a failed
/// transfer) in its own class, with how many arrived, the next few failures, and what to do.
pub fn set_failed(
    py: Python<'_>,
    set: &str,
    files: usize,
    mut failures: Vec<PyErr>,
    resume: bool,
) -> PyErr {
    let rank = |e: &PyErr| {
        if e.is_instance_of::<Interrupted>(py) {
            0
        } else if e.is_instance_of::<UsageError>(py) {
            1
        } else {
            2
        }
    };
    failures.sort_by_key(rank);
    let ok = files - failures.len();
    let first = &failures[0];
    let mut msg = format!(
        "{ok} of {files} files of {set} arrived; {}",
        first.value(py)
    );
    for e in failures.iter().skip(1).take(NAMED_FAILURES) {
        msg.push_str(&format!("; also: {}", e.value(py)));
    }
    let unnamed = failures.len().saturating_sub(1 + NAMED_FAILURES);
    if unnamed > 0 {
        msg.push_str(&format!("; and {unnamed} more failed"));
    }
    if rank(first) != 1 {
        msg.push_str(if resume {
            "; call again with resume=True to get the rest"
        } else {
            "; call again with resume=True to keep the files that arrived (and partial data from now on) and get the rest"
        });
    }
    let e = match rank(first) {
        0 => interrupted(msg),
        1 => usage(msg),
        _ => transfer(msg),
    };
    if let Ok(code) = first.value(py).getattr("refusal") {
        if !code.is_none() {
            if let Err(set) = e.value(py).setattr("refusal", code) {
                return set;
            }
        }
    }
    e
}
