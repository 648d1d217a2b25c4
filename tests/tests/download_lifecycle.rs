//! End-to-end tests of a download's lifecycle over real TCP on loopback, cells in one process:
//! lost replies, timeouts, a deleted transaction, receivers outside the declared set,
//! cancellation and a source's failure notice (`download_e2e.rs` has the tests with separate
//! processes). Mid-download points are gates (`ferry_tests::e2e`); no test asserts a duration.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{add_gated_file, events_until_done, files_in, short_opts, SOON};
use ferry::core::{DownloadFailure, Refusal};
use ferry::prelude::*;
use ferry_tests::e2e::{
    assert_released, receiver, sender, statuses, write_random_file, StallingConsumer,
};
use ferry_tests::init_tracing;

/// The sender drops the first `eof` reply it would send; the receiver's retry of that request
/// must still end the download successfully: from the provisional re-serve (confirming
/// receiver) or from the finished-ref tombstone (legacy receiver, which finalizes the ref at
/// the first EOF).
async fn lost_eof_reply(confirm: bool) {
    init_tracing();
    let (cell, service, url) = sender(
        "server",
        ServiceOptions {
            register_handlers: false,
            ..ServiceOptions::default()
        },
    )
    .await;
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let service = service.clone();
        let dropped = dropped.clone();
        cell.register_request_handler(
            ferry::core::message::CHANNEL,
            ferry::core::message::TOPIC_DOWNLOAD,
            move |msg: Message| {
                let service = service.clone();
                let dropped = dropped.clone();
                async move {
                    let reply = service.handle_download(msg).await?;
                    let is_eof = reply
                        .value()
                        .ok()
                        .and_then(|v| {
                            v.as_map().and_then(|m| {
                                m.iter()
                                    .find(|(k, _)| k.as_str() == Some("status"))
                                    .map(|(_, s)| s.as_str() == Some("eof"))
                            })
                        })
                        .unwrap_or(false);
                    if is_eof && dropped.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        return None;
                    }
                    Some(reply)
                }
            },
        );
    }
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(120)).with_num_receivers(1),
    )
    .unwrap();
    let data = bytes::Bytes::from(vec![7u8; 3 << 20]);
    let rid = tx.add_bytes(data.clone()).unwrap();
    let (rcell, rservice) = receiver("site-1", &url).await;
    let opts = DownloadOptions {
        confirm,
        max_retries: 3,
        ..short_opts()
    };
    let got = match download_bytes(&rservice, "server", &rid, opts).await {
        Ok(got) => got,
        Err(e) => panic!("the retry should heal the lost reply: {e}"),
    };
    assert!(got == data, "other bytes received");
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "an EOF was dropped and re-sent"
    );
    let outcome = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert_eq!(outcome.status, OutcomeStatus::Completed, "{outcome:?}");
    assert_eq!(
        statuses(&outcome, &rid),
        vec![("site-1".to_string(), DownloadStatus::Success)]
    );
    assert_released(&service).await;
    rservice.shutdown().await;
    rcell.shutdown().await;
    service.shutdown().await;
    cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_eof_reply_is_re_served_to_a_confirming_receiver() {
    lost_eof_reply(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_eof_reply_is_replayed_from_the_tombstone() {
    lost_eof_reply(false).await;
}

/// No sockets here, so virtual time: the transaction nobody pulls from times out.
#[tokio::test(start_paused = true)]
async fn inactive_transaction_times_out() {
    let cell = Cell::new("server").unwrap();
    let service = DownloadService::new(&cell, ServiceOptions::default());
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(30)).with_num_receivers(2),
    )
    .unwrap();
    tx.add_bytes(bytes::Bytes::from_static(b"never pulled"))
        .unwrap();
    let outcome = tx.waiter().wait().await.expect("outcome");
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    assert_eq!(outcome.reason, "timeout");
    assert_eq!(outcome.done_status, DoneStatus::Timeout);
    assert_eq!(service.transaction_count(), 0);
    service.shutdown().await;
}

/// Real sockets: a receiver stops consuming mid-download, the transaction sees no pulls for
/// longer than its timeout and ends as TIMEOUT; when the receiver resumes, its pulls are
/// refused and its download fails; the sender released everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_times_out_while_its_receiver_stalls() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.bin");
    write_random_file(&src, 24 << 20, 11).unwrap();
    let (cell, service, url) = sender("server", ServiceOptions::default()).await;
    // The receiver connects first: the inactivity clock starts with the transaction, and only
    // the first pull (a task spawn and a loopback request away) must come inside it.
    let (rcell, rservice) = receiver("site-1", &url).await;
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(5)).with_num_receivers(1),
    )
    .unwrap();
    let rid = tx.add_file(&src, 1 << 20).unwrap();
    let out = tempfile::tempdir().unwrap();
    let consumer = StallingConsumer::new(
        ferry::objects::FileConsumer::create(out.path(), "model.bin").unwrap(),
        2,
    );
    let gate = consumer.gate();
    let rid2 = rid.clone();
    let dl = tokio::spawn(async move {
        download_object(
            &rservice,
            "server",
            &rid2,
            consumer,
            DownloadOptions {
                window: 2,
                ..DownloadOptions::default()
            },
        )
        .await
        .map(|_| ())
    });
    gate.wait_reached(SOON).await.unwrap();
    let outcome = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert_eq!(outcome.status, OutcomeStatus::Failed, "{outcome:?}");
    assert_eq!(outcome.reason, "timeout");
    assert_eq!(outcome.done_status, DoneStatus::Timeout);
    gate.open();
    let err = tokio::time::timeout(SOON, dl)
        .await
        .expect("the download ends")
        .unwrap()
        .expect_err("the transaction timed out");
    assert!(
        matches!(
            err.failure(),
            Some(DownloadFailure::Refused {
                refusal: Refusal::TransactionFinished,
                detail: Some(d),
                ..
            }) if d.contains("timed out")
        ),
        "{err}"
    );
    assert_eq!(files_in(out.path()), Vec::<PathBuf>::new());
    assert_released(&service).await;
    rcell.shutdown().await;
    service.shutdown().await;
    cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_transaction_aborts_a_download_in_progress() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.bin");
    write_random_file(&src, 12 << 20, 5).unwrap();
    let (cell, service, url) = sender("server", ServiceOptions::default()).await;
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(120)).with_num_receivers(1),
    )
    .unwrap();
    let (rid, gate) = add_gated_file(&tx, &src, 3);
    let (rcell, rservice) = receiver("site-1", &url).await;
    let out = tempfile::tempdir().unwrap();
    let outdir = out.path().to_path_buf();
    let rid2 = rid.clone();
    let dl = tokio::spawn(async move {
        download_file(
            &rservice,
            "server",
            &rid2,
            &outdir,
            "model.bin",
            FileOptions::default(),
            DownloadOptions {
                per_request_timeout: Duration::from_secs(60),
                ..DownloadOptions::default()
            },
        )
        .await
    });
    gate.wait_reached(SOON).await.unwrap();
    tx.delete_transaction().unwrap();
    gate.open();
    let err = tokio::time::timeout(SOON, dl)
        .await
        .expect("the download ends")
        .unwrap()
        .expect_err("the transaction is gone");
    // The sender says why, typed: the transfer is over (it was deleted).
    assert!(
        matches!(
            err.failure(),
            Some(DownloadFailure::Refused {
                refusal: Refusal::TransactionFinished,
                detail: Some(d),
                ..
            }) if d.contains("was deleted")
        ),
        "{err}"
    );
    let outcome = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert_eq!(outcome.status, OutcomeStatus::Aborted, "{outcome:?}");
    assert_eq!(outcome.reason, "deleted");
    assert_eq!(files_in(out.path()), Vec::<PathBuf>::new());
    assert_released(&service).await;
    rcell.shutdown().await;
    service.shutdown().await;
    cell.shutdown().await;
}

/// The declared receiver completes the transaction; an outsider's pull does not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_outside_receiver_ids_does_not_count_and_the_transaction_completes() {
    outsider(false).await;
}

/// The issue asks for more than NVFlare does (NVFlare serves undeclared receivers and only
/// ignores them for completion): a receiver not in `receiver_ids` gets `invalid_request`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_outside_receiver_ids_gets_invalid_request() {
    outsider(true).await;
}

async fn outsider(require_refusal: bool) {
    init_tracing();
    let (cell, service, url) = sender("server", ServiceOptions::default()).await;
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(120)).with_receiver_ids(["site-1"]),
    )
    .unwrap();
    let data = bytes::Bytes::from(vec![1u8; 2 << 20]);
    let rid = tx.add_bytes(data.clone()).unwrap();
    let (c2, s2) = receiver("site-2", &url).await;
    let outsider = download_bytes(&s2, "server", &rid, short_opts()).await;
    if require_refusal {
        match &outsider {
            Ok(got) => panic!(
                "site-2 is not in receiver_ids but downloaded {} bytes",
                got.len()
            ),
            Err(err) => {
                // The typed refusal and the sender's words (cn__error) cross the wire.
                let Some(DownloadFailure::Refused {
                    refusal: Refusal::NotExpectedReceiver,
                    detail: Some(detail),
                    ..
                }) = err.failure()
                else {
                    panic!("not a typed refusal with the sender's text: {err:?}");
                };
                assert!(
                    detail.contains("site-2") && detail.contains("not an expected receiver"),
                    "{detail}"
                );
                assert!(err.to_string().contains(detail.as_str()), "{err}");
            }
        }
    }
    let (c1, s1) = receiver("site-1", &url).await;
    let got = download_bytes(&s1, "server", &rid, short_opts())
        .await
        .unwrap();
    assert!(got == data, "site-1 got other bytes");
    let outcome = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert_eq!(outcome.status, OutcomeStatus::Completed, "{outcome:?}");
    // Only the declared receiver is recorded: the outsider's attempt does not count.
    assert_eq!(
        statuses(&outcome, &rid),
        vec![("site-1".to_string(), DownloadStatus::Success)]
    );
    assert_released(&service).await;
    for c in [c1, c2] {
        c.shutdown().await;
    }
    service.shutdown().await;
    cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_download_cleans_up_and_the_sender_sees_it_failed() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.bin");
    write_random_file(&src, 12 << 20, 6).unwrap();
    let (cell, service, url) = sender("server", ServiceOptions::default()).await;
    let mut events = service.events();
    let tx = ObjectDownloader::new(
        &service,
        // Identity mode: the receiver's cancel fails it at once (NVFlare's R7). In count
        // mode it would give its place back (receivers_e2e.rs).
        TxConfig::new(Duration::from_secs(120)).with_receiver_ids(["site-1"]),
    )
    .unwrap();
    let (rid, gate) = add_gated_file(&tx, &src, 3);
    let (rcell, rservice) = receiver("site-1", &url).await;
    let out = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let outdir = out.path().to_path_buf();
    let rid2 = rid.clone();
    let t2 = token.clone();
    let dl = tokio::spawn(async move {
        download_file(
            &rservice,
            "server",
            &rid2,
            &outdir,
            "model.bin",
            FileOptions::default(),
            DownloadOptions::default().with_cancel(t2),
        )
        .await
    });
    gate.wait_reached(SOON).await.unwrap();
    token.cancel();
    let err = tokio::time::timeout(SOON, dl)
        .await
        .expect("the download ends")
        .unwrap()
        .expect_err("cancelled");
    assert!(matches!(err, DownloadError::Cancelled { .. }), "{err}");
    assert_eq!(
        files_in(out.path()),
        Vec::<PathBuf>::new(),
        "no final or partial file"
    );
    // Let the held produces finish (settlement waits for pulls in flight), then: the cancel
    // reached the sender, the receiver is FAILED and the transaction ends.
    gate.open();
    let outcome = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert_eq!(outcome.status, OutcomeStatus::Failed, "{outcome:?}");
    assert_eq!(outcome.reason, "receiver_failed");
    assert_eq!(
        statuses(&outcome, &rid),
        vec![("site-1".to_string(), DownloadStatus::Failed)]
    );
    let failed_events = events_until_done(&mut events)
        .await
        .into_iter()
        .filter(|e| {
            matches!(e, ServiceEvent::DownloadedToOne { receiver, status, .. }
                if receiver == "site-1" && *status == DownloadStatus::Failed)
        })
        .count();
    assert_eq!(failed_events, 1);
    assert_released(&service).await;
    rcell.shutdown().await;
    service.shutdown().await;
    cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_failure_notice_fails_a_download_in_progress_at_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.bin");
    write_random_file(&src, 12 << 20, 8).unwrap();
    // The parent `server`, its child `server.j1` (the source), a receiver `site-1` that
    // reaches the child through the parent.
    let (parent, parent_service, url) = sender("server", ServiceOptions::default()).await;
    let (child, child_service) = receiver("server.j1", &url).await;
    let tx = ObjectDownloader::new(
        &child_service,
        // Identity mode: the aborted download's cancel fails the receiver at once.
        TxConfig::new(Duration::from_secs(120)).with_receiver_ids(["site-1"]),
    )
    .unwrap();
    let (rid, gate) = add_gated_file(&tx, &src, 3);
    let (rcell, rservice) = receiver("site-1", &url).await;
    let out = tempfile::tempdir().unwrap();
    let outdir = out.path().to_path_buf();
    let rid2 = rid.clone();
    let dl = tokio::spawn(async move {
        download_file(
            &rservice,
            "server.j1",
            &rid2,
            &outdir,
            "model.bin",
            FileOptions::default(),
            DownloadOptions {
                // Far beyond the test's bounds: only the notice can end this download.
                per_request_timeout: Duration::from_secs(600),
                ..DownloadOptions::default()
            },
        )
        .await
    });
    gate.wait_reached(SOON).await.unwrap();
    let sent = notify_source_failure(
        &parent_service,
        &["site-1"],
        "server.j1",
        &[rid.as_str()],
        "job j1 crashed",
    )
    .await
    .unwrap();
    assert_eq!(sent.get("site-1"), Some(&None), "{sent:?}");
    let err = tokio::time::timeout(SOON, dl)
        .await
        .expect("the notice ends the download")
        .unwrap()
        .expect_err("the source failed");
    assert!(
        matches!(err.failure(), Some(DownloadFailure::SourceFailed(r)) if r.contains("job j1 crashed")),
        "{err}"
    );
    assert_eq!(files_in(out.path()), Vec::<PathBuf>::new());
    gate.open();
    // The aborted download cancelled at the source, which ends the transaction there.
    let outcome = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert_eq!(
        statuses(&outcome, &rid),
        vec![("site-1".to_string(), DownloadStatus::Failed)]
    );
    rcell.shutdown().await;
    child_service.shutdown().await;
    child.shutdown().await;
    parent_service.shutdown().await;
    parent.shutdown().await;
}
