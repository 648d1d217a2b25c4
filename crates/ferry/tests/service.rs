//! The glue over real loopback TCP, in one process: several cells, one download service each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry::objects::BytesConsumer;
use ferry::prelude::*;

/// Generous bound for anything that should take milliseconds; only guards against hangs.
const BOUND: Duration = Duration::from_secs(60);

fn pattern(n: usize, seed: u8) -> Bytes {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

struct Net {
    sender: DownloadService,
    receivers: Vec<DownloadService>,
}

async fn net(n: usize) -> Net {
    let server = Cell::new("server").unwrap();
    let url = server.listen("tcp://127.0.0.1:0").await.unwrap();
    let sender = DownloadService::new(&server, ServiceOptions::default());
    let mut receivers = Vec::new();
    for i in 0..n {
        let c = Cell::new(&format!("site-{i}")).unwrap();
        c.connect(&url).await.unwrap();
        receivers.push(DownloadService::new(&c, ServiceOptions::default()));
    }
    Net { sender, receivers }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("hung")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reaches_three_receivers_and_the_sender_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.bin");
    let data = pattern(5 * 1024 * 1024 + 17, 3);
    std::fs::write(&src, &data).unwrap();
    let net = net(3).await;
    let mut events = net.sender.events();
    let tx = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(30)).with_num_receivers(3),
    )
    .unwrap();
    let rid = tx.add_file(&src, 256 * 1024).unwrap();
    let mut joins = Vec::new();
    for (i, r) in net.receivers.iter().enumerate() {
        let r = r.clone();
        let rid = rid.clone();
        let out = dir.path().join(format!("out{i}"));
        std::fs::create_dir(&out).unwrap();
        joins.push(tokio::spawn(async move {
            download_file(
                &r,
                "server",
                &rid,
                &out,
                "model.bin",
                FileOptions::default(),
                DownloadOptions::default(),
            )
            .await
        }));
    }
    for j in joins {
        let path = within(j).await.unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), &data[..]);
        assert!(!path.with_file_name("model.bin.part").exists());
    }
    let outcome = within(tx.waiter().wait()).await.expect("outcome recorded");
    assert!(outcome.completed(), "{outcome:?}");
    assert_eq!(net.sender.transaction_count(), 0);
    assert_eq!(
        net.sender.budget_available(),
        net.sender.options().byte_budget
    );
    let mut to_all = 0;
    let mut to_one = 0;
    let mut done = 0;
    // The waiter resolved, so the TransactionDone event is already published.
    while let Ok(ev) = events.try_recv() {
        match ev {
            ServiceEvent::TransactionDone { .. } => done += 1,
            ServiceEvent::DownloadedToAll { .. } => to_all += 1,
            ServiceEvent::DownloadedToOne { status, .. } => {
                assert_eq!(status, DownloadStatus::Success);
                to_one += 1
            }
            _ => {}
        }
    }
    assert_eq!((to_one, to_all, done), (3, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_wait_and_windowed_downloads_give_the_same_bytes_with_progress() {
    let net = net(2).await;
    let tx = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(30)).with_num_receivers(2),
    )
    .unwrap();
    let data = pattern(3 * 1024 * 1024 + 5, 9);
    let rid = tx.add_bytes(data.clone()).unwrap();
    for (i, r) in net.receivers.iter().enumerate() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let opts = DownloadOptions {
            window: if i == 0 { 1 } else { 8 },
            progress_interval: Duration::ZERO,
            ..DownloadOptions::default()
        }
        .with_progress(move |p| {
            s2.lock()
                .unwrap()
                .push((p.state, p.bytes_done, p.total_bytes))
        });
        let got = within(download_bytes(r, "server", &rid, opts))
            .await
            .unwrap();
        assert_eq!(got, data);
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.first().map(|s| s.0),
            Some(ferry::core::ProgressState::Start)
        );
        let last = seen.last().unwrap();
        assert_eq!(last.0, ferry::core::ProgressState::Completed);
        assert_eq!(last.1, data.len() as u64);
        assert_eq!(
            last.2,
            Some(data.len() as u64),
            "the plan announced the total"
        );
        assert!(
            seen.windows(2).all(|w| w[0].1 <= w[1].1),
            "bytes never go back"
        );
    }
    assert!(within(tx.waiter().wait()).await.unwrap().completed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_refuses_fails_the_download_and_the_outcome() {
    let net = net(1).await;
    let tx = ObjectDownloader::new(
        &net.sender,
        // Identity mode: the receiver's cancel fails it at once (NVFlare's R7); in count mode
        // it would give its place back instead.
        TxConfig::new(Duration::from_secs(30)).with_receiver_ids(["site-0"]),
    )
    .unwrap();
    let rid = tx.add_bytes(pattern(2 << 20, 1)).unwrap();
    let small = BytesConsumer::with_max_size(1 << 20);
    let err = within(download_object(
        &net.receivers[0],
        "server",
        &rid,
        small,
        DownloadOptions::default(),
    ))
    .await
    .unwrap_err();
    assert!(err.failure().is_some(), "{err}");
    let outcome = within(tx.waiter().wait()).await.unwrap();
    assert!(!outcome.completed());
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    assert_eq!(outcome.reason, "receiver_failed", "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_refs_fail_clearly_and_unknown_waiters_resolve_at_once() {
    let net = net(1).await;
    let err = within(download_bytes(
        &net.receivers[0],
        "server",
        &RefId::new("Rnope"),
        DownloadOptions::default(),
    ))
    .await
    .unwrap_err();
    // A typed refusal, with the sender's words.
    assert!(
        matches!(
            err.failure(),
            Some(DownloadFailure::Refused {
                refusal: Refusal::UnknownRef,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no ref found: Rnope"), "{err}");
    assert!(within(net.sender.waiter(&TxId::new("Tunknown")).wait())
        .await
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_aborts_and_shutdown_resolves_waiters() {
    let net = net(1).await;
    let tx = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(30)).with_num_receivers(1),
    )
    .unwrap();
    let _rid = tx.add_bytes(pattern(1024, 0)).unwrap();
    let waiter = tx.waiter();
    tx.delete_transaction().unwrap();
    let outcome = within(waiter.wait()).await.unwrap();
    assert_eq!(outcome.status, OutcomeStatus::Aborted);

    let tx2 = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(30)).with_num_receivers(1),
    )
    .unwrap();
    tx2.add_bytes(pattern(10, 0)).unwrap();
    let w2 = tx2.waiter();
    let parked = tokio::spawn(async move { w2.wait().await });
    tokio::task::yield_now().await;
    net.sender.shutdown().await;
    assert!(within(parked).await.unwrap().is_none());
    assert!(matches!(
        ObjectDownloader::new(&net.sender, TxConfig::new(Duration::from_secs(1))),
        Err(DownloadError::Engine(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_sends_cancel_and_the_sender_fails_that_receiver() {
    let net = net(1).await;
    let tx = ObjectDownloader::new(
        &net.sender,
        // Identity mode: NVFlare's R7 (count mode gives the place back, see semantics.rs).
        TxConfig::new(Duration::from_secs(30)).with_receiver_ids(["site-0"]),
    )
    .unwrap();
    let rid = tx.add_bytes(pattern(8 << 20, 2)).unwrap();
    let token = CancellationToken::new();
    let t2 = token.clone();
    let opts = DownloadOptions {
        window: 1,
        progress_interval: Duration::ZERO,
        ..DownloadOptions::default()
    }
    .with_cancel(token)
    // Cancel as soon as the first chunk arrived.
    .with_progress(move |p| {
        if p.bytes_done > 0 {
            t2.cancel();
        }
    });
    let err = within(download_bytes(&net.receivers[0], "server", &rid, opts))
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::Cancelled { .. }), "{err}");
    let outcome = within(tx.waiter().wait()).await.unwrap();
    assert_eq!(outcome.status, OutcomeStatus::Failed, "{outcome:?}");
    // Settled by the accepted cancel, not by the 30 s inactivity timeout.
    assert_eq!(outcome.reason, "receiver_failed", "{outcome:?}");
}

/// Panics in its second `consume`; runs inline or on the pool as told.
#[derive(Debug)]
struct PanickingConsumer {
    blocks: bool,
    chunks: usize,
}

impl Consumer for PanickingConsumer {
    fn consume(&mut self, _: &str, state: &State, _: ChunkData) -> Result<State, ConsumeError> {
        self.chunks += 1;
        if self.chunks == 2 {
            panic!("consumer bug");
        }
        Ok(state.clone())
    }

    fn blocks(&self) -> bool {
        self.blocks
    }

    fn completed(&mut self, _: &str) -> Result<(), ConsumeError> {
        Ok(())
    }

    fn failed(&mut self, _: &str, _: &str) {}
}

/// A consumer that panics fails its download with a clear error, whether it runs on the
/// download task (non-blocking) or on the blocking pool, and the sender hears of the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_consumer_fails_the_download_inline_or_on_the_pool() {
    for blocks in [false, true] {
        let net = net(1).await;
        let tx = ObjectDownloader::new(
            &net.sender,
            // Identity mode: the cancel fails the receiver at once.
            TxConfig::new(Duration::from_secs(30)).with_receiver_ids(["site-0"]),
        )
        .unwrap();
        let rid = tx.add_bytes(pattern(4 << 20, 3)).unwrap();
        let err = within(download_object(
            &net.receivers[0],
            "server",
            &rid,
            PanickingConsumer { blocks, chunks: 0 },
            DownloadOptions::default(),
        ))
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("consumer panicked")
                && err.to_string().contains("consumer bug"),
            "blocks={blocks}: {err}"
        );
        let outcome = within(tx.waiter().wait()).await.unwrap();
        assert_eq!(outcome.status, OutcomeStatus::Failed, "blocks={blocks}");
    }
}

/// Local setup failures keep ferry-objects' typed error, so callers can match on them; nothing
/// is requested and nothing at the destination changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_setup_errors_are_typed_objects_errors() {
    use ferry::objects::ObjectsError;
    let dir = tempfile::tempdir().unwrap();
    let net = net(1).await;
    let tx = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(30)).with_num_receivers(1),
    )
    .unwrap();

    // Sender side: a missing file, a chunk size out of range.
    let missing = dir.path().join("missing.bin");
    let err = tx.add_file(&missing, 1 << 20).unwrap_err();
    match &err {
        DownloadError::Objects(ObjectsError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("missing.bin"),
        "names the path: {err}"
    );
    let src = dir.path().join("model.bin");
    std::fs::write(&src, pattern(1000, 1)).unwrap();
    assert!(matches!(
        tx.add_file(&src, 0),
        Err(DownloadError::Objects(ObjectsError::InvalidOption(_)))
    ));
    let rid = tx.add_file(&src, 256).unwrap();

    // Receiver side: an existing destination without overwrite, an unsafe name.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("model.bin"), b"precious").unwrap();
    let r = &net.receivers[0];
    let err = within(download_file(
        r,
        "server",
        &rid,
        &out,
        "model.bin",
        FileOptions::default(),
        DownloadOptions::default(),
    ))
    .await
    .unwrap_err();
    match &err {
        DownloadError::Objects(ObjectsError::DestinationExists(p)) => {
            assert_eq!(p, &out.join("model.bin"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), b"precious");
    let err = within(download_tensors_to_file(
        r,
        "server",
        &rid,
        &out,
        "model.bin",
        false,
        DownloadOptions::default(),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Objects(ObjectsError::DestinationExists(_))
        ),
        "{err:?}"
    );
    let err = within(download_file(
        r,
        "server",
        &rid,
        &out,
        "../escape.bin",
        FileOptions::default(),
        DownloadOptions::default(),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Objects(ObjectsError::InvalidName { .. })
        ),
        "{err:?}"
    );
    assert!(!dir.path().join("escape.bin").exists());

    // None of that touched the transaction: the file is still served.
    let got = within(download_file(
        r,
        "server",
        &rid,
        &out,
        "fresh.bin",
        FileOptions::default(),
        DownloadOptions::default(),
    ))
    .await
    .unwrap();
    assert_eq!(std::fs::read(got).unwrap(), std::fs::read(&src).unwrap());
}
