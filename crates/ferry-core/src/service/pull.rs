//! Topic A: dispatch, and the two halves of a pull (R1–R5) around the object's `produce`.

use super::rules::{finished, no_ref, progress, terminal_reply, terminal_status};
use super::ticket::{Handled, PullTicket};
use super::tx::Phase;
use super::Service;
use crate::message::{DownloadRequest, PullRequest, Reply, ReplyBody};
use crate::progress::ProgressState;
use crate::{
    validate_fqcn, DoneStatus, DownloadStatus, ProduceError, Produced, RefId, Refusal, ReturnCode,
    TransferPlan, TxId,
};
use std::time::Instant;

use super::output::FinalCause;
use super::rules::finalize_with_progress;

/// How a transaction that is over is described to a late puller.
fn ended_how(done: DoneStatus) -> &'static str {
    match done {
        DoneStatus::Finished => "finished",
        DoneStatus::Timeout => "timed out",
        DoneStatus::Deleted => "was deleted",
    }
}

impl Service {
    /// Decode and dispatch a topic-A payload from `receiver` (the request's `cn__origin`,
    /// which the driver must have checked against the connection it came on).
    pub fn handle_payload(&mut self, receiver: &str, payload: &[u8], now: Instant) -> Handled {
        self.handle_request(receiver, DownloadRequest::decode(payload), now)
    }

    /// Dispatch a topic-A request from `receiver` (NVFlare's order, §2.2).
    pub fn handle_request(
        &mut self,
        receiver: &str,
        req: DownloadRequest,
        now: Instant,
    ) -> Handled {
        match req {
            DownloadRequest::Invalid(why) => {
                let _ = self.clock.advance(now);
                tracing::warn!(receiver, why = %why, "invalid download request");
                Handled::Reply(Reply::refused(Refusal::InvalidRequest, why))
            }
            DownloadRequest::Confirm {
                ref_id,
                status,
                nonce,
            } => Handled::Reply(self.confirm(receiver, &ref_id, status, nonce.as_deref(), now)),
            DownloadRequest::Cancel { ref_id } => {
                Handled::Reply(self.cancel(receiver, &ref_id, now))
            }
            DownloadRequest::Pull(p) => match self.begin_pull(receiver, p, now) {
                Ok(t) => Handled::Pull(t),
                Err(r) => Handled::Reply(r),
            },
        }
    }

    /// Validate a pull, admit its sender and record its activity (R1). On success the caller
    /// runs [`PullTicket::produce`] and hands the result to [`finish_pull`](Self::finish_pull);
    /// on failure the `Err` is the reply to send: a refusal (`invalid_request` with its
    /// [`Refusal`] code, `service_unavailable` after shutdown) or a tombstone replay.
    #[allow(clippy::result_large_err)] // the Err is the reply itself, sent at once; boxing only adds an allocation
    pub fn begin_pull(
        &mut self,
        receiver: &str,
        req: PullRequest,
        now: Instant,
    ) -> Result<PullTicket, Reply> {
        let now = self.clock.advance(now);
        if self.shut_down {
            return Err(Reply::refused(Refusal::ShutDown, "service shut down"));
        }
        if let Err(e) = validate_fqcn(receiver) {
            return Err(Reply::refused(Refusal::InvalidRequest, e.to_string()));
        }
        let rid = req.ref_id;
        let Some((tx_id, ri)) = self.txs.ref_owner(&rid).map(|(t, ri)| (t.clone(), ri)) else {
            return Err(self.replay_tombstone(&rid, receiver, now));
        };
        let Some(tx) = self.txs.get(&tx_id) else {
            return Err(no_ref(&rid));
        };
        if let Phase::Settling { done, .. } = tx.phase() {
            // The gate is closed: the ref looks gone. A FINISHED tx answers its final receivers
            // exactly as its tombstone will.
            return Err(match (done, tx.refs[ri].final_of(receiver)) {
                (DoneStatus::Finished, Some(st)) => terminal_reply(st),
                _ => finished(&rid, ended_how(done)),
            });
        }
        self.admit(&tx_id, ri, receiver, now)?;
        self.reopen_if_failed(&tx_id, ri, receiver);
        let Some(mut tx) = self.txs.get_mut(&tx_id) else {
            return Err(no_ref(&rid));
        };
        if !tx.is_member(receiver) {
            tracing::debug!(tx = %tx_id, receiver, "receiver acquired");
        }
        // R1
        tx.pull_started(receiver, now);
        let proven = tx.is_proven(receiver);
        let slot = tx.refs[ri].slots.entry(receiver.to_string()).or_default();
        // A receiver's first event (bytes 0) goes out at its first pull; for a receiver whose
        // place is still tentative, only once that pull turned out valid.
        if proven && !slot.progress.started() {
            progress(
                &mut tx,
                ri,
                receiver,
                ProgressState::Active,
                true,
                now,
                &mut self.out,
            );
        }
        let r = &tx.refs[ri];
        let id = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(id, tx_id.clone());
        Ok(PullTicket {
            id,
            tx_id,
            ref_id: rid,
            ref_index: ri,
            receiver: receiver.to_string(),
            plan: if req.state.is_none() {
                r.plan.clone()
            } else {
                None
            },
            state: req.state,
            confirm_capable: req.confirm_capable == Some(true),
            object: r.obj.clone(),
        })
    }

    /// Answer a pull for a ref that is not live: replay from a tombstone, or `invalid_request`
    /// saying whether its transaction is over or the ref is unknown.
    fn replay_tombstone(&mut self, rid: &RefId, receiver: &str, now: Instant) -> Reply {
        if let Some(statuses) = self.tombstones.get(rid, now) {
            return match statuses.get(receiver) {
                Some(&st) => terminal_reply(st),
                None => {
                    tracing::warn!(rid = %rid, receiver, "pull for a finished ref from a receiver it has no status for");
                    finished(rid, ended_how(DoneStatus::Finished))
                }
            };
        }
        if let Some(&done) = self.ended.get(rid, now) {
            tracing::warn!(rid = %rid, receiver, done = done.as_str(), "pull for an ended ref");
            return finished(rid, ended_how(done));
        }
        tracing::warn!(rid = %rid, receiver, "no ref found");
        no_ref(rid)
    }

    /// Record the result of a ticket's `produce` (R2–R5) and build the reply.
    pub fn finish_pull(
        &mut self,
        ticket: PullTicket,
        result: Result<Produced, ProduceError>,
        now: Instant,
    ) -> Reply {
        let now = self.clock.advance(now);
        let Some(tx_id) = self.tickets.remove(&ticket.id) else {
            return Reply::error(ReturnCode::InvalidRequest, "unknown pull ticket");
        };
        let Some(mut tx) = self.txs.get_mut(&tx_id) else {
            // Settled past its drain deadline while this pull ran: the result is discarded.
            self.leaked_ticket_returned(&tx_id);
            return finished(&ticket.ref_id, "ended");
        };
        tx.pull_ended(&ticket.receiver, now);
        let ri = ticket.ref_index;
        let receiver = ticket.receiver.as_str();
        // A count-mode receiver that withdrew while this pull ran gets its answer, and nothing
        // is recorded for it.
        let member = tx.is_member(receiver);
        let out = &mut self.out;
        match result {
            Ok(Produced::Invalid { reason }) => {
                tracing::warn!(rid = %ticket.ref_id, receiver, reason = %reason, "invalid pull refused");
                drop(tx);
                self.forget_if_tentative(&tx_id, receiver);
                Reply::refused(Refusal::InvalidRequest, reason)
            }
            r if !member => match r {
                Ok(Produced::Data { data, state }) => Reply::ok(ReplyBody::data(state, data)),
                Ok(Produced::Eof) => terminal_reply(DownloadStatus::Success),
                Ok(_) => terminal_reply(DownloadStatus::Failed),
                Err(e) => Reply::error(ReturnCode::ProcessException, e.to_string()),
            },
            Ok(Produced::Data { data, state }) => {
                // R2: no status change.
                let n = data.byte_len();
                served_validly(&mut tx, ri, receiver, n, now, out);
                if let Some(slot) = tx.refs[ri].slots.get_mut(receiver) {
                    slot.progress.add(n, data.item_count());
                }
                progress(
                    &mut tx,
                    ri,
                    receiver,
                    ProgressState::Active,
                    false,
                    now,
                    out,
                );
                let mut body = ReplyBody::data(state, data);
                body.ferry_plan = ticket.plan.as_ref().map(TransferPlan::to_wire);
                Reply::ok(body)
            }
            Ok(Produced::Eof) => {
                served_validly(&mut tx, ri, receiver, 0, now, out);
                drop(tx);
                self.serve_terminal(&tx_id, ri, &ticket, DownloadStatus::Success, now)
            }
            Ok(Produced::Error { reason }) => {
                tracing::warn!(rid = %ticket.ref_id, receiver, reason = %reason, "producer error");
                served_validly(&mut tx, ri, receiver, 0, now, out);
                drop(tx);
                self.serve_terminal(&tx_id, ri, &ticket, DownloadStatus::Failed, now)
            }
            Err(e) => {
                // R5: no status change (the place stays tentative: not the receiver's doing).
                tracing::warn!(rid = %ticket.ref_id, receiver, error = %e, "produce failed");
                first_progress(&mut tx, ri, receiver, now, out);
                progress(&mut tx, ri, receiver, ProgressState::Failed, true, now, out);
                Reply::error(ReturnCode::ProcessException, e.to_string())
            }
        }
    }

    /// Give a ticket back without a result (the producing task was cancelled or panicked):
    /// nothing is recorded, the gate is released, and the reply to send (if any) is
    /// `process_exception`. A ticket that is neither finished nor abandoned holds its
    /// transaction's settlement until the drain timeout.
    pub fn abandon_pull(&mut self, ticket: PullTicket, now: Instant) -> Reply {
        let _ = self.clock.advance(now);
        if let Some(tx_id) = self.tickets.remove(&ticket.id) {
            let live = self.txs.get_mut(&tx_id).map(|mut tx| {
                tx.pull_ended(&ticket.receiver, now);
            });
            if live.is_none() {
                self.leaked_ticket_returned(&tx_id);
            }
        }
        Reply::error(ReturnCode::ProcessException, "pull abandoned")
    }

    /// A ticket of a transaction settled past its drain deadline came back: once all of them
    /// have, the id may be reused.
    fn leaked_ticket_returned(&mut self, tx_id: &TxId) {
        if let Some(n) = self.leaked.get_mut(tx_id) {
            *n -= 1;
            if *n == 0 {
                self.leaked.remove(tx_id);
            }
        }
    }

    /// A terminal serve (`eof` → SUCCESS, `error` → FAILED): provisional for a confirm-capable
    /// receiver (R4), final otherwise (R3).
    fn serve_terminal(
        &mut self,
        tx_id: &TxId,
        ri: usize,
        ticket: &PullTicket,
        status: DownloadStatus,
        now: Instant,
    ) -> Reply {
        let rs = terminal_status(status);
        let confirm = self.config.confirm_enabled && ticket.confirm_capable;
        let Some(mut tx) = self.txs.get_mut(tx_id) else {
            return Reply::ok(ReplyBody::terminal(rs));
        };
        let receiver = ticket.receiver.as_str();
        let out = &mut self.out;
        if confirm {
            // R4
            if tx.refs[ri].final_of(receiver).is_some() {
                return Reply::ok(ReplyBody::terminal(rs));
            }
            let nonce = self.ids.nonce();
            tx.refs[ri]
                .slots
                .entry(receiver.to_string())
                .or_default()
                .pending = Some((status, nonce.clone()));
            progress(&mut tx, ri, receiver, ProgressState::Active, true, now, out);
            return Reply::ok(ReplyBody {
                confirm_expected: Some(true),
                confirm_nonce: Some(nonce),
                ..ReplyBody::terminal(rs)
            });
        }
        // R3
        finalize_with_progress(&mut tx, ri, receiver, status, FinalCause::Served, now, out);
        let finished = tx.is_live() && tx.finished();
        drop(tx);
        if finished {
            self.retire(tx_id, DoneStatus::Finished, true, now);
        }
        Reply::ok(ReplyBody::terminal(rs))
    }
}

/// A pull of `receiver` was served (data of `bytes` bytes, or a terminal status): its place
/// is no longer tentative, and its first progress event (bytes 0) goes out if it has not yet.
fn served_validly(
    tx: &mut super::tx::Tx,
    ri: usize,
    receiver: &str,
    bytes: u64,
    now: Instant,
    out: &mut std::collections::VecDeque<super::output::Queued>,
) {
    tx.served(receiver, bytes);
    first_progress(tx, ri, receiver, now, out);
}

/// The receiver's first progress event on ref `ri` (bytes 0), if it has not had one.
fn first_progress(
    tx: &mut super::tx::Tx,
    ri: usize,
    receiver: &str,
    now: Instant,
    out: &mut std::collections::VecDeque<super::output::Queued>,
) {
    let started = tx.refs[ri]
        .slots
        .get(receiver)
        .is_some_and(|s| s.progress.started());
    if !started {
        progress(tx, ri, receiver, ProgressState::Active, true, now, out);
    }
}
