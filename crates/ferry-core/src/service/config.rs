//! Configuration of the producer engine and of each transaction.

use crate::{DoneStatus, Downloadable, Error, ExpectedReceivers, TransferOutcome, TxId};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// NVFlare's `FINISHED_REFS_TTL` and `TX_OUTCOME_TTL`: 30 minutes.
pub const DEFAULT_RECEIPT_TTL: Duration = Duration::from_secs(1800);
/// NVFlare's `OP_DRAIN_TIMEOUT`: how long settlement waits for in-flight pulls.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// NVFlare's default progress interval.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// Settings of a [`Service`](crate::Service).
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The producer's receiver-confirm switch: when on (default), a terminal serve to a
    /// `confirm_capable` receiver is provisional until confirmed.
    pub confirm_enabled: bool,
    /// How long a finished ref answers its receivers' late pulls from a tombstone.
    pub tombstone_ttl: Duration,
    /// Cap on tombstoned refs; beyond it the oldest is dropped first. Ferry addition: NVFlare
    /// bounds them by TTL only.
    pub max_tombstones: usize,
    /// How long an outcome stays queryable (and blocks reuse of its tx id).
    pub outcome_ttl: Duration,
    /// Cap on kept outcomes; beyond it the oldest is dropped first (its id becomes reusable).
    pub max_outcomes: usize,
    /// How long settlement waits for in-flight pull tickets before settling anyway.
    pub drain_timeout: Duration,
    /// In identity mode (`receiver_ids` declared), answer pulls from any other cell with
    /// `invalid_request` instead of serving them. Ferry's default (`true`): an undeclared cell
    /// has no business reading the object. NVFlare serves such receivers and merely does not
    /// count them; set `false` for exactly that behaviour.
    pub refuse_undeclared: bool,
    /// In count mode with a known count (`num_receivers = n > 0`, no `receiver_ids`), the
    /// first `n` cells whose pull is served hold the places: a pull from any other cell is
    /// answered `invalid_request` ([`Refusal::ReceiverLimitReached`](crate::Refusal)) and
    /// records nothing, and a cancel gives the canceller's place back (it keeps only its
    /// SUCCESS statuses) instead of failing it. Ferry's default (`true`): in count mode anyone
    /// holding the ref id may pull, so a cancel must not end the transfer for the receivers
    /// that count, and a receiver beyond the count should learn at once that it will not be
    /// served. `false` is NVFlare's behaviour: serve every cell, count the first final
    /// statuses of any, and fail a canceller on every ref.
    pub count_slots: bool,
    /// A receiver whose status on a ref is FAILED (it cancelled in identity mode, a budget
    /// expired, it confirmed a failure, its connection was lost) and that pulls that ref again
    /// while the transaction is live starts afresh on it: its status is open again, so it can
    /// resume and be counted with its new final status (`downloaded_to_one` fires again).
    /// Ferry's default (`true`). `false` is NVFlare's "first final status wins" for FAILED as
    /// well as SUCCESS (SUCCESS always stays final).
    pub reopen_failed: bool,
    /// Seed of the ids and nonces the engine mints (transaction ids, ref ids, confirm
    /// nonces). `None` (default): the OS's random number generator, as production needs — a
    /// ref id is what a receiver needs to pull and a nonce is what its confirm must echo, so
    /// neither may be guessable. `Some(seed)`: a seeded generator, so the same seed and the same
    /// calls mint the same ids and a run replays exactly; for tests and simulations only
    /// ([`Sim`](crate::testing::sim::Sim) seeds it from its own seed).
    pub id_seed: Option<u64>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            confirm_enabled: true,
            tombstone_ttl: DEFAULT_RECEIPT_TTL,
            max_tombstones: 65_536,
            outcome_ttl: DEFAULT_RECEIPT_TTL,
            max_outcomes: 4_096,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            refuse_undeclared: true,
            count_slots: true,
            reopen_failed: true,
            id_seed: None,
        }
    }
}

/// Called at settlement after every object's `transaction_done` hook, with the objects. Runs
/// outside the engine (it may call the service).
pub type DoneCallback = Box<dyn FnOnce(&TxId, DoneStatus, &[Arc<dyn Downloadable>]) + Send>;
/// Called at settlement with the computed outcome, before the objects are released.
pub type OutcomeCallback = Box<dyn FnOnce(&TransferOutcome) + Send>;

/// Settings of one transaction (NVFlare's `new_transaction` arguments). Build with
/// [`TxConfig::new`] and the `with_*` methods.
pub struct TxConfig {
    /// Caller-chosen id; `None` mints `T<uuid4>`.
    pub tx_id: Option<TxId>,
    /// Inactivity timeout: the transaction times out when no pull (or accepted confirm) came
    /// for longer than this (strict `>`).
    pub timeout: Duration,
    /// Expected receivers in count mode; 0 = unknown (never finishes, never COMPLETED).
    /// NVFlare's argument; the engine reads it, with `receiver_ids`, through
    /// [`expected_receivers`](Self::expected_receivers).
    pub num_receivers: usize,
    /// Declared receiver FQCNs (identity mode). Deduplicated, order kept.
    pub receiver_ids: Option<Vec<String>>,
    /// Quorum for [`TransferOutcome::quorum_met`].
    pub min_receivers: Option<usize>,
    /// Fail a declared receiver that never pulled for this long after a ref was added.
    pub acquire_timeout: Option<Duration>,
    /// Fail a receiver silent (across the whole transaction) for this long.
    pub idle_timeout: Option<Duration>,
    /// Fail a receiver whose connection closed and that did not connect again within this
    /// long. Ferry addition: the driver reports closed and new connections with
    /// [`Service::receiver_disconnected`](crate::Service::receiver_disconnected) and
    /// [`Service::receiver_connected`](crate::Service::receiver_connected); a pull alone does
    /// not end the budget (it may have been read from the closed connection).
    pub reconnect_timeout: Option<Duration>,
    /// Emit progress events, throttled to one per interval per (ref, receiver); `None` = off.
    pub progress_interval: Option<Duration>,
    /// Settlement callback (NVFlare's `transaction_done_cb`).
    pub on_done: Option<DoneCallback>,
    /// Outcome callback (NVFlare's `outcome_cb`).
    pub on_outcome: Option<OutcomeCallback>,
}

impl TxConfig {
    /// A transaction with inactivity timeout `timeout` and everything else unset.
    pub fn new(timeout: Duration) -> Self {
        Self {
            tx_id: None,
            timeout,
            num_receivers: 0,
            receiver_ids: None,
            min_receivers: None,
            acquire_timeout: None,
            idle_timeout: None,
            reconnect_timeout: None,
            progress_interval: None,
            on_done: None,
            on_outcome: None,
        }
    }

    /// Who the transaction expects, as the engine and its objects will see it
    /// ([`ExpectedReceivers::from_nvflare`] of `num_receivers` and `receiver_ids`); an error if
    /// the two disagree or an id is not an FQCN.
    pub fn expected_receivers(&self) -> Result<ExpectedReceivers, Error> {
        ExpectedReceivers::from_nvflare(self.num_receivers, self.receiver_ids.clone())
    }

    /// Use this id instead of a random one.
    pub fn with_tx_id(mut self, id: impl Into<TxId>) -> Self {
        self.tx_id = Some(id.into());
        self
    }

    /// Count mode: expect `n` receivers.
    pub fn with_num_receivers(mut self, n: usize) -> Self {
        self.num_receivers = n;
        self
    }

    /// Identity mode: expect exactly these receivers.
    pub fn with_receiver_ids<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.receiver_ids = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// k-of-N quorum.
    pub fn with_min_receivers(mut self, k: usize) -> Self {
        self.min_receivers = Some(k);
        self
    }

    /// Acquire budget.
    pub fn with_acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = Some(d);
        self
    }

    /// Idle budget.
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }

    /// Reconnect budget: a receiver whose connection closed is failed (on every ref where it is
    /// not final) unless it comes back within `d`. Together with a driver that reports
    /// connections, a dead receiver is noticed and named long before the inactivity timeout.
    pub fn with_reconnect_timeout(mut self, d: Duration) -> Self {
        self.reconnect_timeout = Some(d);
        self
    }

    /// Progress events every `interval` at most.
    pub fn with_progress(mut self, interval: Duration) -> Self {
        self.progress_interval = Some(interval);
        self
    }

    /// Settlement callback.
    pub fn on_done(
        mut self,
        f: impl FnOnce(&TxId, DoneStatus, &[Arc<dyn Downloadable>]) + Send + 'static,
    ) -> Self {
        self.on_done = Some(Box::new(f));
        self
    }

    /// Outcome callback.
    pub fn on_outcome(mut self, f: impl FnOnce(&TransferOutcome) + Send + 'static) -> Self {
        self.on_outcome = Some(Box::new(f));
        self
    }
}

impl fmt::Debug for TxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxConfig")
            .field("tx_id", &self.tx_id)
            .field("timeout", &self.timeout)
            .field("num_receivers", &self.num_receivers)
            .field("receiver_ids", &self.receiver_ids)
            .field("min_receivers", &self.min_receivers)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("reconnect_timeout", &self.reconnect_timeout)
            .field("progress_interval", &self.progress_interval)
            .field("on_done", &self.on_done.is_some())
            .field("on_outcome", &self.on_outcome.is_some())
            .finish()
    }
}
