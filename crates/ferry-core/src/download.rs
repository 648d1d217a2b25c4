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
//!
//! # Modules
//!
//! The engine's state is split by what it tracks, each part below the one that uses it:
//! `config` (settings), `action` (what the caller must do), `failure` (why it failed),
//! `requests` (requests in flight, the silence clock, backoff retries), `window` (the plan and
//! where each chunk is), `engine` ([`Download`]: its state, sending, timers, failing), and two
//! sets of inputs on top: `replies` (what the source answers) and `consuming` (what the
//! consumer reports).

mod action;
mod config;
mod consuming;
mod engine;
mod failure;
mod replies;
mod requests;
mod window;

pub use action::{Action, RequestId};
pub use config::{DownloadConfig, MAX_WINDOW};
pub use engine::Download;
pub use failure::{DownloadFailure, MAX_FAILURE_DETAIL};

#[cfg(test)]
mod tests;
