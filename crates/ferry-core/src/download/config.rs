//! The settings of one download: timeouts and backoff, confirmation, the window, progress and
//! the resume state.

use crate::State;
use std::time::Duration;

/// Largest window accepted (more would only buffer more chunks in memory).
pub const MAX_WINDOW: usize = 256;

/// Settings of one download.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// How long the source may stay silent: a request times out when this much time passed
    /// since it was sent and since the source last answered anything of this download (see
    /// the [module docs](crate::download)).
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
