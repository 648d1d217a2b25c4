//! Test support, public so that crates built on ferry-core can reuse it: reference
//! [`Downloadable`]s and [`Consumer`]s that record what happens to them, and (in
//! [`sim`]) a seeded single-threaded network that drives one producer
//! [`Service`](crate::Service) and many receiver [`Download`](crate::Download)s on virtual time.
//!
//! Nothing here reads a clock or spawns a thread; randomness comes from a seeded
//! [`SplitMix64`], so a failing seed replays exactly.

use crate::{
    ChunkData, ConsumeError, Consumer, DoneStatus, DownloadStatus, Downloadable, PlanLayout,
    ProduceError, Produced, RefId, State, TransferPlan, TxId,
};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A tiny seeded PRNG (SplitMix64): deterministic, dependency-free.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Lock a mutex, ignoring poisoning (test support must not cascade panics).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A shared, ordered log of hook calls (and of anything a test appends), to check orders.
#[derive(Clone, Debug, Default)]
pub struct HookLog(Arc<Mutex<Vec<String>>>);

impl HookLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append an entry.
    pub fn push(&self, entry: impl Into<String>) {
        lock(&self.0).push(entry.into());
    }

    /// A copy of the entries.
    pub fn entries(&self) -> Vec<String> {
        lock(&self.0).clone()
    }

    /// How many entries start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        lock(&self.0)
            .iter()
            .filter(|e| e.starts_with(prefix))
            .count()
    }
}

/// Bookkeeping shared by the reference objects: hooks log, release flag, produce counters.
#[derive(Debug, Default)]
pub struct ObjectProbe {
    /// Hook calls, as `name[:args]`.
    pub log: HookLog,
    /// `release` was called.
    released: AtomicBool,
    /// `produce` calls.
    produce_calls: AtomicU64,
    /// `produce` calls that started after `release` (must stay 0).
    produced_after_release: AtomicU64,
}

impl ObjectProbe {
    /// Whether `release` ran.
    pub fn released(&self) -> bool {
        self.released.load(Ordering::SeqCst)
    }

    /// Number of `produce` calls.
    pub fn produce_calls(&self) -> u64 {
        self.produce_calls.load(Ordering::SeqCst)
    }

    /// Number of `produce` calls after `release` (an engine bug if non-zero).
    pub fn produced_after_release(&self) -> u64 {
        self.produced_after_release.load(Ordering::SeqCst)
    }

    fn on_produce(&self) {
        self.produce_calls.fetch_add(1, Ordering::SeqCst);
        if self.released() {
            self.produced_after_release.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn hook(&self, entry: String) {
        if entry == "release" {
            self.released.store(true, Ordering::SeqCst);
        }
        self.log.push(entry);
    }
}

/// Implements the hooks of [`Downloadable`] by logging into `self.probe`.
macro_rules! probe_hooks {
    () => {
        fn set_transaction(
            &self,
            tx_id: &TxId,
            ref_id: &RefId,
            _receivers: &$crate::ExpectedReceivers,
        ) {
            self.probe.hook(format!("set_transaction:{tx_id}:{ref_id}"));
        }
        fn downloaded_to_one(&self, receiver: &str, status: DownloadStatus) {
            self.probe
                .hook(format!("downloaded_to_one:{receiver}:{}", status.as_str()));
        }
        fn downloaded_to_all(&self) {
            self.probe.hook("downloaded_to_all".into());
        }
        fn transaction_done(&self, _tx_id: &TxId, status: DoneStatus) {
            self.probe
                .hook(format!("transaction_done:{}", status.as_str()));
        }
        fn release(&self) {
            self.probe.hook("release".into());
        }
    };
}

/// A byte object with NVFlare's file state (`{"received_bytes": n}`), optionally advertising a
/// [`PlanLayout::Bytes`] plan. A state it could not have produced (wrong type, negative) is
/// [`Produced::Invalid`]; an offset beyond the end produces `error`; `n == len` produces `eof`.
#[derive(Debug)]
pub struct BytesObject {
    /// The content.
    data: Bytes,
    /// Chunk size (> 0).
    chunk: usize,
    /// Advertise a plan.
    planned: bool,
    /// What happened to it.
    pub probe: Arc<ObjectProbe>,
}

impl BytesObject {
    /// An object serving `data` in chunks of `chunk` bytes (at least 1), with a plan.
    pub fn new(data: impl Into<Bytes>, chunk: usize) -> Self {
        Self {
            data: data.into(),
            chunk: chunk.max(1),
            planned: true,
            probe: Arc::default(),
        }
    }

    /// Same, without a plan (receivers stay stop-and-wait, like NVFlare).
    pub fn unplanned(data: impl Into<Bytes>, chunk: usize) -> Self {
        Self {
            planned: false,
            ..Self::new(data, chunk)
        }
    }

    /// The content.
    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

impl Downloadable for BytesObject {
    fn produce(&self, state: Option<&State>, _requester: &str) -> Result<Produced, ProduceError> {
        self.probe.on_produce();
        let n = match state.map(|s| s.get_u64(crate::plan::KEY_RECEIVED_BYTES)) {
            None | Some(Ok(None)) => 0,
            Some(Ok(Some(n))) => n,
            Some(Err(e)) => {
                return Ok(Produced::Invalid {
                    reason: e.to_string(),
                })
            }
        };
        let len = self.data.len() as u64;
        if n == len {
            return Ok(Produced::Eof);
        }
        if n > len {
            return Ok(Produced::Error {
                reason: format!("received_bytes {n} beyond the end ({len})"),
            });
        }
        let start = n as usize;
        let end = (start + self.chunk).min(self.data.len());
        Ok(Produced::Data {
            data: ChunkData::Bytes(self.data.slice(start..end)),
            state: State::new().with(crate::plan::KEY_RECEIVED_BYTES, end as u64),
        })
    }

    fn plan(&self) -> Option<TransferPlan> {
        self.planned.then(|| TransferPlan {
            layout: PlanLayout::Bytes {
                total: self.data.len() as u64,
                chunk: self.chunk as u64,
            },
            total_bytes: Some(self.data.len() as u64),
            blake3: None,
        })
    }

    probe_hooks!();
}

/// A list-of-items object with NVFlare's cacheable state (`{"start": s, "count": c}`, the echo
/// of the chunk just sent), `per_chunk` items per chunk, optionally planned. A state without
/// both integers is [`Produced::Invalid`]; one past the last item produces `error`.
#[derive(Debug)]
pub struct ItemsObject {
    /// The items.
    items: Vec<Bytes>,
    /// Items per chunk (> 0).
    per_chunk: usize,
    /// Advertise a plan.
    planned: bool,
    /// What happened to it.
    pub probe: Arc<ObjectProbe>,
}

impl ItemsObject {
    /// An object serving `items`, `per_chunk` (at least 1) per chunk, with a plan.
    pub fn new(items: Vec<Bytes>, per_chunk: usize) -> Self {
        Self {
            items,
            per_chunk: per_chunk.max(1),
            planned: true,
            probe: Arc::default(),
        }
    }

    /// Same, without a plan.
    pub fn unplanned(items: Vec<Bytes>, per_chunk: usize) -> Self {
        Self {
            planned: false,
            ..Self::new(items, per_chunk)
        }
    }
}

impl Downloadable for ItemsObject {
    fn produce(&self, state: Option<&State>, _requester: &str) -> Result<Produced, ProduceError> {
        self.probe.on_produce();
        let n = self.items.len() as u64;
        let next = match state {
            None => 0,
            Some(s) => {
                let pair = s
                    .require_u64(crate::plan::KEY_START)
                    .and_then(|a| Ok((a, s.require_u64(crate::plan::KEY_COUNT)?)));
                match pair {
                    Err(e) => {
                        return Ok(Produced::Invalid {
                            reason: e.to_string(),
                        })
                    }
                    Ok((start, count)) => match start.checked_add(count) {
                        Some(end) if end <= n => end,
                        _ => {
                            return Ok(Produced::Error {
                                reason: format!("start {start} + count {count} beyond {n} items"),
                            })
                        }
                    },
                }
            }
        };
        if next >= n {
            return Ok(Produced::Eof);
        }
        let start = next as usize;
        let end = (start + self.per_chunk).min(self.items.len());
        Ok(Produced::Data {
            data: ChunkData::Items(self.items[start..end].to_vec()),
            state: State::new()
                .with(crate::plan::KEY_START, start as u64)
                .with(crate::plan::KEY_COUNT, (end - start) as u64),
        })
    }

    fn plan(&self) -> Option<TransferPlan> {
        self.planned.then(|| TransferPlan {
            layout: PlanLayout::Items {
                count: self.items.len() as u64,
                per_chunk: self.per_chunk as u64,
            },
            total_bytes: Some(self.items.iter().map(|b| b.len() as u64).sum()),
            blake3: None,
        })
    }

    probe_hooks!();
}

/// What a [`MemorySink`] received, shared with the test that created it.
#[derive(Debug, Default, Clone)]
pub struct SinkResult {
    /// Bytes (bytes layout, written at offsets) or concatenated items (items layout).
    pub bytes: Vec<u8>,
    /// Items, in order (items layout).
    pub items: Vec<Bytes>,
    /// `completed` was called and succeeded.
    pub completed: bool,
    /// `failed` was called with this reason.
    pub failed: Option<String>,
    /// Number of `consume` calls.
    pub consumed: u64,
}

/// A consumer that keeps everything in memory: bytes are written at the offset the state
/// implies (so it does not need order), items are appended (so it does).
#[derive(Debug)]
pub struct MemorySink {
    /// Shared result.
    result: Arc<Mutex<SinkResult>>,
    /// Items mode (needs order).
    items: bool,
    /// Largest object accepted, in bytes (refuses bigger plans and chunks beyond it).
    max_bytes: u64,
}

impl MemorySink {
    /// A sink for byte objects, with a handle to read what it got.
    pub fn bytes() -> (Self, Arc<Mutex<SinkResult>>) {
        Self::make(false)
    }

    /// A sink for item objects.
    pub fn items() -> (Self, Arc<Mutex<SinkResult>>) {
        Self::make(true)
    }

    fn make(items: bool) -> (Self, Arc<Mutex<SinkResult>>) {
        let r = Arc::new(Mutex::new(SinkResult::default()));
        (
            Self {
                result: r.clone(),
                items,
                max_bytes: 1 << 32,
            },
            r,
        )
    }
}

impl Consumer for MemorySink {
    fn consume(
        &mut self,
        _ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError> {
        let mut r = lock(&self.result);
        r.consumed += 1;
        match (data.into_joined(), self.items) {
            (ChunkData::Bytes(b), false) => {
                let end = state
                    .require_u64(crate::plan::KEY_RECEIVED_BYTES)
                    .map_err(|e| ConsumeError::BadChunk(e.to_string()))?;
                let start = end
                    .checked_sub(b.len() as u64)
                    .ok_or_else(|| ConsumeError::BadChunk("offset underflow".into()))?;
                if end > self.max_bytes {
                    return Err(ConsumeError::Integrity(format!("offset {end} too large")));
                }
                let (start, end) = (start as usize, end as usize);
                if r.bytes.len() < end {
                    r.bytes.resize(end, 0);
                }
                r.bytes[start..end].copy_from_slice(&b);
            }
            (ChunkData::Items(items), true) => {
                for it in items {
                    r.bytes.extend_from_slice(&it);
                    r.items.push(it);
                }
            }
            _ => return Err(ConsumeError::BadChunk("unexpected chunk shape".into())),
        }
        Ok(state.clone())
    }

    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        match plan.total_bytes {
            Some(t) if t > self.max_bytes => Err(ConsumeError::Integrity(format!(
                "object of {t} bytes exceeds {}",
                self.max_bytes
            ))),
            _ => Ok(()),
        }
    }

    fn needs_order(&self) -> bool {
        self.items
    }

    fn completed(&mut self, _ref_id: &str) -> Result<(), ConsumeError> {
        lock(&self.result).completed = true;
        Ok(())
    }

    fn failed(&mut self, _ref_id: &str, reason: &str) {
        let mut r = lock(&self.result);
        r.failed = Some(reason.to_string());
        r.completed = false;
    }
}

pub mod fanout;
pub mod sim;
pub use sim::{DownloadHandle, ReceiverId, Sim, SimConfig, SimStats};
