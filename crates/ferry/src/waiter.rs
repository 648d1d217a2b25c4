//! [`TransferWaiter`]: await a transaction's [`TransferOutcome`].

use std::time::Duration;

use ferry_core::{TransferOutcome, TxId};

use crate::service::DownloadService;

/// Awaits the outcome of one transaction (NVFlare's `TransferWaiter`).
///
/// Resolves after the settlement ceremony: every hook and callback ran and the objects were
/// released. Never hangs on a transaction that can't end: an unknown or forgotten id, or a
/// shut-down service, resolves to `None` at once.
#[derive(Clone, Debug)]
pub struct TransferWaiter {
    service: DownloadService,
    tx_id: TxId,
}

impl TransferWaiter {
    pub(crate) fn new(service: DownloadService, tx_id: TxId) -> Self {
        Self { service, tx_id }
    }

    /// The transaction id.
    pub fn tx_id(&self) -> &TxId {
        &self.tx_id
    }

    /// Wait for the outcome; `None` if the id is unknown, its outcome was forgotten, or the
    /// service shut down.
    pub async fn wait(&self) -> Option<TransferOutcome> {
        match self.service.park_waiter(&self.tx_id) {
            Ok(resolved) => resolved,
            Err(rx) => rx.await.unwrap_or(None),
        }
    }

    /// Wait at most `timeout`; `None` on timeout too (use [`TransferWaiter::done`] to tell).
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<TransferOutcome> {
        tokio::time::timeout(timeout, self.wait())
            .await
            .unwrap_or(None)
    }

    /// The outcome if it is already recorded (never waits).
    pub fn outcome(&self) -> Option<TransferOutcome> {
        self.service.outcome(&self.tx_id)
    }

    /// Whether the transaction is over (its outcome recorded, or the id no longer known).
    pub fn done(&self) -> bool {
        self.outcome().is_some() || self.service.transaction_info(&self.tx_id).is_none()
    }

    /// Receivers that pulled at least once.
    pub fn acquired_receivers(&self) -> Vec<String> {
        self.service.acquired_receivers(&self.tx_id)
    }
}
