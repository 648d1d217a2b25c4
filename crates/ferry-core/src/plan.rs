//! [`TransferPlan`] arithmetic (the state of request `i`) and its wire form, the `ferry_plan`
//! key of the first data reply.
//!
//! Wire form (a msgpack map; NVFlare receivers ignore the unknown key):
//! `{"layout":"bytes","total":T,"chunk":C}` or `{"layout":"items","count":N,"per_chunk":P}`,
//! plus optional `"total_bytes"` and `"blake3"` (64 lowercase hex digits).

use crate::{PlanLayout, State, TransferPlan};
use serde::{Deserialize, Serialize};

/// State key of NVFlare's file state.
pub const KEY_RECEIVED_BYTES: &str = "received_bytes";
/// State key of NVFlare's cacheable state (first item of the chunk just sent).
pub const KEY_START: &str = "start";
/// State key of NVFlare's cacheable state (number of items in the chunk just sent).
pub const KEY_COUNT: &str = "count";

/// Why a plan (from an object or from the wire) is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// `chunk` or `per_chunk` is zero.
    #[error("plan chunk size is zero")]
    ZeroChunk,
    /// The `layout` key names no known layout, or its keys are missing.
    #[error("plan layout is unknown or incomplete: {0}")]
    BadLayout(String),
    /// `blake3` is not 64 hex digits.
    #[error("plan digest is not 64 hex digits")]
    BadDigest,
}

impl TransferPlan {
    /// Check the plan's invariants (non-zero chunk size, well-formed digest).
    pub fn validate(&self) -> Result<(), PlanError> {
        match self.layout {
            PlanLayout::Bytes { chunk: 0, .. } | PlanLayout::Items { per_chunk: 0, .. } => {
                return Err(PlanError::ZeroChunk)
            }
            _ => {}
        }
        if let Some(d) = &self.blake3 {
            if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(PlanError::BadDigest);
            }
        }
        Ok(())
    }

    /// Number of data chunks (the request with index `chunk_count()` gets `eof`).
    pub fn chunk_count(&self) -> u64 {
        match self.layout {
            PlanLayout::Bytes { total, chunk } => total.div_ceil(chunk.max(1)),
            PlanLayout::Items { count, per_chunk } => count.div_ceil(per_chunk.max(1)),
        }
    }

    /// The state a receiver sends to get chunk `index` (`None` for chunk 0: the first request
    /// carries no state). `index == chunk_count()` gives the state that yields `eof`.
    pub fn state_for(&self, index: u64) -> Option<State> {
        if index == 0 {
            return None;
        }
        Some(match self.layout {
            PlanLayout::Bytes { total, chunk } => {
                State::new().with(KEY_RECEIVED_BYTES, index.saturating_mul(chunk).min(total))
            }
            PlanLayout::Items { count, per_chunk } => {
                let start = (index - 1).saturating_mul(per_chunk).min(count);
                let n = per_chunk.min(count - start);
                State::new().with(KEY_START, start).with(KEY_COUNT, n)
            }
        })
    }

    /// The wire form of this plan.
    pub fn to_wire(&self) -> WirePlan {
        let (layout, a, b) = match self.layout {
            PlanLayout::Bytes { total, chunk } => ("bytes", total, chunk),
            PlanLayout::Items { count, per_chunk } => ("items", count, per_chunk),
        };
        let bytes = layout == "bytes";
        WirePlan {
            layout: layout.to_string(),
            total: bytes.then_some(a),
            chunk: bytes.then_some(b),
            count: (!bytes).then_some(a),
            per_chunk: (!bytes).then_some(b),
            total_bytes: self.total_bytes,
            blake3: self.blake3.clone(),
        }
    }
}

/// The `ferry_plan` map as it travels in a reply. Build it with [`TransferPlan::to_wire`],
/// read it back with [`WirePlan::to_plan`] (which validates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePlan {
    /// `"bytes"` or `"items"`.
    pub layout: String,
    /// Bytes layout: object size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Bytes layout: chunk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u64>,
    /// Items layout: number of items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Items layout: items per chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_chunk: Option<u64>,
    /// Total payload bytes, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// BLAKE3 digest of the object, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

impl WirePlan {
    /// The plan this map describes, validated.
    pub fn to_plan(&self) -> Result<TransferPlan, PlanError> {
        let layout = match (
            self.layout.as_str(),
            self.total,
            self.chunk,
            self.count,
            self.per_chunk,
        ) {
            ("bytes", Some(total), Some(chunk), _, _) => PlanLayout::Bytes { total, chunk },
            ("items", _, _, Some(count), Some(per_chunk)) => PlanLayout::Items { count, per_chunk },
            _ => return Err(PlanError::BadLayout(self.layout.clone())),
        };
        let plan = TransferPlan {
            layout,
            total_bytes: self.total_bytes,
            blake3: self.blake3.clone(),
        };
        plan.validate()?;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_plan(total: u64, chunk: u64) -> TransferPlan {
        TransferPlan {
            layout: PlanLayout::Bytes { total, chunk },
            total_bytes: Some(total),
            blake3: None,
        }
    }

    #[test]
    fn bytes_states_follow_nvflare_file_state() {
        let p = bytes_plan(25, 10);
        assert_eq!(p.chunk_count(), 3);
        assert_eq!(p.state_for(0), None);
        assert_eq!(
            p.state_for(1),
            Some(State::new().with("received_bytes", 10u64))
        );
        assert_eq!(
            p.state_for(3),
            Some(State::new().with("received_bytes", 25u64))
        );
        assert_eq!(bytes_plan(0, 10).chunk_count(), 0);
    }

    #[test]
    fn items_states_echo_the_previous_chunk() {
        let p = TransferPlan {
            layout: PlanLayout::Items {
                count: 5,
                per_chunk: 2,
            },
            total_bytes: None,
            blake3: None,
        };
        assert_eq!(p.chunk_count(), 3);
        let s =
            |start: u64, count: u64| Some(State::new().with("start", start).with("count", count));
        assert_eq!(p.state_for(1), s(0, 2));
        assert_eq!(p.state_for(2), s(2, 2));
        assert_eq!(p.state_for(3), s(4, 1));
    }

    #[test]
    fn wire_form_round_trips_and_is_validated() {
        let mut p = bytes_plan(100, 7);
        p.blake3 = Some("ab".repeat(32));
        let enc = rmp_serde::to_vec_named(&p.to_wire()).unwrap();
        let w: WirePlan = rmp_serde::from_slice(&enc).unwrap();
        assert_eq!(w.to_plan().unwrap(), p);
        let bad = WirePlan {
            chunk: Some(0),
            ..p.to_wire()
        };
        assert_eq!(bad.to_plan(), Err(PlanError::ZeroChunk));
        let bad = WirePlan {
            layout: "weird".into(),
            ..p.to_wire()
        };
        assert!(matches!(bad.to_plan(), Err(PlanError::BadLayout(_))));
        let bad = WirePlan {
            blake3: Some("xyz".into()),
            ..p.to_wire()
        };
        assert_eq!(bad.to_plan(), Err(PlanError::BadDigest));
    }
}
