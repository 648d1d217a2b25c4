//! The relay's receiving side: a [`Consumer`] that stores what one upstream source sends into
//! the spill, held to the ticket's pin like `ferry get` holds a sender.

use std::sync::Arc;

use ferry_core::{ChunkData, ConsumeError, Consumer, PlanLayout, State, TransferPlan};
use ferry_objects::RECEIVED_BYTES;

use super::spill::Spill;

/// Stores the chunks of one download attempt (one source) into the shared spill.
pub(crate) struct SpillConsumer {
    spill: Arc<Spill>,
    /// The source's name, for messages.
    source: String,
    /// Whether the source advertised a plan: without one (an NVFlare sender) chunks come
    /// stop-and-wait, in order, so a chunk must continue the prefix.
    planned: bool,
}

impl SpillConsumer {
    pub(crate) fn new(spill: Arc<Spill>, source: String) -> Self {
        Self {
            spill,
            source,
            planned: false,
        }
    }
}

impl Consumer for SpillConsumer {
    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        let pin = self.spill.pin();
        let total = match plan.layout {
            PlanLayout::Bytes { total, .. } => total,
            PlanLayout::Items { .. } => {
                return Err(ConsumeError::BadChunk(format!(
                    "{} serves this ref as a list of items, but the ticket names a file",
                    self.source
                )))
            }
        };
        if total != pin.size || plan.total_bytes.is_some_and(|t| t != pin.size) {
            return Err(ConsumeError::Integrity(format!(
                "{} announces {total} bytes, the ticket pins {}",
                self.source, pin.size
            )));
        }
        if let Some(b3) = &plan.blake3 {
            if !b3.eq_ignore_ascii_case(&pin.hex()) {
                return Err(ConsumeError::Integrity(format!(
                    "{} announces BLAKE3 {b3}, the ticket pins {}",
                    self.source,
                    pin.hex()
                )));
            }
        }
        self.planned = true;
        Ok(())
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
        let ChunkData::Bytes(chunk) = data else {
            return Err(ConsumeError::BadChunk(
                "expected a byte chunk, got a list of items".into(),
            ));
        };
        let end = state
            .get_u64(RECEIVED_BYTES)
            .map_err(|e| ConsumeError::BadChunk(format!("bad chunk state: {e}")))?
            .ok_or_else(|| {
                ConsumeError::BadChunk(format!("chunk state has no {RECEIVED_BYTES:?}"))
            })?;
        let start = end.checked_sub(chunk.len() as u64).ok_or_else(|| {
            ConsumeError::BadChunk(format!(
                "chunk state {RECEIVED_BYTES}={end} is smaller than the chunk length {}",
                chunk.len()
            ))
        })?;
        let size = self.spill.pin().size;
        if end > size {
            return Err(ConsumeError::Integrity(format!(
                "{} sent bytes [{start}, {end}) of an object the ticket pins at {size} bytes",
                self.source
            )));
        }
        if !self.planned && start > self.spill.progress().1 {
            return Err(ConsumeError::BadChunk(format!(
                "chunk starts at {start}, past the bytes received (no plan: chunks come in order)"
            )));
        }
        self.spill.store(start, &chunk)?;
        Ok(state.clone())
    }

    fn completed(&mut self, _ref_id: &str) -> Result<(), ConsumeError> {
        self.spill
            .finish(&self.source)
            .map_err(ConsumeError::Integrity)
    }

    fn failed(&mut self, _ref_id: &str, reason: &str) {
        // The relay decides (another source, or failing its downstream); this attempt's bytes
        // stay in the spill, counted once, for the next source to continue after.
        tracing::debug!(source = %self.source, reason, "upstream attempt failed");
    }
}
