//! [`DownloadService`]: ferry-core's producer engine running on a cellnet [`Cell`].
//!
//! One service per cell (an instance, never a global). It registers the `download_service__`
//! handlers, drives the engine's timers from a tokio task (`poll_timeout` / `handle_timeout`),
//! makes chunks that cannot block (page cache, memory) at once and runs every other `produce`
//! on the blocking pool with bounded concurrency so disk reads never stall the reactor, bounds
//! the bytes of produced-but-unsent chunks with one global [`ByteBudget`], tells the engine
//! when a peer's connection closes (for the reconnect budget), runs object hooks and
//! transaction callbacks outside the engine's lock, and delivers lifecycle events as a
//! broadcast stream and as [`TransferWaiter`]s.
//!
//! # Hooks and callbacks
//!
//! The engine queues hooks (`set_transaction`, `downloaded_to_one`, `downloaded_to_all`,
//! `transaction_done`, `release`) and callbacks (`on_done`, `on_outcome`) in NVFlare's order;
//! one dispatcher at a time runs them, in that order, with the engine unlocked. So a hook may
//! call this service (it is queued behind the current one, never deadlocked), and a slow hook
//! delays only the hooks and events behind it, never a pull. A hook triggered by a call of
//! yours (`delete_transaction`, `add_object`, `shutdown`) runs on your thread before the call
//! returns, unless another dispatcher is busy (then that one runs it, in order); hooks
//! triggered by the network or a timer run on tokio's blocking pool.
//!
//! The receiving side of the same service (downloads, source-failure notices) is in
//! [`crate::client`].

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_cellnet::{Cell, Message, PeerEvent, ReturnCode as WireCode};
use ferry_core::message::{CHANNEL, TOPIC_DOWNLOAD, TOPIC_SOURCE_FAILURE};
use ferry_core::service::{Handled, ServiceConfig, ServiceEvent, TransactionInfo};
use ferry_core::{Downloadable, RefId, Service, TransferOutcome, TxConfig, TxId};
use tokio::sync::{broadcast, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::budget::{ByteBudget, ChunkSizes};
use crate::codec;
use crate::error::DownloadError;
use crate::runtime::{lock, now};
use crate::source_failures::SourceFailures;
use crate::waiter::{OutcomeSource, Parked, ParkedWaiters, TransferWaiter};

/// Settings of a [`DownloadService`].
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// The producer engine's settings (confirm switch, tombstone and outcome TTLs and caps,
    /// drain timeout).
    pub engine: ServiceConfig,
    /// How many `produce` calls may run at once on tokio's blocking pool. Chunks made without
    /// blocking ([`Downloadable::try_produce_now`](ferry_core::Downloadable::try_produce_now):
    /// page-cache reads, in-memory objects) do not take a slot.
    pub max_concurrent_produce: usize,
    /// Global budget on chunk bytes produced but not yet written to a socket, across every
    /// transaction and receiver. This is what bounds the sender's memory: each chunk takes
    /// its real size before it is produced, and a chunk larger than the budget takes all of
    /// it and travels alone. One connection may hold at most a quarter of it, so receivers
    /// that stop reading cannot starve the rest.
    pub byte_budget: u64,
    /// What a chunk is assumed to weigh before it is produced when the object cannot tell
    /// (it has no byte plan) and none of its chunks was seen yet; a chunk that turns out
    /// bigger waits for the rest of its size before it is sent.
    pub chunk_estimate: u64,
    /// Capacity of the lifecycle event stream; slow subscribers miss the oldest events.
    pub event_capacity: usize,
    /// Register the `download_service__` handlers on the cell. Turn off only to wrap
    /// [`DownloadService::handle_download`] in a handler of your own (fault injection, auth).
    pub register_handlers: bool,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            engine: ServiceConfig::default(),
            max_concurrent_produce: 8,
            byte_budget: 16 << 20,
            chunk_estimate: 1 << 20,
            event_capacity: 1024,
            register_handlers: true,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) cell: Cell,
    pub(crate) opts: ServiceOptions,
    /// The producer engine. A std mutex: every engine call is short and never awaits, and no
    /// hook or callback runs under it.
    pub(crate) engine: Mutex<Service>,
    /// Held by the one thread delivering the engine's outputs (hooks, events) in order.
    pub(crate) dispatch: Mutex<()>,
    /// A background dispatch is scheduled or running (so network paths spawn at most one).
    pub(crate) dispatch_scheduled: AtomicBool,
    /// Notified after each `TransactionDone` is delivered (shutdown waits on it).
    pub(crate) settled: Notify,
    /// Cancelled by shutdown: pulls still waiting for budget or a produce slot give up.
    pub(crate) draining: CancellationToken,
    /// Waiters parked until their transaction's outcome is recorded.
    pub(crate) waiters: ParkedWaiters,
    pub(crate) events: broadcast::Sender<ServiceEvent>,
    /// Tells the timer task that a deadline may have moved.
    pub(crate) wake: Arc<Notify>,
    pub(crate) produce_slots: Arc<Semaphore>,
    pub(crate) budget: ByteBudget,
    /// Chunk sizes known before producing (byte plans) or learnt per object.
    pub(crate) sizes: ChunkSizes,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// What a [`DownloadService`] holds: see [`DownloadService::retained`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Live and settling transactions.
    pub transactions: usize,
    /// Pulls being answered.
    pub pull_tickets: usize,
    /// Objects whose chunk size was learnt (those without a byte plan, while served).
    pub learnt_chunk_sizes: usize,
    /// Transactions someone waits on.
    pub parked_waiters: usize,
    /// Receipts: finished refs (answered "finished" to late pulls).
    pub tombstones: usize,
    /// Receipts: outcomes of ended transactions.
    pub outcomes: usize,
}

/// The download service of one cell. Cheap to clone (a handle).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use ferry::prelude::*;
/// use std::time::Duration;
/// let cell = Cell::new("server")?;
/// cell.listen("tcp://127.0.0.1:0").await?;
/// let service = DownloadService::new(&cell, ServiceOptions::default());
/// let tx = ObjectDownloader::new(&service, TxConfig::new(Duration::from_secs(60)).with_num_receivers(2))?;
/// let rid = tx.add_bytes(bytes::Bytes::from_static(b"hello"))?;
/// // ... send `rid` and "server" to the receivers in some message, then:
/// let outcome = tx.waiter().wait().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DownloadService {
    /// The sending side: the producer engine and what drives it.
    pub(crate) inner: Arc<Inner>,
    /// The receiving side's state: sources announced dead, downloads watching for that.
    pub(crate) source_failures: Arc<SourceFailures>,
}

impl std::fmt::Debug for DownloadService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadService")
            .field("cell", &self.inner.cell.fqcn().as_str())
            .finish_non_exhaustive()
    }
}

impl DownloadService {
    /// Start the service on `cell`: register the handlers and the timer task. Must be called
    /// inside a tokio runtime.
    pub fn new(cell: &Cell, opts: ServiceOptions) -> DownloadService {
        let (events, _) = broadcast::channel(opts.event_capacity.max(1));
        let source_failures = Arc::new(SourceFailures::default());
        let inner = Arc::new(Inner {
            cell: cell.clone(),
            engine: Mutex::new(Service::new(opts.engine.clone())),
            dispatch: Mutex::new(()),
            dispatch_scheduled: AtomicBool::new(false),
            settled: Notify::new(),
            draining: CancellationToken::new(),
            waiters: ParkedWaiters::default(),
            events,
            wake: Arc::new(Notify::new()),
            produce_slots: Arc::new(Semaphore::new(opts.max_concurrent_produce.max(1))),
            budget: ByteBudget::new(opts.byte_budget),
            sizes: ChunkSizes::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            opts,
        });
        if inner.opts.register_handlers {
            let weak = Arc::downgrade(&inner);
            cell.register_request_handler(CHANNEL, TOPIC_DOWNLOAD, move |msg: Message| {
                let weak = weak.clone();
                async move {
                    // A cell runs a handler's first step on the connection's reader; serving
                    // a chunk (the engine, producing it) is not something to hold the
                    // receiver's next requests up for: on a task of its own from here on.
                    tokio::task::yield_now().await;
                    match weak.upgrade() {
                        Some(inner) => Inner::handle_download(inner, msg).await,
                        None => Some(Message::error(
                            WireCode::ServiceUnavailable,
                            "download service stopped",
                        )),
                    }
                }
            });
            let weak = Arc::downgrade(&source_failures);
            cell.register_request_handler(CHANNEL, TOPIC_SOURCE_FAILURE, move |msg: Message| {
                let weak = weak.clone();
                async move {
                    match weak.upgrade() {
                        Some(failures) => Some(source_failure_reply(&failures, msg)),
                        None => Some(Message::error(
                            WireCode::ServiceUnavailable,
                            "download service stopped",
                        )),
                    }
                }
            });
        }
        let span = tracing::info_span!("download_service", cell = %cell.fqcn().as_str());
        inner.tasks.spawn(
            drive(
                Arc::downgrade(&inner),
                Arc::clone(&inner.wake),
                inner.stop.clone(),
            )
            .instrument(span.clone()),
        );
        inner.tasks.spawn(
            watch_peers(
                Arc::downgrade(&inner),
                cell.peer_events(),
                inner.stop.clone(),
            )
            .instrument(span),
        );
        DownloadService {
            inner,
            source_failures,
        }
    }

    /// The cell this service runs on.
    pub fn cell(&self) -> &Cell {
        &self.inner.cell
    }

    /// The options the service was started with.
    pub fn options(&self) -> &ServiceOptions {
        &self.inner.opts
    }

    /// Create a transaction (see [`TxConfig`]). Callbacks in the config run at settlement, in
    /// NVFlare's order, outside the engine's lock: they may call this service.
    pub fn new_transaction(&self, cfg: TxConfig) -> Result<TxId, DownloadError> {
        self.inner
            .with_engine(|svc, now| svc.new_transaction(cfg, now))
            .map_err(Into::into)
    }

    /// Add an object to a live transaction; returns its ref id (`R<uuid4>` unless given).
    pub fn add_object(
        &self,
        tx_id: &TxId,
        obj: Arc<dyn Downloadable>,
        ref_id: Option<RefId>,
    ) -> Result<RefId, DownloadError> {
        self.inner
            .with_engine(|svc, now| svc.add_object(tx_id, obj, ref_id, now))
            .map_err(Into::into)
    }

    /// Stop a transaction now: downloads in progress get `invalid_request` on their next pull,
    /// the outcome is ABORTED (unless everyone already succeeded).
    pub fn delete_transaction(&self, tx_id: &TxId) -> Result<(), DownloadError> {
        self.inner
            .with_engine(|svc, now| svc.delete_transaction(tx_id, now))
            .map_err(Into::into)
    }

    /// The recorded outcome of a transaction, while kept (TTL).
    pub fn outcome(&self, tx_id: &TxId) -> Option<TransferOutcome> {
        self.inner.with_engine(|svc, now| svc.outcome(tx_id, now))
    }

    /// Whether `tx_id` will still get an outcome (live, settling, or settled with its
    /// ceremony still being delivered).
    pub fn is_pending(&self, tx_id: &TxId) -> bool {
        lock(&self.inner.engine).is_pending(tx_id)
    }

    /// A snapshot of a live or settling transaction.
    pub fn transaction_info(&self, tx_id: &TxId) -> Option<TransactionInfo> {
        lock(&self.inner.engine).transaction_info(tx_id)
    }

    /// Receivers that pulled at least once in the transaction.
    pub fn acquired_receivers(&self, tx_id: &TxId) -> Vec<String> {
        lock(&self.inner.engine).acquired_receivers(tx_id)
    }

    /// Pull requests currently being produced.
    pub fn pulls_in_flight(&self) -> usize {
        lock(&self.inner.engine).tickets_in_flight()
    }

    /// Live and settling transactions.
    pub fn transaction_count(&self) -> usize {
        lock(&self.inner.engine).transaction_count()
    }

    /// What the service holds right now, by kind: live state (zero once every transaction
    /// ended and its pulls were answered) and receipts (kept for their TTL, up to their caps:
    /// [`ServiceConfig`]'s `tombstone_ttl`/`max_tombstones`, `outcome_ttl`/`max_outcomes`).
    pub fn retained(&self) -> Retained {
        let e = lock(&self.inner.engine);
        Retained {
            transactions: e.transaction_count(),
            pull_tickets: e.tickets_in_flight(),
            learnt_chunk_sizes: self.inner.sizes.len(),
            parked_waiters: self.inner.waiters.len(),
            tombstones: e.tombstone_count(),
            outcomes: e.outcome_count(),
        }
    }

    /// A waiter for the outcome of `tx_id`.
    pub fn waiter(&self, tx_id: &TxId) -> TransferWaiter {
        TransferWaiter::new(Arc::new(self.clone()), tx_id.clone())
    }

    /// Subscribe to lifecycle events (downloaded to one / to all, transaction done, progress).
    pub fn events(&self) -> broadcast::Receiver<ServiceEvent> {
        self.inner.events.subscribe()
    }

    /// Bytes of the chunk budget currently free (for monitoring and tests).
    pub fn budget_available(&self) -> u64 {
        self.inner.budget.available()
    }

    /// Bytes of its share of the chunk budget that the connection `receiver` (an FQCN) last
    /// pulled on may still take: a connection holds at most a quarter of the budget, however
    /// many pulls it sends and whatever names it pulls as.
    pub fn budget_available_for(&self, receiver: &str) -> u64 {
        self.inner.budget.available_for(receiver)
    }

    /// Serve one topic-A request (pull, confirm or cancel) and build its reply; `None` means
    /// no reply. The registered handler calls this; call it yourself only with
    /// `register_handlers: false`.
    pub async fn handle_download(&self, msg: Message) -> Option<Message> {
        Inner::handle_download(Arc::clone(&self.inner), msg).await
    }

    /// Shut down (NVFlare's `shutdown`): waiters resolve with `None`, downloads in progress on
    /// this cell fail, handlers are removed, and every transaction is settled as DELETED
    /// (outcomes not kept) with its whole ceremony — `transaction_done`, `on_done`,
    /// `on_outcome`, `release` — before this returns. A transaction with a pull in flight
    /// settles when that pull comes back (pulls still waiting for the byte budget or a produce
    /// slot give up at once), at the latest at the engine's drain timeout. Then the timer
    /// task is joined. The cell itself keeps running.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner
            .cell
            .unregister_request_handler(CHANNEL, TOPIC_DOWNLOAD);
        inner
            .cell
            .unregister_request_handler(CHANNEL, TOPIC_SOURCE_FAILURE);
        inner.with_engine(|svc, now| svc.shutdown(now));
        inner.waiters.close();
        self.source_failures.close("download service shut down");
        inner.draining.cancel();
        // The timer task keeps settling transactions as their pulls come back (or at their
        // drain deadline); each delivered TransactionDone wakes us.
        loop {
            let settled = inner.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if lock(&inner.engine).transaction_count() == 0 {
                break;
            }
            settled.await;
        }
        // Hooks still queued (a background dispatcher may be finishing) run before we return.
        inner.dispatch_wait();
        inner.stop.cancel();
        inner.tasks.close();
        inner.tasks.wait().await;
    }
}

impl OutcomeSource for DownloadService {
    /// Resolved at once when the outcome is known or the id unknown.
    fn park(&self, tx_id: &TxId) -> Result<Option<TransferOutcome>, Parked> {
        let inner = &self.inner;
        let now = now();
        let mut svc = lock(&inner.engine);
        if let Some(o) = svc.outcome(tx_id, now) {
            return Ok(Some(o));
        }
        if svc.is_shut_down() || !svc.is_pending(tx_id) {
            return Ok(None);
        }
        // Parked while the engine is locked: the TransactionDone event for this id cannot
        // have been polled yet (polling it records the outcome, which the check above would
        // have seen), so its delivery, which resolves the waiters, comes after this.
        Err(inner.waiters.park(tx_id))
    }

    fn outcome(&self, tx_id: &TxId) -> Option<TransferOutcome> {
        DownloadService::outcome(self, tx_id)
    }

    fn is_pending(&self, tx_id: &TxId) -> bool {
        DownloadService::is_pending(self, tx_id)
    }

    fn acquired_receivers(&self, tx_id: &TxId) -> Vec<String> {
        DownloadService::acquired_receivers(self, tx_id)
    }
}

impl Inner {
    /// Run `f` on the engine (a call of the user's), then run the hooks and deliver the events
    /// it produced on this thread, outside the engine's lock, and re-arm the timer.
    pub(crate) fn with_engine<R>(&self, f: impl FnOnce(&mut Service, Instant) -> R) -> R {
        let r = f(&mut lock(&self.engine), now());
        self.wake.notify_one();
        self.dispatch();
        r
    }

    /// Like [`with_engine`](Self::with_engine), for calls on the network's and the timer's
    /// tasks: the hooks and events go to a background dispatcher on the blocking pool, so a
    /// slow hook never holds up an async worker.
    pub(crate) fn with_engine_bg<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Service, Instant) -> R,
    ) -> R {
        let (r, pending) = {
            let mut svc = lock(&self.engine);
            let r = f(&mut svc, now());
            (r, svc.has_output())
        };
        self.wake.notify_one();
        if pending {
            self.dispatch_in_background();
        }
        r
    }

    async fn handle_download(self: Arc<Self>, msg: Message) -> Option<Message> {
        let Some(origin) = msg.origin().map(str::to_owned) else {
            return Some(Message::error(
                WireCode::InvalidRequest,
                "request without origin",
            ));
        };
        let body = match codec::request_body(&msg) {
            Ok(b) => b,
            Err(e) => return Some(Message::error(WireCode::InvalidRequest, e.to_string())),
        };
        let handled = self.with_engine_bg(|svc, now| svc.handle_payload(&origin, &body, now));
        match handled {
            Handled::Reply(reply) => Some(codec::reply_message(reply)),
            Handled::Pull(ticket) => {
                let span = tracing::debug_span!(
                    "pull",
                    tx = %ticket.tx_id(),
                    rid = %ticket.ref_id(),
                    receiver = %ticket.receiver()
                );
                Some(codec::reply_message(
                    self.serve(ticket).instrument(span).await,
                ))
            }
        }
    }
}

/// Serve one topic-B request (a source-failure notice) on the receiving side.
fn source_failure_reply(failures: &SourceFailures, msg: Message) -> Message {
    let Some(origin) = msg.origin().map(str::to_owned) else {
        return Message::error(WireCode::InvalidRequest, "notice without origin");
    };
    let body = match codec::request_body(&msg) {
        Ok(b) => b,
        Err(e) => return Message::error(WireCode::InvalidRequest, e.to_string()),
    };
    codec::reply_message(failures.handle_notice(&origin, &body, now()))
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every handle is gone without a shutdown: stop the timer task.
        self.stop.cancel();
    }
}

/// The timer task: sleep until the engine's next deadline, or until an engine call may have
/// moved it. It holds the service only weakly, so dropping every
/// [`DownloadService`] handle ends it even without [`DownloadService::shutdown`].
async fn drive(weak: std::sync::Weak<Inner>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let deadline = {
            let Some(inner) = weak.upgrade() else { break };
            let deadline = lock(&inner.engine).poll_timeout();
            deadline
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = sleep => {
                let Some(inner) = weak.upgrade() else { break };
                inner.with_engine_bg(|svc, now| svc.handle_timeout(now));
            }
        }
    }
}

/// Tell the engine when a peer's connection closes or comes back, so a receiver that died is
/// failed at its transaction's reconnect budget instead of at the inactivity timeout.
async fn watch_peers(
    weak: std::sync::Weak<Inner>,
    mut events: tokio::sync::broadcast::Receiver<PeerEvent>,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = events.recv() => ev,
        };
        let Some(inner) = weak.upgrade() else { break };
        match ev {
            Ok(PeerEvent::Disconnected(peer)) => {
                inner.with_engine_bg(|svc, now| svc.receiver_disconnected(&peer, now));
            }
            Ok(PeerEvent::Connected(peer)) => {
                inner.with_engine_bg(|svc, now| svc.receiver_connected(&peer, now));
            }
            Err(RecvError::Lagged(n)) => {
                // A missed close costs only promptness (idle budgets and the inactivity
                // timeout still end a transaction whose receiver is gone). A missed connect
                // would fail a receiver that is here (a pull does not stop its reconnect
                // budget), so every peer connected now is reported connected again.
                tracing::warn!(
                    missed = n,
                    "peer events missed; resynchronising connected peers"
                );
                let peers = inner.cell.connected_peers();
                inner.with_engine_bg(|svc, now| {
                    for peer in &peers {
                        svc.receiver_connected(peer, now);
                    }
                });
            }
            Err(RecvError::Closed) => break,
        }
    }
}
