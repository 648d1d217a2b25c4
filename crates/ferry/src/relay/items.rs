//! A relayed tensor dict: the upstream [`Consumer`] that checks items into the
//! [`ItemSpill`], and the downstream object, which is the origin's own item object
//! ([`CacheableObject`]) over an [`ItemSource`] reading the spill.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ferry_core::{
    ChunkData, ConsumeError, Consumer, DoneStatus, Downloadable, ExpectedReceivers, PlanLayout,
    ProduceError, Produced, RefId, State, TransferPlan, TxId,
};
use ferry_objects::cacheable::{
    CacheOptions, CacheableObject, ItemError, ItemSource, COUNT, START,
};

use super::item_spill::ItemSpill;

/// Stores the items of one download attempt (one source) into the shared spill, held to the
/// ticket's pin like `ferry get` holds a sender.
pub(crate) struct ItemSpillConsumer {
    spill: Arc<ItemSpill>,
    /// The source's name, for messages.
    source: String,
}

impl ItemSpillConsumer {
    pub(crate) fn new(spill: Arc<ItemSpill>, source: String) -> Self {
        Self { spill, source }
    }
}

impl Consumer for ItemSpillConsumer {
    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        if let PlanLayout::Bytes { .. } = plan.layout {
            return Err(ConsumeError::BadChunk(format!(
                "{} serves this ref as a byte stream, but the ticket names a tensor dict",
                self.source
            )));
        }
        let size = self.spill.pin().size;
        if let Some(t) = plan.total_bytes.filter(|&t| t > size) {
            return Err(ConsumeError::Integrity(format!(
                "{} announces {t} bytes of tensor data, the ticket pins {size}",
                self.source
            )));
        }
        self.spill.plan_received(plan)
    }

    fn needs_order(&self) -> bool {
        false
    }

    fn consume(
        &mut self,
        _ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError> {
        self.spill.store(state, data)?;
        Ok(state.clone())
    }

    fn completed(&mut self, _ref_id: &str) -> Result<(), ConsumeError> {
        self.spill
            .finish(&self.source)
            .map_err(ConsumeError::Integrity)
    }

    fn failed(&mut self, _ref_id: &str, reason: &str) {
        // The relay decides (another source, or failing its downstream); the items that
        // arrived stay in the spill for the next source to continue after.
        tracing::debug!(source = %self.source, reason, "upstream attempt failed");
    }
}

/// The spill as the items of an item object: item `i` once it arrived.
struct SpillItems {
    spill: Arc<ItemSpill>,
    count: u64,
    wait: Duration,
}

impl ItemSource for SpillItems {
    fn item_count(&self) -> u64 {
        self.count
    }

    fn produce_item(&self, index: u64) -> Result<Bytes, ItemError> {
        self.spill
            .read_item(index, self.wait)
            .map(Bytes::from)
            .map_err(|why| ItemError {
                index,
                reason: format!("relay cannot serve this object: {why}"),
            })
    }
}

/// What a relay serves of a tensor dict: the origin's [`CacheableObject`] (the same states,
/// plan and receiver bookkeeping) over the spill, made once the item count is known. Its
/// cache holds nothing (the blobs are in the spill file, hot ones in the page cache), so
/// memory stays bounded. A request for an item that has not arrived waits for it; the EOF
/// request waits until the whole dict verified against the ticket's pin, so no downstream
/// receiver completes on a dict the relay has not checked (each of them checks it too).
#[derive(Debug)]
pub(crate) struct ItemObject {
    spill: Arc<ItemSpill>,
    wait: Duration,
    inner: OnceLock<CacheableObject<SpillItems>>,
    /// The transaction's receivers, for an object made after it was added.
    receivers: Mutex<ExpectedReceivers>,
}

impl std::fmt::Debug for SpillItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillItems")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl ItemObject {
    pub(crate) fn new(spill: Arc<ItemSpill>, wait: Duration) -> Self {
        Self {
            spill,
            wait,
            inner: OnceLock::new(),
            receivers: Mutex::new(ExpectedReceivers::Unknown),
        }
    }

    /// The object over `count` items (made at the first call).
    fn make(&self, count: u64) -> Result<&CacheableObject<SpillItems>, ProduceError> {
        if let Some(o) = self.inner.get() {
            return Ok(o);
        }
        let receivers = self
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let source = SpillItems {
            spill: Arc::clone(&self.spill),
            count,
            wait: self.wait,
        };
        let obj = CacheableObject::new(
            source,
            CacheOptions::default()
                .with_budget(0)
                .with_receivers(receivers),
        )
        .map_err(|e| ProduceError(format!("relay cannot serve this object: {e}")))?;
        let _ = self.inner.set(obj);
        Ok(self.inner.get().expect("set above"))
    }

    /// The object, if the item count is known now.
    fn now(&self) -> Option<&CacheableObject<SpillItems>> {
        self.inner
            .get()
            .or_else(|| self.make(self.spill.count()?).ok())
    }
}

/// The item after the chunk a request's state names, if the state reads.
fn next_item(state: Option<&State>) -> Option<u64> {
    let Some(s) = state else { return Some(0) };
    let start = s.get_u64(START).ok()?.unwrap_or(0);
    let count = s.get_u64(COUNT).ok()?.unwrap_or(0);
    start.checked_add(count)
}

impl Downloadable for ItemObject {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        let failed = |why: String| {
            tracing::warn!(requester, %why, "relay pull failed");
            ProduceError(format!("relay cannot serve this object: {why}"))
        };
        let obj = match self.inner.get() {
            Some(o) => o,
            None => self.make(self.spill.wait_count(self.wait).map_err(failed)?)?,
        };
        if next_item(state).is_some_and(|n| n >= obj.item_count()) {
            // EOF only for verified content: the last word waits for the digest.
            self.spill.wait_verified(self.wait).map_err(failed)?;
        }
        obj.produce(state, requester)
    }

    /// Items that arrived are served on the async thread, without a produce slot (as the
    /// byte relay serves bytes that arrived): pulls waiting for items still on their way hold
    /// a slot each, and with every slot held that way a receiver asking for items the relay
    /// has would wait behind them until the upstream moved (the relay tests hung on it).
    fn try_produce_now(
        &self,
        state: Option<&State>,
        requester: &str,
    ) -> Option<Result<Produced, ProduceError>> {
        let obj = self.now()?;
        let next = next_item(state)?;
        let PlanLayout::Items { per_chunk, .. } = obj.plan()?.layout else {
            return None;
        };
        // the EOF request (next == count) waits for the digest: a slot's work
        let end = next.saturating_add(per_chunk).min(obj.item_count());
        if next >= end || !(next..end).all(|i| self.spill.has_item(i)) {
            return None;
        }
        Some(obj.produce(state, requester))
    }

    fn plan(&self) -> Option<TransferPlan> {
        self.now()?.plan()
    }

    fn set_transaction(&self, tx_id: &TxId, ref_id: &RefId, receivers: &ExpectedReceivers) {
        *self.receivers.lock().unwrap_or_else(|p| p.into_inner()) = receivers.clone();
        if let Some(o) = self.inner.get() {
            o.set_transaction(tx_id, ref_id, receivers);
        }
    }

    fn downloaded_to_all(&self) {
        if let Some(o) = self.inner.get() {
            o.downloaded_to_all();
        }
    }

    fn transaction_done(&self, tx_id: &TxId, status: DoneStatus) {
        if let Some(o) = self.inner.get() {
            o.transaction_done(tx_id, status);
        }
    }

    fn release(&self) {
        if let Some(o) = self.inner.get() {
            o.release();
        }
    }
}
