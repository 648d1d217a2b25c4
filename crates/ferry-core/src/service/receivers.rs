//! Who may pull and what their requests count for: admission (identity mode's list, count
//! mode's places), receivers coming back after a failure, tentative places, confirm (R6),
//! cancel (R7), and connections that close.

use super::output::{FinalCause, Queued, ServiceEvent};
use super::rules::{finalize_with_progress, progress};
use super::tx::Tx;
use super::Service;
use crate::message::Reply;
use crate::progress::{ProgressState, ProgressTracker};
use crate::{DownloadStatus, RefId, Refusal, TxId};
use std::collections::VecDeque;
use std::time::Instant;

impl Service {
    /// Whether `receiver` may pull ref `ri` of the live transaction `tx_id`. Refusals record
    /// nothing for the receiver; they are reported as [`ServiceEvent::Refused`]. In count mode
    /// with every place held, a newcomer takes the place of a holder whose connection closed
    /// (the one gone longest): that holder withdraws as if it had cancelled, so a receiver
    /// killed mid-download can be replaced at once — by its own next run, whatever its name.
    #[allow(clippy::result_large_err)] // the Err is the reply itself, sent at once
    pub(super) fn admit(
        &mut self,
        tx_id: &TxId,
        ri: usize,
        receiver: &str,
        now: Instant,
    ) -> Result<(), Reply> {
        let Some(mut tx) = self.txs.get_mut(tx_id) else {
            return Ok(());
        };
        let full = |tx: &Tx| {
            tx.expect
                .places()
                .is_some_and(|n| !tx.is_member(receiver) && tx.member_count() >= n)
        };
        if self.config.count_slots && full(&tx) {
            // A holder that is final on every ref has had its turn (done or failed): it keeps
            // its place.
            if let Some(holder) = tx.longest_gone_unfinished() {
                tracing::info!(tx = %tx_id, holder, newcomer = receiver, "place of a disconnected receiver taken over");
                withdraw(&mut tx, &holder, Some(receiver), now, &mut self.out);
            }
        }
        drop(tx);
        let Some(tx) = self.txs.get(tx_id) else {
            return Ok(());
        };
        let rid = &tx.refs[ri].id;
        let refusal = if tx.expect.ids().is_some() {
            (self.config.refuse_undeclared && !tx.expect.declares(receiver)).then(|| {
                (
                    Refusal::NotExpectedReceiver,
                    format!("{receiver} is not an expected receiver of {rid}"),
                )
            })
        } else {
            match tx.expect.places() {
                Some(n) if self.config.count_slots && full(tx) => {
                    Some((
                        Refusal::ReceiverLimitReached,
                        format!(
                            "{receiver} cannot pull {rid}: the sender already serves the {n} receiver{} it expects",
                            if n == 1 { "" } else { "s" }
                        ),
                    ))
                }
                _ => None,
            }
        };
        let Some((refusal, why)) = refusal else {
            return Ok(());
        };
        tracing::warn!(tx = %tx_id, receiver, refusal = %refusal, "pull refused");
        self.out.push_back(Queued::Event(ServiceEvent::Refused {
            tx_id: tx_id.clone(),
            ref_id: rid.clone(),
            receiver: receiver.to_string(),
            refusal,
        }));
        Err(Reply::refused(refusal, why))
    }

    /// A receiver whose status on ref `ri` is FAILED pulls it again while the transaction is
    /// live: with [`reopen_failed`](crate::ServiceConfig::reopen_failed), it starts afresh on
    /// that ref (its status, pending confirm and progress are cleared), so it resumes and
    /// counts. A SUCCESS stays final.
    pub(super) fn reopen_if_failed(&mut self, tx_id: &TxId, ri: usize, receiver: &str) {
        if !self.config.reopen_failed {
            return;
        }
        let Some(mut tx) = self.txs.get_mut(tx_id) else {
            return;
        };
        let r = &mut tx.refs[ri];
        let Some(slot) = r.slots.get_mut(receiver) else {
            return;
        };
        if slot.status != Some(DownloadStatus::Failed) {
            return;
        }
        tracing::info!(tx = %tx_id, rid = %r.id, receiver, "failed receiver is back: its status is open again");
        slot.status = None;
        slot.pending = None;
        slot.progress = ProgressTracker::default();
    }

    /// A receiver whose pulls so far were all invalid and that has none in flight is forgotten:
    /// it held no place and counts for nothing.
    pub(super) fn forget_if_tentative(&mut self, tx_id: &TxId, receiver: &str) {
        let Some(mut tx) = self.txs.get_mut(tx_id) else {
            return;
        };
        if !tx.is_idle_tentative(receiver) {
            return;
        }
        tracing::debug!(tx = %tx_id, receiver, "receiver with only invalid requests forgotten");
        tx.remove_member(receiver);
        for r in &mut tx.refs {
            if r.slots
                .get(receiver)
                .is_some_and(|s| s.status.is_none() && s.pending.is_none())
            {
                r.slots.remove(receiver);
            }
        }
    }

    /// The confirm path (R6). The reply is always an `ok` acknowledgement; a confirm that is
    /// unsolicited, stale (wrong nonce), invalid or for an unknown ref is dropped. Only the
    /// receiver the serve went to can confirm it: the pending nonce is looked up under the
    /// confirm's own origin.
    pub fn confirm(
        &mut self,
        receiver: &str,
        ref_id: &RefId,
        status: Option<DownloadStatus>,
        nonce: Option<&str>,
        now: Instant,
    ) -> Reply {
        let now = self.clock.advance(now);
        let Some((tx_id, ri)) = self.live_ref(ref_id) else {
            tracing::debug!(rid = %ref_id, receiver, "confirm for unknown ref dropped");
            return Reply::ack();
        };
        let Some(mut tx) = self.txs.get_mut(&tx_id) else {
            return Reply::ack();
        };
        let accepted = match (status, nonce, tx.refs[ri].slots.get(receiver)) {
            (Some(st), Some(n), Some(slot))
                if slot.status.is_none()
                    && slot.pending.as_ref().is_some_and(|(_, want)| want == n) =>
            {
                Some(st)
            }
            _ => None,
        };
        let Some(st) = accepted else {
            tracing::debug!(rid = %ref_id, receiver, "confirm dropped (unsolicited, stale or invalid)");
            return Reply::ack();
        };
        finalize_with_progress(
            &mut tx,
            ri,
            receiver,
            st,
            FinalCause::Confirmed,
            now,
            &mut self.out,
        );
        tx.confirmed(now);
        let finished = tx.finished();
        drop(tx);
        if finished {
            self.retire(&tx_id, crate::DoneStatus::Finished, true, now);
        }
        Reply::ack()
    }

    /// The cancel path (R7), from a receiver that pulled somewhere in the transaction (others
    /// are ignored). Always acknowledged with `ok`.
    ///
    /// - Identity mode (NVFlare): FAILED on every ref where the receiver is not yet FINAL.
    /// - Count mode with [`count_slots`](crate::ServiceConfig::count_slots) (ferry): the
    ///   receiver withdraws. It gives its place back and keeps only its SUCCESS statuses;
    ///   another receiver may take the place, or the same one may come back and resume. In count
    ///   mode the engine cannot tell a counted receiver from any other holder of the ref id, so
    ///   a cancel may take back what its sender holds but not decide the transaction for the
    ///   others.
    pub fn cancel(&mut self, receiver: &str, ref_id: &RefId, now: Instant) -> Reply {
        let now = self.clock.advance(now);
        let Some((tx_id, _)) = self.live_ref(ref_id) else {
            tracing::debug!(rid = %ref_id, receiver, "cancel for unknown ref dropped");
            return Reply::ack();
        };
        let Some(mut tx) = self.txs.get_mut(&tx_id) else {
            return Reply::ack();
        };
        if !tx.is_member(receiver) {
            tracing::debug!(rid = %ref_id, receiver, "cancel from a receiver that never pulled: ignored");
            return Reply::ack();
        }
        let out = &mut self.out;
        if tx.expect.ids().is_none() && self.config.count_slots {
            tracing::info!(tx = %tx_id, receiver, "receiver cancelled: its place is free again");
            withdraw(&mut tx, receiver, None, now, out);
            return Reply::ack();
        }
        tracing::info!(tx = %tx_id, receiver, "receiver cancelled");
        for ri in 0..tx.refs.len() {
            finalize_with_progress(
                &mut tx,
                ri,
                receiver,
                DownloadStatus::Failed,
                FinalCause::Cancelled,
                now,
                out,
            );
        }
        let finished = tx.finished();
        drop(tx);
        if finished {
            self.retire(&tx_id, crate::DoneStatus::Finished, true, now);
        }
        Reply::ack()
    }

    /// The connection of `receiver` closed (the driver learned it from its transport). In every
    /// live transaction where it holds a place, its reconnect budget starts;
    /// [`receiver_connected`](Self::receiver_connected) stops it. A pull does not: a pull read
    /// from the closed connection may reach the engine after the close did.
    pub fn receiver_disconnected(&mut self, receiver: &str, now: Instant) {
        let now = self.clock.advance(now);
        self.txs.for_each_mut(|tx| {
            if tx.is_live() && tx.member_gone(receiver, now) {
                tracing::info!(tx = %tx.id, receiver, "receiver's connection closed");
            }
        });
    }

    /// `receiver` is connected again: its reconnect budget stops (a connection alone is not
    /// activity; its idle budget, if any, keeps running until it pulls).
    pub fn receiver_connected(&mut self, receiver: &str, now: Instant) {
        let _ = self.clock.advance(now);
        self.txs.for_each_mut(|tx| tx.member_back(receiver));
    }

    /// The live transaction and ref index of `ref_id`.
    pub(super) fn live_ref(&self, ref_id: &RefId) -> Option<(TxId, usize)> {
        let (tx_id, ri) = self.txs.ref_owner(ref_id)?;
        self.txs.get(tx_id)?.is_live().then(|| (tx_id.clone(), ri))
    }
}

/// A count-mode receiver leaves its place (it cancelled, or `newcomer` takes the place it left
/// when its connection closed): it keeps only its SUCCESS statuses (the rest of its slots,
/// pending confirms and progress go; a started progress stream ends `aborted`), and
/// [`ServiceEvent::ReceiverWithdrew`] reports it.
fn withdraw(
    tx: &mut Tx,
    receiver: &str,
    newcomer: Option<&str>,
    now: Instant,
    out: &mut VecDeque<Queued>,
) {
    tx.remove_member(receiver);
    for ri in 0..tx.refs.len() {
        if tx.refs[ri].final_of(receiver) == Some(DownloadStatus::Success) {
            continue;
        }
        let started = tx.refs[ri]
            .slots
            .get(receiver)
            .is_some_and(|s| s.progress.started() && !s.progress.is_terminal());
        if started {
            progress(tx, ri, receiver, ProgressState::Aborted, true, now, out);
        }
        tx.refs[ri].slots.remove(receiver);
    }
    out.push_back(Queued::Event(ServiceEvent::ReceiverWithdrew {
        tx_id: tx.id.clone(),
        receiver: receiver.to_string(),
        replaced_by: newcomer.map(str::to_string),
    }));
}
