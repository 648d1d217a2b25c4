//! [`download_object`]: ferry-core's [`Download`] engine driven by one small async loop.
//!
//! The loop does what the engine's actions say — requests go out through [`Requests`], work
//! goes to the consumer's [`Worker`], progress goes to the caller's callback — and feeds back
//! what happens: replies, the consumer's answers, the engine's timer, the caller's
//! cancellation and a source-failure notice. Everything else (windows, retries, ordering,
//! progress throttling, the verdict) is the engine's.

use ferry_core::{Action, Consumer, Download, DownloadFailure, RefId};
use tracing::Instrument;

use super::options::{DownloadOptions, DownloadProgress};
use super::requests::{answer, Requests};
use super::worker::{Work, Worker};
use crate::error::DownloadError;
use crate::runtime::now;
use crate::service::DownloadService;

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
    let started = now();
    let mut dl = Download::new(
        source,
        ref_id.clone(),
        opts.engine_config(),
        consumer.needs_order(),
        started,
    )?;
    let mut watch = service.source_failures.watch(source, ref_id, started);
    if let Some(reason) = watch.recorded() {
        dl.source_failed(&reason, now());
    }
    let cancel = opts.cancel.clone().unwrap_or_default();
    let mut requests = Requests::new(service.inner.cell.clone(), source, &opts);
    let mut worker = Worker::new(consumer, ref_id.as_str(), opts.consume_on_task);
    let result = 'run: loop {
        while let Some(action) = dl.poll_action() {
            tracing::trace!(?action, "action");
            match action {
                Action::Send { id, request } => requests.send(id, &request),
                Action::CheckPlan(plan) => worker.push(Work::Plan(plan)),
                Action::Consume { seq, state, data } => {
                    worker.push(Work::Consume { seq, state, data })
                }
                Action::Complete => worker.push(Work::Complete),
                Action::SendConfirm(c) => requests.fire(&c).await,
                Action::SendCancel(c) => requests.fire(&c).await,
                Action::Progress(ev) => {
                    if let Some(report) = &opts.progress {
                        report(&DownloadProgress::from_event(&ev, started));
                    }
                }
                Action::Finished(r) => break 'run r,
            }
        }
        worker.start();
        let deadline = dl.poll_timeout();
        tokio::select! {
            (id, reply) = requests.next() => answer(&mut dl, id, &reply),
            done = worker.done() => match done {
                Ok(done) => done.tell(&mut dl),
                Err(e) => {
                    // Only when the runtime shuts down under us: the consumer is gone with
                    // its task, so nobody can clean up after it.
                    tracing::warn!(error = %e, "consumer task lost");
                    dl.abort(now());
                }
            },
            _ = sleep_until(deadline) => dl.handle_timeout(now()),
            _ = cancel.cancelled(), if !dl.is_finished() => dl.abort(now()),
            reason = watch.failed() => dl.source_failed(&reason, now()),
        }
    };
    // Let a consume in progress finish before the consumer cleans up or is returned.
    let consumer = worker.finish().await;
    let failure = match result {
        Ok(()) => return consumer.ok_or_else(|| DownloadError::Local("consumer lost".into())),
        Err(failure) => failure,
    };
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

/// Sleep until `deadline` on tokio's clock; forever without one.
async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
