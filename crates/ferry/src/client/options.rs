//! What a caller sets for one download, and the progress it is told.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::{DownloadConfig, ProgressEvent, ProgressState, RefId, State};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Progress of one download, as reported to [`DownloadOptions::progress`].
#[derive(Clone, Debug)]
pub struct DownloadProgress {
    /// The ref.
    pub ref_id: RefId,
    /// Payload bytes consumed so far.
    pub bytes_done: u64,
    /// Total bytes, when the producer advertised them.
    pub total_bytes: Option<u64>,
    /// Chunks consumed so far.
    pub chunks_done: u64,
    /// Items consumed so far, for objects sent as lists of items (tensor dicts, cacheable
    /// objects); `None` for byte streams (NVFlare's `items_done`).
    pub items_done: Option<u64>,
    /// Number of this report, from 1, increasing by one per report of this download
    /// (NVFlare's receiver progress `sequence`).
    pub sequence: u64,
    /// Since the download started.
    pub elapsed: Duration,
    /// Mean rate so far, bytes per second.
    pub bytes_per_sec: f64,
    /// `start`, `active`, `completed`, `failed` or `aborted`.
    pub state: ProgressState,
}

impl DownloadProgress {
    /// The engine's report, with the time and mean rate since the download started at
    /// `started`.
    pub(super) fn from_event(ev: &ProgressEvent, started: Instant) -> Self {
        let elapsed = ev.at.saturating_duration_since(started);
        Self {
            ref_id: ev.ref_id.clone(),
            bytes_done: ev.bytes_done,
            total_bytes: ev.total_bytes,
            chunks_done: ev.chunks_done,
            items_done: ev.items_done,
            sequence: ev.sequence,
            elapsed,
            bytes_per_sec: ev.bytes_done as f64 / elapsed.as_secs_f64().max(1e-9),
            state: ev.state,
        }
    }
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&DownloadProgress) + Send + Sync>;

/// Settings of one download.
#[derive(Clone)]
pub struct DownloadOptions {
    /// How long the sender may stay silent: a request times out when this much time passed
    /// since it was sent and since the sender last answered any request of this download, so
    /// requests queued at a paced sender (`ferry serve --limit-rate`) do not time out while it
    /// keeps answering (a slow consumer does not count against it either).
    pub per_request_timeout: Duration,
    /// Consecutive timeouts of one chunk tolerated (NVFlare: 3).
    pub max_retries: u32,
    /// First backoff after a timeout; doubles per retry.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Requests in flight when the producer advertises a plan (NVFlare producers don't: 1).
    pub window: usize,
    /// Say `confirm_capable` and confirm the end, so the producer counts a receiver as done
    /// only when its data is safe.
    pub confirm: bool,
    /// Send requests as `sm__` byte streams, like a Python `Cell` does (default: one frame).
    pub streamed: bool,
    /// Cancel the download (a cancel is sent to the producer, the consumer cleans up).
    pub cancel: Option<CancellationToken>,
    /// Called with the download engine's progress: at start, at most every
    /// `progress_interval` while bytes move, and once at the end (completed, failed or
    /// aborted).
    pub progress: Option<ProgressFn>,
    /// Throttle of progress reports (on tokio's clock).
    pub progress_interval: Duration,
    /// State of the first request, to resume a download (see `FileConsumer::resume_state`).
    pub resume_state: Option<State>,
    /// Let a consumer that [blocks](ferry_core::Consumer::blocks) (writes to disk) take its
    /// chunks on the download task itself instead of on a writer thread of its own (plans
    /// and the completion still go to tokio's blocking pool). Default `false`; `ferry get`
    /// sets it.
    ///
    /// Each chunk is then written by the thread that read it off the socket, while its
    /// bytes are still in that core's cache, and no thread is woken per chunk. The price:
    /// while a write blocks, the task's thread does nothing else — on a current-thread
    /// runtime nothing at all, so the connection is not read either. The first chunk that
    /// keeps the thread asleep for longer than 100 ms (a disk that stalls, a periodic fsync;
    /// the time it waited for a busy core does not count) therefore hands the rest of the
    /// download to a writer thread, so a slow disk holds the task for one write, not for
    /// every write after it. A single write that blocks for longer than the
    /// sender's `send_timeout` can still cost the connection, when the replies in flight do
    /// not fit the socket buffers (the sender cuts a connection whose writes make no progress
    /// for that long, 10 s by default): the download then fails with a transport error
    /// (`comm_error`), as it would if the network went away. With a writer
    /// thread the connection would have stayed, and the download would have waited as long.
    pub consume_on_task: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            per_request_timeout: Duration::from_secs(60),
            max_retries: 3,
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            window: 8,
            confirm: true,
            streamed: false,
            cancel: None,
            progress: None,
            progress_interval: Duration::from_millis(250),
            resume_state: None,
            consume_on_task: false,
        }
    }
}

impl std::fmt::Debug for DownloadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadOptions")
            .field("per_request_timeout", &self.per_request_timeout)
            .field("max_retries", &self.max_retries)
            .field("window", &self.window)
            .field("confirm", &self.confirm)
            .field("streamed", &self.streamed)
            .field("consume_on_task", &self.consume_on_task)
            .finish_non_exhaustive()
    }
}

impl DownloadOptions {
    /// These options with a progress callback.
    pub fn with_progress(mut self, f: impl Fn(&DownloadProgress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// These options reporting progress into a channel (the newest reports are dropped when the
    /// reader falls behind by `capacity`, never blocking the download).
    pub fn with_progress_channel(
        self,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<DownloadProgress>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            self.with_progress(move |p| {
                let _ = tx.try_send(p.clone());
            }),
            rx,
        )
    }

    /// These options with a cancellation token.
    pub fn with_cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    pub(super) fn engine_config(&self) -> DownloadConfig {
        DownloadConfig {
            per_request_timeout: self.per_request_timeout,
            max_retries: self.max_retries,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            confirm_capable: self.confirm,
            window: self.window,
            // The engine throttles progress; without a callback it reports none.
            progress_interval: self.progress.as_ref().map(|_| self.progress_interval),
            initial_state: self.resume_state.clone(),
        }
    }
}
