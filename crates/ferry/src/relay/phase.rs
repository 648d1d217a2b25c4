//! Where a relay's upstream download stands ([`Phase`]), and the bookkeeping the downstream
//! pulls wait on ([`Watched`]): a spill's state and its phase under one lock, with a condvar
//! signalled whenever they change.
//!
//! Both spills (a file's bytes, a tensor dict's items) keep their state here: the upstream
//! consumer updates it and wakes the waiters; every downstream pull waits (on the blocking
//! pool) until what it asks for is there, the relay failed, or its time is up.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where the upstream download stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Bytes are arriving (or a source is being tried).
    Filling,
    /// Every byte arrived and the whole object's digest equals the ticket's pin.
    Verified,
    /// The relay gave up: every source failed, the content did not match the pin, or the
    /// relay was closed. The text says which, for downstream receivers and logs.
    Failed(String),
}

/// A spill's state `S` and the download's [`Phase`], as the lock holds them; it reads and
/// writes through to `S`.
#[derive(Debug)]
pub(crate) struct Board<S> {
    /// Where the upstream download stands.
    pub(crate) phase: Phase,
    state: S,
}

impl<S> Deref for Board<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.state
    }
}

impl<S> DerefMut for Board<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.state
    }
}

/// A [`Board`] under one lock, and the condvar its waiters sleep on (see the module docs).
#[derive(Debug)]
pub(crate) struct Watched<S> {
    board: Mutex<Board<S>>,
    /// Signalled whenever the state or the phase changes.
    changed: Condvar,
}

impl<S> Watched<S> {
    /// `state`, with the download [`Phase::Filling`].
    pub(crate) fn new(state: S) -> Self {
        Self {
            board: Mutex::new(Board {
                phase: Phase::Filling,
                state,
            }),
            changed: Condvar::new(),
        }
    }

    /// The state and phase (a poisoned lock is taken over: the state stays consistent).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Board<S>> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake every waiter (after a change made under [`lock`](Self::lock)).
    pub(crate) fn notify(&self) {
        self.changed.notify_all();
    }

    /// Where the upstream download stands.
    pub(crate) fn phase(&self) -> Phase {
        self.lock().phase.clone()
    }

    /// Move to `phase` (a failure is final: a later phase does not replace it) and wake every
    /// waiter.
    pub(crate) fn set_phase(&self, phase: Phase) {
        let mut s = self.lock();
        if !matches!(s.phase, Phase::Failed(_)) {
            s.phase = phase;
        }
        drop(s);
        self.notify();
    }

    /// Wait until `ready` gives an answer from the state, the relay failed, or `limit` passed
    /// (`what` says what was waited for, in the timeout's text).
    pub(crate) fn wait<T>(
        &self,
        limit: Duration,
        what: &str,
        mut ready: impl FnMut(&Board<S>) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + limit;
        let mut s = self.lock();
        loop {
            if let Phase::Failed(why) = &s.phase {
                return Err(why.clone());
            }
            if let Some(v) = ready(&s) {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{what} did not arrive from upstream within {}s",
                    limit.as_secs()
                ));
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Wait until the upstream download is verified: `Ok`, else the failure or, after
    /// `limit`, a timeout that names `what` (see [`wait`](Self::wait)).
    pub(crate) fn wait_verified(&self, limit: Duration, what: &str) -> Result<(), String> {
        self.wait(limit, what, |b| (b.phase == Phase::Verified).then_some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of an object is served only once it is verified: a download still filling
    /// when the wait runs out is a timeout, not an end (a pull at EOF would otherwise be
    /// answered with unverified content), and a failure stays final.
    #[test]
    fn waiting_for_the_end_is_verified_failed_or_timed_out() {
        let w = Watched::new(());
        let why = w
            .wait_verified(Duration::ZERO, "the end of the object")
            .unwrap_err();
        assert_eq!(
            why,
            "the end of the object did not arrive from upstream within 0s"
        );

        w.set_phase(Phase::Verified);
        assert_eq!(w.wait_verified(Duration::ZERO, "the end"), Ok(()));

        let w = Watched::new(());
        w.set_phase(Phase::Failed("the content did not match".into()));
        w.set_phase(Phase::Verified);
        assert_eq!(
            w.wait_verified(Duration::from_secs(600), "the end"),
            Err("the content did not match".to_string()),
            "a failure is final"
        );
    }

    /// A waiter on another thread wakes when the phase changes, long before its limit.
    #[test]
    fn a_waiter_wakes_when_the_download_is_verified() {
        let w = std::sync::Arc::new(Watched::new(()));
        let w2 = std::sync::Arc::clone(&w);
        let waiter =
            std::thread::spawn(move || w2.wait_verified(Duration::from_secs(600), "the end"));
        w.set_phase(Phase::Verified);
        assert_eq!(waiter.join().unwrap(), Ok(()));
    }
}
