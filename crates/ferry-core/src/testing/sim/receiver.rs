//! A simulated receiver cell: its download slots, which survive crashes, and the consumer
//! calls a slot's engine asks for.

use crate::{
    Action, Consumer, Download, DownloadConfig, DownloadFailure, RefId, SourceFailureTable,
};
use std::time::Instant;

/// Builds a fresh consumer (again after a crash).
pub(super) type ConsumerFactory = Box<dyn FnMut() -> Box<dyn Consumer>>;

/// One download slot of a receiver (survives crashes: a restart builds a new engine).
pub(super) struct Slot {
    pub(super) ref_id: RefId,
    pub(super) cfg: DownloadConfig,
    pub(super) factory: ConsumerFactory,
    /// The live engine and its consumer (`None` while crashed).
    pub(super) live: Option<(Download, Box<dyn Consumer>)>,
    /// Bumped on every (re)start so that replies to an old life are dropped.
    pub(super) life: u64,
    pub(super) result: Option<Result<(), DownloadFailure>>,
    pub(super) finished_at: Option<Instant>,
}

/// One simulated receiver cell.
pub(super) struct Receiver {
    pub(super) name: String,
    pub(super) slowness: u32,
    pub(super) crashed: bool,
    pub(super) slots: Vec<Slot>,
    pub(super) failures: SourceFailureTable,
}

impl Slot {
    /// Execute a consumer-facing action at `now` and report the result to the engine.
    pub(super) fn run_consumer(&mut self, action: Action, now: Instant) {
        let slot = self;
        let Some((dl, consumer)) = slot.live.as_mut() else {
            return;
        };
        let rid = slot.ref_id.as_str();
        match action {
            Action::CheckPlan(plan) => {
                let res = consumer.plan_received(&plan);
                dl.plan_result(res, now);
            }
            Action::Consume { seq, state, data } => {
                let res = consumer.consume(rid, &state, data);
                dl.consumed(seq, res, now);
            }
            Action::Complete => {
                let res = consumer.completed(rid);
                dl.completion_result(res, now);
            }
            Action::Finished(res) => {
                if let Err(e) = &res {
                    consumer.failed(rid, &e.to_string());
                }
                slot.result = Some(res);
                slot.finished_at = Some(now);
            }
            Action::Send { .. }
            | Action::SendConfirm(_)
            | Action::SendCancel(_)
            | Action::Progress(_) => {}
        }
    }
}
