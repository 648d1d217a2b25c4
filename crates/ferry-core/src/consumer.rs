//! The receiver-side contract: an object that consumes chunks and finishes the download.

use crate::{ChunkData, State, TransferPlan};

/// A consumer refused a chunk or could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The chunk does not have the shape this consumer expects (bytes vs items, bad state...).
    #[error("unexpected chunk: {0}")]
    BadChunk(String),
    /// The data is wrong: size or digest mismatch, malformed item.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// An OS error while storing the data (disk full, permission, ...).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else, in words.
    #[error("{0}")]
    Other(String),
}

/// Consumes the chunks of one download (NVFlare's `Consumer`).
///
/// The receiver engine decides when each method is called; the glue runs them off the async
/// threads (unless [`blocks`](Consumer::blocks) says they never block), so they may block on
/// disk I/O.
pub trait Consumer: Send {
    /// Consume one chunk. `state` is the state the producer returned with it. Returns the state
    /// to send with the next request (stop-and-wait mode). When the producer advertised a
    /// [`TransferPlan`] the next states come from the plan instead, and the returned state must
    /// equal `state` (a consumer that transforms it cannot be pipelined).
    fn consume(
        &mut self,
        ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError>;

    /// The producer advertised a plan (total size, digest...). Called at most once, before the
    /// first `consume`. Return an error to refuse the object (e.g. it is larger than allowed).
    fn plan_received(&mut self, _plan: &TransferPlan) -> Result<(), ConsumeError> {
        Ok(())
    }

    /// Whether chunks must be delivered in order. When `false` (e.g. a file written at offsets)
    /// the engine hands chunks over as they arrive and keeps no reorder buffer.
    fn needs_order(&self) -> bool {
        true
    }

    /// Whether `consume` may block (disk or network I/O, fsync) or run long. `true` (the
    /// default) makes the glue run it on a thread pool. Return `false` for consumers that only
    /// do bounded in-memory work per chunk (hashing it, keeping it): the glue then runs
    /// `consume` on the download task itself, which saves two thread hand-offs per chunk and
    /// keeps the chunk in the cache of the core that just received it. `plan_received`,
    /// `completed` and `failed` run once per download and always go to the pool (a final
    /// digest check may take a while).
    fn blocks(&self) -> bool {
        true
    }

    /// The producer said EOF: finish (verify, flush, rename...). An error fails the download and
    /// is confirmed FAILED to the producer.
    fn completed(&mut self, ref_id: &str) -> Result<(), ConsumeError>;

    /// The download failed; clean up. Called at most once, never after `completed` succeeded.
    fn failed(&mut self, ref_id: &str, reason: &str);
}
