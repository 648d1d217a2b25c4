//! End-to-end tests of Ferry's download service: real TCP on loopback, separate cells, and
//! (where a process must die or many must run) separate `ferry-peer` processes.
//!
//! Mid-download points are made deterministic with gates (`ferry_tests::e2e`): a sender-side
//! object that holds every produce after its first chunks, or a receiver-side consumer that
//! stalls. No test asserts a duration; bounds are generous.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry::core::{DownloadFailure, Refusal};
use ferry::objects::FileObject;
use ferry::prelude::*;
use ferry_tests::e2e::{
    assert_released, make_tensors, receiver, sender, statuses, tensor_digest, write_random_file,
    Gate, GatedObject, StallingConsumer,
};
use ferry_tests::{init_tracing, PyPeer};
use tokio::sync::broadcast;

/// The `ferry-peer` test binary (built with this package).
fn ferry_peer() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry-peer"))
}

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(90);

/// The big file of the fan-out test: 256 MiB (2 GiB through loopback for 8 receivers; about
/// 6 s even in a debug build on 2 cores). `FERRY_E2E_BIG_MIB` overrides it.
fn big_file_len() -> u64 {
    let mib = std::env::var("FERRY_E2E_BIG_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(256);
    mib << 20
}

/// Short timeouts for tests where requests are expected to go unanswered.
fn short_opts() -> DownloadOptions {
    DownloadOptions {
        per_request_timeout: Duration::from_secs(2),
        max_retries: 1,
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        ..DownloadOptions::default()
    }
}

/// Every event up to and including the (first) `TransactionDone`. Waiters may resolve a
/// moment before that event is broadcast, so this waits for it (bounded).
async fn events_until_done(rx: &mut broadcast::Receiver<ServiceEvent>) -> Vec<ServiceEvent> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(SOON, rx.recv()).await {
            Ok(Ok(ev)) => {
                let done = matches!(ev, ServiceEvent::TransactionDone { .. });
                out.push(ev);
                if done {
                    return out;
                }
            }
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no TransactionDone event; got {out:?}"),
        }
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_eight_receiver_processes_get_identical_bytes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.bin");
    let len = big_file_len();
    let file_digest = write_random_file(&src, len, 42).unwrap();
    let tensors = make_tensors(3, 12, 512 << 10);
    let tensors_digest = tensor_digest(&tensors);

    let (cell, service, url) = sender("server", ServiceOptions::default()).await;
    let mut events = service.events();
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(120)).with_num_receivers(8),
    )
    .unwrap();
    let file_rid = tx.add_file(&src, 1 << 20).unwrap();
    let tensors_rid = tx.add_tensors(tensors).unwrap();

    let out = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    for i in 1..=8 {
        let fqcn = format!("site-{i}");
        peers.push(
            PyPeer::spawn_program_async(
                ferry_peer(),
                [
                    "receive",
                    "--url",
                    &url,
                    "--fqcn",
                    &fqcn,
                    "--file-ref",
                    file_rid.as_str(),
                    "--tensors-ref",
                    tensors_rid.as_str(),
                    "--out-dir",
                    out.path().to_str().unwrap(),
                ],
            )
            .await,
        );
    }
    for (i, p) in peers.iter_mut().enumerate() {
        let file = p.wait_event_async("file").await;
        assert_eq!(file["ok"], true, "site-{}: {file}", i + 1);
        assert_eq!(file["size"], len, "site-{}", i + 1);
        assert_eq!(file["blake3"], file_digest.as_str(), "site-{}", i + 1);
        let t = p.wait_event_async("tensors").await;
        assert_eq!(t["ok"], true, "site-{}: {t}", i + 1);
        assert_eq!(t["count"], 12);
        assert_eq!(t["digest"], tensors_digest.as_str(), "site-{}", i + 1);
        assert_eq!(p.wait_event_async("done").await["all_ok"], true);
    }

    let outcome = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert_eq!(outcome.status, OutcomeStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.reason, "all_receivers_succeeded");
    for rid in [&file_rid, &tensors_rid] {
        let st = statuses(&outcome, rid);
        assert_eq!(st.len(), 8, "{rid}: {st:?}");
        assert!(
            st.iter().all(|(_, s)| *s == DownloadStatus::Success),
            "{st:?}"
        );
    }
    let evs = events_until_done(&mut events).await;
    for rid in [&file_rid, &tensors_rid] {
        let to_all = evs
            .iter()
            .filter(|e| matches!(e, ServiceEvent::DownloadedToAll { ref_id, .. } if ref_id == rid))
            .count();
        assert_eq!(to_all, 1, "downloaded_to_all of {rid}");
        let to_one = evs
            .iter()
            .filter(|e| {
                matches!(e, ServiceEvent::DownloadedToOne { ref_id, status, .. }
                    if ref_id == rid && *status == DownloadStatus::Success)
            })
            .count();
        assert_eq!(to_one, 8, "downloaded_to_one of {rid}");
    }
    let done = evs
        .iter()
        .filter(|e| matches!(e, ServiceEvent::TransactionDone { .. }))
        .count();
    assert_eq!(done, 1);
    assert_released(&service).await;
    service.shutdown().await;
    cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_mid_download_fails_at_its_idle_budget() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.bin");
    let digest = write_random_file(&src, 24 << 20, 7).unwrap();
    let (cell, service, url) = sender("server", ServiceOptions::default()).await;
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(120))
            .with_num_receivers(3)
            .with_idle_timeout(Duration::from_secs(6)),
    )
    .unwrap();
    let rid = tx.add_file(&src, 1 << 20).unwrap();
    let out = tempfile::tempdir().unwrap();
    let spawn = |fqcn: &'static str, stall: bool| {
        let url = url.clone();
        let rid = rid.to_string();
        let out = out.path().to_str().unwrap().to_string();
        async move {
            let mut args = vec![
                "receive".to_string(),
                "--url".into(),
                url,
                "--fqcn".into(),
                fqcn.into(),
                "--file-ref".into(),
                rid,
                "--out-dir".into(),
                out,
            ];
            if stall {
                args.extend(["--stall-after-chunks".into(), "2".into()]);
            }
            PyPeer::spawn_program_async(ferry_peer(), args).await
        }
    };
    let mut victim = spawn("site-3", true).await;
    // The victim is mid-download (it consumed two chunks and holds the third) ...
    victim.wait_event_async("stalled").await;
    // ... when it dies.
    victim.kill();
    let mut healthy = vec![spawn("site-1", false).await, spawn("site-2", false).await];
    for p in &mut healthy {
        let f = p.wait_event_async("file").await;
        assert_eq!(f["ok"], true, "{f}");
        assert_eq!(f["blake3"], digest.as_str());
    }
    let outcome = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert_eq!(outcome.status, OutcomeStatus::Failed, "{outcome:?}");
    assert_eq!(outcome.reason, "receiver_failed");
    let st = statuses(&outcome, &rid);
    assert_eq!(
        st,
        vec![
            ("site-1".to_string(), DownloadStatus::Success),
            ("site-2".to_string(), DownloadStatus::Success),
            ("site-3".to_string(), DownloadStatus::Failed),
        ]
    );
    assert_released(&service).await;
    service.shutdown().await;
    cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_mid_download_fails_every_receiver_cleanly() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.bin");
    write_random_file(&src, 16 << 20, 9).unwrap();
    let mut sender = PyPeer::spawn_program_async(
        ferry_peer(),
        [
            "send",
            "--file",
            src.to_str().unwrap(),
            "--num-receivers",
            "2",
            "--gate-after-chunks",
            "4",
        ],
    )
    .await;
    let url = sender.ready_str("url").to_string();
    let rid = RefId::from(sender.ready_str("file_ref"));
    let out = tempfile::tempdir().unwrap();
    let mut downloads = Vec::new();
    let mut cells = Vec::new();
    for fqcn in ["site-1", "site-2"] {
        let (cell, service) = receiver(fqcn, &url).await;
        let rid = rid.clone();
        let dir = out.path().to_path_buf();
        downloads.push(tokio::spawn(async move {
            download_file(
                &service,
                "server",
                &rid,
                &dir,
                &format!("{fqcn}.bin"),
                FileOptions::default(),
                short_opts(),
            )
            .await
        }));
        cells.push(cell);
    }
    sender.wait_event_async("gate_reached").await;
    sender.kill();
    for d in downloads {
        let err = tokio::time::timeout(SOON, d)
            .await
            .expect("the download ends")
            .unwrap()
            .expect_err("the sender is dead");
        let failure = err.failure().unwrap_or_else(|| panic!("{err}"));
        assert!(
            matches!(
                failure,
                DownloadFailure::RetriesExhausted { .. } | DownloadFailure::RequestFailed { .. }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("server"),
            "names the source: {err}"
        );
    }
    assert_eq!(
        files_in(out.path()),
        Vec::<PathBuf>::new(),
        "nothing left behind"
    );
    for c in cells {
        c.shutdown().await;
    }
}

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

/// The frozen receiver's idle budget: ten times what the healthy download next to it takes
/// on a loaded machine (about 3 s on a busy 2-core machine, a debug build), so the healthy
/// download always ends well before the frozen receiver is failed.
const FROZEN_IDLE_BUDGET: Duration = Duration::from_secs(40);

/// A receiver process that is alive but frozen (SIGSTOP: its socket stops draining) holds the
/// chunks produced for it until its writes have made no progress for the send timeout (10 s):
/// then its connection is closed and those chunks are dropped. Meanwhile they hold byte
/// budget, but only the frozen receiver's share of it (a quarter): a healthy receiver
/// downloads the whole file next to it. The frozen one is FAILED at its idle budget
/// ([`FROZEN_IDLE_BUDGET`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_receiver_holds_only_its_share_of_the_byte_budget() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.bin");
    let digest = write_random_file(&src, 64 << 20, 12).unwrap();
    let budget = 8 << 20;
    let (cell, service, url) = sender(
        "server",
        ServiceOptions {
            byte_budget: budget,
            ..ServiceOptions::default()
        },
    )
    .await;
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(120))
            .with_num_receivers(2)
            .with_idle_timeout(FROZEN_IDLE_BUDGET),
    )
    .unwrap();
    let rid = tx.add_file(&src, 1 << 20).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut frozen = PyPeer::spawn_program_async(
        ferry_peer(),
        [
            "receive",
            "--url",
            &url,
            "--fqcn",
            "site-1",
            "--file-ref",
            rid.as_str(),
            "--window",
            "32",
            "--out-dir",
            out.path().to_str().unwrap(),
        ],
    )
    .await;
    frozen.wait_event_async("progress").await;
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &frozen.pid().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    // The frozen receiver's outstanding pulls use up its share once its socket buffers are
    // full, and no more: the rest of the budget stays free for everyone else. (A pull takes
    // its share first and the global budget just after, so both are polled together.)
    let deadline = tokio::time::Instant::now() + SOON;
    while service.budget_available_for("site-1") > 0
        || service.budget_available() != budget - budget / 4
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the frozen receiver should hold exactly its share of the byte budget: \
             {} of its share and {} of {budget} in all still free",
            service.budget_available_for("site-1"),
            service.budget_available()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rcell, rservice) = receiver("site-2", &url).await;
    let res = download_file(
        &rservice,
        "server",
        &rid,
        out.path(),
        "healthy.bin",
        FileOptions::default(),
        DownloadOptions {
            per_request_timeout: Duration::from_secs(60),
            ..DownloadOptions::default()
        },
    )
    .await;
    frozen.kill();
    let path = match res {
        Ok(p) => p,
        Err(e) => panic!("the healthy receiver failed next to a frozen one: {e}"),
    };
    assert_eq!(ferry_tests::e2e::blake3_file(&path).unwrap(), digest);
    let outcome = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert_eq!(
        statuses(&outcome, &rid),
        vec![
            ("site-1".to_string(), DownloadStatus::Failed),
            ("site-2".to_string(), DownloadStatus::Success),
        ]
    );
    assert_released(&service).await;
    rcell.shutdown().await;
    service.shutdown().await;
    cell.shutdown().await;
}

/// Add a gated copy of a file object (first `free` produces pass) to `tx`.
fn add_gated_file(tx: &ObjectDownloader, path: &Path, free: u64) -> (RefId, Gate) {
    let obj = FileObject::builder(path)
        .chunk_size(1 << 20)
        .digest(true)
        .open()
        .unwrap();
    let gated = GatedObject::new(obj, free);
    let gate = gated.gate();
    (tx.add_object(Arc::new(gated)).unwrap(), gate)
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
