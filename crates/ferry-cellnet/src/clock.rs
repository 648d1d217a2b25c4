//! The wall clock, read only where F3 wants a time stamp (HELLO `timestamp`,
//! `cn__send_time`, `cn__route` entries): informational values the peer does not act on.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch as float64.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
