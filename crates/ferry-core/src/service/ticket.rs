//! What a request dispatch yields: a reply to send at once, or a pull ticket to produce; and
//! the snapshots the engine hands out.

use crate::message::Reply;
use crate::{
    DownloadStatus, Downloadable, ProduceError, Produced, RefId, State, TransferPlan, TxId,
};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The result of dispatching a topic-A request.
#[derive(Debug)]
#[must_use = "a reply must be sent, and a pull ticket produced and finished (a dropped ticket holds its transaction's settlement until the drain timeout)"]
pub enum Handled {
    /// Answer with this at once (confirm/cancel acknowledgement, invalid request, replay).
    Reply(Reply),
    /// A pull to serve: run [`PullTicket::produce`], then [`Service::finish_pull`](super::Service::finish_pull).
    Pull(PullTicket),
}

/// A validated pull in flight. Holding one keeps its transaction from settling (up to the drain
/// timeout); give it back with [`Service::finish_pull`](super::Service::finish_pull) exactly once.
#[must_use = "a dropped ticket holds its transaction's settlement until the drain timeout: finish or abandon it"]
pub struct PullTicket {
    /// Engine-wide ticket number.
    pub(crate) id: u64,
    /// The transaction.
    pub(crate) tx_id: TxId,
    /// The ref.
    pub(crate) ref_id: RefId,
    /// The ref's index in its transaction (stable: refs are never removed).
    pub(crate) ref_index: usize,
    /// The requester's FQCN.
    pub(crate) receiver: String,
    /// The state the receiver sent.
    pub(crate) state: Option<State>,
    /// The receiver said `confirm_capable`.
    pub(crate) confirm_capable: bool,
    /// The plan to advertise (first request of a planned object only).
    pub(crate) plan: Option<TransferPlan>,
    /// The object to produce from.
    pub(crate) object: Arc<dyn Downloadable>,
}

impl PullTicket {
    /// Run the object's `produce` for this request (outside the engine; any thread).
    pub fn produce(&self) -> Result<Produced, ProduceError> {
        self.object.produce(self.state.as_ref(), &self.receiver)
    }

    /// Run the object's [`try_produce_now`](Downloadable::try_produce_now): the chunk, if it can
    /// be made without blocking.
    pub fn try_produce_now(&self) -> Option<Result<Produced, ProduceError>> {
        self.object
            .try_produce_now(self.state.as_ref(), &self.receiver)
    }

    /// The transaction.
    pub fn tx_id(&self) -> &TxId {
        &self.tx_id
    }

    /// The ref.
    pub fn ref_id(&self) -> &RefId {
        &self.ref_id
    }

    /// The requester.
    pub fn receiver(&self) -> &str {
        &self.receiver
    }

    /// The state sent by the requester.
    pub fn state(&self) -> Option<&State> {
        self.state.as_ref()
    }

    /// The object.
    pub fn object(&self) -> &Arc<dyn Downloadable> {
        &self.object
    }
}

impl fmt::Debug for PullTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullTicket")
            .field("id", &self.id)
            .field("tx_id", &self.tx_id)
            .field("ref_id", &self.ref_id)
            .field("receiver", &self.receiver)
            .field("state", &self.state)
            .field("confirm_capable", &self.confirm_capable)
            .finish_non_exhaustive()
    }
}

/// A snapshot of a transaction (NVFlare's `TransactionInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionInfo {
    /// Inactivity timeout.
    pub timeout: Duration,
    /// Expected receivers (0 = unknown).
    pub num_receivers: usize,
    /// Its refs, in insertion order.
    pub ref_ids: Vec<RefId>,
    /// `false` once it is settling.
    pub live: bool,
    /// Pull tickets outstanding.
    pub in_flight: usize,
}

/// A provisional terminal serve waiting for its confirm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingConfirm {
    /// The ref.
    pub ref_id: RefId,
    /// The receiver.
    pub receiver: String,
    /// The status that was served.
    pub status: DownloadStatus,
}
