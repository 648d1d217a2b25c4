//! Time and the end of transactions: timers (§3.3), budgets (R8), and the settlement
//! ceremony (§3.4).

use super::output::{HookCall, Queued};
use super::rules::{finalize_with_progress, progress};
use super::tx::{Phase, Tx};
use super::Service;
use crate::progress::ProgressState;
use crate::time::{due, earliest};
use crate::{DoneStatus, DownloadStatus, Downloadable, TransferOutcome, TxId};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

impl Service {
    // ----------------------------------------------------------------------------------------
    // time

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work: a
    /// transaction's inactivity expiry, a budget deadline, a settlement that is due (possibly
    /// already in the past: call at once), a drain deadline, or a tombstone/outcome TTL.
    ///
    /// A lookup, not a scan: each transaction's next deadline is filed in a timer table when
    /// it changes.
    #[must_use = "the engine does nothing at its deadlines unless handle_timeout is called then"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(
            self.txs.next_timer(),
            earliest(self.tombstones.next_expiry(), self.outcomes.next_expiry()),
        )
    }

    /// Fire everything due at `now`, in NVFlare's order: budgets, then classification
    /// (finished beats expired), then TTL expiry, then settlement of drained transactions.
    /// Transactions due at the same instant are handled in creation order.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        for id in self.txs.due(now) {
            let Some(mut tx) = self.txs.get_mut(&id) else {
                continue;
            };
            if !tx.is_live() {
                continue;
            }
            if tx.budgets_due(now) {
                Self::enforce_budgets(&mut tx, now, &mut self.out);
                tx.budgets_enforced();
            }
            let (finished, expired) = (tx.finished(), due(tx.expiry(), now));
            drop(tx);
            if finished {
                self.retire(&id, DoneStatus::Finished, true, now);
            } else if expired {
                tracing::info!(tx = %id, "transaction timed out");
                self.retire(&id, DoneStatus::Timeout, true, now);
            }
        }
        self.tombstones.expire(now);
        self.outcomes.expire(now);
        self.settle_due(now);
    }

    /// R8: fail receivers whose acquire, idle or reconnect budget ran out.
    fn enforce_budgets(tx: &mut Tx, now: Instant, out: &mut VecDeque<Queued>) {
        for ri in 0..tx.refs.len() {
            for c in tx.budget_candidates(&tx.refs[ri]) {
                let Some((at, cause)) = tx.budget_deadline(&tx.refs[ri], &c) else {
                    continue;
                };
                if due(Some(at), now) {
                    tracing::warn!(tx = %tx.id, rid = %tx.refs[ri].id, receiver = %c, cause = cause.as_str(), "receiver budget expired");
                    finalize_with_progress(tx, ri, &c, DownloadStatus::Failed, cause, now, out);
                }
            }
        }
    }

    /// Unlink a transaction: close its gate and schedule settlement.
    pub(super) fn retire(&mut self, tx_id: &TxId, done: DoneStatus, record: bool, now: Instant) {
        let drain = self.config.drain_timeout;
        if let Some(mut tx) = self.txs.get_mut(tx_id) {
            if tx.retire(done, record, now, drain) {
                tracing::debug!(tx = %tx_id, done = done.as_str(), in_flight = tx.in_flight(), "transaction retired");
            }
        }
    }

    /// Settle every settling transaction that is drained or past its drain deadline (their
    /// timers are due), in the order of their timers.
    pub(super) fn settle_due(&mut self, now: Instant) {
        for id in self.txs.due(now) {
            if self.txs.get(&id).is_some_and(|t| t.ready_to_settle(now)) {
                self.settle(&id, now);
            }
        }
    }

    /// The settlement ceremony (§3.4).
    fn settle(&mut self, tx_id: &TxId, now: Instant) {
        let Some(Phase::Settling { done, record, .. }) = self.txs.get(tx_id).map(Tx::phase) else {
            return;
        };
        let Some(mut tx) = self.txs.remove(tx_id) else {
            return;
        };
        let in_flight = tx.in_flight();
        if in_flight > 0 {
            tracing::warn!(tx = %tx_id, in_flight, "settling with pulls still in flight (drain timeout)");
            *self.leaked.entry(tx_id.clone()).or_default() += in_flight;
        }
        // 2. outcome from the final statuses (drained pulls included)
        let outcome = TransferOutcome::compute(
            tx_id.clone(),
            done,
            &tx.expect,
            tx.min_receivers,
            tx.refs.iter().map(|r| (r.id.clone(), r.finals())).collect(),
            now,
        );
        // 3. terminal progress for started receivers (R10)
        let term = match done {
            DoneStatus::Finished => ProgressState::Completed,
            DoneStatus::Timeout => ProgressState::Failed,
            DoneStatus::Deleted => ProgressState::Aborted,
        };
        for ri in 0..tx.refs.len() {
            let started: Vec<String> = tx.refs[ri]
                .slots
                .iter()
                .filter(|(_, s)| s.progress.started() && !s.progress.is_terminal())
                .map(|(r, _)| r.clone())
                .collect();
            for rcv in started {
                progress(&mut tx, ri, &rcv, term, true, now, &mut self.out);
            }
        }
        // 4. summary log
        tracing::info!(
            tx = %tx_id,
            done = done.as_str(),
            outcome = outcome.status.as_str(),
            reason = outcome.reason,
            elapsed_s = now.saturating_duration_since(tx.created).as_secs_f64(),
            mb = tx.bytes_served as f64 / 1_048_576.0,
            "transaction settled"
        );
        // 5–9. hooks and callbacks in NVFlare's order, queued for the driver to run outside
        // the engine; the objects are snapshotted first so the callback sees the originals.
        let objs: Arc<[Arc<dyn Downloadable>]> = tx.refs.iter().map(|r| r.obj.clone()).collect();
        for o in objs.iter() {
            let (o, t) = (o.clone(), tx_id.clone());
            self.out.push_back(Queued::Hook(HookCall::new(
                "transaction_done",
                tx_id,
                move || o.transaction_done(&t, done),
            )));
        }
        if let Some(cb) = tx.on_done.take() {
            let (objs, t) = (Arc::clone(&objs), tx_id.clone());
            self.out
                .push_back(Queued::Hook(HookCall::new("on_done", tx_id, move || {
                    cb(&t, done, &objs)
                })));
        }
        if let Some(cb) = tx.on_outcome.take() {
            let o = outcome.clone();
            self.out.push_back(Queued::Hook(HookCall::new(
                "on_outcome",
                tx_id,
                move || cb(&o),
            )));
        }
        for o in objs.iter() {
            let o = o.clone();
            self.out
                .push_back(Queued::Hook(HookCall::new("release", tx_id, move || {
                    o.release()
                })));
        }
        // tombstones: FINISHED keeps its final statuses; TIMEOUT/DELETED stay fatal (NVFlare),
        // remembered only to say so
        for r in &tx.refs {
            if self.shut_down {
                continue;
            }
            if done == DoneStatus::Finished {
                self.tombstones.insert(r.id.clone(), r.finals(), now);
                self.ended.remove(&r.id);
            } else {
                self.tombstones.remove(&r.id);
                self.ended.insert(r.id.clone(), done, now);
            }
        }
        // 10. recorded when the driver polls it, after the hooks above
        let recorded = record && !self.shut_down;
        if recorded {
            self.unrecorded.insert(tx_id.clone());
        }
        self.out.push_back(Queued::Settled {
            outcome,
            recorded,
            at: now,
        });
    }
}
