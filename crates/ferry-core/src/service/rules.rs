//! The small rules every request path shares: progress emission (§1.5), final statuses and
//! the hooks they fire (R3, §3.2), and the shapes of terminal and refusal replies.

use super::output::{FinalCause, HookCall, Queued, ServiceEvent};
use super::tx::Tx;
use crate::message::{Reply, ReplyBody, ReplyStatus};
use crate::progress::{ProgressKey, ProgressState};
use crate::{DownloadStatus, RefId, Refusal};
use std::collections::VecDeque;
use std::time::Instant;

/// Emit a progress event for (ref `ri`, `receiver`) if the tx has progress on and the rules allow.
pub(crate) fn progress(
    tx: &mut Tx,
    ri: usize,
    receiver: &str,
    state: ProgressState,
    force: bool,
    now: Instant,
    out: &mut VecDeque<Queued>,
) {
    let Some(interval) = tx.progress_interval else {
        return;
    };
    let Tx { id, refs, .. } = tx;
    let r = &mut refs[ri];
    let slot = r.slots.entry(receiver.to_string()).or_default();
    if let Some(ev) = slot.progress.emit(
        state,
        force,
        interval,
        now,
        ProgressKey {
            tx_id: Some(id),
            ref_id: &r.id,
            receiver: Some(receiver),
        },
    ) {
        out.push_back(Queued::Event(ServiceEvent::Progress(ev)));
    }
}

/// Record a FINAL status (first one wins), queue `downloaded_to_one` and, when the ref first
/// becomes complete, `downloaded_to_all`. Returns whether the status was recorded.
pub(crate) fn finalize(
    tx: &mut Tx,
    ri: usize,
    receiver: &str,
    status: DownloadStatus,
    cause: FinalCause,
    out: &mut VecDeque<Queued>,
) -> bool {
    let Tx {
        id, refs, expect, ..
    } = tx;
    let r = &mut refs[ri];
    let slot = r.slots.entry(receiver.to_string()).or_default();
    if slot.status.is_some() {
        return false;
    }
    slot.status = Some(status);
    slot.pending = None;
    tracing::debug!(tx = %id, rid = %r.id, receiver, status = status.as_str(), cause = cause.as_str(), "receiver final");
    let obj = r.obj.clone();
    let who = receiver.to_string();
    out.push_back(Queued::Hook(HookCall::new(
        "downloaded_to_one",
        id,
        move || obj.downloaded_to_one(&who, status),
    )));
    out.push_back(Queued::Event(ServiceEvent::DownloadedToOne {
        tx_id: id.clone(),
        ref_id: r.id.clone(),
        receiver: receiver.to_string(),
        status,
        cause,
    }));
    if !r.all_fired && r.complete(expect) {
        r.all_fired = true;
        let obj = r.obj.clone();
        out.push_back(Queued::Hook(HookCall::new(
            "downloaded_to_all",
            id,
            move || obj.downloaded_to_all(),
        )));
        out.push_back(Queued::Event(ServiceEvent::DownloadedToAll {
            tx_id: id.clone(),
            ref_id: r.id.clone(),
        }));
    }
    true
}

/// Finalize and, when recorded, emit the matching terminal progress event.
pub(crate) fn finalize_with_progress(
    tx: &mut Tx,
    ri: usize,
    receiver: &str,
    status: DownloadStatus,
    cause: FinalCause,
    now: Instant,
    out: &mut VecDeque<Queued>,
) -> bool {
    let recorded = finalize(tx, ri, receiver, status, cause, out);
    if recorded {
        progress(tx, ri, receiver, terminal_progress(status), true, now, out);
    }
    recorded
}

/// The progress state of a final status.
pub(crate) fn terminal_progress(status: DownloadStatus) -> ProgressState {
    match status {
        DownloadStatus::Success => ProgressState::Completed,
        DownloadStatus::Failed => ProgressState::Failed,
    }
}

/// The terminal reply status that serves a final status (`eof` for SUCCESS, `error` for FAILED).
pub(crate) fn terminal_status(status: DownloadStatus) -> ReplyStatus {
    match status {
        DownloadStatus::Success => ReplyStatus::Eof,
        DownloadStatus::Failed => ReplyStatus::Error,
    }
}

/// The bare terminal reply for a status (legacy serve, tombstone replay).
pub(crate) fn terminal_reply(status: DownloadStatus) -> Reply {
    Reply::ok(ReplyBody::terminal(terminal_status(status)))
}

/// NVFlare's `invalid_request` answer to a pull for a ref that is not (or no longer) served.
pub(crate) fn no_ref(rid: &RefId) -> Reply {
    Reply::refused(Refusal::UnknownRef, format!("no ref found: {rid}"))
}

/// The `invalid_request` answer to a pull for a ref whose transaction is over.
pub(crate) fn finished(rid: &RefId, how: &str) -> Reply {
    Reply::refused(
        Refusal::TransactionFinished,
        format!("no ref found: {rid} (its transfer {how})"),
    )
}
