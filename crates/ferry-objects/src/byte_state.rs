//! NVFlare's byte-stream state `{"received_bytes": n}`, shared by the bytes and file objects.

use crate::ranges::RangeSet;
use bytes::Bytes;
use ferry_core::{ChunkData, ConsumeError, State};

/// The state key of byte-stream objects (NVFlare's file state).
pub const RECEIVED_BYTES: &str = "received_bytes";

/// What a byte-stream request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ByteRequest {
    /// The receiver has everything.
    Eof,
    /// Read `len` bytes at `offset`.
    Read { offset: u64, len: u64 },
}

/// Apply NVFlare's rules: `n` absent → 0; not an integer or negative → error; `n ≥ size` →
/// EOF; else read `min(chunk, size - n)` bytes at `n`.
pub(crate) fn parse_byte_request(
    state: Option<&State>,
    size: u64,
    chunk: u64,
) -> Result<ByteRequest, String> {
    let n = match state {
        None => 0,
        Some(s) => s
            .get_u64(RECEIVED_BYTES)
            .map_err(|e| format!("bad request state: {e}"))?
            .unwrap_or(0),
    };
    if n >= size {
        return Ok(ByteRequest::Eof);
    }
    Ok(ByteRequest::Read {
        offset: n,
        len: chunk.min(size - n),
    })
}

/// The state that follows a chunk ending at `end`.
pub(crate) fn state_after(end: u64) -> State {
    State::new().with(RECEIVED_BYTES, end)
}

/// Where a received byte chunk goes: the producer's state says where the chunk *ends*
/// (`received_bytes` after it), so the chunk starts at `end - len`.
pub(crate) fn chunk_offset(state: &State, len: u64) -> Result<u64, String> {
    let end = state
        .get_u64(RECEIVED_BYTES)
        .map_err(|e| format!("bad chunk state: {e}"))?
        .ok_or_else(|| format!("chunk state has no {RECEIVED_BYTES:?}"))?;
    end.checked_sub(len).ok_or_else(|| {
        format!("chunk state {RECEIVED_BYTES}={end} is smaller than the chunk length {len}")
    })
}

/// Check a received byte chunk and return where it starts and its bytes: it must be a byte
/// chunk placed by its state (see [`chunk_offset`]) and end within the plan's size
/// (`planned_total`), else within `max_size`; without a plan chunks come stop-and-wait, in
/// order, so it must also continue the prefix received so far (a chunk past it would only
/// make the consumer allocate a hole on a peer's word).
pub(crate) fn check_byte_chunk(
    state: &State,
    data: ChunkData,
    planned_total: Option<u64>,
    max_size: u64,
    received: &RangeSet,
) -> Result<(u64, Bytes), ConsumeError> {
    let chunk = match data {
        ChunkData::Bytes(chunk) => chunk,
        // a sender's file chunk handed over in-process, not through a connection
        ChunkData::File(f) => f
            .read()
            .map_err(|e| ConsumeError::BadChunk(format!("reading the sender's file chunk: {e}")))?,
        ChunkData::Items(_) | ChunkData::ItemParts(_) => {
            return Err(ConsumeError::BadChunk(
                "expected a byte chunk, got a list of items".into(),
            ))
        }
    };
    let len = chunk.len() as u64;
    let start = chunk_offset(state, len).map_err(ConsumeError::BadChunk)?;
    let end = start + len;
    let limit = planned_total.unwrap_or(max_size);
    if end > limit {
        return Err(ConsumeError::BadChunk(format!(
            "chunk [{start}, {end}) goes beyond the object size limit {limit}"
        )));
    }
    if planned_total.is_none() && start > received.prefix_len() {
        return Err(ConsumeError::BadChunk(format!(
            "chunk starts at {start}, past the {} bytes received (no plan: chunks come in order)",
            received.prefix_len()
        )));
    }
    Ok((start, chunk))
}

/// Check that `received` covers exactly `[0, total)`.
pub(crate) fn check_complete(received: &RangeSet, total: u64) -> Result<(), ConsumeError> {
    if !received.is_exactly(total) {
        return Err(ConsumeError::Integrity(format!(
            "received {} of {total} bytes (missing ranges {:?})",
            received.covered(),
            received.gaps(0, total)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvflare_rules() {
        assert_eq!(
            parse_byte_request(None, 10, 4),
            Ok(ByteRequest::Read { offset: 0, len: 4 })
        );
        let s = |n: i64| State::new().with(RECEIVED_BYTES, n);
        assert_eq!(
            parse_byte_request(Some(&s(8)), 10, 4),
            Ok(ByteRequest::Read { offset: 8, len: 2 })
        );
        assert_eq!(
            parse_byte_request(Some(&s(10)), 10, 4),
            Ok(ByteRequest::Eof)
        );
        assert_eq!(
            parse_byte_request(Some(&s(99)), 10, 4),
            Ok(ByteRequest::Eof)
        );
        assert!(parse_byte_request(Some(&s(-1)), 10, 4).is_err());
        let wrong = State::new().with(RECEIVED_BYTES, "3");
        assert!(parse_byte_request(Some(&wrong), 10, 4).is_err());
        assert_eq!(
            parse_byte_request(Some(&State::new()), 10, 4),
            Ok(ByteRequest::Read { offset: 0, len: 4 })
        );
        assert_eq!(parse_byte_request(None, 0, 4), Ok(ByteRequest::Eof));
        assert_eq!(chunk_offset(&state_after(12), 4), Ok(8));
        assert!(chunk_offset(&state_after(2), 4).is_err());
        assert!(chunk_offset(&State::new(), 4).is_err());
    }
}
