//! The error enum of the engine layer: everything a caller of [`Service`](crate::Service),
//! [`Download`](crate::Download) or [`SourceFailureTable`](crate::SourceFailureTable) can
//! get wrong.

use crate::{FqcnError, PlanError, RefId, TxId};

/// A call into the engine was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transaction id is live, settling, or has an unexpired outcome receipt.
    #[error("transaction id {0} is already in use")]
    TxIdInUse(TxId),
    /// The transaction id's previous life still has pulls in flight past its drain deadline.
    #[error("transaction {0} has not fully terminated")]
    TxNotTerminated(TxId),
    /// No live transaction with this id.
    #[error("unknown transaction {0}")]
    UnknownTransaction(TxId),
    /// The transaction is settling (finished, timed out or deleted): no more objects.
    #[error("transaction {0} is no longer accepting objects")]
    TransactionNotLive(TxId),
    /// The ref id is already registered in a live transaction.
    #[error("ref id {0} is already in use")]
    RefIdInUse(RefId),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// An FQCN (receiver id, source) breaks NVFlare's rules.
    #[error("invalid FQCN: {0}")]
    InvalidFqcn(#[from] FqcnError),
    /// An object advertised an unusable transfer plan.
    #[error("invalid transfer plan: {0}")]
    InvalidPlan(#[from] PlanError),
    /// A source-failure notice was refused (the reply is `invalid_request`).
    #[error("invalid source-failure notice: {0}")]
    InvalidNotice(String),
    /// The service was shut down.
    #[error("the download service is shut down")]
    ShutDown,
}
