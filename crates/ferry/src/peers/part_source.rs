//! A sharing receiver's source: the object it is still downloading, served from its part file
//! with NVFlare's byte-stream state, each chunk once it has arrived. A request for a chunk not
//! here yet waits for it (a pipelined chain: a receiver pulls from one a little ahead of it),
//! at most [`MAX_WAIT`], then fails so that the requester moves to another source.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::{
    ChunkData, Downloadable, PlanLayout, ProduceError, Produced, State, TransferPlan,
};
use ferry_objects::RECEIVED_BYTES;

use super::have::Have;

/// Longest a request waits for its chunk to arrive here (a downstream receiver's default
/// request timeout is 60 s; it hears of a stall through the scheduler well before).
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The partial object a sharing receiver serves (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct PartSource {
    have: Arc<Have>,
    chunk: u64,
    /// The ticket's digest, advertised in the plan (receivers check it against their own
    /// ticket, never trust it).
    blake3: String,
    wait: Duration,
}

impl PartSource {
    pub(crate) fn new(have: Arc<Have>, chunk: u64, blake3: String) -> Self {
        Self {
            have,
            chunk: chunk.max(1),
            blake3,
            wait: MAX_WAIT,
        }
    }

    /// The chunk at the offset `state` names: `Err` for a state this object could not have
    /// produced, `Ok(None)` at the end.
    fn request(&self, state: Option<&State>) -> Result<Option<(u64, u64)>, String> {
        let n = match state {
            None => 0,
            Some(s) => s
                .get_u64(RECEIVED_BYTES)
                .map_err(|e| format!("bad request state: {e}"))?
                .unwrap_or(0),
        };
        let size = self.have.size();
        if n >= size {
            return Ok(None);
        }
        Ok(Some((n, (n + self.chunk).min(size))))
    }

    fn read(&self, file: &std::fs::File, start: u64, end: u64) -> Result<Produced, ProduceError> {
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(|e| ProduceError(format!("reading the received part at {start}: {e}")))?;
        self.have.note_served(end - start);
        Ok(Produced::Data {
            data: ChunkData::Bytes(Bytes::from(buf)),
            state: State::new().with(RECEIVED_BYTES, end),
        })
    }
}

impl Downloadable for PartSource {
    fn produce(&self, state: Option<&State>, _requester: &str) -> Result<Produced, ProduceError> {
        let (start, end) = match self.request(state) {
            Err(reason) => return Ok(Produced::Invalid { reason }),
            Ok(None) => return Ok(Produced::Eof),
            Ok(Some(r)) => r,
        };
        match self.have.wait_for(start, end, self.wait) {
            Some(f) => self.read(&f, start, end),
            None => Err(ProduceError(format!(
                "this peer has not received bytes {start}..{end} yet (waited {:?}); pull them from another source",
                self.wait
            ))),
        }
    }

    fn try_produce_now(
        &self,
        state: Option<&State>,
        requester: &str,
    ) -> Option<Result<Produced, ProduceError>> {
        match self.request(state) {
            Err(_) | Ok(None) => Some(self.produce(state, requester)),
            // Here already: a page-cache read of what was just written. Otherwise wait on the
            // blocking pool.
            Ok(Some((start, end))) => self
                .have
                .ready(start, end)
                .map(|f| self.read(&f, start, end)),
        }
    }

    fn plan(&self) -> Option<TransferPlan> {
        let total = self.have.size();
        Some(TransferPlan {
            layout: PlanLayout::Bytes {
                total,
                chunk: self.chunk,
            },
            total_bytes: Some(total),
            blake3: Some(self.blake3.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn state(n: u64) -> State {
        State::new().with(RECEIVED_BYTES, n)
    }

    #[test]
    fn serves_what_arrived_waits_for_the_rest_and_refuses_bad_states() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[7u8; 100]).unwrap();
        let have = Have::new(100);
        let mut src = PartSource::new(Arc::clone(&have), 40, "00".repeat(32));
        src.wait = Duration::from_millis(1);
        have.set_file(std::fs::File::open(f.path()).unwrap(), 40);
        match src.produce(None, "r").unwrap() {
            Produced::Data { data, state: s } => {
                assert_eq!(data.byte_len(), 40);
                assert_eq!(s, state(40));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            src.try_produce_now(Some(&state(40)), "r").is_none(),
            "not here: wait"
        );
        let err = src.produce(Some(&state(40)), "r").unwrap_err();
        assert!(err.0.contains("has not received bytes 40..80"), "{err}");
        have.add(40, 100);
        match src.produce(Some(&state(80)), "r").unwrap() {
            Produced::Data { data, .. } => assert_eq!(data.byte_len(), 20),
            other => panic!("{other:?}"),
        }
        assert_eq!(src.produce(Some(&state(100)), "r").unwrap(), Produced::Eof);
        let bad = State::new().with(RECEIVED_BYTES, "x");
        assert!(matches!(
            src.produce(Some(&bad), "r").unwrap(),
            Produced::Invalid { .. }
        ));
        assert_eq!(have.served().1, 60);
    }
}
