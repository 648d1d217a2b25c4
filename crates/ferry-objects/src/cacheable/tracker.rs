//! Receiving-side bookkeeping for item objects.

use super::{COUNT, START};
use crate::ranges::RangeSet;
use bytes::Bytes;
use ferry_core::{ChunkData, ConsumeError, PlanLayout, State, TransferPlan};

/// Default cap on the number of items of one object: 16 Mi.
pub const DEFAULT_MAX_ITEMS: u64 = 16 << 20;

/// Checks the chunks of an item object as they arrive (in any order, possibly twice) and
/// tells a consumer which items are new; at the end it checks that every item arrived.
///
/// A chunk must be a list of items with state `{"start": s, "count": c}` and exactly `c`
/// items; items beyond the plan's count (or beyond `max_items` without a plan) are refused.
#[derive(Debug, Clone)]
pub struct ItemTracker {
    received: RangeSet,
    expected: Option<u64>,
    max_items: u64,
}

impl Default for ItemTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl ItemTracker {
    /// A tracker accepting up to [`DEFAULT_MAX_ITEMS`] items.
    pub fn new() -> Self {
        Self::with_max_items(DEFAULT_MAX_ITEMS)
    }

    /// A tracker accepting up to `max_items` items.
    pub fn with_max_items(max_items: u64) -> Self {
        Self {
            received: RangeSet::new(),
            expected: None,
            max_items,
        }
    }

    /// Take the item count from a plan (which must be an item plan).
    pub fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        let PlanLayout::Items { count, .. } = plan.layout else {
            return Err(ConsumeError::BadChunk(
                "an item consumer needs an item object, the plan announces a byte stream".into(),
            ));
        };
        if count > self.max_items {
            return Err(ConsumeError::Other(format!(
                "object of {count} items exceeds the limit of {} items",
                self.max_items
            )));
        }
        self.expected = Some(count);
        Ok(())
    }

    /// Check one chunk and return its items that were not received before, with their
    /// indices.
    pub fn accept(
        &mut self,
        state: &State,
        data: ChunkData,
    ) -> Result<Vec<(u64, Bytes)>, ConsumeError> {
        // A sender's parted items (a consumer fed in-process) are joined; received ones are not parted.
        let ChunkData::Items(items) = data.into_joined() else {
            return Err(ConsumeError::BadChunk(
                "expected a list of items, got a byte chunk".into(),
            ));
        };
        let bad = |e: ferry_core::StateError| ConsumeError::BadChunk(format!("chunk state: {e}"));
        let start = state.require_u64(START).map_err(bad)?;
        let count = state.require_u64(COUNT).map_err(bad)?;
        if count != items.len() as u64 {
            return Err(ConsumeError::BadChunk(format!(
                "chunk state says {count} items, the chunk has {}",
                items.len()
            )));
        }
        let limit = self.expected.unwrap_or(self.max_items);
        let end = start
            .checked_add(count)
            .filter(|&e| e <= limit)
            .ok_or_else(|| {
                ConsumeError::BadChunk(format!(
                    "items [{start}, {start}+{count}) go beyond the object's {limit} items"
                ))
            })?;
        let fresh: Vec<(u64, Bytes)> = self
            .received
            .gaps(start, end)
            .into_iter()
            .flat_map(|(s, e)| s..e)
            .map(|i| (i, items[(i - start) as usize].clone()))
            .collect();
        self.received.insert(start, end);
        Ok(fresh)
    }

    /// Check that every item arrived; returns the item count.
    pub fn finish(&self) -> Result<u64, ConsumeError> {
        let total = self.expected.unwrap_or_else(|| self.received.max_end());
        if !self.received.is_exactly(total) {
            return Err(ConsumeError::Integrity(format!(
                "received {} of {total} items (missing {:?})",
                self.received.covered(),
                self.received.gaps(0, total)
            )));
        }
        Ok(total)
    }

    /// The item count the plan announced, if one did.
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// Items received so far.
    pub fn received(&self) -> u64 {
        self.received.covered()
    }
}
