//! The simplest object: an in-memory [`Bytes`] served as a byte stream, and a consumer that
//! collects one into memory.

use crate::byte_state::{
    check_byte_chunk, check_complete, parse_byte_request, state_after, ByteRequest,
};
use crate::delivery::Delivery;
use crate::ranges::RangeSet;
use crate::{ObjectsError, DEFAULT_CHUNK_SIZE};
use bytes::Bytes;
use ferry_core::{
    ChunkData, ConsumeError, Consumer, Downloadable, PlanLayout, ProduceError, Produced, State,
    TransferPlan,
};
use std::sync::RwLock;

/// An in-memory byte buffer served with NVFlare's file state `{"received_bytes": n}`.
///
/// Chunks are zero-copy slices of the buffer. It advertises a [`PlanLayout::Bytes`] plan (and,
/// if asked, a BLAKE3 digest) so ferry receivers pipeline and verify.
#[derive(Debug)]
pub struct BytesObject {
    /// `None` after [`release`](Downloadable::release): the buffer is dropped then.
    data: RwLock<Option<Bytes>>,
    /// Kept apart from `data` so the plan survives release.
    len: u64,
    chunk_size: u64,
    digest: Option<String>,
}

impl BytesObject {
    /// Serve `data` in chunks of [`DEFAULT_CHUNK_SIZE`], without a digest.
    pub fn new(data: Bytes) -> Self {
        Self {
            len: data.len() as u64,
            data: RwLock::new(Some(data)),
            chunk_size: DEFAULT_CHUNK_SIZE,
            digest: None,
        }
    }

    /// Use chunks of `chunk_size` bytes (1 ..= [`MAX_CHUNK_SIZE`](crate::MAX_CHUNK_SIZE)).
    pub fn with_chunk_size(mut self, chunk_size: u64) -> Result<Self, ObjectsError> {
        crate::check_chunk_size(chunk_size)?;
        self.chunk_size = chunk_size;
        Ok(self)
    }

    /// Compute the BLAKE3 digest of the buffer now and advertise it in the plan.
    pub fn with_digest(mut self) -> Self {
        let guard = self.data.read().unwrap_or_else(|p| p.into_inner());
        self.digest = guard.as_ref().map(|d| blake3::hash(d).to_hex().to_string());
        drop(guard);
        self
    }

    /// The buffer length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The advertised digest (hex), if computed.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

impl Downloadable for BytesObject {
    /// The bytes are in memory: a chunk is a slice of them, made at once.
    fn try_produce_now(
        &self,
        state: Option<&State>,
        requester: &str,
    ) -> Option<Result<Produced, ProduceError>> {
        Some(self.produce(state, requester))
    }

    fn produce(&self, state: Option<&State>, _requester: &str) -> Result<Produced, ProduceError> {
        let guard = self.data.read().unwrap_or_else(|p| p.into_inner());
        let Some(data) = guard.as_ref() else {
            return Err(ProduceError("bytes object requested after release".into()));
        };
        match parse_byte_request(state, self.len, self.chunk_size) {
            Err(reason) => Ok(Produced::Invalid { reason }),
            Ok(ByteRequest::Eof) => Ok(Produced::Eof),
            Ok(ByteRequest::Read { offset, len }) => {
                // offset + len <= self.len, which came from a usize.
                let (start, end) = (offset as usize, (offset + len) as usize);
                Ok(Produced::Data {
                    data: ChunkData::Bytes(data.slice(start..end)),
                    state: state_after(offset + len),
                })
            }
        }
    }

    fn plan(&self) -> Option<TransferPlan> {
        Some(TransferPlan {
            layout: PlanLayout::Bytes {
                total: self.len,
                chunk: self.chunk_size,
            },
            total_bytes: Some(self.len),
            blake3: self.digest.clone(),
        })
    }

    fn release(&self) {
        *self.data.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Collects a byte-stream object (a [`BytesObject`], a file, or an NVFlare file) into memory.
///
/// With a plan, chunks may arrive in any order (each is placed by its state); without one
/// (NVFlare producers, stop-and-wait) each chunk must continue the received prefix. The size
/// announced by a plan and every chunk end are capped by `max_size` before anything is
/// allocated; a plan digest is checked at completion. The result is available from [`take`](Self::take) or from the
/// [`Delivery`] returned by [`delivery`](Self::delivery).
#[derive(Debug)]
pub struct BytesConsumer {
    buf: Vec<u8>,
    ranges: RangeSet,
    max_size: u64,
    /// Size and digest from the producer's plan, when it sent one.
    expected_total: Option<u64>,
    expected_digest: Option<String>,
    result: Option<Bytes>,
    delivery: Delivery<Bytes>,
}

/// Default cap of [`BytesConsumer`]: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

impl Default for BytesConsumer {
    fn default() -> Self {
        Self::new()
    }
}

impl BytesConsumer {
    /// A consumer that accepts up to [`DEFAULT_MAX_BYTES`].
    pub fn new() -> Self {
        Self::with_max_size(DEFAULT_MAX_BYTES)
    }

    /// A consumer that refuses objects larger than `max_size` bytes.
    pub fn with_max_size(max_size: u64) -> Self {
        Self {
            buf: Vec::new(),
            ranges: RangeSet::new(),
            max_size,
            expected_total: None,
            expected_digest: None,
            result: None,
            delivery: Delivery::new(),
        }
    }

    /// A handle that receives the bytes when the download completes.
    pub fn delivery(&self) -> Delivery<Bytes> {
        self.delivery.clone()
    }

    /// The received bytes, once completed (taken once).
    pub fn take(&mut self) -> Option<Bytes> {
        let out = self.result.take();
        if out.is_some() {
            self.delivery.take();
        }
        out
    }
}

impl Consumer for BytesConsumer {
    /// `consume` never blocks: a chunk is copied into a buffer in memory.
    fn blocks(&self) -> bool {
        false
    }

    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        let PlanLayout::Bytes { total, .. } = plan.layout else {
            return Err(ConsumeError::BadChunk(
                "a bytes consumer needs a byte-stream object, the plan announces items".into(),
            ));
        };
        if total > self.max_size {
            return Err(ConsumeError::Other(format!(
                "object of {total} bytes exceeds the limit of {} bytes",
                self.max_size
            )));
        }
        self.expected_total = Some(total);
        self.expected_digest = plan.blake3.clone();
        self.buf.reserve_exact(total as usize);
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
        let (start, chunk) = check_byte_chunk(
            state,
            data,
            self.expected_total,
            self.max_size,
            &self.ranges,
        )?;
        let end = start + chunk.len() as u64;
        if self.buf.len() < end as usize {
            self.buf.resize(end as usize, 0);
        }
        // Write only what is new: a duplicate chunk never rewrites accepted bytes.
        for (s, e) in self.ranges.gaps(start, end) {
            let src = &chunk[(s - start) as usize..(e - start) as usize];
            self.buf[s as usize..e as usize].copy_from_slice(src);
        }
        self.ranges.insert(start, end);
        Ok(state.clone())
    }

    fn completed(&mut self, _ref_id: &str) -> Result<(), ConsumeError> {
        let total = self.expected_total.unwrap_or(self.ranges.max_end());
        check_complete(&self.ranges, total)?;
        self.buf.truncate(total as usize);
        if let Some(want) = &self.expected_digest {
            let got = blake3::hash(&self.buf).to_hex();
            if !want.eq_ignore_ascii_case(got.as_str()) {
                self.buf = Vec::new();
                return Err(ConsumeError::Integrity(format!(
                    "BLAKE3 digest mismatch: expected {want}, got {got}"
                )));
            }
        }
        let bytes = Bytes::from(std::mem::take(&mut self.buf));
        self.delivery.put(bytes.clone());
        self.result = Some(bytes);
        Ok(())
    }

    fn failed(&mut self, ref_id: &str, reason: &str) {
        tracing::debug!(ref_id, reason, "bytes download failed");
        self.buf = Vec::new();
        self.ranges = RangeSet::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{all_chunks, drive, pattern};
    use crate::RECEIVED_BYTES;

    fn obj(len: usize, chunk: u64) -> (Bytes, BytesObject) {
        let data = Bytes::from(pattern(len, len as u64));
        let o = BytesObject::new(data.clone())
            .with_chunk_size(chunk)
            .unwrap()
            .with_digest();
        (data, o)
    }

    #[test]
    fn round_trips_in_any_order() {
        for (len, chunk) in [(0, 4), (1, 4), (10, 4), (12, 4), (1000, 7)] {
            let (data, o) = obj(len, chunk);
            let mut c = BytesConsumer::new();
            drive(&o, &mut c, None, |v| v.reverse()).unwrap();
            assert_eq!(c.take().unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn chunks_are_zero_copy_slices() {
        let (data, o) = obj(100, 30);
        let chunks = all_chunks(&o, "a", None);
        assert_eq!(chunks.len(), 4);
        let ChunkData::Bytes(b) = &chunks[1].1 else {
            panic!()
        };
        assert_eq!(b.as_ptr(), data[30..].as_ptr());
        assert_eq!(chunks[3].0, State::new().with(RECEIVED_BYTES, 100u64));
    }

    #[test]
    fn bad_states_are_invalid_requests() {
        let (_, o) = obj(10, 4);
        let st = |v: rmpv::Value| State::new().with(RECEIVED_BYTES, v);
        assert!(matches!(
            o.produce(Some(&st((-1i64).into())), "a").unwrap(),
            Produced::Invalid { .. }
        ));
        assert!(matches!(
            o.produce(Some(&st("x".into())), "a").unwrap(),
            Produced::Invalid { .. }
        ));
        assert_eq!(
            o.produce(Some(&st(10u64.into())), "a").unwrap(),
            Produced::Eof
        );
        assert_eq!(
            o.produce(Some(&st(u64::MAX.into())), "a").unwrap(),
            Produced::Eof
        );
        o.release();
        assert!(o.produce(None, "a").is_err());
        assert!(o.plan().is_some(), "plan survives release");
    }

    #[test]
    fn consumer_refuses_wrong_shapes_and_sizes() {
        let mut c = BytesConsumer::with_max_size(8);
        let s = State::new().with(RECEIVED_BYTES, 4u64);
        assert!(matches!(
            c.consume("r", &s, ChunkData::Items(vec![])),
            Err(ConsumeError::BadChunk(_))
        ));
        let big = State::new().with(RECEIVED_BYTES, 12u64);
        assert!(matches!(
            c.consume("r", &big, ChunkData::Bytes(Bytes::from_static(b"abcd"))),
            Err(ConsumeError::BadChunk(_))
        ));
        assert!(matches!(
            c.consume(
                "r",
                &State::new(),
                ChunkData::Bytes(Bytes::from_static(b"ab"))
            ),
            Err(ConsumeError::BadChunk(_))
        ));
        let (_, o) = obj(100, 10);
        assert!(
            c.plan_received(&o.plan().unwrap()).is_err(),
            "over max_size"
        );
        let mut c = BytesConsumer::new();
        let far = State::new().with(RECEIVED_BYTES, 1u64 << 29);
        assert!(
            matches!(
                c.consume("r", &far, ChunkData::Bytes(Bytes::from_static(b"ab"))),
                Err(ConsumeError::BadChunk(_))
            ),
            "no plan: a chunk far ahead is refused, nothing allocated"
        );
        assert!(c.buf.capacity() < 1 << 20);
    }

    #[test]
    fn corrupted_or_missing_chunks_fail() {
        let (_, o) = obj(100, 10);
        let mut c = BytesConsumer::new();
        let e = drive(&o, &mut c, None, |v| {
            if let ChunkData::Bytes(b) = &mut v[3].1 {
                let mut m = b.to_vec();
                m[0] ^= 1;
                *b = Bytes::from(m);
            }
        })
        .unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        let mut c = BytesConsumer::new();
        let e = drive(&o, &mut c, None, |v| {
            v.remove(5);
        })
        .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(c.take().is_none());
    }

    #[test]
    fn delivery_hands_over_the_result() {
        let (data, o) = obj(50, 8);
        let mut c = BytesConsumer::new();
        let d = c.delivery();
        drive(&o, &mut c, None, |_| {}).unwrap();
        assert!(d.is_ready());
        assert_eq!(d.take().unwrap(), data);
    }
}
