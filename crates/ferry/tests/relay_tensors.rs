//! Relays of tensor dicts (`kind=tensors` tickets) over real loopback TCP: an origin serving a
//! dict as `Sender.add_tensors` does, a relay, receivers into memory and into a
//! `.safetensors` file; chained relays; an upstream lost (with and without another source);
//! an upstream that corrupts an item.
//!
//! The origin's object is gated: it stops serving at an item until the test opens the gate
//! (or "kills" it), so "while the upstream is still sending" is an event the tests wait for,
//! never a race.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ferry::core::{DownloadStatus, ProduceError, RefId};
use ferry::fetch::{Fetch, FetchOptions};
use ferry::objects::cacheable::{CacheOptions, COUNT, START};
use ferry::objects::tensors::{tensor_dict_pin, Dtype, TensorDictConsumer};
use ferry::objects::verify::Pin;
use ferry::objects::Verified;
use ferry::prelude::*;
use ferry::relay::{Relay, RelayOptions};
use ferry::ticket::{Kind, Ticket};

/// Generous bound for anything that should take a second; only guards against hangs.
const BOUND: Duration = Duration::from_secs(120);
/// Items (distinct tensors) of the test dict; the gate closes at `HALF`.
const ITEMS: u64 = 8;
const HALF: u64 = 4;

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("hung")
}

/// A dict of `ITEMS` distinct tensors of 256 KiB, one alias (a second name for item 1's
/// buffer) and metadata: everything a tensor dict item carries.
fn model(seed: u8) -> TensorDict {
    let mut d = TensorDict::new();
    let mut tied = None;
    for i in 0..ITEMS as usize {
        let data: Vec<u8> = (0..256 << 10)
            .map(|j: usize| (j as u8).wrapping_mul(31).wrapping_add(seed) ^ (i * 7) as u8)
            .collect();
        let t = Tensor::new(Dtype::F32, vec![256, 256], Bytes::from(data)).unwrap();
        if i == 1 {
            tied = Some(t.clone());
        }
        d.insert(format!("layer.{i}.weight"), t).unwrap();
    }
    d.insert("lm_head.weight", tied.unwrap()).unwrap();
    d.with_metadata(BTreeMap::from([("format".to_string(), "pt".to_string())]))
}

/// Whether a gate is open, closed, or its server "died".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum GateState {
    Closed,
    Open,
    Dead,
}

type Gate = Arc<(Mutex<GateState>, Condvar)>;

/// A tensor dict served normally below item `at`, and from it on only once the gate opens.
/// `corrupt` flips a byte of that item's tensor data (a hostile upstream).
struct Gated {
    inner: TensorDictObject,
    at: u64,
    corrupt: Option<u64>,
    gate: Gate,
}

impl Downloadable for Gated {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        let get = |k| state.and_then(|s| s.get_u64(k).ok().flatten()).unwrap_or(0);
        let next = get(START) + get(COUNT);
        if next >= self.at {
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
            if next == bad {
                let ChunkData::Items(items) =
                    std::mem::replace(data, ChunkData::Items(vec![])).into_joined()
                else {
                    unreachable!("an item object sends items")
                };
                let mut v = items[0].to_vec();
                let last = v.len() - 1;
                v[last] ^= 0xff;
                *data = ChunkData::Items(vec![Bytes::from(v)]);
            }
        }
        Ok(p)
    }

    fn plan(&self) -> Option<ferry::core::TransferPlan> {
        self.inner.plan()
    }
}

fn set_gate(gate: &Gate, to: GateState) {
    *gate.0.lock().unwrap() = to;
    gate.1.notify_all();
}

/// A sender cell serving one gated tensor dict to one receiver (as `Sender.add_tensors`
/// does: a `TensorDictObject`, the ticket pinning `tensor_dict_pin`), and its ticket.
struct Origin {
    cell: Cell,
    service: DownloadService,
    tx: ObjectDownloader,
    ticket: Ticket,
    gate: Gate,
}

/// A failing test must not leave produce calls blocked at a gate.
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

async fn origin(name: &str, dict: &TensorDict, at: u64, corrupt: Option<u64>) -> Origin {
    let cell = Cell::new(name).unwrap();
    let url = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    let service = DownloadService::new(&cell, ServiceOptions::default());
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(1),
    )
    .unwrap();
    let pin = tensor_dict_pin(dict);
    let inner = TensorDictObject::from_tensors(dict.clone(), CacheOptions::default()).unwrap();
    let gate = Arc::new((Mutex::new(GateState::Closed), Condvar::new()));
    let rid = tx
        .add_object(Arc::new(Gated {
            inner,
            at,
            corrupt,
            gate: Arc::clone(&gate),
        }))
        .unwrap();
    let ticket = Ticket {
        tls: false,
        addr: url.trim_start_matches("tcp://").to_string(),
        source: name.to_string(),
        ref_id: rid.to_string(),
        kind: Kind::Tensors,
        name: "model.safetensors".into(),
        size: pin.size,
        blake3: pin.hex(),
    };
    Origin {
        cell,
        service,
        tx,
        ticket,
        gate,
    }
}

/// A relay cell on loopback serving `relay`'s dict to `n` receivers: the relay runs, and its
/// object is added once the item count arrived (so receivers pull pipelined).
struct RelayNode {
    cell: Cell,
    service: DownloadService,
    tx: ObjectDownloader,
    relay: Arc<Relay>,
    ticket: Ticket,
    run: tokio::task::JoinHandle<Result<ferry::relay::RelayReport, DownloadError>>,
}

impl Drop for RelayNode {
    fn drop(&mut self) {
        self.relay.close("the test is over");
    }
}

/// Shut a relay and its upstream down, downstream first.
async fn shut_down(node: &RelayNode, up: &Origin) {
    node.service.shutdown().await;
    node.cell.shutdown().await;
    up.service.shutdown().await;
    up.cell.shutdown().await;
}

async fn relay_node(name: &str, sources: Vec<Ticket>, n: usize, spill: &Path) -> RelayNode {
    relay_node_with(name, sources, n, spill, ServiceOptions::default()).await
}

async fn relay_node_with(
    name: &str,
    sources: Vec<Ticket>,
    n: usize,
    spill: &Path,
    service_opts: ServiceOptions,
) -> RelayNode {
    let cell = Cell::new(name).unwrap();
    let url = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    let service = DownloadService::new(&cell, service_opts);
    let relay = Arc::new(
        Relay::new(
            sources,
            RelayOptions {
                spill_dir: spill.to_path_buf(),
                ..RelayOptions::default()
            },
        )
        .unwrap(),
    );
    let run = {
        let relay = Arc::clone(&relay);
        let service = service.clone();
        tokio::spawn(async move {
            let opts = DownloadOptions {
                per_request_timeout: Duration::from_secs(30),
                ..DownloadOptions::default()
            };
            relay.run(&service, opts).await
        })
    };
    assert!(relay.wait_plan(BOUND).await, "the item count arrived");
    assert_eq!(relay.item_count(), Some(ITEMS));
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(n),
    )
    .unwrap();
    let obj = relay.object();
    assert!(obj.plan().is_some(), "served with a plan");
    let rid: RefId = tx.add_object(obj).unwrap();
    let ticket = relay.ticket(name, url.trim_start_matches("tcp://"), false, &rid);
    RelayNode {
        cell,
        service,
        tx,
        relay,
        ticket,
        run,
    }
}

type Join<T> = tokio::task::JoinHandle<Result<T, DownloadError>>;
type Progress = tokio::sync::mpsc::Receiver<DownloadProgress>;

async fn receiver_cell(
    name: &str,
    t: &Ticket,
) -> (Cell, DownloadService, DownloadOptions, Progress) {
    let cell = Cell::new(name).unwrap();
    cell.connect(&t.url()).await.unwrap();
    let service = DownloadService::new(&cell, ServiceOptions::default());
    let (opts, progress) = DownloadOptions::default().with_progress_channel(1024);
    let opts = DownloadOptions {
        progress_interval: Duration::ZERO,
        ..opts
    };
    (cell, service, opts, progress)
}

/// A receiver that rebuilds the dict in memory, held to the ticket's pin (what Python's
/// `ferry.download_tensors` does).
async fn memory_receiver(name: &str, t: &Ticket) -> (Join<TensorDictConsumer>, Progress, Cell) {
    let (cell, service, opts, progress) = receiver_cell(name, t).await;
    let (source, rid, pin) = (t.source.clone(), RefId::new(t.ref_id.clone()), t.pin());
    let consumer = TensorDictConsumer::new().pin(pin);
    let join = tokio::spawn(async move {
        ferry::download_object(&service, &source, &rid, consumer, opts).await
    });
    (join, progress, cell)
}

/// A receiver that writes the dict to `out/model.safetensors` (what `ferry get` does).
async fn disk_receiver(
    name: &str,
    t: &Ticket,
    out: &Path,
) -> (Join<ferry::fetch::Fetched>, Progress, Cell) {
    let (cell, service, opts, progress) = receiver_cell(name, t).await;
    let fetch = Fetch::open(t, out, FetchOptions::default()).await.unwrap();
    let join = tokio::spawn(async move { fetch.run(&service, opts).await });
    (join, progress, cell)
}

/// Wait until a receiver got at least `n` items.
async fn wait_items(progress: &mut Progress, n: u64) {
    within(async {
        while let Some(p) = progress.recv().await {
            if p.items_done.unwrap_or(p.chunks_done) >= n {
                return;
            }
        }
        panic!("progress ended before {n} items");
    })
    .await
}

/// The memory receiver's dict equals the origin's and hashes to the pin; the file holds the
/// same tensors and metadata.
async fn check_received(
    mem: Join<TensorDictConsumer>,
    disk: Join<ferry::fetch::Fetched>,
    dict: &TensorDict,
    pin: Pin,
) {
    let mut c = within(mem).await.unwrap().unwrap();
    assert_eq!(c.verified(), Verified::Pinned(pin));
    let got = c.take().unwrap();
    assert_eq!(&got, dict);
    assert_eq!(tensor_dict_pin(&got), pin, "same items, aliases, metadata");
    let fetched = within(disk).await.unwrap().unwrap();
    assert!(matches!(fetched.verified, Verified::Pinned(_)));
    assert_eq!(&TensorDict::load_safetensors(&fetched.path).unwrap(), dict);
}

/// A pull for an item still on its way waits in one of the relay's produce slots; items that
/// arrived are served without one. With a single slot, held by the first receiver's wait for
/// an item the gated upstream holds back, a second receiver still gets every item that
/// arrived. Before, its pulls waited for that slot: both receivers hung until the upstream
/// moved (with the default 8 slots, two receivers' windows of waits did the same now and then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrived_items_are_served_while_every_produce_slot_waits() {
    let dir = tempfile::tempdir().unwrap();
    let dict = model(3);
    let up = origin("origin", &dict, HALF, None).await;
    let pin = up.ticket.pin();
    let one_slot = ServiceOptions {
        max_concurrent_produce: 1,
        ..ServiceOptions::default()
    };
    let mut node =
        relay_node_with("relay-1", vec![up.ticket.clone()], 2, dir.path(), one_slot).await;
    let (mem, mut p1, _c1) = memory_receiver("site-0", &node.ticket).await;
    wait_items(&mut p1, HALF).await;
    // site-0 pulls on: its next pull waits for an item the upstream holds back
    let (disk, mut p2, _c2) = disk_receiver("site-1", &node.ticket, dir.path()).await;
    wait_items(&mut p2, HALF).await;
    assert!(!node.relay.is_verified());
    set_gate(&up.gate, GateState::Open);
    check_received(mem, disk, &dict, pin).await;
    within(&mut node.run).await.unwrap().unwrap();
    let down = within(node.tx.waiter().wait()).await.unwrap();
    assert!(down.completed(), "{down:?}");
    shut_down(&node, &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_serves_a_tensor_dict_while_its_upstream_is_still_sending() {
    let dir = tempfile::tempdir().unwrap();
    let dict = model(1);
    let up = origin("origin", &dict, HALF, None).await;
    let pin = up.ticket.pin();
    let mut node = relay_node("relay-1", vec![up.ticket.clone()], 2, dir.path()).await;
    let (mem, mut p1, _c1) = memory_receiver("site-0", &node.ticket).await;
    let (disk, mut p2, _c2) = disk_receiver("site-1", &node.ticket, dir.path()).await;
    // The upstream has sent only its first items: both receivers get them from the relay
    // before the upstream sends any more.
    wait_items(&mut p1, HALF).await;
    wait_items(&mut p2, HALF).await;
    assert!(!node.relay.is_verified());
    assert!(node.relay.received() < pin.size);
    set_gate(&up.gate, GateState::Open);
    check_received(mem, disk, &dict, pin).await;
    let report = within(&mut node.run).await.unwrap().unwrap();
    assert_eq!(report.sources.len(), 1);
    assert_eq!(report.sources[0].bytes, pin.size);
    assert!(!report.checked_groups);
    // Upstream saw one receiver, which confirmed; downstream, both completed.
    let o = within(up.tx.waiter().wait()).await.unwrap();
    assert!(o.completed(), "{o:?}");
    let down = within(node.tx.waiter().wait()).await.unwrap();
    assert!(down.completed(), "{down:?}");
    assert_eq!(down.refs[0].1.len(), 2, "{down:?}");
    shut_down(&node, &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_relays_chain_and_every_receiver_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let dict = model(2);
    let up = origin("origin", &dict, HALF, None).await;
    let pin = up.ticket.pin();
    let mut first = relay_node("relay-1", vec![up.ticket.clone()], 1, dir.path()).await;
    let mut second = relay_node("relay-2", vec![first.ticket.clone()], 2, dir.path()).await;
    assert_eq!(second.ticket.pin(), pin, "the same pin down the chain");
    assert_eq!(second.ticket.kind, Kind::Tensors);
    let (mem, mut p1, _c1) = memory_receiver("site-0", &second.ticket).await;
    let (disk, _p2, _c2) = disk_receiver("site-1", &second.ticket, dir.path()).await;
    wait_items(&mut p1, HALF).await;
    assert!(!first.relay.is_verified() && !second.relay.is_verified());
    set_gate(&up.gate, GateState::Open);
    check_received(mem, disk, &dict, pin).await;
    within(&mut first.run).await.unwrap().unwrap();
    within(&mut second.run).await.unwrap().unwrap();
    for tx in [&up.tx, &first.tx, &second.tx] {
        let o = within(tx.waiter().wait()).await.unwrap();
        assert!(o.completed(), "{o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tensor_relay_continues_from_another_source() {
    let dir = tempfile::tempdir().unwrap();
    let dict = model(3);
    let a = origin("origin-a", &dict, HALF, None).await;
    let b = origin("origin-b", &dict, 0, None).await;
    set_gate(&b.gate, GateState::Open);
    let pin = a.ticket.pin();
    let mut node = relay_node(
        "relay-1",
        vec![a.ticket.clone(), b.ticket.clone()],
        2,
        dir.path(),
    )
    .await;
    let (mem, mut p1, _c1) = memory_receiver("site-0", &node.ticket).await;
    let (disk, _p2, _c2) = disk_receiver("site-1", &node.ticket, dir.path()).await;
    wait_items(&mut p1, HALF).await;
    set_gate(&a.gate, GateState::Dead);
    a.cell.shutdown().await;
    check_received(mem, disk, &dict, pin).await;
    let report = within(&mut node.run).await.unwrap().unwrap();
    assert_eq!(report.sources.len(), 2, "{report:?}");
    assert!(report.sources[0].error.is_some());
    assert!(report.sources[1].error.is_none());
    assert_eq!(report.sources[0].bytes + report.sources[1].bytes, pin.size);
    assert!(
        report.sources[1].bytes < pin.size,
        "the second source only sends the items missing: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tensor_relay_that_loses_its_only_upstream_fails_its_downstream_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let dict = model(4);
    let up = origin("origin", &dict, HALF, None).await;
    let mut node = relay_node("relay-1", vec![up.ticket.clone()], 1, dir.path()).await;
    let (join, mut progress, _cell) = disk_receiver("site-0", &node.ticket, dir.path()).await;
    wait_items(&mut progress, HALF).await;
    set_gate(&up.gate, GateState::Dead);
    up.cell.shutdown().await;
    let err = within(&mut node.run)
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lost its upstream") && err.contains("origin"),
        "{err}"
    );
    let err = within(join).await.unwrap().unwrap_err().to_string();
    assert!(err.contains("lost its upstream"), "downstream error: {err}");
    assert!(!dir.path().join("model.safetensors").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_item_fails_every_downstream_receiver_and_is_never_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let dict = model(5);
    // Item 2's data is flipped: a well-formed blob, so only the digest can tell.
    let up = origin("origin", &dict, 0, Some(2)).await;
    set_gate(&up.gate, GateState::Open);
    let mut node = relay_node("relay-1", vec![up.ticket.clone()], 2, dir.path()).await;
    let (mem, _p1, _c1) = memory_receiver("site-0", &node.ticket).await;
    let (disk, _p2, _c2) = disk_receiver("site-1", &node.ticket, dir.path()).await;
    let relay_err = within(&mut node.run)
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        relay_err.contains("tensor-dict digest mismatch"),
        "{relay_err}"
    );
    for err in [
        within(mem).await.unwrap().unwrap_err().to_string(),
        within(disk).await.unwrap().unwrap_err().to_string(),
    ] {
        assert!(
            err.contains("tensor-dict digest mismatch"),
            "downstream: {err}"
        );
    }
    assert!(!dir.path().join("model.safetensors").exists());
    assert!(!node.relay.is_verified());
    // Upstream: the relay's download failed, and it said so (never a success).
    let o = within(up.tx.waiter().wait()).await.unwrap();
    assert!(!o.completed(), "{o:?}");
    assert!(
        o.refs[0].1.values().all(|s| *s != DownloadStatus::Success),
        "{o:?}"
    );
}
