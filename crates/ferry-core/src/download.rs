//! The receiver engine: one [`Download`] per object being pulled.
//!
//! The engine decides which requests to send and what each reply means; it never calls the
//! [`Consumer`](crate::Consumer) itself. The caller polls [`Action`]s and executes them:
//!
//! | action | the caller does | then reports |
//! |---|---|---|
//! | [`Action::Send`] | sends the pull request to the source | [`Download::reply`] / [`Download::reply_payload`] / [`Download::reply_error`] with the same [`RequestId`] |
//! | [`Action::CheckPlan`] | `consumer.plan_received(&plan)` | [`Download::plan_result`] |
//! | [`Action::Consume`] | `consumer.consume(ref_id, &state, data)` | [`Download::consumed`] with the same `seq` |
//! | [`Action::Complete`] | `consumer.completed(ref_id)` | [`Download::completion_result`] |
//! | [`Action::SendConfirm`] / [`Action::SendCancel`] | fire-and-forget send | — |
//! | [`Action::Progress`] | forward to a progress callback | — |
//! | [`Action::Finished`] | on `Err`, `consumer.failed(ref_id, reason)`; drop the download | — |
//!
//! # Requests and the window
//!
//! The first request carries no state. Against a producer that advertises nothing (NVFlare)
//! the engine is stop-and-wait: the next request carries the state the consumer returned for
//! the last chunk. When the first data reply carries a `ferry_plan` and the window `W > 1`,
//! the states of all requests are known in advance: up to `W` chunks are outstanding at once
//! (requested, buffered for order, or being consumed), replies are reordered when the consumer
//! needs order, each consumed state must equal the state it was given, and the EOF request
//! (the state after the last planned chunk) is sent once every data reply has arrived.
//!
//! # Timeouts (one design): the source must keep answering, not answer each request at once
//!
//! A source may hold a request for a while before it answers: a sender capped by a rate limit
//! (`ferry serve --limit-rate`) answers its queued requests one chunk-time apart, so with `W`
//! requests in flight the last one waits `W` chunk-times. Timing each request from its own send
//! would time out requests that are merely queued behind their siblings, retry them (which
//! books the capped link again for nothing) and, with a slow enough cap, fail a transfer that
//! was moving. So the clock that matters is the *source's silence*:
//!
//! > a request times out when `per_request_timeout` has passed since it was sent **and** since
//! > the source last answered anything of this download.
//!
//! The deadline of request `r` is `max(sent(r), last_answer) + per_request_timeout`. While the
//! source answers at least once per `per_request_timeout` (at any pace), nothing times out and
//! the window stays full, so a paced transfer finishes at the pace; a silent source is detected
//! `per_request_timeout` after its last answer, as with a per-request clock. A request the
//! source dropped while answering the others is detected once the others are answered (the
//! window then drains and the source falls silent): at most the window's worth of answers plus
//! `per_request_timeout` later. Any answer counts, a late one to a request already retried too.
//!
//! [`Download::poll_timeout`] reports the earliest deadline, and [`Download::handle_timeout`]
//! turns a passed deadline into a timeout of that request. The glue may *also* report a
//! transport timeout with `reply(id, Err(ReturnCode::Timeout))`; it should give the transport
//! a bound well past the engine's (a request can wait for every request ahead of it in the
//! window, so `per_request_timeout × (window + 1)` is safe), so the engine's verdict is the one
//! that counts. A timed-out request is retried with the same state under a *new*
//! [`RequestId`] after an exponential backoff (2 s, 4 s, … capped at 60 s); a late reply to
//! the old id is ignored. After `max_retries` consecutive timeouts of the same chunk the
//! download fails (and cancels). Only `timeout` is retried; any other non-`ok` code fails at
//! once.

use crate::message::{CancelRequest, ConfirmRequest, PullRequest, ReplyBody, ReplyStatus};
use crate::progress::{ProgressKey, ProgressTracker};
use crate::time::{earliest, Clock};
use crate::{
    validate_fqcn, ChunkData, ConsumeError, DownloadStatus, Error, ProgressEvent, ProgressState,
    RefId, Refusal, ReturnCode, State, TransferPlan,
};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Largest window accepted (more would only buffer more chunks in memory).
pub const MAX_WINDOW: usize = 256;

/// Settings of one download.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// How long the source may stay silent: a request times out when this much time passed
    /// since it was sent and since the source last answered anything of this download (see
    /// the [module docs](self)).
    pub per_request_timeout: Duration,
    /// Consecutive timeouts of one chunk tolerated before failing (NVFlare: 3).
    pub max_retries: u32,
    /// First backoff after a timeout (NVFlare: 2 s); doubles per consecutive timeout.
    pub backoff_initial: Duration,
    /// Backoff cap (NVFlare: 60 s).
    pub backoff_max: Duration,
    /// Send `confirm_capable: true` (and confirm terminal replies that ask for it).
    pub confirm_capable: bool,
    /// Chunks in flight when the producer sent a plan (1 = stop-and-wait, like NVFlare).
    pub window: usize,
    /// Emit progress actions, throttled to one per interval; `None` = off.
    pub progress_interval: Option<Duration>,
    /// State of the first request (resume: e.g. `{"received_bytes": k}` for a file whose first
    /// `k` bytes are already here). `None` (default) starts from the beginning. A resumed
    /// download runs stop-and-wait: producers advertise their plan only to a first request
    /// without state.
    pub initial_state: Option<State>,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            per_request_timeout: Duration::from_secs(600),
            max_retries: 3,
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            confirm_capable: true,
            window: 8,
            progress_interval: None,
            initial_state: None,
        }
    }
}

/// Longest sender-provided error text kept in [`DownloadFailure::RequestFailed`], in bytes
/// (longer text is cut at a character boundary and marked with `…`).
pub const MAX_FAILURE_DETAIL: usize = 512;

/// Formats an optional detail as `": detail"` (nothing without one), for `Display`.
struct DetailSuffix<'a>(Option<&'a str>);

impl std::fmt::Display for DetailSuffix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, ": {d}"),
            None => Ok(()),
        }
    }
}

/// Make a peer's error text safe to keep and print: control characters (terminal escapes,
/// newlines) become spaces, surrounding whitespace is trimmed, the result is capped to
/// [`MAX_FAILURE_DETAIL`] bytes; empty text is no text.
fn sanitize_detail(text: &str) -> Option<String> {
    let cleaned: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        return None;
    }
    if cleaned.len() <= MAX_FAILURE_DETAIL {
        return Some(cleaned.to_string());
    }
    const MARK: &str = "…";
    let mut cut = MAX_FAILURE_DETAIL - MARK.len();
    while !cleaned.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(format!("{}{MARK}", cleaned[..cut].trim_end()))
}

/// Identifies one request sent by a [`Download`]; a retry gets a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Why a download failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DownloadFailure {
    /// The producer answered `status: error`.
    #[error("producer error from {source_fqcn}")]
    ProducerError {
        /// The source.
        source_fqcn: String,
    },
    /// A request ended with a non-retryable return code.
    #[error("error requesting data from {source_fqcn}: {rc}{}", DetailSuffix(detail.as_deref()))]
    RequestFailed {
        /// The source.
        source_fqcn: String,
        /// The code.
        rc: ReturnCode,
        /// The sender's own words (the reply's `cn__error` text, e.g. "site-9 is not an
        /// expected receiver of R1"), when it gave any. It comes from a peer, so it is capped
        /// to [`MAX_FAILURE_DETAIL`] bytes and control characters are replaced (see
        /// [`Download::reply_error`]).
        detail: Option<String>,
    },
    /// The producer refused the request and said why with a typed code (a ferry sender; an
    /// NVFlare sender's refusals are [`RequestFailed`](Self::RequestFailed) with
    /// `invalid_request`).
    #[error("{source_fqcn} refused the request ({refusal}){}", DetailSuffix(detail.as_deref()))]
    Refused {
        /// The source.
        source_fqcn: String,
        /// Why, as a code.
        refusal: Refusal,
        /// The sender's own words, sanitized and capped as for `RequestFailed`.
        detail: Option<String>,
    },
    /// A chunk timed out more than `max_retries` times in a row.
    #[error("no reply from {source_fqcn} after {attempts} attempts")]
    RetriesExhausted {
        /// The source.
        source_fqcn: String,
        /// Attempts made for the chunk.
        attempts: u32,
    },
    /// A reply could not be decoded or lacks required keys.
    #[error("bad reply: {0}")]
    BadReply(String),
    /// The producer's replies contradict the plan it advertised.
    #[error("producer diverged from its plan: {0}")]
    PlanMismatch(String),
    /// The consumer refused the plan.
    #[error("consumer refused the object: {0}")]
    PlanRefused(String),
    /// `consume` failed.
    #[error("exception when consuming data: {0}")]
    ConsumeFailed(String),
    /// A pipelined consumer returned another state than it was given.
    #[error("consumer changed state despite pipelining")]
    StateChanged,
    /// `completed` failed after EOF.
    #[error("download finalization failed: {0}")]
    CompletionFailed(String),
    /// The caller aborted.
    #[error("download aborted")]
    Aborted,
    /// The source was reported failed by its owner.
    #[error("{0}")]
    SourceFailed(String),
}

/// Something the caller must do (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this pull request to the source; report the result with the same id.
    Send {
        /// Correlation id.
        id: RequestId,
        /// The request.
        request: PullRequest,
    },
    /// Call `consumer.plan_received(&plan)`, then [`Download::plan_result`].
    CheckPlan(TransferPlan),
    /// Call `consumer.consume(ref_id, &state, data)`, then [`Download::consumed`].
    Consume {
        /// Chunk index (0-based), to report back.
        seq: u64,
        /// The state the producer returned with the chunk.
        state: State,
        /// The chunk.
        data: ChunkData,
    },
    /// Call `consumer.completed(ref_id)`, then [`Download::completion_result`].
    Complete,
    /// Send this confirm (fire-and-forget).
    SendConfirm(ConfirmRequest),
    /// Send this cancel (fire-and-forget).
    SendCancel(CancelRequest),
    /// A progress report.
    Progress(ProgressEvent),
    /// The download is over; on `Err` call `consumer.failed(ref_id, &reason.to_string())`.
    Finished(Result<(), DownloadFailure>),
}

/// A request waiting for its reply.
#[derive(Debug, Clone)]
struct Outstanding {
    /// Chunk index (the EOF request has index `chunk_count`).
    index: u64,
    /// State sent (re-sent on retry).
    state: Option<State>,
    /// When it was sent; its deadline is `max(sent, last_answer) + per_request_timeout`.
    sent: Instant,
}

/// A retry waiting for its backoff to pass.
#[derive(Debug, Clone)]
struct Retry {
    /// When to resend.
    at: Instant,
    /// Chunk index.
    index: u64,
    /// State to resend.
    state: Option<State>,
}

/// A chunk handed to the consumer and not yet reported back.
#[derive(Debug, Clone)]
struct Consuming {
    /// The state given with it.
    state: State,
    /// Its bytes (progress).
    bytes: u64,
    /// Its items (progress).
    items: Option<usize>,
}

/// Where the download is.
#[derive(Debug)]
enum Stage {
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

/// The receiver engine for one object. See the [module docs](self).
#[derive(Debug)]
pub struct Download {
    /// The ref being pulled.
    ref_id: RefId,
    /// The source FQCN.
    source: String,
    /// Settings (window clamped to 1..=MAX_WINDOW).
    cfg: DownloadConfig,
    /// The consumer needs chunks in order.
    needs_order: bool,
    /// Monotonic virtual time.
    clock: Clock,
    /// When the source last answered any request of this download (data, terminal, error or
    /// a late answer to a superseded request): the source is alive, merely paced, until it
    /// stays silent for `per_request_timeout` (see the module docs).
    last_answer: Option<Instant>,
    /// Actions not yet polled.
    actions: VecDeque<Action>,
    /// Next request id.
    next_id: u64,
    /// Requests in flight.
    outstanding: BTreeMap<RequestId, Outstanding>,
    /// Retries waiting for their backoff.
    retries: Vec<Retry>,
    /// Consecutive timeouts per chunk index.
    timeouts: BTreeMap<u64, u32>,
    /// The producer said `cancel_capable` on a data reply.
    cancel_capable: bool,
    /// The accepted plan, in windowed mode.
    plan: Option<TransferPlan>,
    /// Number of data chunks (windowed mode).
    n_chunks: u64,
    /// Next chunk index to request (windowed mode).
    next_send: u64,
    /// Data replies received (windowed mode).
    received: u64,
    /// Arrived, not yet handed over (ordered windowed mode).
    buffer: BTreeMap<u64, (State, ChunkData)>,
    /// Next index to hand over (ordered windowed mode).
    next_deliver: u64,
    /// Handed over, not yet reported.
    consuming: BTreeMap<u64, Consuming>,
    /// Chunks consumed.
    consumed_count: u64,
    /// The EOF request was sent (windowed mode).
    eof_requested: bool,
    /// EOF arrived, with the nonce to confirm (if asked).
    eof: Option<Option<String>>,
    /// Stage.
    stage: Stage,
    /// Progress counters.
    progress: ProgressTracker,
    /// The final result, once finished.
    result: Option<Result<(), DownloadFailure>>,
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
            cfg: config,
            needs_order,
            clock: Clock::new(now),
            last_answer: None,
            actions: VecDeque::new(),
            next_id: 0,
            outstanding: BTreeMap::new(),
            retries: Vec::new(),
            timeouts: BTreeMap::new(),
            cancel_capable: false,
            plan: None,
            n_chunks: 0,
            next_send: 0,
            received: 0,
            buffer: BTreeMap::new(),
            next_deliver: 0,
            consuming: BTreeMap::new(),
            consumed_count: 0,
            eof_requested: false,
            eof: None,
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
        self.plan.is_some()
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    fn emit_progress(&mut self, state: ProgressState, force: bool, now: Instant) {
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

    fn send(&mut self, index: u64, state: Option<State>, now: Instant) {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.outstanding.insert(
            id,
            Outstanding {
                index,
                state: state.clone(),
                sent: now,
            },
        );
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
        self.outstanding.len() + self.retries.len() + self.buffer.len() + self.consuming.len()
    }

    /// Windowed mode: request more chunks while the window has room; request EOF once every
    /// data reply arrived.
    fn fill_window(&mut self, now: Instant) {
        if self.plan.is_none() || !matches!(self.stage, Stage::Running) {
            return;
        }
        // The state is looked up per request instead of cloning the plan on every reply.
        let planned = |d: &Self, i: u64| d.plan.as_ref().and_then(|p| p.state_for(i));
        while self.next_send < self.n_chunks && self.occupancy() < self.cfg.window {
            let i = self.next_send;
            self.next_send += 1;
            self.send(i, planned(self, i), now);
        }
        if !self.eof_requested && self.received == self.n_chunks {
            self.eof_requested = true;
            self.send(self.n_chunks, planned(self, self.n_chunks), now);
        }
    }

    /// Finish with an error: drop pending work, cancel if the producer understands it.
    fn fail(&mut self, reason: DownloadFailure, cancel: bool, now: Instant) {
        if matches!(self.stage, Stage::Done) {
            return;
        }
        tracing::warn!(rid = %self.ref_id, source = %self.source, reason = %reason, "download failed");
        self.stage = Stage::Done;
        self.outstanding.clear();
        self.retries.clear();
        self.buffer.clear();
        self.consuming.clear();
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
    fn confirm(&mut self, nonce: Option<String>, status: DownloadStatus) {
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

    /// Report the decoded outcome of request `id`: `Ok(body)` for return code `ok`, `Err(rc)`
    /// otherwise. Replies to unknown or superseded ids are ignored.
    pub fn reply(&mut self, id: RequestId, result: Result<ReplyBody, ReturnCode>, now: Instant) {
        let now = self.clock.advance(now);
        if matches!(self.stage, Stage::Done) {
            return;
        }
        let mut body = match result {
            Ok(b) => b,
            // A transport timeout is the absence of an answer, not an answer
            Err(ReturnCode::Timeout) => return self.timed_out(id, now),
            Err(rc) => {
                self.heard(now);
                return self.request_failed(id, rc, None, None, now);
            }
        };
        self.heard(now);
        let Some(req) = self.outstanding.remove(&id) else {
            tracing::debug!(rid = %self.ref_id, id = id.0, "stale reply ignored");
            return;
        };
        self.timeouts.remove(&req.index);
        // a terminal reply's nonce is confirmed only when the producer asks for it
        let nonce = body
            .confirm_nonce
            .take()
            .filter(|_| body.confirm_expected == Some(true));
        match body.status {
            ReplyStatus::Ok => self.on_data(req.index, body, now),
            ReplyStatus::Eof => {
                if self.plan.is_some() && req.index != self.n_chunks {
                    let why = format!("eof at chunk {} of {}", req.index, self.n_chunks);
                    return self.fail(DownloadFailure::PlanMismatch(why), true, now);
                }
                self.eof = Some(nonce);
                self.maybe_complete();
            }
            ReplyStatus::Error => {
                self.confirm(nonce, DownloadStatus::Failed);
                let source_fqcn = self.source.clone();
                self.fail(DownloadFailure::ProducerError { source_fqcn }, false, now);
            }
        }
    }

    /// Report a raw reply: the return code and, for `ok`, the payload bytes, decoded here with
    /// [`ReplyBody::decode`] (the chunk comes out as a slice of `payload`, not a copy). A
    /// payload that does not decode, or `ok` without one, fails the download as
    /// [`DownloadFailure::BadReply`] saying what was wrong.
    pub fn reply_payload(
        &mut self,
        id: RequestId,
        rc: ReturnCode,
        payload: Option<&Bytes>,
        now: Instant,
    ) {
        if rc != ReturnCode::Ok {
            return self.reply(id, Err(rc), now);
        }
        match payload.map(ReplyBody::decode) {
            Some(Ok(b)) => self.reply(id, Ok(b), now),
            other => {
                let now = self.clock.advance(now);
                if !self.outstanding.contains_key(&id) {
                    return;
                }
                let why = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "ok reply without payload".into(),
                };
                self.fail(DownloadFailure::BadReply(why), true, now);
            }
        }
    }

    /// Report a reply that carries no payload but an error text: the return code, the
    /// sender's explanation (the `cn__error` header of an F3 reply) and, from a ferry sender,
    /// its typed [`Refusal`] (the [`REFUSAL_HEADER`](crate::refusal::REFUSAL_HEADER)). With a
    /// refusal the download fails as [`DownloadFailure::Refused`], otherwise as
    /// [`DownloadFailure::RequestFailed`]; either keeps the text as its `detail` (sanitized
    /// and capped to [`MAX_FAILURE_DETAIL`] bytes). Nothing else changes: `timeout` is still
    /// retried (text and code are dropped), any other non-`ok` code fails at once, and `ok`
    /// without a payload is a bad reply, exactly as with [`reply_payload`](Self::reply_payload).
    pub fn reply_error(
        &mut self,
        id: RequestId,
        rc: ReturnCode,
        text: Option<&str>,
        refusal: Option<Refusal>,
        now: Instant,
    ) {
        match rc {
            ReturnCode::Ok | ReturnCode::Timeout => self.reply_payload(id, rc, None, now),
            _ => {
                let now = self.clock.advance(now);
                self.request_failed(id, rc, text.and_then(sanitize_detail), refusal, now);
            }
        }
    }

    /// Request `id` ended with the non-retryable code `rc` (both callers route `timeout` to
    /// [`timed_out`](Self::timed_out) instead).
    fn request_failed(
        &mut self,
        id: RequestId,
        rc: ReturnCode,
        detail: Option<String>,
        refusal: Option<Refusal>,
        now: Instant,
    ) {
        if matches!(self.stage, Stage::Done) {
            return;
        }
        if !self.outstanding.contains_key(&id) {
            return;
        }
        let source_fqcn = self.source.clone();
        let failure = match refusal {
            Some(refusal) => DownloadFailure::Refused {
                source_fqcn,
                refusal,
                detail,
            },
            None => DownloadFailure::RequestFailed {
                source_fqcn,
                rc,
                detail,
            },
        };
        self.fail(failure, true, now);
    }

    fn on_data(&mut self, index: u64, body: ReplyBody, now: Instant) {
        if body.cancel_capable == Some(true) {
            self.cancel_capable = true;
        }
        let (Some(state), Some(data)) = (body.state, body.data) else {
            return self.fail(
                DownloadFailure::BadReply("data reply without state or data".into()),
                true,
                now,
            );
        };
        if index == 0 {
            let plan = body.ferry_plan.and_then(|w| match w.to_plan() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(rid = %self.ref_id, error = %e, "ignoring unusable ferry_plan");
                    None
                }
            });
            if let Some(plan) = plan {
                self.progress.total = plan.total_bytes;
                self.stage = Stage::AwaitPlan { state, data };
                self.actions.push_back(Action::CheckPlan(plan.clone()));
                self.plan = Some(plan); // provisional until plan_result
                return;
            }
            return self.hand_over(0, state, data);
        }
        if let Some(plan) = &self.plan {
            if index >= self.n_chunks {
                let why = format!("data at chunk {index} of {}", self.n_chunks);
                return self.fail(DownloadFailure::PlanMismatch(why), true, now);
            }
            let want = plan.state_for(index + 1).unwrap_or_default();
            if state != want {
                let why = format!("chunk {index} came with an unplanned state");
                return self.fail(DownloadFailure::PlanMismatch(why), true, now);
            }
            self.received += 1;
            if self.needs_order {
                self.buffer.insert(index, (state, data));
                self.deliver_ready();
            } else {
                self.hand_over(index, state, data);
            }
            self.fill_window(now);
        } else {
            self.hand_over(index, state, data);
        }
    }

    /// Ordered windowed mode: hand over every buffered chunk that is next in line.
    fn deliver_ready(&mut self) {
        while let Some((state, data)) = self.buffer.remove(&self.next_deliver) {
            let i = self.next_deliver;
            self.next_deliver += 1;
            self.hand_over(i, state, data);
        }
    }

    fn hand_over(&mut self, seq: u64, state: State, data: ChunkData) {
        self.consuming.insert(
            seq,
            Consuming {
                state: state.clone(),
                bytes: data.byte_len(),
                items: data.item_count(),
            },
        );
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
            self.plan = None;
            return self.fail(DownloadFailure::PlanRefused(e.to_string()), true, now);
        }
        let plan = self.plan.take();
        match plan {
            Some(plan) if self.cfg.window > 1 => {
                self.n_chunks = plan.chunk_count();
                if self.n_chunks == 0 {
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
                self.plan = Some(plan);
                self.next_send = 1;
                self.received = 1;
                self.next_deliver = 1;
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
        let Some(c) = self.consuming.remove(&seq) else {
            tracing::debug!(rid = %self.ref_id, seq, "consumed() for an unknown chunk ignored");
            return;
        };
        let new_state = match result {
            Ok(s) => s,
            Err(e) => return self.fail(DownloadFailure::ConsumeFailed(e.to_string()), true, now),
        };
        self.consumed_count += 1;
        self.progress.add(c.bytes, c.items);
        self.emit_progress(ProgressState::Active, false, now);
        if self.plan.is_some() {
            if new_state != c.state {
                return self.fail(DownloadFailure::StateChanged, true, now);
            }
            self.fill_window(now);
            self.maybe_complete();
        } else {
            self.send(seq + 1, Some(new_state), now);
        }
    }

    fn maybe_complete(&mut self) {
        if !matches!(self.stage, Stage::Running) || self.eof.is_none() {
            return;
        }
        if !self.consuming.is_empty() || !self.buffer.is_empty() {
            return;
        }
        if self.plan.is_some() && self.consumed_count < self.n_chunks {
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
        let nonce = self.eof.take().flatten();
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

    fn timed_out(&mut self, id: RequestId, now: Instant) {
        let Some(req) = self.outstanding.remove(&id) else {
            return;
        };
        let n = self.timeouts.entry(req.index).or_insert(0);
        *n += 1;
        let n = *n;
        if n > self.cfg.max_retries {
            let source_fqcn = self.source.clone();
            return self.fail(
                DownloadFailure::RetriesExhausted {
                    source_fqcn,
                    attempts: n,
                },
                true,
                now,
            );
        }
        let shift = (n - 1).min(30);
        let backoff = self
            .cfg
            .backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.cfg.backoff_max);
        tracing::debug!(rid = %self.ref_id, index = req.index, attempt = n, ?backoff, "request timed out; retrying");
        self.retries.push(Retry {
            at: now.checked_add(backoff).unwrap_or(now),
            index: req.index,
            state: req.state,
        });
    }

    /// The source answered something at `now`: every request's silence clock restarts.
    fn heard(&mut self, now: Instant) {
        self.last_answer = Some(now);
    }

    /// When request `o` times out: `per_request_timeout` after the later of its send and the
    /// source's last answer (see the module docs). `None` only on overflow (never fires).
    fn deadline(&self, o: &Outstanding) -> Option<Instant> {
        let from = self.last_answer.map_or(o.sent, |a| a.max(o.sent));
        from.checked_add(self.cfg.per_request_timeout)
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work: a request
    /// deadline or the end of a retry backoff.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.stage, Stage::Done) {
            return None;
        }
        let mut next = None;
        for o in self.outstanding.values() {
            next = earliest(next, self.deadline(o));
        }
        for r in &self.retries {
            next = earliest(next, Some(r.at));
        }
        next
    }

    /// Time out requests whose deadline passed and resend retries whose backoff ended.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        let expired: Vec<RequestId> = self
            .outstanding
            .iter()
            .filter(|(_, o)| self.deadline(o).is_some_and(|d| now >= d))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if matches!(self.stage, Stage::Done) {
                return;
            }
            self.timed_out(id, now);
        }
        if matches!(self.stage, Stage::Done) {
            return;
        }
        let (due, keep): (Vec<Retry>, Vec<Retry>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|r| now >= r.at);
        self.retries = keep;
        for r in due {
            self.send(r.index, r.state, now);
        }
    }
}

#[cfg(test)]
mod tests;
