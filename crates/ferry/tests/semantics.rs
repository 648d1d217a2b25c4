//! The download service's NVFlare semantics on real cells (issue 12 §6–7): settlement on
//! shutdown, hooks outside the engine's lock, the shared item cache, progress, the waiter,
//! source-failure notices. Each test is named after the NVFlare behaviour it pins.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry::core::message::{CHANNEL, TOPIC_SOURCE_FAILURE};
use ferry::objects::CacheOptions;
use ferry::prelude::*;
use ferry::ServiceOptions;

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
    cells: Vec<Cell>,
}

async fn net(n: usize) -> Net {
    let server = Cell::new("server").unwrap();
    let url = server.listen("tcp://127.0.0.1:0").await.unwrap();
    let sender = DownloadService::new(&server, ServiceOptions::default());
    let mut receivers = Vec::new();
    let mut cells = vec![server];
    for i in 0..n {
        let c = Cell::new(&format!("site-{i}")).unwrap();
        c.connect(&url).await.unwrap();
        receivers.push(DownloadService::new(&c, ServiceOptions::default()));
        cells.push(c);
    }
    Net {
        sender,
        receivers,
        cells,
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("hung")
}

/// Poll a condition (each check is an event: the state it reads changed) until it holds.
async fn eventually(mut f: impl FnMut() -> bool) {
    within(async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A shared, ordered log.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A latch a blocking thread waits on (bounded) and the test opens; it also tells when the
/// waiter got there.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<(bool, bool)>, Condvar)>);

impl Gate {
    /// Block until opened (at most `BOUND`), saying we arrived.
    fn pass(&self) {
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        g.0 = true;
        cv.notify_all();
        let _ = cv.wait_timeout_while(g, BOUND / 2, |g| !g.1).unwrap();
    }
    fn open(&self) {
        let (m, cv) = &*self.0;
        m.lock().unwrap().1 = true;
        cv.notify_all();
    }
    async fn reached(&self) {
        let me = self.clone();
        within(tokio::task::spawn_blocking(move || {
            let (m, cv) = &*me.0;
            let g = m.lock().unwrap();
            let _ = cv.wait_timeout_while(g, BOUND, |g| !g.0).unwrap();
        }))
        .await
        .unwrap();
    }
}

/// An in-memory object whose `produce` (when `gate_produce`) or `downloaded_to_one` (when
/// `gate_hook`) waits at a gate, and which logs its settlement hooks.
struct Probe {
    inner: BytesObject,
    gate: Gate,
    gate_produce: bool,
    gate_hook: bool,
    log: Log,
}

impl Downloadable for Probe {
    fn produce(&self, s: Option<&State>, r: &str) -> Result<Produced, ProduceError> {
        if self.gate_produce {
            self.gate.pass();
        }
        self.inner.produce(s, r)
    }
    fn downloaded_to_one(&self, who: &str, _: DownloadStatus) {
        if self.gate_hook {
            self.log.push(format!("hook entered for {who}"));
            self.gate.pass();
            self.log.push("hook returned");
        }
    }
    fn transaction_done(&self, _: &TxId, st: DoneStatus) {
        self.log.push(format!("transaction_done:{}", st.as_str()));
    }
    fn release(&self) {
        self.log.push("release");
    }
}

fn probe(gate: &Gate, log: &Log, gate_produce: bool, gate_hook: bool) -> Arc<Probe> {
    Arc::new(Probe {
        inner: BytesObject::new(pattern(64 << 10, 1)),
        gate: gate.clone(),
        gate_produce,
        gate_hook,
        log: log.clone(),
    })
}

/// NVFlare's `shutdown` settles every transaction as DELETED, running `transaction_done`, the
/// done callback, the outcome callback and `release`, even with a pull in flight (ferry's
/// shutdown used to return at once and strand it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvflare_shutdown_with_a_pull_in_flight_settles_every_transaction_as_deleted() {
    let net = net(1).await;
    let (gate, log) = (Gate::default(), Log::default());
    let (l1, l2) = (log.clone(), log.clone());
    let tx = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(60))
            .with_num_receivers(1)
            .on_done(move |_, st, _| l1.push(format!("on_done:{}", st.as_str())))
            .on_outcome(move |o| l2.push(format!("on_outcome:{}", o.status.as_str()))),
    )
    .unwrap();
    let rid = tx.add_object(probe(&gate, &log, true, false)).unwrap();
    let mut events = net.sender.events();
    let r = net.receivers[0].clone();
    let dl = tokio::spawn(async move {
        download_bytes(&r, "server", &rid, DownloadOptions::default()).await
    });
    gate.reached().await; // the pull is being produced
    let sender = net.sender.clone();
    let shutdown = tokio::spawn(async move { sender.shutdown().await });
    let id = tx.tx_id().clone();
    eventually(|| net.sender.transaction_info(&id).is_none_or(|i| !i.live)).await;
    gate.open();
    within(shutdown).await.unwrap();
    assert_eq!(
        log.entries(),
        vec![
            "transaction_done:deleted",
            "on_done:deleted",
            "on_outcome:aborted",
            "release"
        ]
    );
    assert_eq!(net.sender.transaction_count(), 0);
    let mut done = None;
    while let Ok(ev) = events.try_recv() {
        if let ServiceEvent::TransactionDone { outcome, recorded } = ev {
            done = Some((outcome.done_status, recorded));
        }
    }
    assert_eq!(done, Some((DoneStatus::Deleted, false)));
    assert!(within(dl).await.unwrap().is_err(), "the download fails");
}

/// NVFlare runs callbacks outside its table lock (its tests re-acquire it from a callback): a
/// callback that calls the service must not deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvflare_a_callback_may_call_the_service() {
    let net = net(0).await;
    let svc = net.sender.clone();
    let made = Arc::new(Mutex::new(None));
    let m2 = Arc::clone(&made);
    let tx = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(60)).on_done(move |_, _, _| {
            let _ = svc.transaction_count();
            let next = svc.new_transaction(TxConfig::new(Duration::from_secs(60)));
            *m2.lock().unwrap() = Some(next.is_ok());
        }),
    )
    .unwrap();
    tx.add_bytes(pattern(10, 1)).unwrap();
    // On a thread of its own, so that a deadlock fails this test instead of hanging it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(tx.delete_transaction().is_ok());
    });
    let deleted = tokio::task::spawn_blocking(move || done_rx.recv_timeout(BOUND))
        .await
        .unwrap();
    assert_eq!(deleted, Ok(true), "delete_transaction returned");
    assert_eq!(
        *made.lock().unwrap(),
        Some(true),
        "the callback ran, in full"
    );
    assert_eq!(
        net.sender.transaction_count(),
        1,
        "the callback's transaction"
    );
}

/// NVFlare runs callbacks on their own pool: a slow `downloaded_to_one` hook delays only the
/// hooks behind it, never another receiver's pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvflare_a_slow_hook_does_not_stall_pulls() {
    let net = net(2).await;
    let (gate, log) = (Gate::default(), Log::default());
    let slow = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(60)).with_num_receivers(1),
    )
    .unwrap();
    let a = slow.add_object(probe(&gate, &log, false, true)).unwrap();
    let other = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(60)).with_num_receivers(1),
    )
    .unwrap();
    let data = pattern(3 << 20, 7);
    let b = other.add_bytes(data.clone()).unwrap();
    let got = within(download_bytes(
        &net.receivers[0],
        "server",
        &a,
        DownloadOptions::default(),
    ))
    .await
    .unwrap();
    assert_eq!(got.len(), 64 << 10);
    gate.reached().await; // site-0's downloaded_to_one is running, and stays
    let got = within(download_bytes(
        &net.receivers[1],
        "server",
        &b,
        DownloadOptions::default(),
    ))
    .await
    .unwrap();
    assert_eq!(got, data);
    log.push("other receiver done");
    gate.open();
    assert!(within(slow.waiter().wait()).await.unwrap().completed());
    assert_eq!(
        log.entries()[..3],
        [
            "hook entered for site-0",
            "other receiver done",
            "hook returned"
        ]
    );
}

/// NVFlare's `CacheableObject` reads `num_receivers` from its transaction: added with default
/// options, each item is produced once for all the receivers (it used to be evicted at the
/// first acknowledgement and produced again for each receiver).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvflare_cacheable_object_is_produced_once_for_n_receivers() {
    let n = 3;
    let net = net(n).await;
    let mut dict = TensorDict::new();
    for i in 0..5u8 {
        let t = Tensor::new(
            ferry::objects::tensors::Dtype::U8,
            vec![1000],
            pattern(1000, i),
        )
        .unwrap();
        dict.insert(format!("t{i}"), t).unwrap();
    }
    let obj =
        Arc::new(TensorDictObject::from_tensors(dict.clone(), CacheOptions::default()).unwrap());
    let tx = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(60)).with_num_receivers(n),
    )
    .unwrap();
    let rid = tx.add_object(obj.clone()).unwrap();
    for r in &net.receivers {
        let got = within(download_tensors(
            r,
            "server",
            &rid,
            DownloadOptions::default(),
        ))
        .await
        .unwrap();
        assert_eq!(got.len(), 5);
    }
    assert!(within(tx.waiter().wait()).await.unwrap().completed());
    assert_eq!(
        obj.stats().productions,
        5,
        "once per item for {n} receivers"
    );
}

/// NVFlare's receiver progress: `(ref_id, sequence, bytes_done, items_done, ..., state)`,
/// sequence from 1, one up per report; items counted for list chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvflare_receiver_progress_carries_sequence_from_one_and_items() {
    let net = net(1).await;
    let mut dict = TensorDict::new();
    for i in 0..4u8 {
        let t = Tensor::new(ferry::objects::tensors::Dtype::U8, vec![10], pattern(10, i)).unwrap();
        dict.insert(format!("t{i}"), t).unwrap();
    }
    let tx = ObjectDownloader::new(
        &net.sender,
        TxConfig::new(Duration::from_secs(60)).with_num_receivers(1),
    )
    .unwrap();
    let rid = tx.add_tensors(dict).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let opts = DownloadOptions {
        progress_interval: Duration::ZERO,
        ..DownloadOptions::default()
    }
    .with_progress(move |p| s2.lock().unwrap().push((p.sequence, p.items_done, p.state)));
    within(download_tensors(&net.receivers[0], "server", &rid, opts))
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (1..=seen.len() as u64).collect::<Vec<_>>());
    assert_eq!(seen[0].1, None, "start: nothing yet");
    let last = seen.last().unwrap();
    assert_eq!(
        (last.1, last.2),
        (Some(4), ferry::core::ProgressState::Completed)
    );
}

/// NVFlare's waiter resolves a recorded outcome however old, and `linger` keeps `wait` after a
/// FINISHED outcome (never after a delete). Virtual time: no network, pulls go straight to the
/// service's handler.
#[tokio::test(start_paused = true)]
async fn nvflare_waiter_keeps_its_outcome_after_the_receipt_expired_and_lingers() {
    use ferry::cellnet::{headers::keys, MsgpackBody};
    use ferry::core::message::{encode, PullRequest, ReplyBody, ReplyStatus};
    let cell = Cell::new("server").unwrap();
    let svc = DownloadService::new(
        &cell,
        ServiceOptions {
            engine: ferry::core::ServiceConfig {
                outcome_ttl: Duration::from_secs(5),
                ..Default::default()
            },
            register_handlers: false,
            ..ServiceOptions::default()
        },
    );
    let tx = ObjectDownloader::new(
        &svc,
        TxConfig::new(Duration::from_secs(60)).with_num_receivers(1),
    )
    .unwrap();
    let rid = tx.add_bytes(pattern(10, 1)).unwrap();
    let waiter = tx.waiter().with_linger(Duration::from_secs(30));
    // A legacy receiver (no confirm): its EOF is final.
    let mut state = None;
    loop {
        let req = encode(&PullRequest {
            ref_id: rid.clone(),
            state: state.take(),
            confirm_capable: None,
        });
        let msg = Message::from_msgpack(MsgpackBody::from_bytes(Bytes::from(req)))
            .with_header(keys::ORIGIN, "site-1");
        let reply = svc.handle_download(msg).await.unwrap();
        let body = ReplyBody::decode(&reply.msgpack_body().unwrap()).unwrap();
        match body.status {
            ReplyStatus::Ok => state = body.state,
            _ => break,
        }
    }
    let t = tokio::time::Instant::now();
    let o = waiter.wait().await.expect("outcome");
    assert!(o.completed());
    assert!(
        t.elapsed() >= Duration::from_secs(30),
        "lingered after FINISHED"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(svc.outcome(tx.tx_id()).is_none(), "the receipt expired");
    assert_eq!(waiter.outcome(), Some(o.clone()), "the waiter kept it");
    assert_eq!(
        waiter.clone().with_linger(Duration::ZERO).wait().await,
        Some(o)
    );
    // No linger after a delete.
    let tx2 = ObjectDownloader::new(&svc, TxConfig::new(Duration::from_secs(60))).unwrap();
    let w2 = tx2.waiter().with_linger(Duration::from_secs(30));
    tx2.delete_transaction().unwrap();
    let t = tokio::time::Instant::now();
    assert!(w2.wait().await.is_some());
    assert_eq!(t.elapsed(), Duration::ZERO);
    svc.shutdown().await;
}

/// NVFlare's `notify_source_failure`: the source FQCN is checked before anything is sent,
/// targets and ref ids are de-duplicated (invalid targets and empty ids dropped), and a
/// transient error is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvflare_notify_source_failure_dedups_checks_the_fqcn_and_retries() {
    let net = net(1).await;
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let c2 = Arc::clone(&calls);
    // site-0's handler: a transient failure first, then the real one answers.
    net.cells[1].register_request_handler(CHANNEL, TOPIC_SOURCE_FAILURE, move |m: Message| {
        let c2 = Arc::clone(&c2);
        async move {
            let body = m.value().unwrap();
            let mut c = c2.lock().unwrap();
            c.push(format!("{body}"));
            if c.len() == 1 {
                Message::error(WireReturnCode::ProcessException, "busy")
            } else {
                Message::new()
            }
        }
    });
    let err = notify_source_failure(&net.sender, &["site-0"], "bad fqcn!", &["R1"], "died")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("source_fqcn"), "{err}");
    assert!(calls.lock().unwrap().is_empty(), "nothing sent");
    let out = within(notify_source_failure(
        &net.sender,
        &["site-0", "site-0", "not valid!"],
        "server.trainer",
        &["R1", "R1", "", "R2"],
        "died",
    ))
    .await
    .unwrap();
    assert_eq!(
        out.into_iter().collect::<Vec<_>>(),
        vec![("site-0".to_string(), None)]
    );
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2, "one target, retried once: {calls:?}");
    assert!(calls[1].contains("[\"R1\", \"R2\"]"), "{}", calls[1]);
}
