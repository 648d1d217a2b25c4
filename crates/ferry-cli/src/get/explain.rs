//! How `ferry get` words a failed download: what happened (with the sender's own reason when
//! it gave one), whether data was kept for `--resume`, and what to do.

use std::path::Path;

use ferry::core::{DownloadFailure, Refusal, ReturnCode};
use ferry::objects::ObjectsError;
use ferry::ticket::Ticket;
use ferry::DownloadError;

use crate::exit::Failure;
use crate::units::fmt_bytes;

/// An existing destination without `--force`.
pub(super) fn exists(dest: &Path) -> Failure {
    Failure::usage(format!(
        "{} already exists; pass --force to overwrite it, or pick another directory with -o",
        dest.display()
    ))
}

/// A destination that cannot be written (exit 2). `get` refused existing destinations up front
/// (`targets::destinations`), but a file may appear there before the download opens it: same
/// message then.
pub(super) fn unwritable(e: &ObjectsError, dest: &Path) -> Failure {
    match e {
        ObjectsError::DestinationExists(_) => exists(dest),
        ObjectsError::OtherContent { why, .. } => Failure::usage(format!(
            "{why}; nothing was fetched: remove it, or pass --force to discard it and start over"
        )),
        other => Failure::usage(format!("cannot write {}: {other}", dest.display())),
    }
}

/// The advice for a receiver the sender does not serve.
const ALLOW_HINT: &str =
    "it serves only the cells on its --allow list; pass one of those names with --name";

/// `" (it said: TEXT)"`, or nothing without text.
fn said(detail: Option<&str>) -> String {
    detail
        .map(|d| format!(" (it said: {d})"))
        .unwrap_or_default()
}

/// A typed refusal from a ferry sender, in one line: refused (and why), the transfer is over,
/// or the request was broken — each with what to do.
fn refused(refusal: Refusal, detail: Option<&str>, t: &Ticket, retry: &str) -> Failure {
    let (src, name) = (&t.source, &t.name);
    let said = said(detail);
    Failure::transfer(match refusal {
        Refusal::NotExpectedReceiver => format!(
            "the sender {src} refused {name}: this receiver is not on its list{said}; {ALLOW_HINT}"
        ),
        Refusal::ReceiverLimitReached => format!(
            "the sender {src} refused {name}: it already serves all the receivers it expects{said}; \
             a receiver coming back after a failure must use the --name it had; otherwise the \
             sender needs a larger --receivers, or --keep-serving"
        ),
        Refusal::TransactionFinished => format!(
            "the sender {src} no longer serves {name}: its transfer is over{said}; ask for a \
             fresh ticket; {retry}"
        ),
        Refusal::UnknownRef => format!(
            "the sender {src} does not serve {name} (ref {}){said}: the ticket is from another \
             or an older `ferry serve`; ask for a fresh ticket; {retry}",
            t.ref_id
        ),
        Refusal::InvalidRequest => format!(
            "the sender {src} refused the request for {name} as invalid{said}; if this is a \
             resumed download, its .part file may be damaged: run without --resume; {retry}"
        ),
        Refusal::ShutDown => format!(
            "the sender {src} is shutting down{said}; ask for a fresh ticket when it serves \
             again; {retry}"
        ),
    })
}

/// A failed download in one line: what happened (with the sender's own reason when it gave
/// one), and what to do.
///
/// `part` is the part file a file download keeps for resume: whether data is kept is read from
/// the disk after the failure, so the message never claims what is not there.
pub(super) fn explain(e: DownloadError, t: &Ticket, dest: &Path, part: Option<&Path>) -> Failure {
    let kept = part
        .and_then(|p| Some((p, std::fs::metadata(p).ok()?.len())))
        .filter(|&(_, len)| len > 0);
    let retry = match kept {
        Some((p, len)) => format!(
            "the {} received in order so far are kept in {} for --resume",
            fmt_bytes(len),
            p.display()
        ),
        None => format!("nothing was left at {}", dest.display()),
    };
    let src = &t.source;
    match e {
        DownloadError::Cancelled { .. } => {
            Failure::Interrupted(format!("interrupted: {} cancelled; {retry}", t.name))
        }
        DownloadError::Failed { failure, .. } => match failure {
            DownloadFailure::RequestFailed {
                rc: rc @ (ReturnCode::AuthenticationError | ReturnCode::Unauthenticated),
                detail,
                ..
            } => Failure::transfer(format!(
                "the sender {src} refused this receiver ({}): {ALLOW_HINT}",
                detail.unwrap_or_else(|| rc.to_string())
            )),
            DownloadFailure::Refused {
                refusal, detail, ..
            } => refused(refusal, detail.as_deref(), t, &retry),
            DownloadFailure::RequestFailed {
                rc: ReturnCode::InvalidRequest,
                detail,
                ..
            } => Failure::transfer(format!(
                "the sender {src} no longer serves {}: its transfer was cancelled or is over{}; ask for a fresh ticket; {retry}",
                t.name,
                said(detail.as_deref())
            )),
            DownloadFailure::RequestFailed { rc, detail, .. } => Failure::transfer(format!(
                "lost the sender {src} at {} while downloading {} ({rc}{}); is `ferry serve` still running? {retry}",
                t.addr,
                t.name,
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            )),
            DownloadFailure::ProducerError { .. } => Failure::transfer(format!(
                "the sender {src} could not produce {} (ref {}): the file may have changed or become unreadable there, or the transfer is over; ask for a fresh ticket",
                t.name, t.ref_id
            )),
            DownloadFailure::RetriesExhausted { attempts, .. } => Failure::transfer(format!(
                "the sender {src} stopped answering ({attempts} attempts for one chunk); check it is alive and reachable, or raise --request-timeout; {retry}"
            )),
            DownloadFailure::PlanRefused(why)
            | DownloadFailure::ConsumeFailed(why)
            | DownloadFailure::CompletionFailed(why) => {
                match why.strip_prefix("integrity check failed: ") {
                    Some(what) => Failure::transfer(format!(
                        "{} is not what the ticket pins: {what}; {retry}; the sender {src} sends other content than the ticket names (a changed file, a wrong ticket, or tampering)",
                        t.name
                    )),
                    None => Failure::transfer(format!(
                        "{} could not be received or written ({why}); {retry}",
                        t.name
                    )),
                }
            }
            other => Failure::transfer(format!("{}: {other}; {retry}", t.name)),
        },
        DownloadError::Objects(e) => unwritable(&e, dest),
        DownloadError::Local(why) => {
            Failure::usage(format!("cannot write {}: {why}", dest.display()))
        }
        other => Failure::transfer(format!("{}: {other}; {retry}", t.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(name: &str) -> String {
        format!(
            "ferry+tcp://127.0.0.1:7001/s/R1?kind=file&name={name}&size=3&b3={}",
            "ab".repeat(32)
        )
    }

    #[test]
    fn failures_say_what_and_what_to_do() {
        let t: Ticket = ticket("a").parse().unwrap();
        let dest = Path::new("/out/a");
        let kept_dir = tempfile::tempdir().unwrap();
        let kept = kept_dir.path().join("a.part");
        std::fs::write(&kept, b"abc").unwrap();
        let kept = Some(kept.as_path());
        let gone = Some(Path::new("/out/a.part"));
        let failed_with = |rc, detail: Option<&str>| DownloadError::Failed {
            ref_id: "R1".into(),
            source_fqcn: "s".into(),
            failure: DownloadFailure::RequestFailed {
                source_fqcn: "s".into(),
                rc,
                detail: detail.map(str::to_string),
            },
        };
        let failed = |rc| failed_with(rc, None);
        let f = explain(
            DownloadError::Cancelled {
                ref_id: "R1".into(),
            },
            &t,
            dest,
            kept,
        );
        assert_eq!(f.code(), 130);
        assert!(
            f.to_string()
                .contains("the 3 B received in order so far are kept in")
                && f.to_string().contains("a.part"),
            "{f}"
        );
        let f = explain(
            DownloadError::Cancelled {
                ref_id: "R1".into(),
            },
            &t,
            dest,
            gone,
        );
        assert!(f.to_string().contains("nothing was left at /out/a"), "{f}");
        let f = explain(failed(ReturnCode::CommError), &t, dest, None);
        assert_eq!(f.code(), 1);
        assert!(
            f.to_string().contains("lost the sender") && f.to_string().contains("nothing was left"),
            "{f}"
        );
        let f = explain(failed(ReturnCode::AuthenticationError), &t, dest, None);
        assert!(f.to_string().contains("--allow list"), "{f}");
        let f = explain(failed(ReturnCode::InvalidRequest), &t, dest, kept);
        assert!(
            f.to_string().contains("no longer serves") && f.to_string().contains("kept in"),
            "{f}"
        );
        // A ferry sender's typed refusals each get their own words and advice, whatever the
        // text says; an NVFlare sender's invalid_request gets the "fresh ticket" advice.
        let refused = |refusal, detail: &str| DownloadError::Failed {
            ref_id: "R1".into(),
            source_fqcn: "s".into(),
            failure: DownloadFailure::Refused {
                source_fqcn: "s".into(),
                refusal,
                detail: Some(detail.into()),
            },
        };
        let f = explain(
            refused(
                Refusal::NotExpectedReceiver,
                "intruder is not an expected receiver of R1",
            ),
            &t,
            dest,
            None,
        );
        assert_eq!(f.code(), 1);
        assert!(
            f.to_string()
                .contains("refused a: this receiver is not on its list")
                && f.to_string().contains("--allow list")
                && f.to_string().contains("--name"),
            "{f}"
        );
        let f = explain(
            refused(Refusal::ReceiverLimitReached, "x cannot pull R1"),
            &t,
            dest,
            None,
        );
        assert!(
            f.to_string()
                .contains("refused a: it already serves all the receivers it expects")
                && f.to_string().contains("--keep-serving")
                && !f.to_string().contains("still running"),
            "{f}"
        );
        let f = explain(
            refused(Refusal::TransactionFinished, "no ref found: R1"),
            &t,
            dest,
            kept,
        );
        assert!(
            f.to_string()
                .contains("no longer serves a: its transfer is over")
                && f.to_string().contains("kept in"),
            "{f}"
        );
        let f = explain(refused(Refusal::UnknownRef, "no ref found"), &t, dest, None);
        assert!(f.to_string().contains("does not serve a (ref R1)"), "{f}");
        let f = explain(refused(Refusal::InvalidRequest, "bad"), &t, dest, None);
        assert!(f.to_string().contains("as invalid"), "{f}");
        let f = explain(refused(Refusal::ShutDown, "bye"), &t, dest, None);
        assert!(f.to_string().contains("shutting down"), "{f}");
        let f = explain(
            failed_with(ReturnCode::InvalidRequest, Some("no ref found: R1")),
            &t,
            dest,
            None,
        );
        assert!(
            f.to_string().contains("no longer serves a")
                && f.to_string().contains("(it said: no ref found: R1)")
                && !f.to_string().contains("--allow"),
            "{f}"
        );
        let f = explain(
            failed_with(ReturnCode::CommError, Some("connection to s lost")),
            &t,
            dest,
            None,
        );
        assert!(
            f.to_string().contains("(comm_error: connection to s lost)"),
            "{f}"
        );
        let f = explain(
            failed_with(ReturnCode::AuthenticationError, Some("site-9 not allowed")),
            &t,
            dest,
            None,
        );
        assert!(
            f.to_string()
                .contains("refused this receiver (site-9 not allowed)"),
            "{f}"
        );
        // Local setup errors are usage errors; one that appeared after the up-front check
        // reads like the check's own message.
        let f = explain(
            DownloadError::Objects(ObjectsError::DestinationExists(dest.to_path_buf())),
            &t,
            dest,
            None,
        );
        assert_eq!(f.code(), 2);
        assert!(
            f.to_string()
                .contains("/out/a already exists; pass --force"),
            "{f}"
        );
        let f = explain(
            DownloadError::Objects(ObjectsError::InvalidOption(
                "target is not a directory".into(),
            )),
            &t,
            dest,
            None,
        );
        assert_eq!(f.code(), 2);
        assert!(
            f.to_string()
                .contains("cannot write /out/a: invalid option: target is not a directory"),
            "{f}"
        );
        let f = explain(DownloadError::Local("disk on fire".into()), &t, dest, None);
        assert_eq!(f.code(), 2);
        let integrity = DownloadError::Failed {
            ref_id: "R1".into(),
            source_fqcn: "s".into(),
            failure: DownloadFailure::PlanRefused("pins another digest".into()),
        };
        let f = explain(integrity, &t, dest, None);
        assert!(f.to_string().contains("could not be received"), "{f}");
        let integrity = DownloadError::Failed {
            ref_id: "R1".into(),
            source_fqcn: "s".into(),
            failure: DownloadFailure::CompletionFailed(
                "integrity check failed: BLAKE3 digest mismatch: X".into(),
            ),
        };
        let f = explain(integrity, &t, dest, gone);
        assert_eq!(f.code(), 1);
        assert!(
            f.to_string().contains(
                "a is not what the ticket pins: BLAKE3 digest mismatch: X; nothing was left at /out/a"
            ),
            "{f}"
        );
    }
}
