//! What the producer engine hands its driver: lifecycle events, and the object hooks and
//! transaction callbacks to run, in NVFlare's order, outside whatever lock guards the engine.

use crate::{DownloadStatus, ProgressEvent, RefId, Refusal, TransferOutcome, TxId};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// What the producer engine tells its driver.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceEvent {
    /// A receiver reached its FINAL status on a ref. Once per (ref, receiver), except that a
    /// FAILED receiver that comes back while the transaction is live (see
    /// [`ServiceConfig::reopen_failed`](crate::ServiceConfig::reopen_failed)) reports its new
    /// final status again.
    DownloadedToOne {
        /// The transaction.
        tx_id: TxId,
        /// The ref.
        ref_id: RefId,
        /// The receiver.
        receiver: String,
        /// Its final status.
        status: DownloadStatus,
        /// What made it final.
        cause: FinalCause,
    },
    /// A ref became complete (once per ref).
    DownloadedToAll {
        /// The transaction.
        tx_id: TxId,
        /// The ref.
        ref_id: RefId,
    },
    /// The transaction was settled (exactly once per transaction), after every hook and
    /// callback ran and the objects were released.
    TransactionDone {
        /// The outcome (also queryable with [`Service::outcome`](super::Service::outcome)
        /// when recorded).
        outcome: TransferOutcome,
        /// `false` on shutdown: the outcome was not kept.
        recorded: bool,
    },
    /// A progress report (only for transactions with a progress interval).
    Progress(ProgressEvent),
    /// A count-mode receiver gave its place back without a final status: it cancelled (so
    /// another receiver, or itself later, may take the place), or its connection had closed
    /// and a new receiver took the place. Ferry only; see
    /// [`ServiceConfig::count_slots`](crate::ServiceConfig::count_slots).
    ReceiverWithdrew {
        /// The transaction.
        tx_id: TxId,
        /// The receiver that left.
        receiver: String,
        /// The receiver that took its place after its connection closed (`None`: it cancelled).
        replaced_by: Option<String>,
    },
    /// A pull was refused because of who sent it (not on the list, or no place left). Nothing
    /// was recorded for that cell. Ferry only.
    Refused {
        /// The transaction.
        tx_id: TxId,
        /// The ref it asked for.
        ref_id: RefId,
        /// Who asked.
        receiver: String,
        /// Why it was refused.
        refusal: Refusal,
    },
}

/// What made a receiver's status final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinalCause {
    /// A terminal serve to a receiver that does not confirm (R3): `eof` is SUCCESS, a producer
    /// `error` FAILED.
    Served,
    /// The receiver confirmed (R6).
    Confirmed,
    /// The receiver cancelled (R7).
    Cancelled,
    /// A declared receiver never pulled within the acquire budget (R8).
    AcquireBudget,
    /// The receiver was silent for longer than the idle budget (R8).
    IdleBudget,
    /// The receiver's connection closed and it did not come back within the transaction's
    /// reconnect budget (ferry: [`TxConfig::with_reconnect_timeout`](crate::TxConfig::with_reconnect_timeout)).
    Disconnected,
}

impl FinalCause {
    /// A short description, for logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Served => "served",
            Self::Confirmed => "confirmed by the receiver",
            Self::Cancelled => "cancelled by the receiver",
            Self::AcquireBudget => "never pulled within the acquire budget",
            Self::IdleBudget => "silent for longer than the idle budget",
            Self::Disconnected => "connection lost and not back within the reconnect budget",
        }
    }
}

/// An object hook (`set_transaction`, `downloaded_to_one`, `downloaded_to_all`,
/// `transaction_done`, `release`) or a transaction callback (`on_done`, `on_outcome`) the
/// engine wants run. Run it with [`HookCall::run`], outside any lock around the engine, in the
/// order the engine queued it.
pub struct HookCall {
    /// Which hook, for logs.
    what: &'static str,
    /// The transaction it belongs to.
    tx_id: TxId,
    /// The call.
    call: Box<dyn FnOnce() + Send>,
}

impl HookCall {
    pub(crate) fn new(
        what: &'static str,
        tx_id: &TxId,
        call: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self {
            what,
            tx_id: tx_id.clone(),
            call: Box::new(call),
        }
    }

    /// Which hook or callback this is (`"release"`, `"on_done"`, ...).
    pub fn name(&self) -> &'static str {
        self.what
    }

    /// The transaction it belongs to.
    pub fn tx_id(&self) -> &TxId {
        &self.tx_id
    }

    /// Run it. A panic is caught and logged (NVFlare: a raising callback is logged and
    /// skipped; the ceremony continues).
    pub fn run(self) {
        let Self { what, tx_id, call } = self;
        if catch_unwind(AssertUnwindSafe(call)).is_err() {
            tracing::error!(hook = what, tx = %tx_id, "hook panicked; continuing");
        }
    }
}

impl fmt::Debug for HookCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookCall")
            .field("what", &self.what)
            .field("tx_id", &self.tx_id)
            .finish_non_exhaustive()
    }
}

/// One output of the engine, in order: run hooks, deliver events.
#[derive(Debug)]
pub enum ServiceOutput {
    /// Run this hook (outside the engine's lock), before handling the next output.
    Hook(HookCall),
    /// Deliver this event.
    Event(ServiceEvent),
}

/// An output as queued inside the engine. A settlement's outcome is recorded only when its
/// `TransactionDone` is polled, i.e. after the driver ran every hook queued before it
/// (NVFlare: "record outcome & wake waiters" comes last).
pub(crate) enum Queued {
    Hook(HookCall),
    Event(ServiceEvent),
    Settled {
        outcome: TransferOutcome,
        recorded: bool,
        at: Instant,
    },
}
