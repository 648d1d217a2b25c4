//! The relay's serving side: a [`Downloadable`] that serves the spill to downstream receivers
//! while it fills (a file's bytes here, a tensor dict's items in [`super::items`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::{
    ChunkData, DoneStatus, DownloadStatus, Downloadable, ExpectedReceivers, PlanLayout,
    ProduceError, Produced, RefId, State, TransferPlan, TxId,
};
use ferry_objects::RECEIVED_BYTES;

use super::items::ItemObject;
use super::spill::Spill;

/// The object a [`Relay`](super::Relay) serves, to add to a transaction of the relay's own: a
/// file's bytes or a tensor dict's items, each servable once it arrived (see the
/// [module docs](super)).
#[derive(Debug)]
pub struct RelayObject {
    served: Served,
    size: u64,
}

#[derive(Debug)]
enum Served {
    Bytes(ByteObject),
    /// Boxed: the item object (the origin's cache bookkeeping) is ten times a byte object.
    Items(Box<ItemObject>),
}

impl RelayObject {
    pub(crate) fn bytes(o: ByteObject) -> Self {
        Self {
            size: o.size(),
            served: Served::Bytes(o),
        }
    }

    pub(crate) fn items(o: ItemObject, size: u64) -> Self {
        Self {
            size,
            served: Served::Items(Box::new(o)),
        }
    }

    /// The object's size in bytes (a tensor dict's: its tensor data, as the ticket counts).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn inner(&self) -> &dyn Downloadable {
        match &self.served {
            Served::Bytes(o) => o,
            Served::Items(o) => o.as_ref(),
        }
    }
}

impl Downloadable for RelayObject {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        self.inner().produce(state, requester)
    }

    fn try_produce_now(
        &self,
        state: Option<&State>,
        requester: &str,
    ) -> Option<Result<Produced, ProduceError>> {
        self.inner().try_produce_now(state, requester)
    }

    fn plan(&self) -> Option<TransferPlan> {
        self.inner().plan()
    }

    fn set_transaction(&self, tx_id: &TxId, ref_id: &RefId, receivers: &ExpectedReceivers) {
        self.inner().set_transaction(tx_id, ref_id, receivers);
    }

    fn downloaded_to_one(&self, receiver: &str, status: DownloadStatus) {
        self.inner().downloaded_to_one(receiver, status);
    }

    fn downloaded_to_all(&self) {
        self.inner().downloaded_to_all();
    }

    fn transaction_done(&self, tx_id: &TxId, status: DoneStatus) {
        self.inner().transaction_done(tx_id, status);
    }

    fn release(&self) {
        self.inner().release();
    }
}

/// A relayed file: NVFlare's file states (`received_bytes`), a plan with the ticket's size and
/// digest, and chunks read from the spill once they arrived.
///
/// A request for bytes that have not arrived waits for them on the blocking pool (up to
/// `wait`, a safety net: in practice the upstream download delivers them or fails first, and a
/// failure is answered at once). EOF is answered only once the whole object verified against
/// the ticket's pin, so no downstream receiver completes on content the relay has not checked;
/// each of them checks the same pin itself too.
#[derive(Debug)]
pub(crate) struct ByteObject {
    spill: Arc<Spill>,
    chunk: u64,
    wait: Duration,
}

impl ByteObject {
    pub(crate) fn new(spill: Arc<Spill>, chunk: u64, wait: Duration) -> Self {
        Self { spill, chunk, wait }
    }

    fn size(&self) -> u64 {
        self.spill.pin().size
    }

    fn failed(&self, why: &str) -> ProduceError {
        ProduceError(format!("relay cannot serve this object: {why}"))
    }
}

impl Downloadable for ByteObject {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        let size = self.size();
        let n = match state {
            None => 0,
            Some(s) => match s.get_u64(RECEIVED_BYTES) {
                Ok(n) => n.unwrap_or(0),
                Err(e) => {
                    return Ok(Produced::Invalid {
                        reason: format!("bad request state: {e}"),
                    })
                }
            },
        };
        if n >= size {
            // EOF only for verified content: the last word waits for the digest.
            return match self.spill.wait_verified(self.wait) {
                Ok(()) => Ok(Produced::Eof),
                Err(why) => Err(self.failed(&why)),
            };
        }
        let end = size.min(n + self.chunk);
        self.spill.wait_for(n, end, self.wait).map_err(|why| {
            tracing::warn!(requester, %why, "relay pull failed");
            self.failed(&why)
        })?;
        let buf = self
            .spill
            .read(n, (end - n) as usize)
            .map_err(|e| ProduceError(format!("reading the relay's copy at {n}: {e}")))?;
        Ok(Produced::Data {
            data: ChunkData::Bytes(Bytes::from(buf)),
            state: State::new().with(RECEIVED_BYTES, end),
        })
    }

    /// Bytes that arrived and sit in the page cache are served on the async thread, without
    /// a produce slot: pulls waiting for bytes still on their way (which hold a slot each)
    /// never hold up receivers asking for bytes the relay has.
    fn try_produce_now(
        &self,
        state: Option<&State>,
        _requester: &str,
    ) -> Option<Result<Produced, ProduceError>> {
        let n = state.map_or(Some(0), |s| s.get_u64(RECEIVED_BYTES).ok()?.or(Some(0)))?;
        let size = self.size();
        if n >= size {
            return None;
        }
        let end = size.min(n + self.chunk);
        match self.spill.read_now(n, (end - n) as usize)? {
            Ok(buf) => Some(Ok(Produced::Data {
                data: ChunkData::Bytes(Bytes::from(buf)),
                state: State::new().with(RECEIVED_BYTES, end),
            })),
            Err(_) => None,
        }
    }

    fn plan(&self) -> Option<TransferPlan> {
        let pin = self.spill.pin();
        Some(TransferPlan {
            layout: PlanLayout::Bytes {
                total: pin.size,
                chunk: self.chunk,
            },
            total_bytes: Some(pin.size),
            blake3: Some(pin.hex()),
        })
    }
}
