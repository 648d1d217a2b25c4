//! What the source answers: data, EOF, a producer error, a return code or an error text, each
//! checked against the plan when there is one and turned into consumer work, a completion, a
//! retry or a failure.

use super::action::{Action, RequestId};
use super::engine::{Download, Stage};
use super::failure::{sanitize_detail, DownloadFailure};
use crate::message::{ReplyBody, ReplyStatus};
use crate::{DownloadStatus, Refusal, ReturnCode};
use bytes::Bytes;
use std::time::Instant;

impl Download {
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
                self.requests.heard(now);
                return self.request_failed(id, rc, None, None, now);
            }
        };
        self.requests.heard(now);
        let Some(index) = self.requests.answered(id) else {
            tracing::debug!(rid = %self.ref_id, id = id.0, "stale reply ignored");
            return;
        };
        // a terminal reply's nonce is confirmed only when the producer asks for it
        let nonce = body
            .confirm_nonce
            .take()
            .filter(|_| body.confirm_expected == Some(true));
        match body.status {
            ReplyStatus::Ok => self.on_data(index, body, now),
            ReplyStatus::Eof => {
                if self.window.is_planned() && index != self.window.n_chunks {
                    let why = format!("eof at chunk {} of {}", index, self.window.n_chunks);
                    return self.fail(DownloadFailure::PlanMismatch(why), true, now);
                }
                self.window.eof = Some(nonce);
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
                if !self.requests.contains(id) {
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
    /// and capped to [`MAX_FAILURE_DETAIL`](crate::download::MAX_FAILURE_DETAIL) bytes).
    /// Nothing else changes: `timeout` is still retried (text and code are dropped), any other
    /// non-`ok` code fails at once, and `ok` without a payload is a bad reply, exactly as with
    /// [`reply_payload`](Self::reply_payload).
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
        if !self.requests.contains(id) {
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
                self.window.plan = Some(plan); // provisional until plan_result
                return;
            }
            return self.hand_over(0, state, data);
        }
        if let Some(plan) = &self.window.plan {
            if index >= self.window.n_chunks {
                let why = format!("data at chunk {index} of {}", self.window.n_chunks);
                return self.fail(DownloadFailure::PlanMismatch(why), true, now);
            }
            let want = plan.state_for(index + 1).unwrap_or_default();
            if state != want {
                let why = format!("chunk {index} came with an unplanned state");
                return self.fail(DownloadFailure::PlanMismatch(why), true, now);
            }
            self.window.received += 1;
            if self.needs_order {
                self.window.buffer.insert(index, (state, data));
                self.deliver_ready();
            } else {
                self.hand_over(index, state, data);
            }
            self.fill_window(now);
        } else {
            self.hand_over(index, state, data);
        }
    }
}
