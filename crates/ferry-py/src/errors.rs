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

use ferry::core::{DownloadFailure, Refusal, ReturnCode};
use ferry::ticket::Ticket;
use ferry::DownloadError;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::PyErr;

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

/// A failed download of what `t` points to, in one message: what happened (with the sender's
/// own reason when it gave one) and what to do. `part` is where partial data was kept, if
/// resuming.
pub fn download_failed(e: DownloadError, t: &Ticket, part: Option<&str>) -> PyErr {
    let retry = match part {
        Some(p) => format!("the data so far is kept in {p}; call again with resume=True and a fresh ticket to continue"),
        None => "nothing was left at the destination; pass resume=True to keep partial data across attempts".into(),
    };
    let src = &t.source;
    let said = |d: Option<String>| d.map(|d| format!(" (it said: {d})")).unwrap_or_default();
    match e {
        DownloadError::Cancelled { .. } => interrupted(match part {
            Some(p) => format!("{} cancelled; partial data kept in {p}", t.name),
            None => format!("{} cancelled; nothing left at the destination", t.name),
        }),
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
                let (name, said) = (&t.name, said(detail));
                transfer(match refusal {
                    Refusal::NotExpectedReceiver => format!(
                        "the sender {src} refused {name}: this receiver is not on its list{said}; it serves only its allowed receivers; pass one of those names with name="
                    ),
                    Refusal::ReceiverLimitReached => format!(
                        "the sender {src} refused {name}: it already serves all the receivers it expects{said}; a receiver coming back after a failure must use the name= it had"
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
                })
            }
            DownloadFailure::RequestFailed {
                rc: ReturnCode::InvalidRequest,
                detail,
                ..
            } => transfer(format!(
                "the sender {src} no longer serves {}: its transfer was cancelled or is over{}; ask for a fresh ticket; {retry}",
                t.name,
                said(detail)
            )),
            DownloadFailure::RequestFailed { rc, detail, .. } => transfer(format!(
                "lost the sender {src} at {} while downloading {} ({rc}{}); is the sender still running? {retry}",
                t.addr,
                t.name,
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            )),
            DownloadFailure::ProducerError { .. } => transfer(format!(
                "the sender {src} could not produce {} (ref {}): the file may have changed or become unreadable there, or the transfer is over; ask for a fresh ticket",
                t.name, t.ref_id
            )),
            DownloadFailure::RetriesExhausted { attempts, .. } => transfer(format!(
                "the sender {src} stopped answering ({attempts} attempts for one chunk); check it is alive and reachable, or raise request_timeout; {retry}"
            )),
            DownloadFailure::PlanRefused(why)
            | DownloadFailure::ConsumeFailed(why)
            | DownloadFailure::CompletionFailed(why) => transfer(format!(
                "{} failed verification or could not be stored ({why}); {retry}",
                t.name
            )),
            other => transfer(format!("{}: {other}; {retry}", t.name)),
        },
        DownloadError::Objects(e) => usage(format!("cannot write {}: {e}", t.name)),
        DownloadError::Local(why) => usage(format!("{}: {why}", t.name)),
        other => transfer(format!("{}: {other}; {retry}", t.name)),
    }
}
