//! The sender-side contract: an object that produces chunks on request.

pub use crate::expected::ExpectedReceivers;
use crate::{ChunkData, DoneStatus, DownloadStatus, RefId, State, TxId};

/// What one `produce` call yields (NVFlare's `ProduceRC` with its data).
#[derive(Clone, Debug, PartialEq)]
pub enum Produced {
    /// `ok`: a chunk and the state the receiver sends back to get the next one.
    Data {
        /// The chunk.
        data: ChunkData,
        /// The state after this chunk.
        state: State,
    },
    /// `eof`: the receiver has everything.
    Eof,
    /// `error`: a logical error of the object (it changed under us, it cannot be read as
    /// planned, ...). The receiver fails the download with "producer error"; `reason` is logged
    /// on the sender. The receiver's status becomes FAILED.
    Error {
        /// Why, in words, for logs.
        reason: String,
    },
    /// The request's state is not one this object could have produced (not a map of the
    /// expected keys, a negative offset, ...): the request is broken, not the object. The
    /// engine answers `invalid_request` and records nothing for the requester, so a malformed
    /// request fails only its sender. (NVFlare answers such a state with `error`, which counts
    /// as the requester's final FAILED status; ferry departs from that, see `docs/protocol.md`.)
    Invalid {
        /// What is wrong with the state, in words (sent back as the error text).
        reason: String,
    },
}

/// `produce` failed in a way that is not a logical `error` status: NVFlare's "produce raised",
/// answered with return code `process_exception` and no status change (rule R5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("produce failed: {0}")]
pub struct ProduceError(pub String);

/// How the states of an object advance, so that a receiver can compute the state of request
/// `i` without waiting for reply `i - 1` and keep several requests in flight.
///
/// A ferry producer advertises it in the first data reply (the `ferry_plan` key, which NVFlare
/// receivers ignore). Without a plan a receiver keeps one request in flight, as NVFlare does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferPlan {
    /// The shape of the chunk sequence.
    pub layout: PlanLayout,
    /// Total payload bytes of the object, if known (for progress and pre-allocation).
    pub total_bytes: Option<u64>,
    /// BLAKE3 digest of the whole object (hex), if the producer computed one; a receiver that
    /// can check it does.
    pub blake3: Option<String>,
}

/// The chunk sequence of a [`TransferPlan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanLayout {
    /// A byte stream: chunk `i` covers `[i*chunk, min((i+1)*chunk, total))`; the request for
    /// chunk `i` carries state `{"received_bytes": i*chunk}` (NVFlare's file state).
    Bytes {
        /// Object size in bytes.
        total: u64,
        /// Chunk size in bytes (> 0).
        chunk: u64,
    },
    /// A list of items: chunk `i` holds items `[i*per_chunk, min((i+1)*per_chunk, count))`;
    /// the request for chunk `i > 0` carries state `{"start": (i-1)*per_chunk, "count": per_chunk}`
    /// (NVFlare's cacheable state: the echo of the previous chunk), chunk 0 no state.
    Items {
        /// Number of items.
        count: u64,
        /// Items per chunk (> 0).
        per_chunk: u64,
    },
}

/// An object that can be downloaded: it produces chunk after chunk from the state a receiver
/// sends, and hears about its lifecycle through the hooks.
///
/// `produce` must be idempotent per state (a retried request re-sends the same state) and may run
/// concurrently for many receivers, hence `&self` and `Send + Sync`. The engine guarantees that
/// no `produce` call is started after [`release`](Downloadable::release).
///
/// Hooks are called in NVFlare's order, never under the engine's lock: a hook may call back
/// into the service that runs it. A panicking hook is logged and the others still run (it is a
/// bug in the object all the same); a slow hook delays the hooks and events queued after it,
/// not the serving of pulls.
pub trait Downloadable: Send + Sync + 'static {
    /// Produce the chunk that follows `state` (`None` on a receiver's first request) for
    /// `requester` (its FQCN).
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError>;

    /// Produce the chunk at once if that cannot block: the data is in memory, or in the page
    /// cache. `None` (the default) means "call [`produce`](Downloadable::produce) on a thread
    /// that may block". The glue tries this on its async thread first, which saves two thread
    /// hand-offs per chunk; an implementation must return `None` rather than wait for a disk or
    /// a lock held across I/O, and must give the same answer `produce` would.
    fn try_produce_now(
        &self,
        _state: Option<&State>,
        _requester: &str,
    ) -> Option<Result<Produced, ProduceError>> {
        None
    }

    /// How states advance, if predictable. `None` (the default) keeps receivers stop-and-wait.
    fn plan(&self) -> Option<TransferPlan> {
        None
    }

    /// Called when the object is added to a transaction, with the receivers the transaction
    /// expects (so a shared cache knows how many acknowledgements an item needs).
    fn set_transaction(&self, _tx_id: &TxId, _ref_id: &RefId, _receivers: &ExpectedReceivers) {}

    /// Called once per receiver when its final status is known.
    fn downloaded_to_one(&self, _receiver: &str, _status: DownloadStatus) {}

    /// Called once when every expected receiver has a final status.
    fn downloaded_to_all(&self) {}

    /// Called at settlement, before the transaction's done callback.
    fn transaction_done(&self, _tx_id: &TxId, _status: DoneStatus) {}

    /// Called last at settlement: drop the big source data.
    fn release(&self) {}
}
