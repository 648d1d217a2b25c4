//! The producer engine: transactions, refs, the per-(ref, receiver) lifecycle, confirm/cancel,
//! budgets, settlement and outcomes — NVFlare's Download Service as a sans-IO state machine.
//!
//! # Driving it
//!
//! ```
//! use ferry_core::{Handled, Service, ServiceConfig, ServiceOutput, TxConfig};
//! use ferry_core::message::{DownloadRequest, PullRequest};
//! use ferry_core::testing::BytesObject;
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//!
//! let t0 = Instant::now();
//! let mut svc = Service::new(ServiceConfig::default());
//! let tx = svc.new_transaction(TxConfig::new(Duration::from_secs(60)).with_num_receivers(1), t0)?;
//! let rid = svc.add_object(&tx, Arc::new(BytesObject::new(vec![1u8; 10], 4)), None, t0)?;
//!
//! // A request arrived from "site-1" (the glue decoded the payload):
//! let req = DownloadRequest::Pull(PullRequest { ref_id: rid.clone(), state: None, confirm_capable: None });
//! let reply = match svc.handle_request("site-1", req, t0) {
//!     Handled::Reply(reply) => reply,               // confirm/cancel/invalid: send at once
//!     Handled::Pull(ticket) => {
//!         let produced = ticket.produce();          // may run on another thread
//!         svc.finish_pull(ticket, produced, t0)     // records the result, builds the reply
//!     }
//! };
//! assert!(reply.body.is_some());
//! // After every call: run the queued hooks and deliver the events (outside any lock you hold
//! // around the engine), then re-arm the timer.
//! while let Some(out) = svc.poll_output() {
//!     match out {
//!         ServiceOutput::Hook(hook) => hook.run(),
//!         ServiceOutput::Event(ev) => { let _ = ev; }
//!     }
//! }
//! if let Some(at) = svc.poll_timeout() { svc.handle_timeout(at); }
//! # Ok::<(), ferry_core::Error>(())
//! ```
//!
//! # Hooks run outside the engine
//!
//! The engine never calls an object hook or a transaction callback itself: it queues them, in
//! NVFlare's order, among the events ([`ServiceOutput::Hook`]). A driver that guards the engine
//! with a lock polls them under the lock and runs them after releasing it, so a hook may call
//! back into the service and a slow hook does not stall other requests.
//! [`poll_event`](Service::poll_event) is the simple alternative: it runs the hooks queued
//! before the next event right there.
//!
//! # Where ferry departs from NVFlare
//!
//! Pinned by tests and explained in `docs/protocol.md`: in count mode the first
//! `num_receivers` receivers with a valid pull hold the places and others are refused at once
//! ([`ServiceConfig::count_slots`]), and a count-mode cancel gives the place back instead of
//! failing; a FAILED receiver that comes back while the transaction is live resumes and counts
//! ([`ServiceConfig::reopen_failed`]); a request with a state the object could not have
//! produced is `invalid_request` and records nothing ([`Produced::Invalid`]); refusals carry a
//! typed [`Refusal`]; a receiver whose connection closed can be failed after a reconnect
//! budget ([`TxConfig::with_reconnect_timeout`]).
//!
//! # NVFlare's rules, as labelled in this module and its tests
//!
//! Comments and test names cite NVFlare's producer rules (`nvflare.fuel.f3.streaming.download_service`)
//! by these labels:
//!
//! | label | rule |
//! |---|---|
//! | R1 | every valid pull marks the transaction, the receiver (acquired) and the ref active, and emits `active` progress |
//! | R2 | a data serve changes no status |
//! | R3 | a terminal serve to a receiver that does not confirm (or with confirmation off) is final — success for `eof`, failed for `error` — unless a final status exists (first final wins); it fires `downloaded_to_one`, and `downloaded_to_all` once the ref is complete |
//! | R4 | a terminal serve to a confirm-capable receiver is provisional with a fresh nonce (none if already final) |
//! | R5 | a failing `produce` changes no status and replies `process_exception` |
//! | R6 | a confirm counts only for a provisional receiver with the matching nonce; only an accepted one refreshes the transaction |
//! | R7 | a cancel from a receiver that pulled fails it on every ref of the transaction; from others it is ignored |
//! | R8 | the acquire budget fails a declared receiver that never pulled, the idle budget one that fell silent; a later confirm is rejected |
//! | R9 | a timeout, delete or shutdown writes no per-receiver status |
//! | R10 | terminal progress is latched per receiver, and settlement forces it for receivers that started |
//! | §3.2 | completion: a ref is complete when every declared receiver (identity mode) or `num_receivers` receivers (count mode) are final; a transaction when it has refs and all are complete |
//! | §3.3 | how a transaction ends (finished, timeout, delete, shutdown) and what it leaves: tombstones only when finished; finished beats expired in one pass |
//! | §3.4 | the settlement ceremony, in order: drain the activity gate, compute the outcome, terminal progress, `transaction_done` per ref, `on_done`, `on_outcome`, `release` per ref, record the outcome and resolve waiters |
//! | §3.5 | the outcome, in order: all succeeded → completed; deleted → aborted; timeout → failed; finished → failed (unknown receiver count, no objects, receiver failed) |
//! | §3.6 | a transaction id is reusable only once its outcome expired and its settlement and pulls are over; waiters resolve with the recorded outcome, or `None` |
//! | §1.5 | progress events per (ref, receiver): throttled, first and terminal ones forced |

mod config;
mod lifecycle;
mod output;
mod pull;
mod receivers;
mod rules;
mod settle;
mod table;
mod ticket;
mod tx;

pub use config::{
    DoneCallback, OutcomeCallback, ServiceConfig, TxConfig, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_PROGRESS_INTERVAL, DEFAULT_RECEIPT_TTL,
};
pub use output::{FinalCause, HookCall, ServiceEvent, ServiceOutput};
pub use ticket::{Handled, PendingConfirm, PullTicket, TransactionInfo};

use crate::ids::IdSource;
use crate::time::Clock;
use crate::ttl::TtlMap;
use crate::{DoneStatus, DownloadStatus, RefId, TransferOutcome, TxId};
use output::Queued;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Instant;
use table::TxTable;
use tx::Tx;

#[cfg(doc)]
use crate::{Produced, Refusal};

/// The producer engine. See the [module docs](self).
pub struct Service {
    /// Settings.
    config: ServiceConfig,
    /// Monotonic virtual time (unset before the first call).
    clock: Clock,
    /// Where minted ids and nonces come from (OS randomness, or seeded: `id_seed`).
    ids: IdSource,
    /// Live and settling transactions, indexed by id, by ref and by next deadline. Iterated in
    /// creation order, so simultaneous settlements happen in a deterministic order.
    txs: TxTable,
    /// Finished-ref tombstones: ref -> FINAL statuses at settlement.
    tombstones: TtlMap<RefId, BTreeMap<String, DownloadStatus>>,
    /// Refs of transactions that timed out or were deleted: still fatal (`invalid_request`, as
    /// in NVFlare), but answered with [`Refusal::TransactionFinished`] rather than "unknown".
    /// Same TTL and cap as the tombstones.
    ended: TtlMap<RefId, DoneStatus>,
    /// Outcome receipts.
    outcomes: TtlMap<TxId, TransferOutcome>,
    /// Settled transactions whose outcome is queued but not yet polled (so not recorded yet):
    /// their ids are not reusable until it is.
    unrecorded: HashSet<TxId>,
    /// Settled transactions that still had tickets out when their drain deadline passed:
    /// their ids stay unusable until those tickets come back.
    leaked: HashMap<TxId, usize>,
    /// Outstanding tickets: id -> transaction.
    tickets: HashMap<u64, TxId>,
    /// Next ticket id.
    next_ticket: u64,
    /// Hooks and events not yet polled, in order.
    out: VecDeque<Queued>,
    /// Set by [`shutdown`](Self::shutdown).
    shut_down: bool,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("transactions", &self.txs.len())
            .field("tombstones", &self.tombstones.len())
            .field("outcomes", &self.outcomes.len())
            .field("tickets", &self.tickets.len())
            .field("queued", &self.out.len())
            .field("shut_down", &self.shut_down)
            .finish()
    }
}

impl Service {
    /// A service with no transactions.
    pub fn new(config: ServiceConfig) -> Self {
        Self {
            tombstones: TtlMap::new(config.tombstone_ttl, config.max_tombstones),
            ended: TtlMap::new(config.tombstone_ttl, config.max_tombstones),
            outcomes: TtlMap::new(config.outcome_ttl, config.max_outcomes),
            ids: IdSource::from_seed(config.id_seed),
            config,
            clock: Clock::default(),
            txs: TxTable::default(),
            unrecorded: HashSet::new(),
            leaked: HashMap::new(),
            tickets: HashMap::new(),
            next_ticket: 0,
            out: VecDeque::new(),
            shut_down: false,
        }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The ids of the live (not settling) transactions, copied so the caller may retire them.
    fn live_tx_ids(&self) -> Vec<TxId> {
        self.txs.ids_where(Tx::is_live)
    }

    // ----------------------------------------------------------------------------------------
    // outputs

    /// The next output: a hook to run or an event to deliver, in the order the engine queued
    /// them. Run each hook before handling the next output, outside any lock around the
    /// engine. A settlement's outcome is recorded (queryable with [`outcome`](Self::outcome))
    /// when its [`ServiceEvent::TransactionDone`] is polled, i.e. after its hooks were handed
    /// out.
    #[must_use = "an output not handled is a hook that never runs or an event that is lost"]
    pub fn poll_output(&mut self) -> Option<ServiceOutput> {
        Some(match self.out.pop_front()? {
            Queued::Hook(h) => ServiceOutput::Hook(h),
            Queued::Event(e) => ServiceOutput::Event(e),
            Queued::Settled {
                outcome,
                recorded,
                at,
            } => {
                // Not recorded if the service shut down since (it forgot every id).
                let recorded = self.unrecorded.remove(&outcome.tx_id) && recorded;
                if recorded {
                    self.outcomes
                        .insert(outcome.tx_id.clone(), outcome.clone(), at);
                }
                ServiceOutput::Event(ServiceEvent::TransactionDone { outcome, recorded })
            }
        })
    }

    /// The next event, running the hooks queued before it right here (on the caller's thread,
    /// under whatever lock the caller holds). Drivers that lock the engine should use
    /// [`poll_output`](Self::poll_output) instead.
    #[must_use = "an event polled and dropped is lost"]
    pub fn poll_event(&mut self) -> Option<ServiceEvent> {
        loop {
            match self.poll_output()? {
                ServiceOutput::Hook(h) => h.run(),
                ServiceOutput::Event(e) => return Some(e),
            }
        }
    }

    /// Whether outputs are waiting to be polled.
    #[must_use]
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    // ----------------------------------------------------------------------------------------
    // queries

    /// The recorded outcome of `tx_id`, if still within its TTL.
    #[must_use]
    pub fn outcome(&mut self, tx_id: &TxId, now: Instant) -> Option<TransferOutcome> {
        let now = self.clock.advance(now);
        self.outcomes.get(tx_id, now).cloned()
    }

    /// Whether `tx_id` is live, settling, or settled with its outcome not yet polled: a waiter
    /// for it will get an outcome.
    #[must_use]
    pub fn is_pending(&self, tx_id: &TxId) -> bool {
        self.txs.contains(tx_id) || self.unrecorded.contains(tx_id)
    }

    /// A snapshot of a live or settling transaction.
    #[must_use]
    pub fn transaction_info(&self, tx_id: &TxId) -> Option<TransactionInfo> {
        let tx = self.txs.get(tx_id)?;
        Some(TransactionInfo {
            timeout: tx.timeout,
            num_receivers: tx.expect.count(),
            ref_ids: tx.refs.iter().map(|r| r.id.clone()).collect(),
            live: tx.is_live(),
            in_flight: tx.in_flight(),
        })
    }

    /// The transaction that owns `ref_id` (live or settling).
    #[must_use]
    pub fn transaction_of(&self, ref_id: &RefId) -> Option<&TxId> {
        self.txs.ref_owner(ref_id).map(|(id, _)| id)
    }

    /// Receivers that pulled at least once in `tx_id` and hold their place (empty if unknown).
    #[must_use]
    pub fn acquired_receivers(&self, tx_id: &TxId) -> Vec<String> {
        self.txs
            .get(tx_id)
            .map(|t| t.member_names().cloned().collect())
            .unwrap_or_default()
    }

    /// Provisional serves of `tx_id` still waiting for a confirm.
    #[must_use]
    pub fn pending_confirms(&self, tx_id: &TxId) -> Vec<PendingConfirm> {
        let Some(tx) = self.txs.get(tx_id) else {
            return Vec::new();
        };
        tx.refs
            .iter()
            .flat_map(|r| {
                r.slots.iter().filter_map(|(rcv, s)| {
                    s.pending.as_ref().map(|(st, _)| PendingConfirm {
                        ref_id: r.id.clone(),
                        receiver: rcv.clone(),
                        status: *st,
                    })
                })
            })
            .collect()
    }

    /// The FINAL status of `receiver` on a live or settling ref.
    #[must_use]
    pub fn receiver_status(&self, ref_id: &RefId, receiver: &str) -> Option<DownloadStatus> {
        let (tx_id, ri) = self.txs.ref_owner(ref_id)?;
        self.txs.get(tx_id)?.refs[ri].final_of(receiver)
    }

    /// Number of live and settling transactions.
    #[must_use]
    pub fn transaction_count(&self) -> usize {
        self.txs.len()
    }

    /// Number of tombstoned refs held (bounded by `max_tombstones`).
    #[must_use]
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Number of outcomes held (bounded by `max_outcomes`).
    #[must_use]
    pub fn outcome_count(&self) -> usize {
        self.outcomes.len()
    }

    /// Number of pull tickets outstanding.
    #[must_use]
    pub fn tickets_in_flight(&self) -> usize {
        self.tickets.len()
    }
}

#[cfg(test)]
mod receiver_tests;
#[cfg(test)]
mod tests;
