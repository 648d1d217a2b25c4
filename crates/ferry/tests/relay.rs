//! Relays over real loopback TCP with real files (tensor dicts: `relay_tensors.rs`): served while upstream still sends, chained,
//! upstream lost (with and without another source), and a hostile upstream.
//!
//! The upstream objects are gated: they stop serving at a byte offset until the test opens
//! the gate (or "kills" them), so "while the upstream is still sending" is an event the tests
//! wait for, never a race.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ferry::core::{ProduceError, RefId};
use ferry::fetch::{Fetch, FetchOptions};
use ferry::objects::FileObject;
use ferry::prelude::*;
use ferry::relay::outboard::OutboardIndex;
use ferry::relay::{Relay, RelayOptions};
use ferry::ticket::{Kind, Ticket};

/// Generous bound for anything that should take a second; only guards against hangs.
const BOUND: Duration = Duration::from_secs(120);
const CHUNK: u64 = 64 << 10;
const SIZE: usize = 4 << 20;
const HALF: u64 = 2 << 20;

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("hung")
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// Whether a gate is open, closed, or its server "died".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum GateState {
    Closed,
    Open,
    Dead,
}

/// A file served normally below `at`, and beyond it only once the gate opens. `corrupt`
/// flips a byte of the chunk that starts there (a hostile upstream whose plan still
/// advertises the pinned digest).
struct Gated {
    inner: FileObject,
    at: u64,
    corrupt: Option<u64>,
    gate: Arc<(Mutex<GateState>, Condvar)>,
}

impl Downloadable for Gated {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        let n = state
            .and_then(|s| s.get_u64("received_bytes").ok().flatten())
            .unwrap_or(0);
        if n >= self.at {
            let (m, c) = &*self.gate;
            let mut g = m.lock().unwrap();
            while *g == GateState::Closed {
                g = c.wait(g).unwrap();
            }
            if *g == GateState::Dead {
                return Err(ProduceError("dead".into()));
            }
        }
        let mut p = self.inner.produce(state, requester)?;
        if let (Some(bad), Produced::Data { data, .. }) = (self.corrupt, &mut p) {
            if n == bad {
                if let ChunkData::Bytes(b) = data {
                    let mut v = b.to_vec();
                    v[100] ^= 0xff;
                    *b = Bytes::from(v);
                }
            }
        }
        Ok(p)
    }

    fn plan(&self) -> Option<ferry::core::TransferPlan> {
        self.inner.plan()
    }
}

fn set_gate(gate: &Arc<(Mutex<GateState>, Condvar)>, to: GateState) {
    *gate.0.lock().unwrap() = to;
    gate.1.notify_all();
}

/// A sender cell serving one gated file to one receiver, and the file's ticket.
struct Origin {
    cell: Cell,
    service: DownloadService,
    tx: ObjectDownloader,
    ticket: Ticket,
    gate: Arc<(Mutex<GateState>, Condvar)>,
}

/// A failing test must not leave produce calls blocked at a gate (the runtime would wait for
/// them forever when it drops).
impl Drop for Origin {
    fn drop(&mut self) {
        let mut g = self.gate.0.lock().unwrap();
        if *g == GateState::Closed {
            *g = GateState::Dead;
        }
        drop(g);
        self.gate.1.notify_all();
    }
}

/// With `outboard`, the origin answers outboard requests (as `ferry serve` does), so relays
/// check each group before serving it; without, relays check only the whole digest.
async fn origin(name: &str, src: &Path, at: u64, corrupt: Option<u64>, outboard: bool) -> Origin {
    let cell = Cell::new(name).unwrap();
    let url = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    let service = DownloadService::new(&cell, ServiceOptions::default());
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(1),
    )
    .unwrap();
    let inner = FileObject::builder(src)
        .chunk_size(CHUNK)
        .digest(true)
        .open()
        .unwrap();
    let ticket_size = inner.size();
    let b3 = inner.digest().unwrap().to_string();
    let gate = Arc::new((Mutex::new(GateState::Closed), Condvar::new()));
    let rid = tx
        .add_object(Arc::new(Gated {
            inner,
            at,
            corrupt,
            gate: Arc::clone(&gate),
        }))
        .unwrap();
    if outboard {
        let index = OutboardIndex::new();
        index.add_file(rid.as_str(), src.to_path_buf(), ticket_size);
        index.serve_on(&cell);
    }
    let ticket = Ticket {
        tls: false,
        addr: url.trim_start_matches("tcp://").to_string(),
        source: name.to_string(),
        ref_id: rid.to_string(),
        kind: Kind::File,
        name: "model.bin".into(),
        size: ticket_size,
        blake3: b3,
    };
    Origin {
        cell,
        service,
        tx,
        ticket,
        gate,
    }
}

/// A relay cell listening on loopback, serving `relay`'s object to `n` receivers.
struct RelayNode {
    cell: Cell,
    service: DownloadService,
    tx: ObjectDownloader,
    relay: Arc<Relay>,
    ticket: Ticket,
}

/// Likewise for downstream pulls waiting at a relay.
impl Drop for RelayNode {
    fn drop(&mut self) {
        self.relay.close("the test is over");
    }
}

async fn relay_node(name: &str, sources: Vec<Ticket>, n: usize, spill: &Path) -> RelayNode {
    let cell = Cell::new(name).unwrap();
    let url = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    let service = DownloadService::new(&cell, ServiceOptions::default());
    let relay = Relay::new(
        sources,
        RelayOptions {
            spill_dir: spill.to_path_buf(),
            chunk_size: CHUNK,
            ..RelayOptions::default()
        },
    )
    .unwrap();
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(n),
    )
    .unwrap();
    let rid: RefId = tx.add_object(relay.object()).unwrap();
    let index = OutboardIndex::new();
    index.add_relay(rid.as_str(), &relay);
    index.serve_on(&cell);
    let ticket = relay.ticket(name, url.trim_start_matches("tcp://"), false, &rid);
    RelayNode {
        cell,
        service,
        tx,
        relay: Arc::new(relay),
        ticket,
    }
}

fn run_relay(
    node: &RelayNode,
) -> tokio::task::JoinHandle<Result<ferry::relay::RelayReport, DownloadError>> {
    let relay = Arc::clone(&node.relay);
    let service = node.service.clone();
    tokio::spawn(async move {
        relay
            .run(
                &service,
                DownloadOptions {
                    per_request_timeout: Duration::from_secs(30),
                    ..DownloadOptions::default()
                },
            )
            .await
    })
}

/// A receiver cell that fetches `t` into `out`, reporting its progress.
async fn receiver(
    name: &str,
    t: &Ticket,
    out: &Path,
) -> (
    tokio::task::JoinHandle<Result<ferry::fetch::Fetched, DownloadError>>,
    tokio::sync::mpsc::Receiver<DownloadProgress>,
    Cell,
) {
    let cell = Cell::new(name).unwrap();
    cell.connect(&t.url()).await.unwrap();
    let service = DownloadService::new(&cell, ServiceOptions::default());
    let (opts, progress) = DownloadOptions::default().with_progress_channel(1024);
    let opts = DownloadOptions {
        progress_interval: Duration::ZERO,
        ..opts
    };
    let fetch = Fetch::open(t, out, FetchOptions::default()).await.unwrap();
    let join = tokio::spawn(async move { fetch.run(&service, opts).await });
    (join, progress, cell)
}

async fn wait_bytes(progress: &mut tokio::sync::mpsc::Receiver<DownloadProgress>, at_least: u64) {
    within(async {
        while let Some(p) = progress.recv().await {
            if p.bytes_done >= at_least {
                return;
            }
        }
        panic!("progress ended before {at_least} bytes");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_serves_while_its_upstream_is_still_sending() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(SIZE, 1);
    std::fs::write(dir.path().join("src.bin"), &data).unwrap();
    let up = origin("origin", &dir.path().join("src.bin"), HALF, None, true).await;
    let node = relay_node("relay-1", vec![up.ticket.clone()], 2, dir.path()).await;
    let run = run_relay(&node);
    let mut joins = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("site-{i}"));
        let (join, mut progress, cell) = receiver(&format!("site-{i}"), &node.ticket, &out).await;
        // The upstream has sent only its first half: the receiver gets that half from the
        // relay before the upstream sends any more.
        wait_bytes(&mut progress, HALF).await;
        joins.push((join, cell, out));
    }
    assert!(!node.relay.is_verified());
    assert!(node.relay.received() <= HALF + 8 * CHUNK);
    set_gate(&up.gate, GateState::Open);
    for (join, _cell, out) in joins {
        let got = within(join).await.unwrap().unwrap();
        assert!(matches!(got.verified, ferry::objects::Verified::Pinned(_)));
        assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), data);
    }
    let report = within(run).await.unwrap().unwrap();
    assert_eq!(report.sources.len(), 1);
    assert_eq!(report.sources[0].bytes, SIZE as u64);
    // Upstream saw one receiver; downstream, both completed.
    let up_outcome = within(up.tx.waiter().wait()).await.unwrap();
    assert!(up_outcome.completed(), "{up_outcome:?}");
    let down = within(node.tx.waiter().wait()).await.unwrap();
    assert!(down.completed(), "{down:?}");
    assert_eq!(down.refs[0].1.len(), 2, "{down:?}");
    node.service.shutdown().await;
    node.cell.shutdown().await;
    up.service.shutdown().await;
    up.cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_chain_and_every_receiver_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(SIZE, 2);
    std::fs::write(dir.path().join("src.bin"), &data).unwrap();
    let up = origin("origin", &dir.path().join("src.bin"), HALF, None, true).await;
    let first = relay_node("relay-1", vec![up.ticket.clone()], 1, dir.path()).await;
    let second = relay_node("relay-2", vec![first.ticket.clone()], 2, dir.path()).await;
    let run1 = run_relay(&first);
    // The second relay asks the first for the outboard once it has one: both check groups.
    within(async {
        while !first.relay.checks_groups() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let run2 = run_relay(&second);
    let mut joins = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("site-{i}"));
        let (join, mut progress, cell) = receiver(&format!("site-{i}"), &second.ticket, &out).await;
        wait_bytes(&mut progress, HALF).await;
        joins.push((join, cell, out));
    }
    set_gate(&up.gate, GateState::Open);
    for (join, _cell, out) in joins {
        within(join).await.unwrap().unwrap();
        assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), data);
    }
    within(run1).await.unwrap().unwrap();
    within(run2).await.unwrap().unwrap();
    assert!(first.relay.checks_groups() && second.relay.checks_groups());
    for tx in [&up.tx, &first.tx, &second.tx] {
        let o = within(tx.waiter().wait()).await.unwrap();
        assert!(o.completed(), "{o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_loses_its_only_upstream_fails_its_downstream_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(SIZE, 3);
    std::fs::write(dir.path().join("src.bin"), &data).unwrap();
    let up = origin("origin", &dir.path().join("src.bin"), HALF, None, true).await;
    let node = relay_node("relay-1", vec![up.ticket.clone()], 1, dir.path()).await;
    let run = run_relay(&node);
    let out = dir.path().join("site");
    let (join, mut progress, _cell) = receiver("site-0", &node.ticket, &out).await;
    wait_bytes(&mut progress, HALF).await;
    // The upstream dies mid-transfer.
    set_gate(&up.gate, GateState::Dead);
    up.cell.shutdown().await;
    let err = within(run).await.unwrap().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("lost its upstream") && text.contains("origin"),
        "{text}"
    );
    let err = within(join).await.unwrap().unwrap_err().to_string();
    assert!(err.contains("lost its upstream"), "downstream error: {err}");
    assert!(!out.join("model.bin").exists(), "nothing at the final path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_continues_from_another_source() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(SIZE, 4);
    std::fs::write(dir.path().join("src.bin"), &data).unwrap();
    let a = origin("origin-a", &dir.path().join("src.bin"), HALF, None, true).await;
    let b = origin("origin-b", &dir.path().join("src.bin"), 0, None, true).await;
    set_gate(&b.gate, GateState::Open);
    let node = relay_node(
        "relay-1",
        vec![a.ticket.clone(), b.ticket.clone()],
        1,
        dir.path(),
    )
    .await;
    let run = run_relay(&node);
    let out = dir.path().join("site");
    let (join, mut progress, _cell) = receiver("site-0", &node.ticket, &out).await;
    wait_bytes(&mut progress, HALF).await;
    set_gate(&a.gate, GateState::Dead);
    a.cell.shutdown().await;
    within(join).await.unwrap().unwrap();
    assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), data);
    let report = within(run).await.unwrap().unwrap();
    assert_eq!(report.sources.len(), 2, "{report:?}");
    assert!(report.sources[0].error.is_some());
    assert!(report.sources[1].error.is_none());
    assert_eq!(
        report.sources[0].bytes + report.sources[1].bytes,
        SIZE as u64
    );
    assert!(
        report.sources[1].bytes <= SIZE as u64 - HALF,
        "the second source only sends what is missing: {report:?}"
    );
}

/// A relay fed a corrupted chunk by an upstream whose plan still announces the pinned digest;
/// returns the relay's error, the receiver's error and the most bytes the receiver was served.
async fn hostile(outboard: bool) -> (String, String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(SIZE, 5);
    std::fs::write(dir.path().join("src.bin"), &data).unwrap();
    let up = origin(
        "origin",
        &dir.path().join("src.bin"),
        0,
        Some(3 * CHUNK),
        outboard,
    )
    .await;
    set_gate(&up.gate, GateState::Open);
    let node = relay_node("relay-1", vec![up.ticket.clone()], 1, dir.path()).await;
    let run = run_relay(&node);
    let out = dir.path().join("site");
    let (join, mut progress, _cell) = receiver("site-0", &node.ticket, &out).await;
    let relay_err = within(run).await.unwrap().unwrap_err().to_string();
    let err = within(join).await.unwrap().unwrap_err().to_string();
    assert!(!out.join("model.bin").exists(), "nothing at the final path");
    assert!(!node.relay.is_verified());
    assert_eq!(node.relay.checks_groups(), outboard);
    let mut served = 0;
    while let Ok(p) = progress.try_recv() {
        served = served.max(p.bytes_done);
    }
    (relay_err, err, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_upstream_is_caught_before_anything_corrupt_is_served() {
    let (relay_err, err, served) = hostile(true).await;
    assert!(
        relay_err.contains("do not match the ticket's digest"),
        "{relay_err}"
    );
    assert!(
        err.contains("do not match the ticket's digest"),
        "downstream: {err}"
    );
    // The corrupted chunk is in the first 1 MiB group, which was never served.
    assert_eq!(served, 0, "bytes served downstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_outboard_a_hostile_upstream_is_caught_at_the_digest() {
    let (relay_err, err, _) = hostile(false).await;
    assert!(
        relay_err.contains("does not match the ticket"),
        "{relay_err}"
    );
    assert!(
        err.contains("does not match the ticket") || err.contains("not what the ticket pins"),
        "downstream: {err}"
    );
}

#[test]
fn sets_are_refused_with_a_reason() {
    let t = |kind| Ticket {
        tls: false,
        addr: "127.0.0.1:1".into(),
        source: "s".into(),
        ref_id: "R1".into(),
        kind,
        name: "x".into(),
        size: 1,
        blake3: "ab".repeat(32),
    };
    let e = Relay::new(vec![t(Kind::Set)], RelayOptions::default()).unwrap_err();
    assert!(e.to_string().contains("set of objects"), "{e}");
    // A tensor dict is relayed (tests/relay_tensors.rs), but not mixed with a file.
    assert!(Relay::new(vec![t(Kind::Tensors)], RelayOptions::default()).is_ok());
    let e = Relay::new(
        vec![t(Kind::Tensors), t(Kind::File)],
        RelayOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("different content"), "{e}");
    let mut other = t(Kind::File);
    other.size = 2;
    let e = Relay::new(vec![t(Kind::File), other], RelayOptions::default()).unwrap_err();
    assert!(e.to_string().contains("different content"), "{e}");
    assert!(Relay::new(vec![], RelayOptions::default()).is_err());
}
