//! Virtual-time helpers: strict-`>` deadlines and a monotonic clamp.
//!
//! NVFlare expires things when `now - start > ttl` (strictly greater). An event-driven engine
//! must name the first instant at which that holds, so a deadline here is `start + ttl + 1 ns`
//! and "expired" means `now >= deadline`. Durations so large that the sum overflows mean
//! "never" (`None`) instead of a panic.

use std::time::{Duration, Instant};

/// One nanosecond: the step that turns `>` into `>=`.
const TICK: Duration = Duration::from_nanos(1);

/// The first instant at which `now - start > ttl` holds, or `None` if it is beyond `Instant`'s range.
pub fn strict_deadline(start: Instant, ttl: Duration) -> Option<Instant> {
    start.checked_add(ttl)?.checked_add(TICK)
}

/// Whether `deadline` (from [`strict_deadline`]) has passed at `now`.
pub(crate) fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| now >= d)
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Keeps the engine's notion of "now" monotonic even if a caller passes an instant slightly
/// older than one it passed before (two threads reading the clock before taking a lock).
/// `Default` is a clock that has not seen an instant yet; the first `advance` starts it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Clock {
    /// The latest instant seen so far (`None` before the first call).
    latest: Option<Instant>,
}

impl Clock {
    /// A clock that starts at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self { latest: Some(now) }
    }

    /// Advance to `now` (never backwards) and return the effective instant.
    pub(crate) fn advance(&mut self, now: Instant) -> Instant {
        let latest = self.latest.map_or(now, |l| l.max(now));
        self.latest = Some(latest);
        latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_deadline_is_one_tick_after_ttl() {
        let t0 = Instant::now();
        let d = strict_deadline(t0, Duration::from_secs(5)).unwrap();
        assert!(!due(Some(d), t0 + Duration::from_secs(5)));
        assert!(due(Some(d), d));
        assert_eq!(strict_deadline(t0, Duration::MAX), None);
        assert!(!due(None, d));
    }

    #[test]
    fn clock_never_goes_back() {
        let t0 = Instant::now();
        let mut c = Clock::new(t0 + Duration::from_secs(1));
        assert_eq!(c.advance(t0), t0 + Duration::from_secs(1));
        assert_eq!(
            c.advance(t0 + Duration::from_secs(2)),
            t0 + Duration::from_secs(2)
        );
        let mut unstarted = Clock::default();
        assert_eq!(unstarted.advance(t0), t0);
        assert_eq!(unstarted.advance(t0 - Duration::from_secs(1)), t0);
    }
}
