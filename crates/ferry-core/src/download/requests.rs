//! The requests in flight and the clocks that judge them: when each was sent, when the source
//! last answered (the silence clock of the [module docs](crate::download)), how many times in
//! a row each chunk timed out, and the retries waiting out their exponential backoff.
//!
//! It knows nothing of plans, consumers or actions: it numbers requests, says which ones have
//! timed out and which retries are due, and the engine turns that into sends and failures.

use super::action::RequestId;
use super::config::DownloadConfig;
use crate::time::earliest;
use crate::State;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

/// What a timeout of one request leads to.
#[derive(Debug)]
pub(super) enum TimeoutVerdict {
    /// The request was no longer in flight (answered, superseded or cleared): nothing.
    Stale,
    /// A retry of chunk `index` is scheduled after `backoff` (the `attempt`-th timeout).
    Retry {
        /// Chunk index.
        index: u64,
        /// Consecutive timeouts of this chunk so far.
        attempt: u32,
        /// How long the retry waits.
        backoff: Duration,
    },
    /// The chunk timed out more than `max_retries` times in a row.
    Exhausted {
        /// Attempts made for the chunk.
        attempts: u32,
    },
}

/// The requests of one download and their timers.
#[derive(Debug)]
pub(super) struct Requests {
    /// How long the source may stay silent before a request times out.
    per_request_timeout: Duration,
    /// Consecutive timeouts of one chunk tolerated.
    max_retries: u32,
    /// First backoff; doubles per consecutive timeout.
    backoff_initial: Duration,
    /// Backoff cap.
    backoff_max: Duration,
    /// Next request id.
    next_id: u64,
    /// Requests in flight.
    outstanding: BTreeMap<RequestId, Outstanding>,
    /// Retries waiting for their backoff, in the order they were scheduled.
    retries: Vec<Retry>,
    /// Consecutive timeouts per chunk index.
    timeouts: BTreeMap<u64, u32>,
    /// When the source last answered any request of this download (data, terminal, error or
    /// a late answer to a superseded request): the source is alive, merely paced, until it
    /// stays silent for `per_request_timeout` (see the module docs).
    last_answer: Option<Instant>,
}

impl Requests {
    /// No requests yet, with the timing rules of `cfg`.
    pub(super) fn new(cfg: &DownloadConfig) -> Self {
        Self {
            per_request_timeout: cfg.per_request_timeout,
            max_retries: cfg.max_retries,
            backoff_initial: cfg.backoff_initial,
            backoff_max: cfg.backoff_max,
            next_id: 0,
            outstanding: BTreeMap::new(),
            retries: Vec::new(),
            timeouts: BTreeMap::new(),
            last_answer: None,
        }
    }

    /// Record a request for chunk `index` with `state`, sent at `now`; returns its new id.
    pub(super) fn issue(&mut self, index: u64, state: Option<State>, now: Instant) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.outstanding.insert(
            id,
            Outstanding {
                index,
                state,
                sent: now,
            },
        );
        id
    }

    /// Whether request `id` is in flight.
    pub(super) fn contains(&self, id: RequestId) -> bool {
        self.outstanding.contains_key(&id)
    }

    /// Requests in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// Requests in flight plus retries waiting for their backoff (their share of the window).
    pub(super) fn pending(&self) -> usize {
        self.outstanding.len() + self.retries.len()
    }

    /// The source answered something at `now`: every request's silence clock restarts.
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_answer = Some(now);
    }

    /// Request `id` was answered: it leaves the flight and its chunk's timeout count resets.
    /// Returns its chunk index, or `None` for an unknown or superseded id.
    pub(super) fn answered(&mut self, id: RequestId) -> Option<u64> {
        let req = self.outstanding.remove(&id)?;
        self.timeouts.remove(&req.index);
        Some(req.index)
    }

    /// Request `id` timed out at `now`: count it against its chunk and schedule a retry with
    /// the same state after an exponential backoff, or give up past `max_retries`.
    pub(super) fn timed_out(&mut self, id: RequestId, now: Instant) -> TimeoutVerdict {
        let Some(req) = self.outstanding.remove(&id) else {
            return TimeoutVerdict::Stale;
        };
        let n = self.timeouts.entry(req.index).or_insert(0);
        *n += 1;
        let n = *n;
        if n > self.max_retries {
            return TimeoutVerdict::Exhausted { attempts: n };
        }
        let shift = (n - 1).min(30);
        let backoff = self
            .backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.backoff_max);
        self.retries.push(Retry {
            at: now.checked_add(backoff).unwrap_or(now),
            index: req.index,
            state: req.state,
        });
        TimeoutVerdict::Retry {
            index: req.index,
            attempt: n,
            backoff,
        }
    }

    /// When request `o` times out: `per_request_timeout` after the later of its send and the
    /// source's last answer (see the module docs). `None` only on overflow (never fires).
    fn deadline(&self, o: &Outstanding) -> Option<Instant> {
        let from = self.last_answer.map_or(o.sent, |a| a.max(o.sent));
        from.checked_add(self.per_request_timeout)
    }

    /// The earliest request deadline or end of a retry backoff.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let mut next = None;
        for o in self.outstanding.values() {
            next = earliest(next, self.deadline(o));
        }
        for r in &self.retries {
            next = earliest(next, Some(r.at));
        }
        next
    }

    /// The requests whose deadline has passed at `now`, in id order.
    pub(super) fn expired(&self, now: Instant) -> Vec<RequestId> {
        self.outstanding
            .iter()
            .filter(|(_, o)| self.deadline(o).is_some_and(|d| now >= d))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Take the retries whose backoff has ended at `now` (chunk index and state to resend), in
    /// the order they were scheduled.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<(u64, Option<State>)> {
        let (due, keep): (Vec<Retry>, Vec<Retry>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|r| now >= r.at);
        self.retries = keep;
        due.into_iter().map(|r| (r.index, r.state)).collect()
    }

    /// Forget every request in flight and every waiting retry (the download is over).
    pub(super) fn clear(&mut self) {
        self.outstanding.clear();
        self.retries.clear();
    }
}
