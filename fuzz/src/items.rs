//! Driving an item consumer (tensor dict, array dict) the way the receiver engine does: chunks
//! of item blobs with NVFlare's `{start, count}` states, then completion.

use bytes::Bytes;
use ferry_core::{ChunkData, Consumer, State};

use crate::records::Records;

/// Feed the records of `rd` to `c` as item chunks (the selector byte `sel` picks the number of
/// items per chunk and whether an item is skipped or repeated), then complete or fail it.
pub fn feed(c: &mut dyn Consumer, sel: u8, rd: &mut Records<'_>) {
    let per_chunk = 1 + u64::from(sel & 3);
    let mut start = 0u64;
    loop {
        let mut blobs = Vec::new();
        while (blobs.len() as u64) < per_chunk {
            match rd.next_record() {
                Some(r) => blobs.push(Bytes::copy_from_slice(r)),
                None => break,
            }
        }
        if blobs.is_empty() {
            break;
        }
        let count = blobs.len() as u64;
        // bit 2: a stale state (the producer's start lags); bit 3: a state that skips ahead
        let s = match (sel >> 2) & 3 {
            1 if start > 0 => start - 1,
            2 => start + 1,
            _ => start,
        };
        let state = State::new().with("start", s).with("count", count);
        if let Err(e) = c.consume("Rfuzz", &state, ChunkData::Items(blobs)) {
            c.failed("Rfuzz", &e.to_string());
            return;
        }
        start += count;
    }
    if let Err(e) = c.completed("Rfuzz") {
        c.failed("Rfuzz", &e.to_string());
    }
}
