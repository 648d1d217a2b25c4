//! Support for the download-service end-to-end tests (`tests/tests/download_e2e.rs`,
//! `download_lifecycle.rs`, `download_interop.rs`) and the `ferry-peer` test binary.
//!
//! * [`Gate`] / [`GatedObject`]: a sender-side object that serves its first chunks and then
//!   holds every further `produce` until the test opens the gate — a deterministic
//!   "mid-download" point without sleeps.
//! * [`StallingConsumer`]: a receiver-side consumer that stops consuming after a number of
//!   chunks (until its process is killed or its download is cancelled).
//! * [`write_random_file`], [`blake3_file`], [`make_tensors`], [`tensor_digest`]: test data and
//!   the digests both sides compare.
//! * [`outcome_json`]: a [`TransferOutcome`] as the json the peer prints.
//! * [`sender`], [`receiver`]: a listening / connected cell with its download service;
//!   [`statuses`] and [`assert_released`] check what the sender recorded and gave back.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use ferry::core::{
    ChunkData, ConsumeError, Consumer, DoneStatus, DownloadStatus, Downloadable, ProduceError,
    Produced, RefId, State, TransferOutcome, TransferPlan, TxId,
};
use ferry::objects::tensors::Dtype;
use ferry::objects::{Tensor, TensorDict};
use ferry::prelude::{Cell, DownloadService, ServiceOptions};
use serde_json::{json, Value};

/// How long a held `produce` or a stalled consumer waits at most before giving up on its own:
/// long past any test's deadline, short enough that a forgotten gate cannot wedge a process.
pub const HOLD_LIMIT: Duration = Duration::from_secs(300);

#[derive(Default)]
struct GateState {
    open: bool,
    /// Produce calls currently held.
    held: u64,
}

/// A gate shared between a [`GatedObject`] (or [`StallingConsumer`]) and the test.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<(Mutex<GateState>, Condvar)>,
    reached: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Gate")
            .field("open", &st.open)
            .field("held", &st.held)
            .finish()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open the gate: held calls continue, later ones pass.
    pub fn open(&self) {
        self.lock().open = true;
        self.inner.1.notify_all();
    }

    /// Calls held right now.
    pub fn held(&self) -> u64 {
        self.lock().held
    }

    /// Block the calling (blocking-pool) thread until the gate opens or [`HOLD_LIMIT`] passes.
    pub fn pass(&self) {
        let mut st = self.lock();
        if st.open {
            return;
        }
        st.held += 1;
        self.reached.notify_waiters();
        self.reached.notify_one();
        let (mut st, _) = self
            .inner
            .1
            .wait_timeout_while(st, HOLD_LIMIT, |s| !s.open)
            .unwrap_or_else(|p| p.into_inner());
        st.held -= 1;
    }

    /// Wait (async) until at least one call is held at the gate, up to `timeout`.
    pub async fn wait_reached(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.reached.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.held() > 0 {
                return Ok(());
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .context("nothing reached the gate in time")?;
        }
    }
}

/// A [`Downloadable`] that serves the first `free_chunks` data chunks of `inner`, then holds
/// every further `produce` at its [`Gate`] until the test opens it. EOF and errors pass.
pub struct GatedObject<D: Downloadable> {
    inner: D,
    free_chunks: u64,
    served: Mutex<u64>,
    gate: Gate,
}

impl<D: Downloadable> GatedObject<D> {
    /// Wrap `inner`; the gate starts closed.
    pub fn new(inner: D, free_chunks: u64) -> Self {
        Self {
            inner,
            free_chunks,
            served: Mutex::new(0),
            gate: Gate::new(),
        }
    }

    /// The gate.
    pub fn gate(&self) -> Gate {
        self.gate.clone()
    }
}

impl<D: Downloadable> Downloadable for GatedObject<D> {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        let hold = {
            let mut n = self.served.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n > self.free_chunks
        };
        if hold {
            self.gate.pass();
        }
        self.inner.produce(state, requester)
    }
    fn plan(&self) -> Option<TransferPlan> {
        self.inner.plan()
    }
    fn set_transaction(
        &self,
        tx_id: &TxId,
        ref_id: &RefId,
        receivers: &ferry::core::ExpectedReceivers,
    ) {
        self.inner.set_transaction(tx_id, ref_id, receivers)
    }
    fn downloaded_to_one(&self, receiver: &str, status: DownloadStatus) {
        self.inner.downloaded_to_one(receiver, status)
    }
    fn downloaded_to_all(&self) {
        self.inner.downloaded_to_all()
    }
    fn transaction_done(&self, tx_id: &TxId, status: DoneStatus) {
        self.inner.transaction_done(tx_id, status)
    }
    fn release(&self) {
        self.inner.release()
    }
}

/// A [`Consumer`] that passes the first `free_chunks` chunks to `inner` and then holds in
/// `consume` at its [`Gate`] (a receiver that stopped making progress).
pub struct StallingConsumer<C: Consumer> {
    inner: C,
    free_chunks: u64,
    consumed: u64,
    gate: Gate,
}

impl<C: Consumer> StallingConsumer<C> {
    /// Wrap `inner`; the gate starts closed.
    pub fn new(inner: C, free_chunks: u64) -> Self {
        Self {
            inner,
            free_chunks,
            consumed: 0,
            gate: Gate::new(),
        }
    }

    /// The gate.
    pub fn gate(&self) -> Gate {
        self.gate.clone()
    }

    /// The wrapped consumer.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C: Consumer> Consumer for StallingConsumer<C> {
    fn consume(
        &mut self,
        ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError> {
        self.consumed += 1;
        if self.consumed > self.free_chunks {
            self.gate.pass();
        }
        self.inner.consume(ref_id, state, data)
    }
    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        self.inner.plan_received(plan)
    }
    fn needs_order(&self) -> bool {
        self.inner.needs_order()
    }
    // `blocks` stays true whatever the inner consumer says: waiting at the gate blocks.
    fn completed(&mut self, ref_id: &str) -> Result<(), ConsumeError> {
        self.inner.completed(ref_id)
    }
    fn failed(&mut self, ref_id: &str, reason: &str) {
        self.inner.failed(ref_id, reason)
    }
}

/// Write `len` pseudo-random bytes (BLAKE3 XOF of `seed`) to `path`; returns the file's BLAKE3.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> Result<String> {
    use std::io::Write;
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut hash = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(hash.finalize().to_hex().to_string())
}

/// BLAKE3 (hex) of a file.
pub fn blake3_file(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    h.update_reader(f)?;
    Ok(h.finalize().to_hex().to_string())
}

/// `count` F32/I64/U8 tensors named `t<i>` of about `bytes_each` bytes, from `seed`.
pub fn make_tensors(seed: u64, count: usize, bytes_each: usize) -> TensorDict {
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    let mut dict = TensorDict::new();
    for i in 0..count {
        let (dtype, size) = match i % 3 {
            0 => (Dtype::F32, 4),
            1 => (Dtype::I64, 8),
            _ => (Dtype::U8, 1),
        };
        let elems = (bytes_each / size).max(1);
        let mut data = vec![0u8; elems * size];
        xof.fill(&mut data);
        let t = Tensor::new(dtype, vec![elems], Bytes::from(data)).expect("consistent tensor");
        dict.insert(format!("t{i}"), t).expect("unique names");
    }
    dict
}

/// A digest of a tensor dict that both sides compute the same way: BLAKE3 over every tensor
/// in name order (name, dtype, shape, data, each length-prefixed).
pub fn tensor_digest(dict: &TensorDict) -> String {
    let mut items: Vec<(&str, &Tensor)> = dict.iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = blake3::Hasher::new();
    for (name, t) in items {
        for part in [
            name.as_bytes(),
            format!("{:?}", t.dtype()).as_bytes(),
            format!("{:?}", t.shape()).as_bytes(),
            &t.data()[..],
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    h.finalize().to_hex().to_string()
}

/// A transfer outcome as json: `{"tx_id", "status", "reason", "done_status", "completed",
/// "num_receivers", "receivers": {ref_id: {fqcn: status}}}`.
pub fn outcome_json(o: &TransferOutcome) -> Value {
    let refs: serde_json::Map<String, Value> = o
        .refs
        .iter()
        .map(|(rid, statuses)| {
            let m: serde_json::Map<String, Value> = statuses
                .iter()
                .map(|(r, s)| (r.clone(), json!(s.as_str())))
                .collect();
            (rid.to_string(), Value::Object(m))
        })
        .collect();
    json!({
        "tx_id": o.tx_id.to_string(),
        "status": o.status.as_str(),
        "reason": o.reason,
        "done_status": o.done_status.as_str(),
        "completed": o.completed(),
        "num_receivers": o.num_receivers,
        "receivers": refs,
    })
}

/// A sender cell `fqcn` listening on an OS-assigned loopback port, with its download service
/// and the URL to reach it.
///
/// # Panics
/// When the cell cannot be created or cannot listen.
pub async fn sender(fqcn: &str, opts: ServiceOptions) -> (Cell, DownloadService, String) {
    let cell = Cell::new(fqcn).unwrap();
    let url = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    let service = DownloadService::new(&cell, opts);
    (cell, service, url)
}

/// A receiver cell `fqcn` connected to `url`, with its download service (default options).
///
/// # Panics
/// When the cell cannot be created or the connection fails.
pub async fn receiver(fqcn: &str, url: &str) -> (Cell, DownloadService) {
    let cell = Cell::new(fqcn).unwrap();
    cell.connect(url).await.unwrap();
    let service = DownloadService::new(&cell, ServiceOptions::default());
    (cell, service)
}

/// The final status of every receiver of ref `rid` in `outcome`, in receiver order (empty
/// when the outcome has no such ref).
pub fn statuses(outcome: &TransferOutcome, rid: &RefId) -> Vec<(String, DownloadStatus)> {
    outcome
        .refs
        .iter()
        .find(|(r, _)| r == rid)
        .map(|(_, m)| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default()
}

/// Assert that the sender released everything: no transaction left, no pull in flight and the
/// byte budget whole again. The budget comes back when the connection writers drop the last
/// reply buffers, which may trail the outcome slightly, hence the bounded poll first.
///
/// # Panics
/// When something is still held after 30 s.
pub async fn assert_released(service: &DownloadService) {
    let full = service.options().byte_budget;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (service.transaction_count() != 0 || service.budget_available() != full)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(service.transaction_count(), 0, "transactions left");
    assert_eq!(service.pulls_in_flight(), 0, "pulls in flight");
    assert_eq!(service.budget_available(), full, "byte budget not returned");
}
