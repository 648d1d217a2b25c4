//! The receiving side: [`download_object`] and its typed helpers, and source-failure notices.
//!
//! A download is ferry-core's [`Download`] engine driven by one async loop: requests go out
//! through the cell (several at once when the producer advertised a plan), chunks are handed
//! to the [`Consumer`] on the blocking pool (it may write to disk) or, when its
//! [`blocks`](Consumer::blocks) is false, right on the download task; timers come from the
//! engine's `poll_timeout`, and the loop stops on the engine's verdict, on the caller's
//! [`CancellationToken`], or on a source-failure notice for this (source, ref).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_cellnet::{Message, RequestOptions};
use ferry_core::message::{CHANNEL, TOPIC_DOWNLOAD, TOPIC_SOURCE_FAILURE};
use ferry_core::{
    Action, ConsumeError, Consumer, Download, DownloadConfig, DownloadFailure, ProgressState,
    RefId, State, TransferPlan,
};
use ferry_objects::{
    BytesConsumer, FileConsumer, SafetensorsFileConsumer, TensorDict, TensorDictConsumer,
};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec;
use crate::error::DownloadError;
use crate::service::{lock, now, panic_text, DownloadService};

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
    /// Called with progress at most every `progress_interval`, and at start and end.
    pub progress: Option<ProgressFn>,
    /// Throttle of progress reports.
    pub progress_interval: Duration,
    /// State of the first request, to resume a download (see `FileConsumer::resume_state`).
    pub resume_state: Option<State>,
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

    fn engine_config(&self) -> DownloadConfig {
        DownloadConfig {
            per_request_timeout: self.per_request_timeout,
            max_retries: self.max_retries,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            confirm_capable: self.confirm,
            window: self.window,
            // The glue throttles itself (it also knows totals and rates).
            progress_interval: None,
            initial_state: self.resume_state.clone(),
        }
    }
}

/// Work for the consumer, run in engine order.
enum Work {
    Plan(TransferPlan),
    Consume {
        seq: u64,
        state: State,
        data: ferry_core::ChunkData,
    },
    Complete,
}

/// What the consumer said.
enum Done {
    Plan(Result<(), ConsumeError>),
    /// (seq, result, bytes, items)
    Consumed(u64, Result<State, ConsumeError>, u64, Option<usize>),
    Completed(Result<(), ConsumeError>),
}

/// The consumer's current piece of work: on the blocking pool, or already done on the
/// download task (a non-blocking consumer's chunk). Either gives the consumer back (`None` if
/// it panicked) with its answer.
enum Working<C> {
    Pool(JoinHandle<(Option<C>, Done)>),
    /// Boxed: consumers can be large, and this sits in every download future.
    Ready(Option<Box<(Option<C>, Done)>>),
}

/// Run `work` on consumer `c`. A panic becomes the answer to that piece of work ("consumer
/// panicked: ..."), so the engine fails the download with the panic's message; the consumer
/// is then gone (`None`) and nobody calls it again.
fn do_work<C: Consumer>(c: C, rid: &str, work: Work) -> (Option<C>, Done) {
    let panicked = |p: Box<dyn std::any::Any + Send>| {
        ConsumeError::Other(format!("consumer panicked: {}", panic_text(&*p)))
    };
    let mut c = c;
    let done = match work {
        Work::Plan(p) => {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.plan_received(&p))) {
                Ok(r) => Done::Plan(r),
                Err(e) => return (None, Done::Plan(Err(panicked(e)))),
            }
        }
        Work::Consume { seq, state, data } => {
            let (n, items) = (data.byte_len(), data.item_count());
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.consume(rid, &state, data)
            })) {
                Ok(r) => Done::Consumed(seq, r, n, items),
                Err(e) => return (None, Done::Consumed(seq, Err(panicked(e)), n, items)),
            }
        }
        Work::Complete => {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.completed(rid))) {
                Ok(r) => Done::Completed(r),
                Err(e) => return (None, Done::Completed(Err(panicked(e)))),
            }
        }
    };
    (Some(c), done)
}

/// Removes this download's source-failure watch when the download ends.
struct WatchGuard<'a> {
    service: &'a DownloadService,
    key: (String, String),
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        let mut w = lock(&self.service.inner.watches);
        if let Some(list) = w.get_mut(&self.key) {
            list.retain(|s| !s.is_closed());
            if list.is_empty() {
                w.remove(&self.key);
            }
        }
    }
}

/// Download `ref_id` from the cell `source` into `consumer`; returns the consumer (holding the
/// result) when the download completed and was confirmed.
///
/// It takes the [`DownloadService`] of the receiving cell rather than the bare cell because
/// the service holds the source-failure table: a download whose source's parent announced
/// the source dead fails at once instead of sitting in retries.
pub async fn download_object<C: Consumer + 'static>(
    service: &DownloadService,
    source: &str,
    ref_id: &RefId,
    consumer: C,
    opts: DownloadOptions,
) -> Result<C, DownloadError> {
    let span = tracing::info_span!("download", rid = %ref_id, %source);
    // Boxed once per download: the loop's state (consumer, queues, in-flight requests) is
    // large, and callers embed this future in their own.
    Box::pin(run(service, source, ref_id, consumer, opts))
        .instrument(span)
        .await
}

async fn run<C: Consumer + 'static>(
    service: &DownloadService,
    source: &str,
    ref_id: &RefId,
    consumer: C,
    opts: DownloadOptions,
) -> Result<C, DownloadError> {
    let inner = &service.inner;
    let started = Instant::now();
    let mut dl = Download::new(
        source,
        ref_id.clone(),
        opts.engine_config(),
        consumer.needs_order(),
        now(),
    )?;
    // Source-failure interrupts: a recorded failure fails at once; a notice arriving later
    // fires the watch.
    let (watch_tx, mut watch_rx) = watch::channel(None::<String>);
    let key = (source.to_string(), ref_id.as_str().to_string());
    lock(&inner.watches)
        .entry(key.clone())
        .or_default()
        .push(watch_tx);
    let _guard = WatchGuard { service, key };
    if let Some(reason) = lock(&inner.failures).check(source, ref_id, now()) {
        dl.source_failed(&reason, now());
    }
    let cancel = opts.cancel.clone().unwrap_or_default();
    let mut consumer = Some(consumer);
    let mut queue: VecDeque<Work> = VecDeque::new();
    let mut working: Option<Working<C>> = None;
    let mut inflight = FuturesUnordered::new();
    let mut total_bytes: Option<u64> = None;
    let mut bytes_done = 0u64;
    let mut chunks_done = 0u64;
    let mut items_done: Option<u64> = None;
    let mut last_report: Option<Instant> = None;
    let mut sequence = 0u64;
    let mut report = |state: ProgressState,
                      bytes_done: u64,
                      chunks_done: u64,
                      items_done: Option<u64>,
                      total: Option<u64>,
                      last: &mut Option<Instant>,
                      force: bool| {
        let Some(cb) = &opts.progress else { return };
        let t = Instant::now();
        if !force && last.is_some_and(|l| t.duration_since(l) < opts.progress_interval) {
            return;
        }
        *last = Some(t);
        sequence += 1;
        let elapsed = started.elapsed();
        cb(&DownloadProgress {
            ref_id: ref_id.clone(),
            bytes_done,
            total_bytes: total,
            chunks_done,
            items_done,
            sequence,
            elapsed,
            bytes_per_sec: bytes_done as f64 / elapsed.as_secs_f64().max(1e-9),
            state,
        });
    };
    report(
        ProgressState::Start,
        0,
        0,
        None,
        None,
        &mut last_report,
        true,
    );
    let cell = inner.cell.clone();
    let result = loop {
        let mut finished = None;
        while let Some(action) = dl.poll_action() {
            tracing::trace!(?action, "action");
            match action {
                Action::Send { id, request } => {
                    let cell = cell.clone();
                    let msg = codec::request(&request);
                    let ropts = RequestOptions {
                        // The engine times a request out only when the source has been
                        // silent for `per_request_timeout` (a paced sender answers the
                        // requests ahead of this one first), so the cell's own bound must not
                        // be the one that counts: a request waits at most for the window's
                        // other requests and itself.
                        timeout: transport_timeout(&opts),
                        streamed: opts.streamed,
                        optional: false,
                    };
                    let source = source.to_string();
                    inflight.push(async move {
                        let reply = cell
                            .send_request_with(CHANNEL, TOPIC_DOWNLOAD, &source, msg, ropts)
                            .await;
                        (id, reply)
                    });
                }
                Action::CheckPlan(plan) => {
                    total_bytes = plan.total_bytes;
                    queue.push_back(Work::Plan(plan));
                }
                Action::Consume { seq, state, data } => {
                    queue.push_back(Work::Consume { seq, state, data })
                }
                Action::Complete => queue.push_back(Work::Complete),
                Action::SendConfirm(c) => {
                    fire(&cell, source, codec::request(&c), opts.streamed).await
                }
                Action::SendCancel(c) => {
                    fire(&cell, source, codec::request(&c), opts.streamed).await
                }
                Action::Progress(_) => {}
                Action::Finished(r) => finished = Some(r),
            }
        }
        if let Some(r) = finished {
            break r;
        }
        if working.is_none() && !queue.is_empty() && consumer.is_some() {
            if let (Some(work), Some(c)) = (queue.pop_front(), consumer.take()) {
                let rid = ref_id.as_str().to_string();
                // A non-blocking consumer takes its chunks right here; everything else (and
                // every plan and completion) goes to the blocking pool.
                let inline = matches!(work, Work::Consume { .. }) && !c.blocks();
                working = Some(if inline {
                    Working::Ready(Some(Box::new(do_work(c, &rid, work))))
                } else {
                    Working::Pool(tokio::task::spawn_blocking(move || do_work(c, &rid, work)))
                });
            }
        }
        let deadline = dl.poll_timeout();
        tracing::trace!(
            working = working.is_some(),
            queued = queue.len(),
            inflight = inflight.len(),
            ?deadline,
            "waiting"
        );
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        let work_done = async {
            match working.as_mut() {
                Some(Working::Pool(h)) => h.await.map_err(|e| e.to_string()),
                Some(Working::Ready(r)) => r
                    .take()
                    .map(|b| *b)
                    .ok_or_else(|| "consumer lost".to_string()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((id, reply)) = inflight.next(), if !inflight.is_empty() => {
                tracing::trace!(?id, rc = %reply.return_code(), "reply");
                let rc = codec::from_wire(&reply.return_code());
                if rc == ferry_core::ReturnCode::Ok {
                    match codec::main_body(&reply) {
                        // The engine decodes (zero-copy) and fails a bad body clearly.
                        Ok(body) => dl.reply_payload(id, rc, Some(&body), now()),
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable reply");
                            dl.reply_payload(id, rc, None, now())
                        }
                    }
                } else {
                    if let Some(text) = reply.error_text() {
                        tracing::debug!(rc = %rc, error = text, "request failed");
                    }
                    // The sender's explanation travels into the failure (capped by the engine).
                    dl.reply_error(id, rc, reply.error_text(), codec::refusal(&reply), now());
                }
            }
            joined = work_done => {
                tracing::trace!(ok = joined.is_ok(), "work done");
                working = None;
                match joined {
                    Ok((c, done)) => {
                        consumer = c;
                        match done {
                            Done::Plan(r) => dl.plan_result(r, now()),
                            Done::Consumed(seq, r, n, items) => {
                                if r.is_ok() {
                                    bytes_done += n;
                                    chunks_done += 1;
                                    if let Some(k) = items {
                                        items_done = Some(items_done.unwrap_or(0) + k as u64);
                                    }
                                    report(ProgressState::Active, bytes_done, chunks_done, items_done, total_bytes, &mut last_report, false);
                                }
                                dl.consumed(seq, r, now());
                            }
                            Done::Completed(r) => dl.completion_result(r, now()),
                        }
                    }
                    Err(e) => {
                        // Only when the runtime shuts down under us: the consumer is gone with
                        // its task, so nobody can clean up after it.
                        tracing::warn!(error = %e, "consumer task lost");
                        dl.abort(now());
                    }
                }
            }
            _ = sleep => dl.handle_timeout(now()),
            _ = cancel.cancelled(), if !dl.is_finished() => dl.abort(now()),
            changed = watch_rx.changed() => {
                if changed.is_ok() {
                    let reason = watch_rx.borrow_and_update().clone();
                    if let Some(reason) = reason {
                        dl.source_failed(&reason, now());
                    }
                }
            }
        }
    };
    // Let a consume in progress finish before the consumer cleans up or is returned.
    let last = match working.take() {
        Some(Working::Pool(h)) => h.await.ok(),
        Some(Working::Ready(r)) => r.map(|b| *b),
        None => None,
    };
    if let Some((c, _)) = last {
        consumer = c;
    }
    match result {
        Ok(()) => {
            report(
                ProgressState::Completed,
                bytes_done,
                chunks_done,
                items_done,
                total_bytes,
                &mut last_report,
                true,
            );
            consumer.ok_or_else(|| DownloadError::Local("consumer lost".into()))
        }
        Err(failure) => {
            let state = if matches!(
                failure,
                DownloadFailure::Aborted | DownloadFailure::SourceFailed(_)
            ) {
                ProgressState::Aborted
            } else {
                ProgressState::Failed
            };
            report(
                state,
                bytes_done,
                chunks_done,
                items_done,
                total_bytes,
                &mut last_report,
                true,
            );
            if let Some(mut c) = consumer {
                let rid = ref_id.as_str().to_string();
                let reason = failure.to_string();
                let _ = tokio::task::spawn_blocking(move || c.failed(&rid, &reason)).await;
            }
            if matches!(failure, DownloadFailure::Aborted) && cancel.is_cancelled() {
                return Err(DownloadError::Cancelled {
                    ref_id: ref_id.to_string(),
                });
            }
            Err(DownloadError::Failed {
                ref_id: ref_id.to_string(),
                source_fqcn: source.to_string(),
                failure,
            })
        }
    }
}

/// The cell's bound on one request: past the engine's deadline even when the request was
/// queued behind every other request of the window at a paced sender.
fn transport_timeout(opts: &DownloadOptions) -> Duration {
    let window = u32::try_from(opts.window.clamp(1, ferry_core::download::MAX_WINDOW)).unwrap_or(1);
    opts.per_request_timeout
        .saturating_mul(window + 1)
        .saturating_add(Duration::from_secs(1))
}

/// Send a confirm or cancel without waiting for an answer (NVFlare sends them fire-and-forget).
async fn fire(cell: &ferry_cellnet::Cell, source: &str, msg: Message, streamed: bool) {
    let opts = RequestOptions {
        timeout: Duration::from_secs(5),
        streamed,
        optional: true,
    };
    if let Err(e) = cell
        .fire_and_forget_with(CHANNEL, TOPIC_DOWNLOAD, source, msg, opts)
        .await
    {
        tracing::debug!(error = %e, "confirm/cancel not sent");
    }
}

/// Download an in-memory object (a `BytesObject` on the sender).
pub async fn download_bytes(
    service: &DownloadService,
    source: &str,
    ref_id: &RefId,
    opts: DownloadOptions,
) -> Result<Bytes, DownloadError> {
    let mut c = download_object(service, source, ref_id, BytesConsumer::new(), opts).await?;
    c.take()
        .ok_or_else(|| DownloadError::Local("download completed without data".into()))
}

/// How [`download_file`] treats the destination.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileOptions {
    /// Replace an existing file at the final path (default: refuse).
    pub overwrite: bool,
    /// Keep `NAME.part` on failure and continue from it next time.
    pub resume: bool,
}

/// Download a file into `dir/name` (written as `name.part`, verified, fsynced, renamed);
/// returns the final path. Nothing is left at the final path on failure. A destination that
/// cannot be used (it exists and `overwrite` is off, the name is not a plain relative name,
/// the directory is missing or not writable) fails before anything is requested, with
/// [`DownloadError::Objects`].
pub async fn download_file(
    service: &DownloadService,
    source: &str,
    ref_id: &RefId,
    dir: impl AsRef<Path>,
    name: &str,
    file: FileOptions,
    mut opts: DownloadOptions,
) -> Result<PathBuf, DownloadError> {
    let consumer = FileConsumer::builder(dir.as_ref(), name)
        .overwrite(file.overwrite)
        .keep_part_for_resume(file.resume)
        .open()?;
    if file.resume && opts.resume_state.is_none() {
        opts.resume_state = consumer.resume_state();
    }
    let c = download_object(service, source, ref_id, consumer, opts).await?;
    Ok(c.final_path().to_path_buf())
}

/// Download a tensor dict into memory.
pub async fn download_tensors(
    service: &DownloadService,
    source: &str,
    ref_id: &RefId,
    opts: DownloadOptions,
) -> Result<TensorDict, DownloadError> {
    let mut c = download_object(service, source, ref_id, TensorDictConsumer::new(), opts).await?;
    c.take()
        .ok_or_else(|| DownloadError::Local("download completed without tensors".into()))
}

/// Download a tensor dict straight into one `.safetensors` file at `dir/name` (written
/// incrementally, never whole in memory); returns the final path. An unusable destination
/// fails before anything is requested, with [`DownloadError::Objects`] (as for
/// [`download_file`]).
pub async fn download_tensors_to_file(
    service: &DownloadService,
    source: &str,
    ref_id: &RefId,
    dir: impl AsRef<Path>,
    name: &str,
    overwrite: bool,
    opts: DownloadOptions,
) -> Result<PathBuf, DownloadError> {
    let consumer = SafetensorsFileConsumer::builder(dir.as_ref(), name)
        .overwrite(overwrite)
        .open()?;
    let c = download_object(service, source, ref_id, consumer, opts).await?;
    Ok(c.final_path().to_path_buf())
}

/// Announce to `targets` that `source_fqcn` (a child of this cell) died while serving
/// `ref_ids`: their downloads of those refs fail at once. Returns, per target, `None` on
/// success or the error. NVFlare's rules: up to 4 attempts per target, 3 s each, one 10 s
/// deadline for all, backoff 0.25·2^k s capped at 1 s; only transient codes are retried.
pub async fn notify_source_failure(
    service: &DownloadService,
    targets: &[&str],
    source_fqcn: &str,
    ref_ids: &[&str],
    reason: &str,
) -> Result<std::collections::BTreeMap<String, Option<String>>, DownloadError> {
    use ferry_core::message::SourceFailureNotice;
    ferry_core::validate_fqcn(source_fqcn)
        .map_err(|e| DownloadError::Local(format!("source_fqcn: {e}")))?;
    let mut rids: Vec<String> = Vec::new();
    for r in ref_ids.iter().filter(|r| !r.is_empty()) {
        if !rids.iter().any(|x| x == r) {
            rids.push(r.to_string());
        }
    }
    if rids.len() > ferry_core::source_failure::MAX_NOTICE_REF_IDS {
        return Err(DownloadError::Local(format!(
            "{} ref ids in one notice (at most {})",
            rids.len(),
            ferry_core::source_failure::MAX_NOTICE_REF_IDS
        )));
    }
    let mut out = std::collections::BTreeMap::new();
    let mut uniq: Vec<&str> = Vec::new();
    for t in targets {
        if ferry_core::validate_fqcn(t).is_ok() && !uniq.contains(t) {
            uniq.push(t);
        }
    }
    if rids.is_empty() || uniq.is_empty() {
        return Ok(out);
    }
    let notice = SourceFailureNotice {
        source_fqcn: source_fqcn.to_string(),
        ref_ids: rids,
        reason: reason.to_string(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let cell = &service.inner.cell;
    let sends = uniq.iter().map(|target| {
        let notice = &notice;
        async move {
            let mut last = String::from("deadline passed before the first attempt");
            for attempt in 0..4u32 {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let reply = cell
                    .send_request_with(
                        CHANNEL,
                        TOPIC_SOURCE_FAILURE,
                        target,
                        codec::request(notice),
                        RequestOptions {
                            timeout: left.min(crate::service::NOTICE_ATTEMPT_TIMEOUT),
                            streamed: false,
                            optional: true,
                        },
                    )
                    .await;
                let rc = codec::from_wire(&reply.return_code());
                if rc == ferry_core::ReturnCode::Ok {
                    return (target.to_string(), None);
                }
                last = format!(
                    "{rc}{}",
                    reply
                        .error_text()
                        .map(|t| format!(": {t}"))
                        .unwrap_or_default()
                );
                if !matches!(
                    rc,
                    ferry_core::ReturnCode::Timeout
                        | ferry_core::ReturnCode::CommError
                        | ferry_core::ReturnCode::ProcessException
                ) {
                    break;
                }
                let backoff =
                    Duration::from_millis(250 * (1 << attempt)).min(Duration::from_secs(1));
                tokio::time::sleep(
                    backoff.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
                )
                .await;
            }
            (target.to_string(), Some(last))
        }
    });
    for (t, r) in futures::future::join_all(sends).await {
        out.insert(t, r);
    }
    Ok(out)
}
