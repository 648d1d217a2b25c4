//! A transaction's internal state: its refs, the per-(ref, receiver) lifecycle, its members,
//! the completion predicate (§3.2) and the deadlines it derives from them: inactivity, the
//! receivers' budgets (R8) and settlement.
//!
//! The fields that carry an invariant are private and change only through methods: the
//! activity gate (`in_flight` is the sum of the members' pulls), the phase, the last
//! activity, the members, and `budget_wake`, which must never be later than the earliest
//! budget deadline (a lower bound; [`Tx::budgets_enforced`] makes it exact again). The service
//! keeps a timer per transaction at [`Tx::wake`]; a change through these methods is picked up
//! when the service's handle on the transaction is dropped (see `table.rs`).

use super::config::{DoneCallback, OutcomeCallback, TxConfig};
use super::output::FinalCause;
use crate::progress::ProgressTracker;
use crate::time::{earliest, strict_deadline};
use crate::{
    DoneStatus, DownloadStatus, Downloadable, ExpectedReceivers, RefId, TransferPlan, TxId,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a transaction is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving pulls.
    Live,
    /// Unlinked: no new pulls are served (the activity gate is closed); waiting for in-flight
    /// tickets, then settlement.
    Settling {
        /// How it ended.
        done: DoneStatus,
        /// When it was unlinked: settlement is due from then on once drained.
        since: Instant,
        /// Settle anyway from this instant, even with tickets outstanding (`None`: never).
        drain_deadline: Option<Instant>,
        /// Whether the outcome is recorded (not on shutdown).
        record: bool,
    },
}

/// A receiver's place in a transaction (tx level): NVFlare's "acquired" set with the
/// receiver's tx-level last activity, plus what ferry needs to admit, count and miss it.
#[derive(Debug, Clone)]
struct Member {
    /// Last pull (begun or answered) anywhere in the tx: the idle budget's origin (R8).
    last_active: Instant,
    /// Pulls of it being served now. A receiver with a pull being served is waiting for us,
    /// not idle: its idle budget does not run (ferry addition; otherwise a sender that is slow
    /// to produce — e.g. waiting for its byte budget — would fail healthy receivers).
    pulls: usize,
    /// One of its pulls was served (data or a terminal status). Until then its place is
    /// tentative: if its only pulls turn out to be invalid requests it is forgotten, so a
    /// malformed request takes no place and counts for nothing.
    proven: bool,
    /// Its connection closed at this instant and it has not been heard from since (the
    /// reconnect budget's origin).
    gone_since: Option<Instant>,
}

/// One receiver on one ref: unseen (no slot) → acquired (tx-level) → provisional → final.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// FINAL status; the first one wins.
    pub(crate) status: Option<DownloadStatus>,
    /// PROVISIONAL status with the nonce a confirm must echo.
    pub(crate) pending: Option<(DownloadStatus, String)>,
    /// Progress counters for this (ref, receiver).
    pub(crate) progress: ProgressTracker,
}

/// One registered object.
pub(crate) struct RefEntry {
    /// Its id.
    pub(crate) id: RefId,
    /// The object.
    pub(crate) obj: Arc<dyn Downloadable>,
    /// The object's plan, read once at registration.
    pub(crate) plan: Option<TransferPlan>,
    /// When it was added (acquire budget origin).
    pub(crate) created: Instant,
    /// Receivers that have a slot (pulled, or were finalized by cancel/budget).
    pub(crate) slots: BTreeMap<String, Slot>,
    /// `downloaded_to_all` fired (latched).
    pub(crate) all_fired: bool,
}

impl RefEntry {
    /// A ref with no receivers yet.
    pub(crate) fn new(
        id: RefId,
        obj: Arc<dyn Downloadable>,
        plan: Option<TransferPlan>,
        now: Instant,
    ) -> Self {
        Self {
            id,
            obj,
            plan,
            created: now,
            slots: BTreeMap::new(),
            all_fired: false,
        }
    }

    /// The FINAL status of `receiver`.
    pub(crate) fn final_of(&self, receiver: &str) -> Option<DownloadStatus> {
        self.slots.get(receiver).and_then(|s| s.status)
    }

    /// The FINAL statuses.
    pub(crate) fn finals(&self) -> BTreeMap<String, DownloadStatus> {
        self.slots
            .iter()
            .filter_map(|(r, s)| s.status.map(|st| (r.clone(), st)))
            .collect()
    }

    /// §3.2: every expected receiver has a FINAL status on this ref.
    pub(crate) fn complete(&self, expect: &ExpectedReceivers) -> bool {
        let done = self.slots.values().filter(|s| s.status.is_some()).count();
        expect.complete_with(done, |id| self.final_of(id).is_some())
    }
}

/// One transaction.
pub(crate) struct Tx {
    /// Its id.
    pub(crate) id: TxId,
    /// Inactivity timeout (fixed at creation).
    pub(crate) timeout: Duration,
    /// Completion target (fixed at creation).
    pub(crate) expect: ExpectedReceivers,
    /// Quorum (fixed at creation).
    pub(crate) min_receivers: Option<usize>,
    /// Acquire budget.
    acquire_timeout: Option<Duration>,
    /// Idle budget.
    idle_timeout: Option<Duration>,
    /// Reconnect budget (ferry).
    reconnect_timeout: Option<Duration>,
    /// Progress throttle (`None` = no progress events; fixed at creation).
    pub(crate) progress_interval: Option<Duration>,
    /// Settlement callback, taken at settlement.
    pub(crate) on_done: Option<DoneCallback>,
    /// Outcome callback, taken at settlement.
    pub(crate) on_outcome: Option<OutcomeCallback>,
    /// Objects, in insertion order (never removed: a ref's index is stable).
    pub(crate) refs: Vec<RefEntry>,
    /// Last pull (any receiver, any ref) or accepted confirm: the inactivity timer's origin.
    last_active: Instant,
    /// Receivers that pulled somewhere in the tx and hold their place (NVFlare's acquired set).
    members: BTreeMap<String, Member>,
    /// Life phase.
    phase: Phase,
    /// Pull tickets handed out and not finished yet (the activity gate): the sum of the
    /// members' `pulls` (plus those of members gone meanwhile).
    in_flight: usize,
    /// Earliest instant a budget may fire: never later than the earliest budget deadline (a
    /// lower bound, so an early wake only costs a pass that recomputes it exactly); `None`
    /// without budgets.
    budget_wake: Option<Instant>,
    /// Chunk bytes served (for the settlement log).
    pub(crate) bytes_served: u64,
    /// Creation time (for the settlement log).
    pub(crate) created: Instant,
}

impl Tx {
    /// A live transaction created at `now` from `cfg`, expecting `expect`.
    pub(crate) fn new(id: TxId, cfg: TxConfig, expect: ExpectedReceivers, now: Instant) -> Self {
        Self {
            id,
            timeout: cfg.timeout,
            expect,
            min_receivers: cfg.min_receivers,
            acquire_timeout: cfg.acquire_timeout,
            idle_timeout: cfg.idle_timeout,
            reconnect_timeout: cfg.reconnect_timeout,
            progress_interval: cfg.progress_interval,
            on_done: cfg.on_done,
            on_outcome: cfg.on_outcome,
            refs: Vec::new(),
            last_active: now,
            members: BTreeMap::new(),
            phase: Phase::Live,
            in_flight: 0,
            budget_wake: None,
            bytes_served: 0,
            created: now,
        }
    }

    // ----------------------------------------------------------------------------------------
    // phase

    /// Its phase.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether it serves pulls.
    pub(crate) fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// Pull tickets outstanding.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Close the gate (§3.4): it settles once drained, or at the drain deadline. Returns
    /// whether it was live.
    pub(crate) fn retire(
        &mut self,
        done: DoneStatus,
        record: bool,
        now: Instant,
        drain: Duration,
    ) -> bool {
        if self.phase != Phase::Live {
            return false;
        }
        self.phase = Phase::Settling {
            done,
            since: now,
            drain_deadline: strict_deadline(now, drain),
            record,
        };
        true
    }

    /// The service shuts down: its outcome will not be recorded.
    pub(crate) fn forget_outcome(&mut self) {
        if let Phase::Settling { record, .. } = &mut self.phase {
            *record = false;
        }
    }

    /// Settling and due at `now`: drained, or past the drain deadline.
    pub(crate) fn ready_to_settle(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Settling { drain_deadline, .. } => {
                self.in_flight == 0 || drain_deadline.is_some_and(|d| now >= d)
            }
            Phase::Live => false,
        }
    }

    // ----------------------------------------------------------------------------------------
    // activity

    /// A pull of `receiver` started being served at `now` (R1): the transaction and the
    /// receiver are active, the receiver holds a place (it becomes a member if it was not) and
    /// its idle budget waits for the answer. A pull does not stop a reconnect budget: the
    /// driver may hand the engine a pull that was read from a connection before it closed after
    /// it reported the close, so only [`member_back`](Self::member_back) (a new connection)
    /// says the receiver is here again.
    pub(crate) fn pull_started(&mut self, receiver: &str, now: Instant) {
        self.last_active = now;
        self.in_flight += 1;
        let m = self
            .members
            .entry(receiver.to_string())
            .or_insert_with(|| Member {
                last_active: now,
                pulls: 0,
                proven: false,
                gone_since: None,
            });
        m.pulls += 1;
        m.last_active = m.last_active.max(now);
        self.lower_budget_wake(self.idle_timeout.and_then(|i| strict_deadline(now, i)));
    }

    /// A pull of `receiver` was answered (or abandoned) at `now`: the receiver was alive and
    /// waiting until then, so its idle clock restarts here.
    pub(crate) fn pull_ended(&mut self, receiver: &str, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(m) = self.members.get_mut(receiver) {
            m.pulls = m.pulls.saturating_sub(1);
            m.last_active = m.last_active.max(now);
        }
        self.lower_budget_wake(self.idle_timeout.and_then(|i| strict_deadline(now, i)));
    }

    /// A pull of `receiver` was served (data or a terminal status) with `bytes` chunk bytes:
    /// its place is no longer tentative.
    pub(crate) fn served(&mut self, receiver: &str, bytes: u64) {
        if let Some(m) = self.members.get_mut(receiver) {
            m.proven = true;
        }
        self.bytes_served = self.bytes_served.saturating_add(bytes);
    }

    /// A confirm was accepted at `now` (R6): activity.
    pub(crate) fn confirmed(&mut self, now: Instant) {
        self.last_active = self.last_active.max(now);
    }

    // ----------------------------------------------------------------------------------------
    // members

    /// Whether `receiver` holds a place.
    pub(crate) fn is_member(&self, receiver: &str) -> bool {
        self.members.contains_key(receiver)
    }

    /// Whether `receiver` holds a place that one of its served pulls proved.
    pub(crate) fn is_proven(&self, receiver: &str) -> bool {
        self.members.get(receiver).is_some_and(|m| m.proven)
    }

    /// Whether `receiver` holds a place only tentatively (no pull served) and has no pull in
    /// flight: it may be forgotten.
    pub(crate) fn is_idle_tentative(&self, receiver: &str) -> bool {
        self.members
            .get(receiver)
            .is_some_and(|m| !m.proven && m.pulls == 0)
    }

    /// The members' names, in order.
    pub(crate) fn member_names(&self) -> impl Iterator<Item = &String> {
        self.members.keys()
    }

    /// How many places are held.
    pub(crate) fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The member whose connection closed longest ago and that is not final on every ref
    /// (one that is has had its turn and keeps its place).
    pub(crate) fn longest_gone_unfinished(&self) -> Option<String> {
        self.members
            .iter()
            .filter(|(who, _)| self.refs.iter().any(|r| r.final_of(who).is_none()))
            .filter_map(|(who, m)| m.gone_since.map(|g| (g, who)))
            .min()
            .map(|(_, who)| who.clone())
    }

    /// `receiver` gives its place up (withdrew, or was forgotten). A declared receiver that is
    /// no member falls under the acquire budget again, so the budget wake is recomputed.
    pub(crate) fn remove_member(&mut self, receiver: &str) {
        if self.members.remove(receiver).is_some() {
            self.lower_budget_wake(self.next_budget_deadline());
        }
    }

    /// The connection of `receiver` closed at `now`: its reconnect budget starts, unless it
    /// is no member or was already gone. Returns whether it started.
    pub(crate) fn member_gone(&mut self, receiver: &str, now: Instant) -> bool {
        let Some(m) = self.members.get_mut(receiver) else {
            return false;
        };
        if m.gone_since.is_some() {
            return false;
        }
        m.gone_since = Some(now);
        self.lower_budget_wake(self.reconnect_timeout.and_then(|d| strict_deadline(now, d)));
        true
    }

    /// `receiver` is connected again: its reconnect budget stops (deadlines only get later,
    /// so the budget wake stays a lower bound).
    pub(crate) fn member_back(&mut self, receiver: &str) {
        if let Some(m) = self.members.get_mut(receiver) {
            m.gone_since = None;
        }
    }

    // ----------------------------------------------------------------------------------------
    // refs, completion and deadlines

    /// Register a ref; returns its index.
    pub(crate) fn add_ref(&mut self, entry: RefEntry) -> usize {
        self.refs.push(entry);
        self.lower_budget_wake(self.next_budget_deadline());
        self.refs.len() - 1
    }

    /// §3.2: the tx is finished.
    pub(crate) fn finished(&self) -> bool {
        self.expect.is_known()
            && !self.refs.is_empty()
            && self.refs.iter().all(|r| r.complete(&self.expect))
    }

    /// When the inactivity timeout fires.
    pub(crate) fn expiry(&self) -> Option<Instant> {
        strict_deadline(self.last_active, self.timeout)
    }

    /// The next instant at which the service has work for this transaction: its inactivity
    /// expiry or a budget (live), its settlement (drained: now) or its drain deadline.
    pub(crate) fn wake(&self) -> Option<Instant> {
        match self.phase {
            Phase::Live => earliest(self.expiry(), self.budget_wake),
            Phase::Settling {
                since,
                drain_deadline,
                ..
            } => {
                if self.in_flight == 0 {
                    Some(since)
                } else {
                    drain_deadline
                }
            }
        }
    }

    /// Whether a budget may have run out at `now`.
    pub(crate) fn budgets_due(&self, now: Instant) -> bool {
        self.budget_wake.is_some_and(|w| now >= w)
    }

    /// The budgets due were enforced: the wake becomes the exact next budget deadline.
    pub(crate) fn budgets_enforced(&mut self) {
        self.budget_wake = self.next_budget_deadline();
    }

    /// Move the budget wake earlier to `at` if that is earlier.
    fn lower_budget_wake(&mut self, at: Option<Instant>) {
        self.budget_wake = earliest(self.budget_wake, at);
    }

    /// Whether any budget is configured.
    fn has_budgets(&self) -> bool {
        self.acquire_timeout.is_some()
            || self.idle_timeout.is_some()
            || self.reconnect_timeout.is_some()
    }

    /// Budget candidates of one ref (R8): declared ∪ acquired, minus FINAL ones.
    pub(crate) fn budget_candidates(&self, r: &RefEntry) -> Vec<String> {
        let mut c: Vec<String> = self.expect.ids().map(<[_]>::to_vec).unwrap_or_default();
        for a in self.members.keys() {
            if !c.contains(a) {
                c.push(a.clone());
            }
        }
        c.retain(|rcv| r.final_of(rcv).is_none());
        c
    }

    /// The deadline at which a budget fails `receiver` on `r`, and which budget it is.
    pub(crate) fn budget_deadline(
        &self,
        r: &RefEntry,
        receiver: &str,
    ) -> Option<(Instant, FinalCause)> {
        let at = |d: Option<Instant>, why| d.map(|d| (d, why));
        match self.members.get(receiver) {
            None if self.expect.declares(receiver) => at(
                self.acquire_timeout
                    .and_then(|a| strict_deadline(r.created, a)),
                FinalCause::AcquireBudget,
            ),
            None => None,
            Some(m) => {
                let gone = at(
                    m.gone_since
                        .zip(self.reconnect_timeout)
                        .and_then(|(g, d)| strict_deadline(g, d)),
                    FinalCause::Disconnected,
                );
                // A receiver with a pull being served waits for us; a gone one cannot.
                let idle = if m.pulls > 0 && m.gone_since.is_none() {
                    None
                } else {
                    at(
                        self.idle_timeout
                            .and_then(|i| strict_deadline(m.last_active, i)),
                        FinalCause::IdleBudget,
                    )
                };
                match (gone, idle) {
                    (Some(g), Some(i)) => Some(if i.0 < g.0 { i } else { g }),
                    (g, i) => g.or(i),
                }
            }
        }
    }

    /// The exact next budget deadline over all refs and candidates.
    fn next_budget_deadline(&self) -> Option<Instant> {
        if !self.has_budgets() {
            return None;
        }
        let mut next = None;
        for r in &self.refs {
            for c in self.budget_candidates(r) {
                next = earliest(next, self.budget_deadline(r, &c).map(|(d, _)| d));
            }
        }
        next
    }
}
