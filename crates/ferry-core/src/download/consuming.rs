//! What the consumer reports: its verdict on the plan, each consumed chunk's new state and
//! the completion; and handing chunks over to it, in order when it needs order.

use super::action::Action;
use super::engine::{Download, Stage};
use super::failure::DownloadFailure;
use crate::{ChunkData, ConsumeError, DownloadStatus, ProgressState, State};
use std::time::Instant;

impl Download {
    /// Ordered windowed mode: hand over every buffered chunk that is next in line.
    pub(super) fn deliver_ready(&mut self) {
        while let Some((i, state, data)) = self.window.next_ready() {
            self.hand_over(i, state, data);
        }
    }

    /// Give chunk `seq` to the consumer ([`Action::Consume`]) and note it as being consumed.
    pub(super) fn hand_over(&mut self, seq: u64, state: State, data: ChunkData) {
        self.window.start_consuming(seq, &state, &data);
        self.actions.push_back(Action::Consume { seq, state, data });
    }

    /// Report the consumer's verdict on the plan.
    pub fn plan_result(&mut self, result: Result<(), ConsumeError>, now: Instant) {
        let now = self.clock.advance(now);
        let Stage::AwaitPlan { .. } = self.stage else {
            return;
        };
        let Stage::AwaitPlan { state, data } = std::mem::replace(&mut self.stage, Stage::Running)
        else {
            return;
        };
        if let Err(e) = result {
            self.window.plan = None;
            return self.fail(DownloadFailure::PlanRefused(e.to_string()), true, now);
        }
        let plan = self.window.plan.take();
        match plan {
            Some(plan) if self.cfg.window > 1 => {
                self.window.n_chunks = plan.chunk_count();
                if self.window.n_chunks == 0 {
                    return self.fail(
                        DownloadFailure::PlanMismatch("data for an empty object".into()),
                        true,
                        now,
                    );
                }
                let want = plan.state_for(1).unwrap_or_default();
                if state != want {
                    return self.fail(
                        DownloadFailure::PlanMismatch(
                            "chunk 0 came with an unplanned state".into(),
                        ),
                        true,
                        now,
                    );
                }
                self.window.plan = Some(plan);
                self.window.next_send = 1;
                self.window.received = 1;
                self.window.next_deliver = 1;
                self.hand_over(0, state, data);
                self.fill_window(now);
            }
            // window 1: the plan was informational; stay stop-and-wait
            _ => self.hand_over(0, state, data),
        }
    }

    /// Report the consumer's result for chunk `seq`.
    pub fn consumed(&mut self, seq: u64, result: Result<State, ConsumeError>, now: Instant) {
        let now = self.clock.advance(now);
        if !matches!(self.stage, Stage::Running) {
            return;
        }
        let Some(c) = self.window.consuming.remove(&seq) else {
            tracing::debug!(rid = %self.ref_id, seq, "consumed() for an unknown chunk ignored");
            return;
        };
        let new_state = match result {
            Ok(s) => s,
            Err(e) => return self.fail(DownloadFailure::ConsumeFailed(e.to_string()), true, now),
        };
        self.window.consumed_count += 1;
        self.progress.add(c.bytes, c.items);
        self.emit_progress(ProgressState::Active, false, now);
        if self.window.is_planned() {
            if new_state != c.state {
                return self.fail(DownloadFailure::StateChanged, true, now);
            }
            self.fill_window(now);
            self.maybe_complete();
        } else {
            self.send(seq + 1, Some(new_state), now);
        }
    }

    /// Once EOF arrived and every chunk is consumed, ask the caller to complete.
    pub(super) fn maybe_complete(&mut self) {
        if !matches!(self.stage, Stage::Running) || self.window.eof.is_none() {
            return;
        }
        if !self.window.is_drained() || !self.window.all_consumed() {
            return;
        }
        self.stage = Stage::AwaitCompletion;
        self.actions.push_back(Action::Complete);
    }

    /// Report the result of `consumer.completed`.
    pub fn completion_result(&mut self, result: Result<(), ConsumeError>, now: Instant) {
        let now = self.clock.advance(now);
        if !matches!(self.stage, Stage::AwaitCompletion) {
            return;
        }
        let nonce = self.window.eof.take().flatten();
        match result {
            Ok(()) => {
                self.confirm(nonce, DownloadStatus::Success);
                self.stage = Stage::Done;
                self.emit_progress(ProgressState::Completed, true, now);
                self.result = Some(Ok(()));
                self.actions.push_back(Action::Finished(Ok(())));
            }
            Err(e) => {
                self.confirm(nonce, DownloadStatus::Failed);
                self.fail(DownloadFailure::CompletionFailed(e.to_string()), false, now);
            }
        }
    }
}
