//! [`TransferWaiter`]: await a transaction's [`TransferOutcome`]; and what it needs from the
//! service below it: the [`OutcomeSource`] the service implements and the table of
//! [`ParkedWaiters`] the service resolves. The service hands out waiters; this module knows
//! nothing of the service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ferry_core::{DoneStatus, TransferOutcome, TxId};
use tokio::sync::oneshot;

use crate::runtime::lock;

/// A parked waiter's end of the channel: `None` when the id is unknown, the outcome was not
/// kept, or the service shut down.
pub(crate) type Parked = oneshot::Receiver<Option<TransferOutcome>>;

/// What a [`TransferWaiter`] asks of the service that runs its transaction.
pub(crate) trait OutcomeSource: std::fmt::Debug + Send + Sync {
    /// The outcome at once (`Ok(Some)`), `Ok(None)` when none will come (unknown id, service
    /// shut down), or a parked waiter resolved when the outcome is recorded.
    fn park(&self, tx_id: &TxId) -> Result<Option<TransferOutcome>, Parked>;
    /// The recorded outcome, if any.
    fn outcome(&self, tx_id: &TxId) -> Option<TransferOutcome>;
    /// Whether `tx_id` will still get an outcome.
    fn is_pending(&self, tx_id: &TxId) -> bool;
    /// Receivers that pulled at least once in the transaction.
    fn acquired_receivers(&self, tx_id: &TxId) -> Vec<String>;
}

/// Waiters parked until their transaction's outcome is recorded, by transaction.
#[derive(Debug, Default)]
pub(crate) struct ParkedWaiters(
    Mutex<HashMap<TxId, Vec<oneshot::Sender<Option<TransferOutcome>>>>>,
);

impl ParkedWaiters {
    /// Park a waiter for `tx_id`.
    pub(crate) fn park(&self, tx_id: &TxId) -> Parked {
        let (tx, rx) = oneshot::channel();
        lock(&self.0).entry(tx_id.clone()).or_default().push(tx);
        rx
    }

    /// Resolve every waiter parked for `tx_id` with `outcome`.
    pub(crate) fn resolve(&self, tx_id: &TxId, outcome: Option<&TransferOutcome>) {
        let parked = lock(&self.0).remove(tx_id);
        for w in parked.into_iter().flatten() {
            let _ = w.send(outcome.cloned());
        }
    }

    /// Transactions with parked waiters.
    pub(crate) fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// Resolve every parked waiter with `None` (the service shut down).
    pub(crate) fn close(&self) {
        for (_, ws) in lock(&self.0).drain() {
            for w in ws {
                let _ = w.send(None);
            }
        }
    }
}

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
    /// The service running the transaction.
    service: Arc<dyn OutcomeSource>,
    tx_id: TxId,
    /// The outcome once seen, shared by the clones.
    seen: Arc<OnceLock<TransferOutcome>>,
    /// How long `wait` stays after a FINISHED outcome.
    linger: Duration,
}

impl TransferWaiter {
    pub(crate) fn new(service: Arc<dyn OutcomeSource>, tx_id: TxId) -> Self {
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
                let found = match self.service.park(&self.tx_id) {
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
