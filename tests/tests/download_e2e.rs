//! End-to-end tests of Ferry's download service: real TCP on loopback, separate cells, and
//! (where a process must die or many must run) separate `ferry-peer` processes.
//!
//! Mid-download points are made deterministic with gates (`ferry_tests::e2e`): a sender-side
//! object that holds every produce after its first chunks, or a receiver-side consumer that
//! stalls. No test asserts a duration; bounds are generous.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{big_file_len, events_until_done, ferry_peer, files_in, short_opts, SOON};
use ferry::core::DownloadFailure;
use ferry::prelude::*;
use ferry_tests::e2e::{
    assert_released, make_tensors, receiver, sender, statuses, tensor_digest, write_random_file,
};
use ferry_tests::{init_tracing, PyPeer};
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

/// Waits until process `pid` is stopped by a signal (state `T` in /proc), so a test knows
/// the stop took effect rather than guessing from what the process no longer does.
async fn wait_stopped(pid: u32) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses and may hold spaces.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if state == Some('T') {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receiver peer (pid {pid}) should have stopped itself after its first chunk; \
             its state is {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The frozen receiver's idle budget: ten times what the healthy download next to it takes
/// on a loaded machine (about 3 s on a busy 2-core machine, a debug build), so the healthy
/// download always ends well before the frozen receiver is failed.
const FROZEN_IDLE_BUDGET: Duration = Duration::from_secs(40);

/// A receiver process that is alive but frozen (it SIGSTOPs itself after its first two chunks,
/// with the rest of its window of 32 pulls outstanding: its socket stops draining) holds the
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
            "--freeze-after-chunks",
            "2",
        ],
    )
    .await;
    // The peer stops itself once chunk 1, a windowed pull, is in: every pull of its window
    // has been sent then. A stop sent from here could land after a fast receiver had drained
    // most of its window into socket buffers; one at chunk 0 could land before the window's
    // pulls were sent at all (they go out on the download loop's next turn).
    frozen.wait_event_async("progress").await;
    wait_stopped(frozen.pid()).await;
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
