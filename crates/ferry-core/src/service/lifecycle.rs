//! Transactions and their objects: creation, registration, deletion, shutdown.

use super::output::{HookCall, Queued};
use super::tx::{RefEntry, Tx};
use super::{Service, TxConfig};
use crate::{DoneStatus, Downloadable, Error, RefId, TxId};
use std::sync::Arc;
use std::time::Instant;

impl Service {
    // ----------------------------------------------------------------------------------------
    // transactions and objects

    /// Create a transaction (NVFlare `new_transaction`). Errors: invalid settings, or a
    /// caller-chosen id that is live, settling, still has an unexpired outcome receipt, or whose
    /// previous life has pulls in flight past its drain deadline (§3.6).
    pub fn new_transaction(&mut self, mut cfg: TxConfig, now: Instant) -> Result<TxId, Error> {
        let now = self.clock.advance(now);
        if self.shut_down {
            return Err(Error::ShutDown);
        }
        if cfg.timeout.is_zero() {
            return Err(Error::InvalidConfig("timeout must be > 0".into()));
        }
        let expect = cfg.expected_receivers()?;
        let num_receivers = expect.count();
        if let Some(k) = cfg.min_receivers {
            if k == 0 || (num_receivers > 0 && k > num_receivers) {
                return Err(Error::InvalidConfig(format!(
                    "min_receivers {k} must be in 1..={num_receivers}"
                )));
            }
        }
        for (name, b) in [
            ("acquire_timeout", cfg.acquire_timeout),
            ("idle_timeout", cfg.idle_timeout),
            ("reconnect_timeout", cfg.reconnect_timeout),
        ] {
            if b.is_some_and(|d| d.is_zero()) {
                return Err(Error::InvalidConfig(format!("{name} must be > 0")));
            }
        }
        if cfg.idle_timeout.is_some_and(|i| i >= cfg.timeout) {
            tracing::warn!("idle_timeout >= transaction timeout: the idle budget can never fire");
        }
        if cfg.acquire_timeout.is_some() && expect.ids().is_none() {
            tracing::warn!("acquire_timeout without receiver_ids: the acquire budget never fires");
        }
        let id = match cfg.tx_id.take() {
            None => loop {
                let id = self.ids.tx_id();
                if !self.txs.contains(&id) {
                    break id;
                }
            },
            Some(id) => {
                if self.txs.contains(&id) || self.outcomes.contains(&id, now) {
                    return Err(Error::TxIdInUse(id));
                }
                if self.leaked.contains_key(&id) || self.unrecorded.contains(&id) {
                    return Err(Error::TxNotTerminated(id));
                }
                id
            }
        };
        tracing::debug!(tx = %id, num_receivers, "new transaction");
        self.txs.insert(Tx::new(id.clone(), cfg, expect, now));
        Ok(id)
    }

    /// Register `obj` in a live transaction (NVFlare `add_object`): mints `R<uuid4>` unless
    /// `ref_id` is given, queues `obj.set_transaction` (with the receivers the transaction
    /// expects) as the next hook, and clears any stale tombstone of that id.
    pub fn add_object(
        &mut self,
        tx_id: &TxId,
        obj: Arc<dyn Downloadable>,
        ref_id: Option<RefId>,
        now: Instant,
    ) -> Result<RefId, Error> {
        let now = self.clock.advance(now);
        if self.shut_down {
            return Err(Error::ShutDown);
        }
        if ref_id.as_ref().is_some_and(|r| r.as_str().is_empty()) {
            return Err(Error::InvalidConfig("ref id is empty".into()));
        }
        let tx = self
            .txs
            .get(tx_id)
            .ok_or_else(|| Error::UnknownTransaction(tx_id.clone()))?;
        if !tx.is_live() {
            return Err(Error::TransactionNotLive(tx_id.clone()));
        }
        let expected = tx.expect.clone();
        let rid = match ref_id {
            Some(r) if self.txs.has_ref(&r) => return Err(Error::RefIdInUse(r)),
            Some(r) => r,
            None => loop {
                let r = self.ids.ref_id();
                if !self.txs.has_ref(&r) {
                    break r;
                }
            },
        };
        let plan = obj.plan();
        if let Some(p) = &plan {
            p.validate()?;
        }
        let (o, r) = (obj.clone(), rid.clone());
        let t = tx_id.clone();
        self.out.push_back(Queued::Hook(HookCall::new(
            "set_transaction",
            tx_id,
            move || o.set_transaction(&t, &r, &expected),
        )));
        self.tombstones.remove(&rid);
        self.ended.remove(&rid);
        self.txs
            .add_ref(tx_id, RefEntry::new(rid.clone(), obj, plan, now));
        Ok(rid)
    }

    /// Delete a live transaction (NVFlare `delete_transaction`): it settles as DELETED, at once
    /// if no pull is in flight, otherwise as soon as they finish (or the drain timeout passes).
    pub fn delete_transaction(&mut self, tx_id: &TxId, now: Instant) -> Result<(), Error> {
        let now = self.clock.advance(now);
        let tx = self
            .txs
            .get(tx_id)
            .ok_or_else(|| Error::UnknownTransaction(tx_id.clone()))?;
        if !tx.is_live() {
            return Err(Error::TransactionNotLive(tx_id.clone()));
        }
        self.retire(tx_id, DoneStatus::Deleted, true, now);
        self.settle_due(now);
        Ok(())
    }

    /// Stop the service: every transaction settles as DELETED without recording its outcome
    /// (its hooks and callbacks all run: `transaction_done`, `on_done`, `on_outcome`,
    /// `release`), tombstones and outcomes are dropped, and every later call is refused
    /// ([`Error::ShutDown`], or `service_unavailable` to peers). Transactions with pulls in
    /// flight settle when those come back or their drain timeout passes, so a driver keeps
    /// calling [`handle_timeout`](Self::handle_timeout) until
    /// [`transaction_count`](Self::transaction_count) is 0.
    pub fn shutdown(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        self.shut_down = true;
        let live = self.live_tx_ids();
        for id in live {
            self.retire(&id, DoneStatus::Deleted, false, now);
        }
        self.txs.for_each_mut(Tx::forget_outcome);
        self.tombstones.clear();
        self.ended.clear();
        self.outcomes.clear();
        self.unrecorded.clear();
        self.settle_due(now);
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }
}
