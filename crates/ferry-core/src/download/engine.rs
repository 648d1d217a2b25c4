//! The [`Download`] itself: its state, construction, the caller's view of it, sending requests
//! and filling the window, timers, and the two ways it ends early (failure and abort).
//!
//! What the source answers is handled in `replies.rs`, what the consumer reports in
//! `consuming.rs`; both add methods to [`Download`] and call down into this module.

use super::action::{Action, RequestId};
use super::config::{DownloadConfig, MAX_WINDOW};
use super::failure::DownloadFailure;
use super::requests::{Requests, TimeoutVerdict};
use super::window::Window;
use crate::message::{CancelRequest, ConfirmRequest, PullRequest};
use crate::progress::{ProgressKey, ProgressTracker};
use crate::time::Clock;
use crate::{validate_fqcn, ChunkData, DownloadStatus, Error, ProgressState, RefId, State};
use std::collections::VecDeque;
use std::time::Instant;

/// Where the download is.
#[derive(Debug)]
pub(super) enum Stage {
    /// Requests and chunks are moving.
    Running,
    /// `CheckPlan` was emitted; chunk 0 waits for the verdict.
    AwaitPlan {
        /// The first chunk's state.
        state: State,
        /// The first chunk.
        data: ChunkData,
    },
    /// `Complete` was emitted.
    AwaitCompletion,
    /// Finished (ok or not).
    Done,
}

/// The receiver engine for one object. See the [module docs](crate::download).
#[derive(Debug)]
pub struct Download {
    /// The ref being pulled.
    pub(super) ref_id: RefId,
    /// The source FQCN.
    pub(super) source: String,
    /// Settings (window clamped to 1..=MAX_WINDOW).
    pub(super) cfg: DownloadConfig,
    /// The consumer needs chunks in order.
    pub(super) needs_order: bool,
    /// Monotonic virtual time.
    pub(super) clock: Clock,
    /// Actions not yet polled.
    pub(super) actions: VecDeque<Action>,
    /// Requests in flight, their deadlines and the retries waiting out a backoff.
    pub(super) requests: Requests,
    /// The producer said `cancel_capable` on a data reply.
    pub(super) cancel_capable: bool,
    /// The plan and where each chunk is.
    pub(super) window: Window,
    /// Stage.
    pub(super) stage: Stage,
    /// Progress counters.
    pub(super) progress: ProgressTracker,
    /// The final result, once finished.
    pub(super) result: Option<Result<(), DownloadFailure>>,
}

impl Download {
    /// Start downloading `ref_id` from `source` at `now`. The first [`Action::Send`] is queued.
    /// `needs_order` is the consumer's [`needs_order`](crate::Consumer::needs_order).
    pub fn new(
        source: impl Into<String>,
        ref_id: RefId,
        mut config: DownloadConfig,
        needs_order: bool,
        now: Instant,
    ) -> Result<Self, Error> {
        let source = source.into();
        validate_fqcn(&source)?;
        if config.per_request_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "per_request_timeout must be > 0".into(),
            ));
        }
        config.window = config.window.clamp(1, MAX_WINDOW);
        let mut d = Self {
            ref_id,
            source,
            requests: Requests::new(&config),
            cfg: config,
            needs_order,
            clock: Clock::new(now),
            actions: VecDeque::new(),
            cancel_capable: false,
            window: Window::default(),
            stage: Stage::Running,
            progress: ProgressTracker::default(),
            result: None,
        };
        d.emit_progress(ProgressState::Start, true, now);
        let first = d.cfg.initial_state.clone();
        d.send(0, first, now);
        Ok(d)
    }

    /// The ref.
    pub fn ref_id(&self) -> &RefId {
        &self.ref_id
    }

    /// The source FQCN.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the download is over.
    pub fn is_finished(&self) -> bool {
        self.result.is_some()
    }

    /// The result, once over.
    pub fn result(&self) -> Option<&Result<(), DownloadFailure>> {
        self.result.as_ref()
    }

    /// Whether the engine is pipelining (a plan was accepted and the window is > 1).
    pub fn is_windowed(&self) -> bool {
        self.window.is_planned()
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> usize {
        self.requests.in_flight()
    }

    pub(super) fn emit_progress(&mut self, state: ProgressState, force: bool, now: Instant) {
        let Some(interval) = self.cfg.progress_interval else {
            return;
        };
        let key = ProgressKey {
            tx_id: None,
            ref_id: &self.ref_id,
            receiver: None,
        };
        if let Some(ev) = self.progress.emit(state, force, interval, now, key) {
            self.actions.push_back(Action::Progress(ev));
        }
    }

    pub(super) fn send(&mut self, index: u64, state: Option<State>, now: Instant) {
        let id = self.requests.issue(index, state.clone(), now);
        self.actions.push_back(Action::Send {
            id,
            request: PullRequest {
                ref_id: self.ref_id.clone(),
                state,
                confirm_capable: self.cfg.confirm_capable.then_some(true),
            },
        });
    }

    /// Chunks somewhere between "requested" and "consumed" (the window's occupancy).
    fn occupancy(&self) -> usize {
        self.requests.pending() + self.window.held()
    }

    /// Windowed mode: request more chunks while the window has room; request EOF once every
    /// data reply arrived.
    pub(super) fn fill_window(&mut self, now: Instant) {
        if !self.window.is_planned() || !matches!(self.stage, Stage::Running) {
            return;
        }
        while self.window.next_send < self.window.n_chunks && self.occupancy() < self.cfg.window {
            let i = self.window.next_send;
            self.window.next_send += 1;
            let state = self.window.planned_state(i);
            self.send(i, state, now);
        }
        if !self.window.eof_requested && self.window.received == self.window.n_chunks {
            self.window.eof_requested = true;
            let n = self.window.n_chunks;
            let state = self.window.planned_state(n);
            self.send(n, state, now);
        }
    }

    /// Finish with an error: drop pending work, cancel if the producer understands it.
    pub(super) fn fail(&mut self, reason: DownloadFailure, cancel: bool, now: Instant) {
        if matches!(self.stage, Stage::Done) {
            return;
        }
        tracing::warn!(rid = %self.ref_id, source = %self.source, reason = %reason, "download failed");
        self.stage = Stage::Done;
        self.requests.clear();
        self.window.clear();
        self.actions.retain(|a| {
            !matches!(
                a,
                Action::Send { .. }
                    | Action::Consume { .. }
                    | Action::CheckPlan(_)
                    | Action::Complete
            )
        });
        if cancel && self.cancel_capable {
            self.actions
                .push_back(Action::SendCancel(CancelRequest::new(self.ref_id.clone())));
        }
        let p = match reason {
            DownloadFailure::Aborted | DownloadFailure::SourceFailed(_) => ProgressState::Aborted,
            _ => ProgressState::Failed,
        };
        self.emit_progress(p, true, now);
        self.result = Some(Err(reason.clone()));
        self.actions.push_back(Action::Finished(Err(reason)));
    }

    /// Confirm a terminal reply that asked for it — only if this receiver said
    /// `confirm_capable` (with confirmation turned off a receiver never confirms, even when a
    /// producer asks: NVFlare's receiver kill switch).
    pub(super) fn confirm(&mut self, nonce: Option<String>, status: DownloadStatus) {
        if !self.cfg.confirm_capable {
            return;
        }
        if let Some(n) = nonce {
            self.actions.push_back(Action::SendConfirm(ConfirmRequest {
                ref_id: self.ref_id.clone(),
                confirm: status,
                confirm_nonce: n,
            }));
        }
    }

    /// Abort (the caller's abort signal): cancel if possible, fail "download aborted".
    pub fn abort(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        self.fail(DownloadFailure::Aborted, true, now);
    }

    /// The source was reported failed (a [`SourceFailureTable`](crate::SourceFailureTable)
    /// record matches): fail at once with its reason, no retry.
    pub fn source_failed(&mut self, reason: &str, now: Instant) {
        let now = self.clock.advance(now);
        self.fail(DownloadFailure::SourceFailed(reason.to_string()), true, now);
    }

    /// Request `id` timed out (its deadline passed, or the glue reported a transport timeout):
    /// retry its chunk after a backoff, or fail once the chunk's retries are used up.
    pub(super) fn timed_out(&mut self, id: RequestId, now: Instant) {
        match self.requests.timed_out(id, now) {
            TimeoutVerdict::Stale => {}
            TimeoutVerdict::Retry {
                index,
                attempt,
                backoff,
            } => {
                tracing::debug!(rid = %self.ref_id, index, attempt, ?backoff, "request timed out; retrying");
            }
            TimeoutVerdict::Exhausted { attempts } => {
                let source_fqcn = self.source.clone();
                self.fail(
                    DownloadFailure::RetriesExhausted {
                        source_fqcn,
                        attempts,
                    },
                    true,
                    now,
                );
            }
        }
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work: a request
    /// deadline or the end of a retry backoff.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.stage, Stage::Done) {
            return None;
        }
        self.requests.poll_timeout()
    }

    /// Time out requests whose deadline passed and resend retries whose backoff ended.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        for id in self.requests.expired(now) {
            if matches!(self.stage, Stage::Done) {
                return;
            }
            self.timed_out(id, now);
        }
        if matches!(self.stage, Stage::Done) {
            return;
        }
        for (index, state) in self.requests.take_due(now) {
            self.send(index, state, now);
        }
    }
}
