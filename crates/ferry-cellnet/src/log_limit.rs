//! Rate limits on what a peer can make this cell write to its log.
//!
//! Every complaint about a peer's input (a bad frame, an undecodable header map, a message in
//! a name its connection cannot vouch for, ...) goes through the [`LogLimiter`] of the
//! connection it came by: at most one line per [`LogLimiter::PERIOD`], and the next line that
//! is let through says how many were held back. A peer that sends a stream of 19-byte garbage
//! frames then costs one log line per period, not one per frame.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per [`LogLimiter::PERIOD`]; the ones in between are counted.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    /// When the last line was let through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    /// The shortest time between two lines of one limiter.
    pub const PERIOD: Duration = Duration::from_secs(10);

    /// `Some(suppressed)` if a line may be logged now (with how many were held back since
    /// the last one), `None` if this one is to be held back.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.0 {
            Some(last) if now.saturating_duration_since(last) < Self::PERIOD => {
                s.1 += 1;
                None
            }
            _ => {
                let held = s.1;
                *s = (Some(now), 0);
                Some(held)
            }
        }
    }

    /// [`LogLimiter::allow`] at the current instant.
    pub fn allow_now(&self) -> Option<u64> {
        self.allow(Instant::now())
    }
}

/// Log a complaint about a peer's input through a [`LogLimiter`]:
/// `limited!(conn.log, warn, peer = %p, "what went wrong: {e}")`. A line that follows
/// held-back ones carries a `suppressed` field: how many the limiter held back.
macro_rules! limited {
    ($limiter:expr, $level:ident, $($rest:tt)+) => {
        match $limiter.allow_now() {
            Some(0) => tracing::$level!($($rest)+),
            Some(suppressed) => tracing::$level!(suppressed, $($rest)+),
            None => {}
        }
    };
}
pub(crate) use limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_count_of_the_rest() {
        let l = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.allow(t0 + LogLimiter::PERIOD), Some(2));
        assert_eq!(l.allow(t0 + LogLimiter::PERIOD), None);
        assert_eq!(l.allow(t0 + 3 * LogLimiter::PERIOD), Some(1));
    }
}
