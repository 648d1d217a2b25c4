//! A transaction's internal state: its refs, the per-(ref, receiver) lifecycle, completion
//! predicates (§3.2) and budget deadlines (R8).

use super::config::{DoneCallback, OutcomeCallback};
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
pub(crate) struct Member {
    /// Last pull (begun or answered) anywhere in the tx: the idle budget's origin (R8).
    pub(crate) last_active: Instant,
    /// Pulls of it being served now. A receiver with a pull being served is waiting for us,
    /// not idle: its idle budget does not run (ferry addition; otherwise a sender that is slow
    /// to produce — e.g. waiting for its byte budget — would fail healthy receivers).
    pub(crate) pulls: usize,
    /// One of its pulls was served (data or a terminal status). Until then its place is
    /// tentative: if its only pulls turn out to be invalid requests it is forgotten, so a
    /// malformed request takes no place and counts for nothing.
    pub(crate) proven: bool,
    /// Its connection closed at this instant and it has not been heard from since (the
    /// reconnect budget's origin).
    pub(crate) gone_since: Option<Instant>,
}

impl Member {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            last_active: now,
            pulls: 0,
            proven: false,
            gone_since: None,
        }
    }
}

/// One receiver on one ref: unseen (no slot) → acquired (tx-level) → provisional → final.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// FINAL status; the first one wins.
    pub(crate) status: Option<DownloadStatus>,
    /// PROVISIONAL status with the nonce a confirm must echo.
    pub(crate) pending: Option<(DownloadStatus, String)>,
    /// Per-ref activity stamp (R1).
    pub(crate) last_active: Option<Instant>,
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
}

/// Who a transaction waits for.
#[derive(Debug, Clone)]
pub(crate) struct Expect {
    /// Count mode target (0 = unknown); derived from `ids` in identity mode.
    pub(crate) num_receivers: usize,
    /// Identity mode.
    pub(crate) ids: Option<Vec<String>>,
}

impl Expect {
    /// §3.2: is this ref complete?
    pub(crate) fn ref_complete(&self, r: &RefEntry) -> bool {
        match &self.ids {
            Some(ids) => ids.iter().all(|id| r.final_of(id).is_some()),
            None => {
                self.num_receivers > 0
                    && r.slots.values().filter(|s| s.status.is_some()).count() >= self.num_receivers
            }
        }
    }

    /// Who is expected, as objects learn it.
    pub(crate) fn expected(&self) -> ExpectedReceivers {
        match &self.ids {
            Some(ids) => ExpectedReceivers::Ids(ids.clone()),
            None if self.num_receivers > 0 => ExpectedReceivers::Count(self.num_receivers),
            None => ExpectedReceivers::Unknown,
        }
    }

    /// Whether `receiver` is declared.
    pub(crate) fn declares(&self, receiver: &str) -> bool {
        self.ids
            .as_ref()
            .is_some_and(|ids| ids.iter().any(|i| i == receiver))
    }
}

/// One transaction.
pub(crate) struct Tx {
    /// Its id.
    pub(crate) id: TxId,
    /// Inactivity timeout.
    pub(crate) timeout: Duration,
    /// Completion target.
    pub(crate) expect: Expect,
    /// Quorum.
    pub(crate) min_receivers: Option<usize>,
    /// Acquire budget.
    pub(crate) acquire_timeout: Option<Duration>,
    /// Idle budget.
    pub(crate) idle_timeout: Option<Duration>,
    /// Reconnect budget (ferry).
    pub(crate) reconnect_timeout: Option<Duration>,
    /// Progress throttle (`None` = no progress events).
    pub(crate) progress_interval: Option<Duration>,
    /// Settlement callback, taken at settlement.
    pub(crate) on_done: Option<DoneCallback>,
    /// Outcome callback, taken at settlement.
    pub(crate) on_outcome: Option<OutcomeCallback>,
    /// Objects, in insertion order.
    pub(crate) refs: Vec<RefEntry>,
    /// Last pull (any receiver, any ref) or accepted confirm.
    pub(crate) last_active: Instant,
    /// Receivers that pulled somewhere in the tx and hold their place (NVFlare's acquired set).
    pub(crate) members: BTreeMap<String, Member>,
    /// Life phase.
    pub(crate) phase: Phase,
    /// Pull tickets handed out and not finished yet (the activity gate): the sum of the
    /// members' `pulls` (plus those of members gone meanwhile), kept by
    /// [`pull_started`](Self::pull_started) and [`pull_ended`](Self::pull_ended).
    pub(crate) in_flight: usize,
    /// Earliest instant a budget may fire (a lower bound: a pass recomputes it exactly).
    pub(crate) budget_wake: Option<Instant>,
    /// Chunk bytes served (for the settlement log).
    pub(crate) bytes_served: u64,
    /// Creation time (for the settlement log).
    pub(crate) created: Instant,
}

impl Tx {
    /// A pull of `receiver` (a member) started being served at `now`: it is here.
    pub(crate) fn pull_started(&mut self, receiver: &str, now: Instant) {
        self.in_flight += 1;
        let m = self
            .members
            .entry(receiver.to_string())
            .or_insert_with(|| Member::new(now));
        m.pulls += 1;
        m.last_active = m.last_active.max(now);
        m.gone_since = None;
    }

    /// A pull of `receiver` was answered (or abandoned) at `now`: the receiver was alive and
    /// waiting until then, so its idle clock restarts here.
    pub(crate) fn pull_ended(&mut self, receiver: &str, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(m) = self.members.get_mut(receiver) {
            m.pulls = m.pulls.saturating_sub(1);
            m.last_active = m.last_active.max(now);
        }
        if let Some(idle) = self.idle_timeout {
            self.budget_wake = earliest(self.budget_wake, strict_deadline(now, idle));
        }
    }

    /// Count mode with a known count: the number of places.
    pub(crate) fn places(&self) -> Option<usize> {
        (self.expect.ids.is_none() && self.expect.num_receivers > 0)
            .then_some(self.expect.num_receivers)
    }

    /// §3.2: the tx is finished.
    pub(crate) fn finished(&self) -> bool {
        self.expect.num_receivers > 0
            && !self.refs.is_empty()
            && self.refs.iter().all(|r| self.expect.ref_complete(r))
    }

    /// Whether any budget is configured.
    pub(crate) fn has_budgets(&self) -> bool {
        self.acquire_timeout.is_some()
            || self.idle_timeout.is_some()
            || self.reconnect_timeout.is_some()
    }

    /// The index of `ref_id` in `refs`.
    pub(crate) fn ref_index(&self, ref_id: &RefId) -> Option<usize> {
        self.refs.iter().position(|r| &r.id == ref_id)
    }

    /// When the inactivity timeout fires.
    pub(crate) fn expiry(&self) -> Option<Instant> {
        strict_deadline(self.last_active, self.timeout)
    }

    /// Budget candidates of one ref (R8): declared ∪ acquired, minus FINAL ones.
    pub(crate) fn budget_candidates(&self, r: &RefEntry) -> Vec<String> {
        let mut c: Vec<String> = self.expect.ids.clone().unwrap_or_default();
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
    pub(crate) fn next_budget_deadline(&self) -> Option<Instant> {
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
