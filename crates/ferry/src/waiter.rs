//! [`TransferWaiter`]: await a transaction's [`TransferOutcome`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry_core::{DoneStatus, TransferOutcome, TxId};

use crate::service::DownloadService;

/// Awaits the outcome of one transaction (NVFlare's `TransferWaiter`).
///
/// Resolves after the settlement ceremony: every hook and callback ran and the objects were
/// released. Never hangs on a transaction that can't end: an unknown or forgotten id, or a
/// shut-down service, resolves to `None` at once.
///
/// Once a waiter has seen its outcome it keeps it, in every clone, for as long as the waiter
/// lives — also after the service's receipt expired (its `outcome_ttl`, 30 minutes by
/// default), as NVFlare's waiter resolves a recorded outcome however old. With a
/// [`linger`](Self::with_linger), `wait` returns a FINISHED outcome only after that much more
/// time, so the process (and the tombstones that answer receivers retrying their last request)
/// stays up a little after the last receiver was counted.
#[derive(Clone, Debug)]
pub struct TransferWaiter {
    service: DownloadService,
    tx_id: TxId,
    /// The outcome once seen, shared by the clones.
    seen: Arc<OnceLock<TransferOutcome>>,
    /// How long `wait` stays after a FINISHED outcome.
    linger: Duration,
}

impl TransferWaiter {
    pub(crate) fn new(service: DownloadService, tx_id: TxId) -> Self {
        Self {
            service,
            tx_id,
            seen: Arc::default(),
            linger: Duration::ZERO,
        }
    }

    /// This waiter with a linger (NVFlare's `wait(linger=...)`): after an outcome whose
    /// transaction FINISHED (completed or not), [`wait`](Self::wait) returns only `linger`
    /// later. No linger after a timeout or a delete: nobody is left to answer.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The transaction id.
    pub fn tx_id(&self) -> &TxId {
        &self.tx_id
    }

    /// Wait for the outcome; `None` if the id is unknown, its outcome was forgotten before
    /// this waiter saw it, or the service shut down.
    pub async fn wait(&self) -> Option<TransferOutcome> {
        let outcome = match self.seen.get() {
            Some(o) => o.clone(),
            None => {
                let found = match self.service.park_waiter(&self.tx_id) {
                    Ok(resolved) => resolved,
                    Err(rx) => rx.await.unwrap_or(None),
                }?;
                self.seen.get_or_init(|| found).clone()
            }
        };
        if outcome.done_status == DoneStatus::Finished && !self.linger.is_zero() {
            tokio::time::sleep(self.linger).await;
        }
        Some(outcome)
    }

    /// Wait at most `timeout`; `None` on timeout too (use [`TransferWaiter::done`] to tell).
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<TransferOutcome> {
        tokio::time::timeout(timeout, self.wait())
            .await
            .unwrap_or(None)
    }

    /// The outcome if it is known (never waits): the one this waiter saw, else the service's
    /// receipt.
    pub fn outcome(&self) -> Option<TransferOutcome> {
        if let Some(o) = self.seen.get() {
            return Some(o.clone());
        }
        let o = self.service.outcome(&self.tx_id)?;
        Some(self.seen.get_or_init(|| o).clone())
    }

    /// Whether the transaction is over (its outcome known, or the id no longer known).
    pub fn done(&self) -> bool {
        self.outcome().is_some() || !self.service.is_pending(&self.tx_id)
    }

    /// Receivers that pulled at least once.
    pub fn acquired_receivers(&self) -> Vec<String> {
        self.service.acquired_receivers(&self.tx_id)
    }
}
