//! The plan and where each chunk is: how many chunks the accepted plan has, which one to
//! request next, the replies buffered for order, the chunks handed to the consumer and not yet
//! reported, and the EOF reply once it arrived.
//!
//! Without a plan (stop-and-wait) only `consuming`, `consumed_count` and `eof` are used.

use crate::{ChunkData, State, TransferPlan};
use std::collections::BTreeMap;

/// A chunk handed to the consumer and not yet reported back.
#[derive(Debug, Clone)]
pub(super) struct Consuming {
    /// The state given with it (a pipelined consumer must return it unchanged).
    pub(super) state: State,
    /// Its bytes (progress).
    pub(super) bytes: u64,
    /// Its items (progress).
    pub(super) items: Option<usize>,
}

/// The chunk bookkeeping of one download.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// The accepted plan, in windowed mode (provisional while the consumer checks it).
    pub(super) plan: Option<TransferPlan>,
    /// Number of data chunks (windowed mode).
    pub(super) n_chunks: u64,
    /// Next chunk index to request (windowed mode).
    pub(super) next_send: u64,
    /// Data replies received (windowed mode).
    pub(super) received: u64,
    /// Arrived, not yet handed over (ordered windowed mode).
    pub(super) buffer: BTreeMap<u64, (State, ChunkData)>,
    /// Next index to hand over (ordered windowed mode).
    pub(super) next_deliver: u64,
    /// Handed over, not yet reported.
    pub(super) consuming: BTreeMap<u64, Consuming>,
    /// Chunks consumed.
    pub(super) consumed_count: u64,
    /// The EOF request was sent (windowed mode).
    pub(super) eof_requested: bool,
    /// EOF arrived, with the nonce to confirm (if asked).
    pub(super) eof: Option<Option<String>>,
}

impl Window {
    /// Whether a plan is in force (windowed mode).
    pub(super) fn is_planned(&self) -> bool {
        self.plan.is_some()
    }

    /// The planned state of request `index` (`None` without a plan or past its end).
    pub(super) fn planned_state(&self, index: u64) -> Option<State> {
        self.plan.as_ref().and_then(|p| p.state_for(index))
    }

    /// Chunks that arrived and are not yet consumed (their share of the window).
    pub(super) fn held(&self) -> usize {
        self.buffer.len() + self.consuming.len()
    }

    /// Nothing is buffered or being consumed.
    pub(super) fn is_drained(&self) -> bool {
        self.consuming.is_empty() && self.buffer.is_empty()
    }

    /// Every chunk the download needs has been consumed (always true without a plan: the
    /// EOF reply alone ends a stop-and-wait download).
    pub(super) fn all_consumed(&self) -> bool {
        self.plan.is_none() || self.consumed_count >= self.n_chunks
    }

    /// Take the buffered chunk that is next in line, if it arrived (ordered windowed mode).
    pub(super) fn next_ready(&mut self) -> Option<(u64, State, ChunkData)> {
        let (state, data) = self.buffer.remove(&self.next_deliver)?;
        let i = self.next_deliver;
        self.next_deliver += 1;
        Some((i, state, data))
    }

    /// Record chunk `seq` as handed to the consumer with `state`.
    pub(super) fn start_consuming(&mut self, seq: u64, state: &State, data: &ChunkData) {
        self.consuming.insert(
            seq,
            Consuming {
                state: state.clone(),
                bytes: data.byte_len(),
                items: data.item_count(),
            },
        );
    }

    /// Forget every buffered and every handed-over chunk (the download is over).
    pub(super) fn clear(&mut self) {
        self.buffer.clear();
        self.consuming.clear();
    }
}
