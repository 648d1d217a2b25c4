//! Delivery of the producer engine's outputs: object hooks and transaction callbacks run, and
//! events published, in the engine's order, with the engine unlocked and one dispatcher at a
//! time (see the [`service`](crate::service) docs).

use std::sync::atomic::Ordering;
use std::sync::{Arc, TryLockError};

use ferry_core::service::{ServiceEvent, ServiceOutput};

use crate::runtime::lock;
use crate::service::Inner;

impl Inner {
    /// Deliver the engine's outputs in order (hooks run, events published), unless another
    /// thread is doing it: that one delivers ours too, in order. A hook that calls the service
    /// lands here with the dispatcher held by its own thread and returns at once; its outputs
    /// are delivered after it.
    pub(crate) fn dispatch(&self) {
        loop {
            {
                let _one = match self.dispatch.try_lock() {
                    Ok(g) => g,
                    // Hooks are caught, so a poisoned guard protects nothing broken.
                    Err(TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(TryLockError::WouldBlock) => return,
                };
                loop {
                    let next = lock(&self.engine).poll_output();
                    match next {
                        Some(out) => self.deliver(out),
                        None => break,
                    }
                }
            }
            // Outputs queued after our last poll whose producer saw us busy: ours to deliver.
            if !lock(&self.engine).has_output() {
                return;
            }
        }
    }

    /// Dispatch on the blocking pool; at most one such task is scheduled at a time. Outside a
    /// runtime (a ticket dropped while the runtime goes away) it dispatches right here.
    pub(crate) fn dispatch_in_background(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.dispatch();
        }
        if self.dispatch_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || loop {
            me.dispatch();
            me.dispatch_scheduled.store(false, Ordering::Release);
            let more = lock(&me.engine).has_output();
            if !more || me.dispatch_scheduled.swap(true, Ordering::AcqRel) {
                break;
            }
        });
    }

    /// Deliver everything queued, waiting for a dispatcher on another thread if there is one.
    pub(crate) fn dispatch_wait(&self) {
        loop {
            drop(lock(&self.dispatch));
            self.dispatch();
            if !lock(&self.engine).has_output() {
                return;
            }
        }
    }

    /// Run one hook, or publish one event.
    fn deliver(&self, out: ServiceOutput) {
        let ev = match out {
            ServiceOutput::Hook(hook) => {
                tracing::trace!(hook = hook.name(), tx = %hook.tx_id(), "running hook");
                return hook.run();
            }
            ServiceOutput::Event(ev) => ev,
        };
        let done = match &ev {
            ServiceEvent::TransactionDone { outcome, recorded } => {
                // Its objects produce no more chunks: their learnt sizes go with them.
                self.sizes
                    .forget(outcome.refs.iter().map(|(ref_id, _)| ref_id));
                tracing::info!(
                    tx = %outcome.tx_id,
                    status = outcome.status.as_str(),
                    reason = %outcome.reason,
                    recorded,
                    "transaction done"
                );
                Some((outcome.clone(), *recorded))
            }
            _ => None,
        };
        // No subscriber is fine: events are optional for users.
        let _ = self.events.send(ev);
        // Waiters last (NVFlare: "record outcome & wake waiters"): whoever wakes up sees
        // the TransactionDone event already published.
        if let Some((outcome, recorded)) = done {
            let kept = recorded.then_some(&outcome);
            self.waiters.resolve(&outcome.tx_id, kept);
            self.settled.notify_waiters();
        }
    }
}
