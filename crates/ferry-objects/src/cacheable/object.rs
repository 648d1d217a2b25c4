//! The shared item cache and the `Downloadable` built on it.

use super::{CacheOptions, ChunkPacking, ExpectedReceivers, ItemSource, COUNT, START};
use crate::ObjectsError;
use bytes::Bytes;
use ferry_core::{
    ChunkData, DoneStatus, Downloadable, PlanLayout, ProduceError, Produced, RefId, State,
    TransferPlan, TxId,
};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A snapshot of a cache's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Items stored now.
    pub cached_items: u64,
    /// Bytes of the items stored now.
    pub cached_bytes: u64,
    /// Bytes reserved for prefetched items not yet produced.
    pub reserved_bytes: u64,
    /// Highest `cached_bytes + reserved_bytes` ever seen (never above the budget).
    pub peak_bytes: u64,
    /// Calls to [`ItemSource::produce_item`] so far.
    pub productions: u64,
    /// Items served to and acknowledged by every expected receiver (dropped for good).
    pub retired_items: u64,
}

/// What the cache knows about one item.
#[derive(Debug, Default)]
struct Slot {
    /// The item's parts, when cached (`None`: known to some receivers but not stored, e.g.
    /// the budget was full when it was produced).
    data: Option<Vec<Bytes>>,
    /// Receivers that were served it.
    served: HashSet<Arc<str>>,
    /// Receivers whose later request acknowledged it. A pipelining receiver sends this before
    /// the chunk reached it, so it only counts together with `served`.
    acked: HashSet<Arc<str>>,
    /// Receivers both served and acknowledging: these no longer need the item.
    done: HashSet<Arc<str>>,
}

/// Whether the receivers `done` with an item are all it waits for: the expected receivers'
/// completion rule ([`ExpectedReceivers::complete_with`]). With an unknown count the object
/// cannot tell who else will come, so the first receiver done with an item retires it (see
/// [`CacheOptions`](super::CacheOptions)).
fn everyone_done(expect: &ExpectedReceivers, done: &HashSet<Arc<str>>) -> bool {
    if !expect.is_known() {
        return !done.is_empty();
    }
    expect.complete_with(done.len(), |r| done.contains(r))
}

/// Which half of "served and acknowledged" a request records.
#[derive(Debug, Clone, Copy)]
enum Mark {
    Served,
    Acked,
}

/// The mutable part, behind one mutex; never held while producing an item.
#[derive(Debug)]
struct Inner {
    /// Who must be done with an item before it is dropped (only they count).
    expect: ExpectedReceivers,
    slots: BTreeMap<u64, Slot>,
    /// One bit per item: acknowledged by everyone, never cached again.
    retired: Vec<u64>,
    retired_count: u64,
    /// After `downloaded_to_all`/`transaction_done`/`release`: nothing is cached any more
    /// (a late request re-produces its items uncached, as NVFlare does).
    cleared: bool,
    cached_bytes: u64,
    /// index -> bytes reserved for an accepted prefetch.
    reserved: BTreeMap<u64, u64>,
    reserved_bytes: u64,
    peak_bytes: u64,
    /// Interned receiver names (acked sets share them).
    names: HashSet<Arc<str>>,
}

impl Inner {
    fn is_retired(&self, i: u64) -> bool {
        self.retired
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn retire(&mut self, i: u64) {
        if let Some(w) = self.retired.get_mut((i / 64) as usize) {
            if *w & (1 << (i % 64)) == 0 {
                *w |= 1 << (i % 64);
                self.retired_count += 1;
            }
        }
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return Arc::clone(n);
        }
        let n: Arc<str> = Arc::from(name);
        self.names.insert(Arc::clone(&n));
        n
    }

    fn unreserve(&mut self, i: u64) {
        if let Some(r) = self.reserved.remove(&i) {
            self.reserved_bytes -= r;
        }
    }

    fn note_peak(&mut self) {
        self.peak_bytes = self.peak_bytes.max(self.cached_bytes + self.reserved_bytes);
    }

    /// `requester` acknowledges items `[start, end)`.
    fn ack(&mut self, requester: &str, start: u64, end: u64) {
        self.mark(requester, start, end, Mark::Acked);
    }

    /// `requester` is served items `[start, end)`.
    fn served(&mut self, requester: &str, start: u64, end: u64) {
        self.mark(requester, start, end, Mark::Served);
    }

    fn mark(&mut self, requester: &str, start: u64, end: u64, mark: Mark) {
        if start >= end || !self.expect.counts(requester) {
            return;
        }
        let who = self.intern(requester);
        let mut finished = Vec::new();
        for i in start..end {
            if self.is_retired(i) {
                continue;
            }
            let slot = self.slots.entry(i).or_default();
            let (mine, other) = match mark {
                Mark::Served => (&mut slot.served, &slot.acked),
                Mark::Acked => (&mut slot.acked, &slot.served),
            };
            mine.insert(Arc::clone(&who));
            if other.contains(&who) {
                slot.done.insert(Arc::clone(&who));
                if everyone_done(&self.expect, &slot.done) {
                    finished.push(i);
                }
            }
        }
        for i in finished {
            if let Some(slot) = self.slots.remove(&i) {
                if let Some(d) = slot.data {
                    self.cached_bytes -= parts_len(&d);
                }
            }
            self.unreserve(i);
            self.retire(i);
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.reserved.clear();
        self.cached_bytes = 0;
        self.reserved_bytes = 0;
        self.cleared = true;
    }
}

/// A [`Downloadable`] over an [`ItemSource`] whose items are produced once and shared by every
/// receiver (NVFlare's `CacheableObject`).
///
/// State: `{"start": s, "count": c}` for the chunk just sent; a request carrying it asks for the
/// chunk at `s + c` and acknowledges items `[s, s + c)` for its requester. An item leaves the
/// cache once every expected receiver was served it and acknowledged it (count or identity
/// mode, see [`ExpectedReceivers`]; a receiver is counted once per item however often it
/// retries). Requiring the serve as well as the acknowledgement matters for pipelining
/// receivers, which send the acknowledging request before the chunk reached them: a reordered
/// request cannot evict an item its sender still needs. (A lost reply to a pipelined request
/// can still cost one re-production after the item left; the data stay correct.) The
/// cache plus prefetch reservations never exceed the byte budget: an item that does not fit is
/// served without being stored. Items are produced outside the cache lock; when two receivers
/// produce the same item at once the first stored copy wins.
pub struct CacheableObject<T: ItemSource> {
    source: T,
    count: u64,
    packing: ChunkPacking,
    budget: u64,
    prefetch_depth: u64,
    /// Sum of size hints when every item has one (for the plan).
    total_hint: Option<u64>,
    inner: Mutex<Inner>,
    productions: AtomicU64,
    released: AtomicBool,
    /// The expected receivers were given (options or
    /// [`set_expected_receivers`](Self::set_expected_receivers)): the transaction's do not
    /// replace them.
    receivers_given: AtomicBool,
}

impl<T: ItemSource> std::fmt::Debug for CacheableObject<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheableObject")
            .field("count", &self.count)
            .field("packing", &self.packing)
            .field("budget", &self.budget)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<T: ItemSource> CacheableObject<T> {
    /// Serve `source` with `options`.
    pub fn new(source: T, options: CacheOptions) -> Result<Self, ObjectsError> {
        match options.packing {
            ChunkPacking::PerChunk(0) => {
                return Err(ObjectsError::InvalidOption(
                    "items per chunk must be at least 1".into(),
                ))
            }
            ChunkPacking::MaxBytes(max) => crate::check_chunk_size(max)?,
            ChunkPacking::PerChunk(_) => {}
        }
        if let ExpectedReceivers::Ids(ids) = &options.receivers {
            if ids.is_empty() {
                return Err(ObjectsError::InvalidOption(
                    "identity mode needs at least one receiver id".into(),
                ));
            }
        }
        let count = source.item_count();
        let words = usize::try_from(count.div_ceil(64)).map_err(|_| {
            ObjectsError::InvalidOption(format!("{count} items is too many for this platform"))
        })?;
        let total_hint = (0..count).try_fold(0u64, |acc, i| {
            source.item_size_hint(i).and_then(|s| acc.checked_add(s))
        });
        let receivers_given = options.receivers != ExpectedReceivers::Unknown;
        Ok(Self {
            source,
            count,
            packing: options.packing,
            budget: options.cache_budget,
            prefetch_depth: options.prefetch_depth,
            total_hint,
            inner: Mutex::new(Inner {
                expect: options.receivers,
                slots: BTreeMap::new(),
                retired: vec![0; words],
                retired_count: 0,
                cleared: false,
                cached_bytes: 0,
                reserved: BTreeMap::new(),
                reserved_bytes: 0,
                peak_bytes: 0,
                names: HashSet::new(),
            }),
            productions: AtomicU64::new(0),
            released: AtomicBool::new(false),
            receivers_given: AtomicBool::new(receivers_given),
        })
    }

    /// Set who must acknowledge an item before it is dropped. Without this (and with the
    /// default options) the object learns it from the transaction it is added to.
    pub fn set_expected_receivers(&self, receivers: ExpectedReceivers) {
        self.receivers_given.store(true, Ordering::Release);
        self.lock().expect = receivers;
    }

    /// The item source.
    pub fn source(&self) -> &T {
        &self.source
    }

    /// Number of items.
    pub fn item_count(&self) -> u64 {
        self.count
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let g = self.lock();
        CacheStats {
            cached_items: g.slots.values().filter(|s| s.data.is_some()).count() as u64,
            cached_bytes: g.cached_bytes,
            reserved_bytes: g.reserved_bytes,
            peak_bytes: g.peak_bytes,
            productions: self.productions.load(Ordering::Relaxed),
            retired_items: g.retired_count,
        }
    }

    /// Drop every cached item (kept acknowledgements too); later requests are served uncached.
    pub fn clear_cache(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The cache's invariants hold between statements; a panic elsewhere cannot break them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Item `i`'s parts, from the cache or produced (outside the lock) and stored if it fits.
    /// The cache counts an item's full length, whether its parts are copies or memory the
    /// source already holds.
    fn item(&self, i: u64) -> Result<Vec<Bytes>, ProduceError> {
        {
            let g = self.lock();
            if let Some(d) = g.slots.get(&i).and_then(|s| s.data.clone()) {
                return Ok(d);
            }
        }
        self.productions.fetch_add(1, Ordering::Relaxed);
        let data = self
            .source
            .produce_item_parts(i)
            .map_err(|e| ProduceError(e.to_string()))?;
        let mut g = self.lock();
        g.unreserve(i);
        if let Some(d) = g.slots.get(&i).and_then(|s| s.data.clone()) {
            return Ok(d); // first stored wins
        }
        let len = parts_len(&data);
        if !g.cleared && !g.is_retired(i) && g.cached_bytes + g.reserved_bytes + len <= self.budget
        {
            g.slots.entry(i).or_default().data = Some(data.clone());
            g.cached_bytes += len;
            g.note_peak();
        }
        Ok(data)
    }

    /// Offer the items after `end` to the source's prefetch, within the budget.
    fn prefetch(&self, end: u64) {
        let stop = end.saturating_add(self.prefetch_depth).min(self.count);
        for i in end..stop {
            let Some(hint) = self.source.item_size_hint(i) else {
                return;
            };
            {
                let g = self.lock();
                if g.cleared
                    || g.is_retired(i)
                    || g.reserved.contains_key(&i)
                    || g.slots.get(&i).is_some_and(|s| s.data.is_some())
                {
                    continue;
                }
                if g.cached_bytes + g.reserved_bytes + hint > self.budget {
                    return;
                }
            }
            if self.source.prefetch_item(i) {
                let mut g = self.lock();
                if !g.reserved.contains_key(&i)
                    && g.cached_bytes + g.reserved_bytes + hint <= self.budget
                {
                    g.reserved.insert(i, hint);
                    g.reserved_bytes += hint;
                    g.note_peak();
                }
            }
        }
    }

    fn chunk(&self, first: u64) -> Result<Vec<Vec<Bytes>>, ProduceError> {
        match self.packing {
            ChunkPacking::PerChunk(n) => {
                let end = first.saturating_add(n).min(self.count);
                (first..end).map(|i| self.item(i)).collect()
            }
            ChunkPacking::MaxBytes(max) => {
                let mut items: Vec<Vec<Bytes>> = Vec::new();
                let mut total = 0u64;
                for i in first..self.count {
                    if !items.is_empty() {
                        if let Some(h) = self.source.item_size_hint(i) {
                            if total.saturating_add(h) >= max {
                                break;
                            }
                        }
                    }
                    let d = self.item(i)?;
                    let len = parts_len(&d);
                    if !items.is_empty() && total.saturating_add(len) >= max {
                        break; // produced (and maybe cached) but does not fit this chunk
                    }
                    total += len;
                    items.push(d);
                }
                Ok(items)
            }
        }
    }
}

/// The length of an item given as parts.
fn parts_len(parts: &[Bytes]) -> u64 {
    parts.iter().map(|p| p.len() as u64).sum()
}

/// Parse `{"start", "count"}`: absent keys are 0 (NVFlare's defaults); returns
/// (acknowledged start, next start).
fn parse_items_state(state: Option<&State>) -> Result<(u64, u64), String> {
    let Some(s) = state else {
        return Ok((0, 0));
    };
    let start = s
        .get_u64(START)
        .map_err(|e| format!("bad request state: {e}"))?
        .unwrap_or(0);
    let count = s
        .get_u64(COUNT)
        .map_err(|e| format!("bad request state: {e}"))?
        .unwrap_or(0);
    let next = start
        .checked_add(count)
        .ok_or_else(|| format!("bad request state: start {start} + count {count} overflows"))?;
    Ok((start, next))
}

impl<T: ItemSource> Downloadable for CacheableObject<T> {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        if self.released.load(Ordering::Acquire) {
            return Err(ProduceError("item object requested after release".into()));
        }
        let (acked, next) = match parse_items_state(state) {
            Ok(v) => v,
            Err(reason) => {
                tracing::warn!(requester, %reason, "bad item request");
                return Ok(Produced::Invalid { reason });
            }
        };
        self.lock().ack(requester, acked, next.min(self.count));
        if next >= self.count {
            return Ok(Produced::Eof);
        }
        let items = self.chunk(next)?;
        let sent = items.len() as u64;
        self.lock().served(requester, next, next + sent);
        self.prefetch(next + sent);
        // Items of one part each travel as plain items (what every source but a zero-copy
        // one makes); the parts are written one after the other otherwise.
        let data = if items.iter().all(|p| p.len() == 1) {
            ChunkData::Items(items.into_iter().flatten().collect())
        } else {
            ChunkData::ItemParts(items)
        };
        Ok(Produced::Data {
            data,
            state: State::new().with(START, next).with(COUNT, sent),
        })
    }

    fn plan(&self) -> Option<TransferPlan> {
        match self.packing {
            ChunkPacking::PerChunk(n) => Some(TransferPlan {
                layout: PlanLayout::Items {
                    count: self.count,
                    per_chunk: n,
                },
                total_bytes: self.total_hint,
                blake3: None,
            }),
            ChunkPacking::MaxBytes(_) => None,
        }
    }

    /// Learns the transaction's receivers (count or ids) unless they were given: NVFlare's
    /// object reads `num_receivers` here, so each item is produced once for all of them.
    fn set_transaction(&self, tx_id: &TxId, ref_id: &RefId, receivers: &ExpectedReceivers) {
        tracing::debug!(%tx_id, %ref_id, items = self.count, ?receivers, "item object added to transaction");
        if !self.receivers_given.load(Ordering::Acquire) {
            self.lock().expect = receivers.clone();
        }
    }

    fn downloaded_to_all(&self) {
        self.clear_cache();
    }

    fn transaction_done(&self, _tx_id: &TxId, _status: DoneStatus) {
        self.clear_cache();
    }

    fn release(&self) {
        self.released.store(true, Ordering::Release);
        self.clear_cache();
        self.source.release();
    }
}
