//! The producer engine: transactions, refs, the per-(ref, receiver) lifecycle, confirm/cancel,
//! budgets, settlement and outcomes — NVFlare's Download Service as a sans-IO state machine.
//!
//! # Driving it
//!
//! ```
//! use ferry_core::{Handled, Service, ServiceConfig, ServiceEvent, TxConfig};
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
//! // After every call: drain events and re-arm the timer.
//! while let Some(ev) = svc.poll_event() { let _ = ev; }
//! if let Some(at) = svc.poll_timeout() { svc.handle_timeout(at); }
//! # Ok::<(), ferry_core::Error>(())
//! ```

mod config;
mod tx;

/// The words of the `invalid_request` refusal a cell outside a transaction's `receiver_ids`
/// gets (with [`ServiceConfig::refuse_undeclared`]): the reply's error text is
/// `"{receiver} is not an expected receiver of {ref_id}"`. Public so that tools can tell this
/// refusal from other `invalid_request` replies (an unknown or finished ref) without copying
/// the wording.
pub const NOT_EXPECTED_RECEIVER: &str = "is not an expected receiver of";

pub use config::{
    DoneCallback, OutcomeCallback, ServiceConfig, TxConfig, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_PROGRESS_INTERVAL, DEFAULT_RECEIPT_TTL,
};

use crate::message::{DownloadRequest, PullRequest, Reply, ReplyBody, ReplyStatus};
use crate::progress::{ProgressEvent, ProgressKey, ProgressState};
use crate::time::{due, earliest, strict_deadline, Clock};
use crate::ttl::TtlMap;
use crate::{
    validate_fqcn, DoneStatus, DownloadStatus, Downloadable, Error, ProduceError, Produced, RefId,
    ReturnCode, State, TransferOutcome, TransferPlan, TxId,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tx::{Expect, Phase, RefEntry, Tx};

/// What the producer engine tells its driver.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceEvent {
    /// A receiver reached its FINAL status on a ref (once per (ref, receiver)).
    DownloadedToOne {
        /// The transaction.
        tx_id: TxId,
        /// The ref.
        ref_id: RefId,
        /// The receiver.
        receiver: String,
        /// Its final status.
        status: DownloadStatus,
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
        /// The outcome (also queryable with [`Service::outcome`] when recorded).
        outcome: TransferOutcome,
        /// `false` on shutdown: the outcome was not kept.
        recorded: bool,
    },
    /// A progress report (only for transactions with a progress interval).
    Progress(ProgressEvent),
}

/// The result of dispatching a topic-A request.
#[derive(Debug)]
pub enum Handled {
    /// Answer with this at once (confirm/cancel acknowledgement, invalid request, replay).
    Reply(Reply),
    /// A pull to serve: run [`PullTicket::produce`], then [`Service::finish_pull`].
    Pull(PullTicket),
}

/// A validated pull in flight. Holding one keeps its transaction from settling (up to the drain
/// timeout); give it back with [`Service::finish_pull`] exactly once.
pub struct PullTicket {
    /// Engine-wide ticket number.
    id: u64,
    /// The transaction.
    tx_id: TxId,
    /// The ref.
    ref_id: RefId,
    /// The requester's FQCN.
    receiver: String,
    /// The state the receiver sent.
    state: Option<State>,
    /// The receiver said `confirm_capable`.
    confirm_capable: bool,
    /// The plan to advertise (first request of a planned object only).
    plan: Option<TransferPlan>,
    /// The object to produce from.
    object: Arc<dyn Downloadable>,
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

/// The producer engine. See the [module docs](self).
pub struct Service {
    /// Settings.
    config: ServiceConfig,
    /// Monotonic virtual time (unset before the first call).
    clock: Clock,
    /// Live and settling transactions. A BTreeMap so that simultaneous settlements happen in a
    /// deterministic order.
    txs: BTreeMap<TxId, Tx>,
    /// ref -> owning transaction, for live and settling transactions.
    ref_index: HashMap<RefId, TxId>,
    /// Finished-ref tombstones: ref -> FINAL statuses at settlement.
    tombstones: TtlMap<RefId, BTreeMap<String, DownloadStatus>>,
    /// Outcome receipts.
    outcomes: TtlMap<TxId, TransferOutcome>,
    /// Settled transactions that still had tickets out when their drain deadline passed:
    /// their ids stay unusable until those tickets come back.
    leaked: HashMap<TxId, usize>,
    /// Outstanding tickets: id -> transaction.
    tickets: HashMap<u64, TxId>,
    /// Next ticket id.
    next_ticket: u64,
    /// Events not yet polled.
    events: VecDeque<ServiceEvent>,
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
            .field("shut_down", &self.shut_down)
            .finish()
    }
}

/// Run a user hook or callback; a panic is logged and does not stop the ceremony.
fn guarded(what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!(hook = what, "hook panicked; continuing");
    }
}

/// Emit a progress event for (ref `ri`, `receiver`) if the tx has progress on and the rules allow.
fn progress(
    tx: &mut Tx,
    ri: usize,
    receiver: &str,
    state: ProgressState,
    force: bool,
    now: Instant,
    events: &mut VecDeque<ServiceEvent>,
) {
    let Some(interval) = tx.progress_interval else {
        return;
    };
    let Tx { id, refs, .. } = tx;
    let r = &mut refs[ri];
    let slot = r.slots.entry(receiver.to_string()).or_default();
    if let Some(ev) = slot.progress.emit(
        state,
        force,
        interval,
        now,
        ProgressKey {
            tx_id: Some(id),
            ref_id: &r.id,
            receiver: Some(receiver),
        },
    ) {
        events.push_back(ServiceEvent::Progress(ev));
    }
}

/// Record a FINAL status (first one wins), fire `downloaded_to_one` and, when the ref first
/// becomes complete, `downloaded_to_all`. Returns whether the status was recorded.
fn finalize(
    tx: &mut Tx,
    ri: usize,
    receiver: &str,
    status: DownloadStatus,
    events: &mut VecDeque<ServiceEvent>,
) -> bool {
    let Tx {
        id, refs, expect, ..
    } = tx;
    let r = &mut refs[ri];
    let slot = r.slots.entry(receiver.to_string()).or_default();
    if slot.status.is_some() {
        return false;
    }
    slot.status = Some(status);
    slot.pending = None;
    tracing::debug!(tx = %id, rid = %r.id, receiver, status = status.as_str(), "receiver final");
    let obj = r.obj.clone();
    guarded("downloaded_to_one", || {
        obj.downloaded_to_one(receiver, status)
    });
    events.push_back(ServiceEvent::DownloadedToOne {
        tx_id: id.clone(),
        ref_id: r.id.clone(),
        receiver: receiver.to_string(),
        status,
    });
    if !r.all_fired && expect.ref_complete(r) {
        r.all_fired = true;
        guarded("downloaded_to_all", || obj.downloaded_to_all());
        events.push_back(ServiceEvent::DownloadedToAll {
            tx_id: id.clone(),
            ref_id: r.id.clone(),
        });
    }
    true
}

/// The progress state of a final status.
fn terminal_progress(status: DownloadStatus) -> ProgressState {
    match status {
        DownloadStatus::Success => ProgressState::Completed,
        DownloadStatus::Failed => ProgressState::Failed,
    }
}

/// The terminal reply status that serves a final status (`eof` for SUCCESS, `error` for FAILED).
fn terminal_status(status: DownloadStatus) -> ReplyStatus {
    match status {
        DownloadStatus::Success => ReplyStatus::Eof,
        DownloadStatus::Failed => ReplyStatus::Error,
    }
}

/// The bare terminal reply for a status (legacy serve, tombstone replay).
fn terminal_reply(status: DownloadStatus) -> Reply {
    Reply::ok(ReplyBody::terminal(terminal_status(status)))
}

/// NVFlare's `invalid_request` answer to a pull for a ref that is not (or no longer) served.
fn no_ref(rid: &RefId) -> Reply {
    Reply::error(ReturnCode::InvalidRequest, format!("no ref found: {rid}"))
}

impl Service {
    /// A service with no transactions.
    pub fn new(config: ServiceConfig) -> Self {
        Self {
            tombstones: TtlMap::new(config.tombstone_ttl, config.max_tombstones),
            outcomes: TtlMap::new(config.outcome_ttl, config.max_outcomes),
            config,
            clock: Clock::default(),
            txs: BTreeMap::new(),
            ref_index: HashMap::new(),
            leaked: HashMap::new(),
            tickets: HashMap::new(),
            next_ticket: 0,
            events: VecDeque::new(),
            shut_down: false,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The ids of the live (not settling) transactions, copied so the caller may retire them.
    fn live_tx_ids(&self) -> Vec<TxId> {
        self.txs
            .iter()
            .filter(|(_, t)| t.phase == Phase::Live)
            .map(|(id, _)| id.clone())
            .collect()
    }

    // ----------------------------------------------------------------------------------------
    // transactions and objects

    /// Create a transaction (NVFlare `new_transaction`). Errors: invalid settings, or a
    /// caller-chosen id that is live, settling, still has an unexpired outcome receipt, or whose
    /// previous life has pulls in flight past its drain deadline (§3.6).
    pub fn new_transaction(&mut self, cfg: TxConfig, now: Instant) -> Result<TxId, Error> {
        let now = self.clock.advance(now);
        if self.shut_down {
            return Err(Error::ShutDown);
        }
        if cfg.timeout.is_zero() {
            return Err(Error::InvalidConfig("timeout must be > 0".into()));
        }
        let mut num_receivers = cfg.num_receivers;
        let ids = match cfg.receiver_ids {
            None => None,
            Some(list) => {
                if list.is_empty() {
                    return Err(Error::InvalidConfig("receiver_ids is empty".into()));
                }
                let mut ids: Vec<String> = Vec::with_capacity(list.len());
                for id in list {
                    validate_fqcn(&id)?;
                    if ids.contains(&id) {
                        tracing::warn!(receiver = %id, "duplicate receiver id ignored");
                    } else {
                        ids.push(id);
                    }
                }
                if num_receivers == 0 {
                    num_receivers = ids.len();
                } else if num_receivers != ids.len() {
                    return Err(Error::InvalidConfig(format!(
                        "num_receivers {num_receivers} != {} receiver_ids",
                        ids.len()
                    )));
                }
                Some(ids)
            }
        };
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
        ] {
            if b.is_some_and(|d| d.is_zero()) {
                return Err(Error::InvalidConfig(format!("{name} must be > 0")));
            }
        }
        if cfg.idle_timeout.is_some_and(|i| i >= cfg.timeout) {
            tracing::warn!("idle_timeout >= transaction timeout: the idle budget can never fire");
        }
        if cfg.acquire_timeout.is_some() && ids.is_none() {
            tracing::warn!("acquire_timeout without receiver_ids: the acquire budget never fires");
        }
        let id = match cfg.tx_id {
            None => loop {
                let id = TxId::random();
                if !self.txs.contains_key(&id) {
                    break id;
                }
            },
            Some(id) => {
                if self.txs.contains_key(&id) || self.outcomes.contains(&id, now) {
                    return Err(Error::TxIdInUse(id));
                }
                if self.leaked.contains_key(&id) {
                    return Err(Error::TxNotTerminated(id));
                }
                id
            }
        };
        tracing::debug!(tx = %id, num_receivers, "new transaction");
        self.txs.insert(
            id.clone(),
            Tx {
                id: id.clone(),
                timeout: cfg.timeout,
                expect: Expect { num_receivers, ids },
                min_receivers: cfg.min_receivers,
                acquire_timeout: cfg.acquire_timeout,
                idle_timeout: cfg.idle_timeout,
                progress_interval: cfg.progress_interval,
                on_done: cfg.on_done,
                on_outcome: cfg.on_outcome,
                refs: Vec::new(),
                last_active: now,
                acquired: BTreeMap::new(),
                phase: Phase::Live,
                in_flight: 0,
                pulls_by_receiver: BTreeMap::new(),
                budget_wake: None,
                bytes_served: 0,
                created: now,
            },
        );
        Ok(id)
    }

    /// Register `obj` in a live transaction (NVFlare `add_object`): mints `R<uuid4>` unless
    /// `ref_id` is given, calls `obj.set_transaction`, and clears any stale tombstone of that id.
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
        let rid = match ref_id {
            Some(r) if r.as_str().is_empty() => {
                return Err(Error::InvalidConfig("ref id is empty".into()))
            }
            Some(r) => r,
            None => RefId::random(),
        };
        let tx = self
            .txs
            .get_mut(tx_id)
            .ok_or_else(|| Error::UnknownTransaction(tx_id.clone()))?;
        if tx.phase != Phase::Live {
            return Err(Error::TransactionNotLive(tx_id.clone()));
        }
        if self.ref_index.contains_key(&rid) {
            return Err(Error::RefIdInUse(rid));
        }
        let plan = obj.plan();
        if let Some(p) = &plan {
            p.validate()?;
        }
        guarded("set_transaction", || obj.set_transaction(tx_id, &rid));
        self.tombstones.remove(&rid);
        tx.refs.push(RefEntry {
            id: rid.clone(),
            obj,
            plan,
            created: now,
            slots: BTreeMap::new(),
            all_fired: false,
        });
        tx.budget_wake = tx.next_budget_deadline();
        self.ref_index.insert(rid.clone(), tx_id.clone());
        Ok(rid)
    }

    /// Delete a live transaction (NVFlare `delete_transaction`): it settles as DELETED, at once
    /// if no pull is in flight, otherwise as soon as they finish (or the drain timeout passes).
    pub fn delete_transaction(&mut self, tx_id: &TxId, now: Instant) -> Result<(), Error> {
        let now = self.clock.advance(now);
        let tx = self
            .txs
            .get_mut(tx_id)
            .ok_or_else(|| Error::UnknownTransaction(tx_id.clone()))?;
        if tx.phase != Phase::Live {
            return Err(Error::TransactionNotLive(tx_id.clone()));
        }
        self.retire(tx_id, DoneStatus::Deleted, true, now);
        self.settle_due(now);
        Ok(())
    }

    /// Stop the service: every transaction settles as DELETED without recording its outcome,
    /// tombstones and outcomes are dropped, and every later call is refused
    /// ([`Error::ShutDown`], or `service_unavailable` to peers). Transactions with pulls in
    /// flight settle when those finish or the drain timeout passes.
    pub fn shutdown(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        self.shut_down = true;
        let live = self.live_tx_ids();
        for id in live {
            self.retire(&id, DoneStatus::Deleted, false, now);
        }
        for tx in self.txs.values_mut() {
            if let Phase::Settling { record, .. } = &mut tx.phase {
                *record = false;
            }
        }
        self.tombstones.clear();
        self.outcomes.clear();
        self.settle_due(now);
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    // ----------------------------------------------------------------------------------------
    // topic A

    /// Decode and dispatch a topic-A payload from `receiver` (the request's `cn__origin`).
    pub fn handle_payload(&mut self, receiver: &str, payload: &[u8], now: Instant) -> Handled {
        self.handle_request(receiver, DownloadRequest::decode(payload), now)
    }

    /// Dispatch a topic-A request from `receiver` (NVFlare's order, §2.2).
    pub fn handle_request(
        &mut self,
        receiver: &str,
        req: DownloadRequest,
        now: Instant,
    ) -> Handled {
        match req {
            DownloadRequest::Invalid(why) => {
                let _ = self.clock.advance(now);
                tracing::warn!(receiver, why = %why, "invalid download request");
                Handled::Reply(Reply::error(ReturnCode::InvalidRequest, why))
            }
            DownloadRequest::Confirm {
                ref_id,
                status,
                nonce,
            } => Handled::Reply(self.confirm(receiver, &ref_id, status, nonce.as_deref(), now)),
            DownloadRequest::Cancel { ref_id } => {
                Handled::Reply(self.cancel(receiver, &ref_id, now))
            }
            DownloadRequest::Pull(p) => match self.begin_pull(receiver, p, now) {
                Ok(t) => Handled::Pull(t),
                Err(r) => Handled::Reply(r),
            },
        }
    }

    /// Validate a pull and record its activity (R1). On success the caller runs
    /// [`PullTicket::produce`] and hands the result to [`finish_pull`](Self::finish_pull); on
    /// failure the `Err` is the reply to send (`invalid_request`, a tombstone replay, or
    /// `service_unavailable` after shutdown).
    #[allow(clippy::result_large_err)] // the Err is the reply itself, sent at once; boxing only adds an allocation
    pub fn begin_pull(
        &mut self,
        receiver: &str,
        req: PullRequest,
        now: Instant,
    ) -> Result<PullTicket, Reply> {
        let now = self.clock.advance(now);
        if self.shut_down {
            return Err(Reply::error(
                ReturnCode::ServiceUnavailable,
                "service shut down",
            ));
        }
        if let Err(e) = validate_fqcn(receiver) {
            return Err(Reply::error(ReturnCode::InvalidRequest, e.to_string()));
        }
        let rid = req.ref_id;
        let Some(tx_id) = self.ref_index.get(&rid).cloned() else {
            return Err(self.replay_tombstone(&rid, receiver, now));
        };
        let Some(tx) = self.txs.get_mut(&tx_id) else {
            return Err(no_ref(&rid));
        };
        let Some(ri) = tx.ref_index(&rid) else {
            return Err(no_ref(&rid));
        };
        if let Phase::Settling { done, .. } = tx.phase {
            // The gate is closed: the ref looks gone. A FINISHED tx answers its final receivers
            // exactly as its tombstone will.
            return Err(match (done, tx.refs[ri].final_of(receiver)) {
                (DoneStatus::Finished, Some(st)) => terminal_reply(st),
                _ => no_ref(&rid),
            });
        }
        if self.config.refuse_undeclared && tx.expect.ids.is_some() && !tx.expect.declares(receiver)
        {
            tracing::warn!(tx = %tx_id, receiver, "pull from a cell outside receiver_ids refused");
            return Err(Reply::error(
                ReturnCode::InvalidRequest,
                format!("{receiver} {NOT_EXPECTED_RECEIVER} {rid}"),
            ));
        }
        // R1
        tx.last_active = now;
        let first_in_tx = tx.acquired.insert(receiver.to_string(), now).is_none();
        if first_in_tx {
            tracing::debug!(tx = %tx_id, receiver, "receiver acquired");
        }
        if let Some(idle) = tx.idle_timeout {
            tx.budget_wake = earliest(tx.budget_wake, strict_deadline(now, idle));
        }
        let r = &mut tx.refs[ri];
        let slot = r.slots.entry(receiver.to_string()).or_default();
        slot.last_active = Some(now);
        let first = !slot.progress.started();
        if first {
            progress(
                tx,
                ri,
                receiver,
                ProgressState::Active,
                true,
                now,
                &mut self.events,
            );
        }
        tx.pull_started(receiver);
        let r = &tx.refs[ri];
        let id = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(id, tx_id.clone());
        Ok(PullTicket {
            id,
            tx_id,
            ref_id: rid,
            receiver: receiver.to_string(),
            plan: if req.state.is_none() {
                r.plan.clone()
            } else {
                None
            },
            state: req.state,
            confirm_capable: req.confirm_capable == Some(true),
            object: r.obj.clone(),
        })
    }

    /// Answer a pull for a ref that is not live: replay from a tombstone, or `invalid_request`.
    fn replay_tombstone(&mut self, rid: &RefId, receiver: &str, now: Instant) -> Reply {
        match self
            .tombstones
            .get(rid, now)
            .and_then(|m| m.get(receiver).copied())
        {
            Some(st) => terminal_reply(st),
            None => {
                tracing::warn!(rid = %rid, receiver, "no ref found");
                no_ref(rid)
            }
        }
    }

    /// Record the result of a ticket's `produce` (R2–R5) and build the reply.
    pub fn finish_pull(
        &mut self,
        ticket: PullTicket,
        result: Result<Produced, ProduceError>,
        now: Instant,
    ) -> Reply {
        let now = self.clock.advance(now);
        let Some(tx_id) = self.tickets.remove(&ticket.id) else {
            return Reply::error(ReturnCode::InvalidRequest, "unknown pull ticket");
        };
        let Some(tx) = self.txs.get_mut(&tx_id) else {
            // Settled past its drain deadline while this pull ran: the result is discarded.
            self.leaked_ticket_returned(&tx_id);
            return no_ref(&ticket.ref_id);
        };
        tx.pull_ended(&ticket.receiver, now);
        let Some(ri) = tx.ref_index(&ticket.ref_id) else {
            return Reply::error(ReturnCode::InvalidRequest, "ref vanished");
        };
        let receiver = ticket.receiver.as_str();
        let events = &mut self.events;
        match result {
            Ok(Produced::Data { data, state }) => {
                // R2: no status change.
                let n = data.byte_len();
                tx.bytes_served = tx.bytes_served.saturating_add(n);
                if let Some(slot) = tx.refs[ri].slots.get_mut(receiver) {
                    slot.progress.add(n, data.item_count());
                }
                progress(tx, ri, receiver, ProgressState::Active, false, now, events);
                let mut body = ReplyBody::data(state, data);
                body.ferry_plan = ticket.plan.as_ref().map(TransferPlan::to_wire);
                Reply::ok(body)
            }
            Ok(Produced::Eof) => {
                self.serve_terminal(&tx_id, ri, &ticket, DownloadStatus::Success, now)
            }
            Ok(Produced::Error { reason }) => {
                tracing::warn!(rid = %ticket.ref_id, receiver, reason = %reason, "producer error");
                self.serve_terminal(&tx_id, ri, &ticket, DownloadStatus::Failed, now)
            }
            Err(e) => {
                // R5
                tracing::warn!(rid = %ticket.ref_id, receiver, error = %e, "produce failed");
                progress(tx, ri, receiver, ProgressState::Failed, true, now, events);
                Reply::error(ReturnCode::ProcessException, e.to_string())
            }
        }
    }

    /// Give a ticket back without a result (the producing task was cancelled or panicked):
    /// nothing is recorded, the gate is released, and the reply to send (if any) is
    /// `process_exception`. A ticket that is neither finished nor abandoned holds its
    /// transaction's settlement until the drain timeout.
    pub fn abandon_pull(&mut self, ticket: PullTicket, now: Instant) -> Reply {
        let _ = self.clock.advance(now);
        if let Some(tx_id) = self.tickets.remove(&ticket.id) {
            match self.txs.get_mut(&tx_id) {
                Some(tx) => tx.pull_ended(&ticket.receiver, now),
                None => self.leaked_ticket_returned(&tx_id),
            }
        }
        Reply::error(ReturnCode::ProcessException, "pull abandoned")
    }

    /// A ticket of a transaction settled past its drain deadline came back: once all of them
    /// have, the id may be reused.
    fn leaked_ticket_returned(&mut self, tx_id: &TxId) {
        if let Some(n) = self.leaked.get_mut(tx_id) {
            *n -= 1;
            if *n == 0 {
                self.leaked.remove(tx_id);
            }
        }
    }

    /// A terminal serve (`eof` → SUCCESS, `error` → FAILED): provisional for a confirm-capable
    /// receiver (R4), final otherwise (R3).
    fn serve_terminal(
        &mut self,
        tx_id: &TxId,
        ri: usize,
        ticket: &PullTicket,
        status: DownloadStatus,
        now: Instant,
    ) -> Reply {
        let rs = terminal_status(status);
        let confirm = self.config.confirm_enabled && ticket.confirm_capable;
        let Some(tx) = self.txs.get_mut(tx_id) else {
            return Reply::ok(ReplyBody::terminal(rs));
        };
        let receiver = ticket.receiver.as_str();
        let events = &mut self.events;
        if confirm {
            // R4
            if tx.refs[ri].final_of(receiver).is_some() {
                return Reply::ok(ReplyBody::terminal(rs));
            }
            let nonce = uuid::Uuid::new_v4().simple().to_string();
            tx.refs[ri]
                .slots
                .entry(receiver.to_string())
                .or_default()
                .pending = Some((status, nonce.clone()));
            progress(tx, ri, receiver, ProgressState::Active, true, now, events);
            return Reply::ok(ReplyBody {
                confirm_expected: Some(true),
                confirm_nonce: Some(nonce),
                ..ReplyBody::terminal(rs)
            });
        }
        // R3
        if finalize(tx, ri, receiver, status, events) {
            progress(
                tx,
                ri,
                receiver,
                terminal_progress(status),
                true,
                now,
                events,
            );
        }
        if tx.phase == Phase::Live && tx.finished() {
            self.retire(tx_id, DoneStatus::Finished, true, now);
        }
        Reply::ok(ReplyBody::terminal(rs))
    }

    /// The confirm path (R6). The reply is always an `ok` acknowledgement; a confirm that is
    /// unsolicited, stale (wrong nonce), invalid or for an unknown ref is dropped.
    pub fn confirm(
        &mut self,
        receiver: &str,
        ref_id: &RefId,
        status: Option<DownloadStatus>,
        nonce: Option<&str>,
        now: Instant,
    ) -> Reply {
        let now = self.clock.advance(now);
        let Some((tx_id, ri)) = self.live_ref(ref_id) else {
            tracing::debug!(rid = %ref_id, receiver, "confirm for unknown ref dropped");
            return Reply::ack();
        };
        let Some(tx) = self.txs.get_mut(&tx_id) else {
            return Reply::ack();
        };
        let accepted = match (status, nonce, tx.refs[ri].slots.get(receiver)) {
            (Some(st), Some(n), Some(slot))
                if slot.status.is_none()
                    && slot.pending.as_ref().is_some_and(|(_, want)| want == n) =>
            {
                Some(st)
            }
            _ => None,
        };
        let Some(st) = accepted else {
            tracing::debug!(rid = %ref_id, receiver, "confirm dropped (unsolicited, stale or invalid)");
            return Reply::ack();
        };
        let events = &mut self.events;
        finalize(tx, ri, receiver, st, events);
        progress(tx, ri, receiver, terminal_progress(st), true, now, events);
        tx.last_active = now;
        if tx.finished() {
            self.retire(&tx_id, DoneStatus::Finished, true, now);
        }
        Reply::ack()
    }

    /// The cancel path (R7): from a receiver that pulled somewhere in the transaction, FAILED on
    /// every ref where it is not yet FINAL. Always acknowledged with `ok`.
    pub fn cancel(&mut self, receiver: &str, ref_id: &RefId, now: Instant) -> Reply {
        let now = self.clock.advance(now);
        let Some((tx_id, _)) = self.live_ref(ref_id) else {
            tracing::debug!(rid = %ref_id, receiver, "cancel for unknown ref dropped");
            return Reply::ack();
        };
        let Some(tx) = self.txs.get_mut(&tx_id) else {
            return Reply::ack();
        };
        if !tx.acquired.contains_key(receiver) {
            tracing::debug!(rid = %ref_id, receiver, "cancel from a receiver that never pulled: ignored");
            return Reply::ack();
        }
        tracing::info!(tx = %tx_id, receiver, "receiver cancelled");
        let events = &mut self.events;
        for ri in 0..tx.refs.len() {
            if finalize(tx, ri, receiver, DownloadStatus::Failed, events) {
                progress(tx, ri, receiver, ProgressState::Failed, true, now, events);
            }
        }
        if tx.finished() {
            self.retire(&tx_id, DoneStatus::Finished, true, now);
        }
        Reply::ack()
    }

    /// The live transaction and ref index of `ref_id`.
    fn live_ref(&self, ref_id: &RefId) -> Option<(TxId, usize)> {
        let tx_id = self.ref_index.get(ref_id)?;
        let tx = self.txs.get(tx_id)?;
        if tx.phase != Phase::Live {
            return None;
        }
        Some((tx_id.clone(), tx.ref_index(ref_id)?))
    }

    // ----------------------------------------------------------------------------------------
    // time

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work: a
    /// transaction's inactivity expiry, a budget deadline, a settlement that is due (possibly
    /// already in the past: call at once), a drain deadline, or a tombstone/outcome TTL.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = earliest(self.tombstones.next_expiry(), self.outcomes.next_expiry());
        for tx in self.txs.values() {
            let t = match tx.phase {
                Phase::Live => earliest(
                    tx.expiry(),
                    if tx.has_budgets() {
                        tx.budget_wake
                    } else {
                        None
                    },
                ),
                Phase::Settling {
                    since,
                    drain_deadline,
                    ..
                } => {
                    if tx.in_flight == 0 {
                        Some(since)
                    } else {
                        drain_deadline
                    }
                }
            };
            next = earliest(next, t);
        }
        next
    }

    /// Fire everything due at `now`, in NVFlare's order: budgets, then classification
    /// (finished beats expired), then TTL expiry, then settlement of drained transactions.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        let live = self.live_tx_ids();
        for id in live {
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            if tx.has_budgets() && due(tx.budget_wake, now) {
                Self::enforce_budgets(tx, now, &mut self.events);
                tx.budget_wake = tx.next_budget_deadline();
            }
            if tx.finished() {
                self.retire(&id, DoneStatus::Finished, true, now);
            } else if due(tx.expiry(), now) {
                tracing::info!(tx = %id, "transaction timed out");
                self.retire(&id, DoneStatus::Timeout, true, now);
            }
        }
        self.tombstones.expire(now);
        self.outcomes.expire(now);
        self.settle_due(now);
    }

    /// R8: fail receivers whose acquire or idle budget ran out.
    fn enforce_budgets(tx: &mut Tx, now: Instant, events: &mut VecDeque<ServiceEvent>) {
        for ri in 0..tx.refs.len() {
            for c in tx.budget_candidates(&tx.refs[ri]) {
                if due(tx.budget_deadline(&tx.refs[ri], &c), now) {
                    tracing::warn!(tx = %tx.id, rid = %tx.refs[ri].id, receiver = %c, "receiver budget expired");
                    if finalize(tx, ri, &c, DownloadStatus::Failed, events) {
                        progress(tx, ri, &c, ProgressState::Failed, true, now, events);
                    }
                }
            }
        }
    }

    /// Unlink a transaction: close its gate and schedule settlement.
    fn retire(&mut self, tx_id: &TxId, done: DoneStatus, record: bool, now: Instant) {
        if let Some(tx) = self.txs.get_mut(tx_id) {
            if tx.phase == Phase::Live {
                tracing::debug!(tx = %tx_id, done = done.as_str(), in_flight = tx.in_flight, "transaction retired");
                tx.phase = Phase::Settling {
                    done,
                    since: now,
                    drain_deadline: strict_deadline(now, self.config.drain_timeout),
                    record,
                };
            }
        }
    }

    /// Settle every settling transaction that is drained or past its drain deadline.
    fn settle_due(&mut self, now: Instant) {
        let ready: Vec<TxId> = self
            .txs
            .iter()
            .filter(|(_, t)| match t.phase {
                Phase::Settling { drain_deadline, .. } => {
                    t.in_flight == 0 || due(drain_deadline, now)
                }
                Phase::Live => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ready {
            self.settle(&id, now);
        }
    }

    /// The settlement ceremony (§3.4).
    fn settle(&mut self, tx_id: &TxId, now: Instant) {
        let Some(mut tx) = self.txs.remove(tx_id) else {
            return;
        };
        let Phase::Settling { done, record, .. } = tx.phase else {
            self.txs.insert(tx_id.clone(), tx);
            return;
        };
        for r in &tx.refs {
            if self.ref_index.get(&r.id) == Some(tx_id) {
                self.ref_index.remove(&r.id);
            }
        }
        if tx.in_flight > 0 {
            tracing::warn!(tx = %tx_id, in_flight = tx.in_flight, "settling with pulls still in flight (drain timeout)");
            *self.leaked.entry(tx_id.clone()).or_default() += tx.in_flight;
        }
        // 2. outcome from the final statuses (drained pulls included)
        let outcome = TransferOutcome::compute(
            tx_id.clone(),
            done,
            tx.expect.num_receivers,
            tx.expect.ids.clone(),
            tx.min_receivers,
            tx.refs.iter().map(|r| (r.id.clone(), r.finals())).collect(),
            now,
        );
        // 3. terminal progress for started receivers (R10)
        let term = match done {
            DoneStatus::Finished => ProgressState::Completed,
            DoneStatus::Timeout => ProgressState::Failed,
            DoneStatus::Deleted => ProgressState::Aborted,
        };
        for ri in 0..tx.refs.len() {
            let started: Vec<String> = tx.refs[ri]
                .slots
                .iter()
                .filter(|(_, s)| s.progress.started() && !s.progress.is_terminal())
                .map(|(r, _)| r.clone())
                .collect();
            for rcv in started {
                progress(&mut tx, ri, &rcv, term, true, now, &mut self.events);
            }
        }
        // 4. summary log
        tracing::info!(
            tx = %tx_id,
            done = done.as_str(),
            outcome = outcome.status.as_str(),
            reason = outcome.reason,
            elapsed_s = now.saturating_duration_since(tx.created).as_secs_f64(),
            mb = tx.bytes_served as f64 / 1_048_576.0,
            "transaction settled"
        );
        // 5–9. hooks and callbacks in NVFlare's order
        let objs: Vec<Arc<dyn Downloadable>> = tx.refs.iter().map(|r| r.obj.clone()).collect();
        for o in &objs {
            guarded("transaction_done", || o.transaction_done(tx_id, done));
        }
        if let Some(cb) = tx.on_done.take() {
            guarded("transaction_done_cb", || cb(tx_id, done, &objs));
        }
        if let Some(cb) = tx.on_outcome.take() {
            guarded("outcome_cb", || cb(&outcome));
        }
        for o in &objs {
            guarded("release", || o.release());
        }
        // tombstones: FINISHED keeps its final statuses; TIMEOUT/DELETED stay fatal
        for r in &tx.refs {
            if done == DoneStatus::Finished && !self.shut_down {
                self.tombstones.insert(r.id.clone(), r.finals(), now);
            } else {
                self.tombstones.remove(&r.id);
            }
        }
        // 10. record, then tell the driver
        let recorded = record && !self.shut_down;
        if recorded {
            self.outcomes.insert(tx_id.clone(), outcome.clone(), now);
        }
        self.events
            .push_back(ServiceEvent::TransactionDone { outcome, recorded });
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ServiceEvent> {
        self.events.pop_front()
    }

    // ----------------------------------------------------------------------------------------
    // queries

    /// The recorded outcome of `tx_id`, if still within its TTL.
    pub fn outcome(&mut self, tx_id: &TxId, now: Instant) -> Option<TransferOutcome> {
        let now = self.clock.advance(now);
        self.outcomes.get(tx_id, now).cloned()
    }

    /// A snapshot of a live or settling transaction.
    pub fn transaction_info(&self, tx_id: &TxId) -> Option<TransactionInfo> {
        let tx = self.txs.get(tx_id)?;
        Some(TransactionInfo {
            timeout: tx.timeout,
            num_receivers: tx.expect.num_receivers,
            ref_ids: tx.refs.iter().map(|r| r.id.clone()).collect(),
            live: tx.phase == Phase::Live,
            in_flight: tx.in_flight,
        })
    }

    /// The transaction that owns `ref_id` (live or settling).
    pub fn transaction_of(&self, ref_id: &RefId) -> Option<&TxId> {
        self.ref_index.get(ref_id)
    }

    /// Receivers that pulled at least once in `tx_id` (empty if unknown).
    pub fn acquired_receivers(&self, tx_id: &TxId) -> Vec<String> {
        self.txs
            .get(tx_id)
            .map(|t| t.acquired.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Provisional serves of `tx_id` still waiting for a confirm.
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
    pub fn receiver_status(&self, ref_id: &RefId, receiver: &str) -> Option<DownloadStatus> {
        let tx = self.txs.get(self.ref_index.get(ref_id)?)?;
        tx.refs[tx.ref_index(ref_id)?].final_of(receiver)
    }

    /// Number of live and settling transactions.
    pub fn transaction_count(&self) -> usize {
        self.txs.len()
    }

    /// Number of tombstoned refs held (bounded by `max_tombstones`).
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Number of outcomes held (bounded by `max_outcomes`).
    pub fn outcome_count(&self) -> usize {
        self.outcomes.len()
    }

    /// Number of pull tickets outstanding.
    pub fn tickets_in_flight(&self) -> usize {
        self.tickets.len()
    }
}

#[cfg(test)]
mod tests;
