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

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use ferry_cellnet::{Cell, Message, PeerEvent, ReturnCode as WireCode};
use ferry_core::message::{Reply, CHANNEL, TOPIC_DOWNLOAD, TOPIC_SOURCE_FAILURE};
use ferry_core::service::{
    Handled, PullTicket, ServiceConfig, ServiceEvent, ServiceOutput, TransactionInfo,
};
use ferry_core::{
    ChunkData, Downloadable, ProduceError, Produced, RefId, Service, SourceFailureTable,
    TransferOutcome, TxConfig, TxId,
};
use tokio::sync::{broadcast, oneshot, watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::budget::{attach, ByteBudget};
use crate::codec;
use crate::error::DownloadError;
use crate::waiter::TransferWaiter;

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
    /// transaction and receiver. This is what bounds the sender's memory. One receiver may
    /// hold at most a quarter of it, so receivers that stop reading cannot starve the rest.
    pub byte_budget: u64,
    /// What a chunk is assumed to weigh before it is produced (the budget is topped up after
    /// `produce` if the chunk is bigger).
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

/// The message of a caught panic (`"panic"` when it carried no text).
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// A `produce` that panicked, as the error the receiver gets.
fn panicked(p: Box<dyn std::any::Any + Send>) -> ProduceError {
    ProduceError(format!("produce panicked: {}", panic_text(&*p)))
}

/// The current instant on tokio's clock, as the engine wants it (virtual under
/// `tokio::time::pause`).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Lock a mutex even if a panicking thread poisoned it: the engines keep their own invariants
/// and never panic on input, so the data is still consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Key of an active download for source-failure interrupts: (source FQCN, ref id).
type SourceKey = (String, String);

pub(crate) struct Inner {
    pub(crate) cell: Cell,
    opts: ServiceOptions,
    /// The producer engine. A std mutex: every engine call is short and never awaits, and no
    /// hook or callback runs under it.
    engine: Mutex<Service>,
    /// Held by the one thread delivering the engine's outputs (hooks, events) in order.
    dispatch: Mutex<()>,
    /// A background dispatch is scheduled or running (so network paths spawn at most one).
    dispatch_scheduled: AtomicBool,
    /// Notified after each `TransactionDone` is delivered (shutdown waits on it).
    settled: Notify,
    /// Cancelled by shutdown: pulls still waiting for budget or a produce slot give up.
    draining: CancellationToken,
    /// Receiver side: failures of sources announced by their parents.
    pub(crate) failures: Mutex<SourceFailureTable>,
    /// Receiver side: active downloads to interrupt when their source fails.
    pub(crate) watches: Mutex<HashMap<SourceKey, Vec<watch::Sender<Option<String>>>>>,
    /// Waiters parked until their transaction's outcome is recorded.
    waiters: Mutex<HashMap<TxId, Vec<oneshot::Sender<Option<TransferOutcome>>>>>,
    events: broadcast::Sender<ServiceEvent>,
    /// Tells the timer task that a deadline may have moved.
    wake: Arc<Notify>,
    produce_slots: Arc<Semaphore>,
    budget: ByteBudget,
    pub(crate) stop: CancellationToken,
    tasks: TaskTracker,
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
    pub(crate) inner: Arc<Inner>,
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
        let inner = Arc::new(Inner {
            cell: cell.clone(),
            engine: Mutex::new(Service::new(opts.engine.clone())),
            dispatch: Mutex::new(()),
            dispatch_scheduled: AtomicBool::new(false),
            settled: Notify::new(),
            draining: CancellationToken::new(),
            failures: Mutex::new(SourceFailureTable::new()),
            watches: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            events,
            wake: Arc::new(Notify::new()),
            produce_slots: Arc::new(Semaphore::new(opts.max_concurrent_produce.max(1))),
            budget: ByteBudget::new(opts.byte_budget),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            opts,
        });
        if inner.opts.register_handlers {
            let weak = Arc::downgrade(&inner);
            cell.register_request_handler(CHANNEL, TOPIC_DOWNLOAD, move |msg: Message| {
                let weak = weak.clone();
                async move {
                    match weak.upgrade() {
                        Some(inner) => Inner::handle_download(inner, msg).await,
                        None => Some(Message::error(
                            WireCode::ServiceUnavailable,
                            "download service stopped",
                        )),
                    }
                }
            });
            let weak = Arc::downgrade(&inner);
            cell.register_request_handler(CHANNEL, TOPIC_SOURCE_FAILURE, move |msg: Message| {
                let weak = weak.clone();
                async move {
                    match weak.upgrade() {
                        Some(inner) => Some(inner.handle_source_failure(msg)),
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
        DownloadService { inner }
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

    /// A waiter for the outcome of `tx_id`.
    pub fn waiter(&self, tx_id: &TxId) -> TransferWaiter {
        TransferWaiter::new(self.clone(), tx_id.clone())
    }

    /// Subscribe to lifecycle events (downloaded to one / to all, transaction done, progress).
    pub fn events(&self) -> broadcast::Receiver<ServiceEvent> {
        self.inner.events.subscribe()
    }

    /// Bytes of the chunk budget currently free (for monitoring and tests).
    pub fn budget_available(&self) -> u64 {
        self.inner.budget.available()
    }

    /// Bytes of its share of the chunk budget that `receiver` (an FQCN) may still take: a
    /// receiver holds at most a quarter of the budget, however many pulls it sends.
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
        for (_, ws) in lock(&inner.waiters).drain() {
            for w in ws {
                let _ = w.send(None);
            }
        }
        for (_, ws) in lock(&inner.watches).drain() {
            for w in ws {
                let _ = w.send(Some("download service shut down".into()));
            }
        }
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

    /// Register a waiter; resolved at once when the outcome is known or the id unknown.
    pub(crate) fn park_waiter(
        &self,
        tx_id: &TxId,
    ) -> Result<Option<TransferOutcome>, oneshot::Receiver<Option<TransferOutcome>>> {
        let inner = &self.inner;
        let now = now();
        let mut svc = lock(&inner.engine);
        if let Some(o) = svc.outcome(tx_id, now) {
            return Ok(Some(o));
        }
        if svc.is_shut_down() || !svc.is_pending(tx_id) {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        // Registered while the engine is locked: the TransactionDone event for this id cannot
        // have been polled yet (polling it records the outcome, which the check above would
        // have seen), so its delivery, which resolves the waiters, comes after this.
        lock(&inner.waiters)
            .entry(tx_id.clone())
            .or_default()
            .push(tx);
        Err(rx)
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
    fn with_engine_bg<R>(self: &Arc<Self>, f: impl FnOnce(&mut Service, Instant) -> R) -> R {
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

    /// Deliver the engine's outputs in order (hooks run, events published), unless another
    /// thread is doing it: that one delivers ours too, in order. A hook that calls the service
    /// lands here with the dispatcher held by its own thread and returns at once; its outputs
    /// are delivered after it.
    fn dispatch(&self) {
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
    fn dispatch_in_background(self: &Arc<Self>) {
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
    fn dispatch_wait(&self) {
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
            let parked = lock(&self.waiters).remove(&outcome.tx_id);
            for w in parked.into_iter().flatten() {
                let _ = w.send(recorded.then(|| outcome.clone()));
            }
            self.settled.notify_waiters();
        }
    }

    async fn handle_download(self: Arc<Self>, msg: Message) -> Option<Message> {
        let Some(origin) = msg.origin().map(str::to_owned) else {
            return Some(Message::error(
                WireCode::InvalidRequest,
                "request without origin",
            ));
        };
        let body = match codec::main_body(&msg) {
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

    /// Produce the chunk of a validated pull under the byte budget: at once if the object can
    /// do it without blocking, else on the blocking pool.
    async fn serve(self: &Arc<Self>, ticket: PullTicket) -> Reply {
        // Whatever happens to this future (cancelled by a cell shutdown, ...), the ticket goes
        // back to the engine: a lost ticket would hold its transaction until the drain timeout.
        let peer = ticket.receiver().to_string();
        let mut guard = TicketGuard {
            inner: Arc::clone(self),
            ticket: Some(ticket),
        };
        let estimate = self.opts.chunk_estimate;
        let permit = tokio::select! {
            p = self.budget.acquire_for(&peer, estimate) => p,
            _ = self.draining.cancelled() => return guard.abandon(),
        };
        tracing::trace!(estimate, "budget acquired");
        // First try to make the chunk right here (data in memory or in the page cache): that
        // saves two thread hand-offs per chunk. Only what would block goes to the pool.
        let now = match guard.ticket.as_ref() {
            Some(t) => catch_unwind(AssertUnwindSafe(|| t.try_produce_now()))
                .unwrap_or_else(|p| Some(Err(panicked(p)))),
            None => None,
        };
        let (ticket, result) = match now {
            Some(result) => {
                let Some(ticket) = guard.ticket.take() else {
                    return Reply::error(ferry_core::ReturnCode::ProcessException, "ticket lost");
                };
                tracing::trace!("produced without blocking");
                (ticket, result)
            }
            None => {
                let slot = tokio::select! {
                    s = Arc::clone(&self.produce_slots).acquire_owned() => s,
                    _ = self.draining.cancelled() => return guard.abandon(),
                };
                let Ok(slot) = slot else {
                    return guard.abandon();
                };
                let Some(ticket) = guard.ticket.take() else {
                    return Reply::error(ferry_core::ReturnCode::ProcessException, "ticket lost");
                };
                let joined = tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    let result = catch_unwind(AssertUnwindSafe(|| ticket.produce()))
                        .unwrap_or_else(|p| Err(panicked(p)));
                    (ticket, result)
                })
                .await;
                let Ok(joined) = joined else {
                    // Only when the runtime shuts down under us; the ticket is gone with the task.
                    return Reply::error(
                        ferry_core::ReturnCode::ServiceUnavailable,
                        "runtime shutting down",
                    );
                };
                joined
            }
        };
        guard.ticket = Some(ticket);
        tracing::trace!(ok = result.is_ok(), "produced");
        let result = match result {
            Ok(Produced::Data { data, state }) => {
                let len = data.byte_len();
                let permit = if len > estimate {
                    drop(permit);
                    self.budget.acquire_for(&peer, len).await
                } else {
                    permit
                };
                let data = match data {
                    ChunkData::Bytes(b) => ChunkData::Bytes(attach(b, permit)),
                    ChunkData::Items(mut items) => {
                        if let Some(first) = items.first_mut() {
                            *first = attach(std::mem::take(first), permit);
                        }
                        ChunkData::Items(items)
                    }
                };
                Ok(Produced::Data { data, state })
            }
            other => other,
        };
        let Some(ticket) = guard.ticket.take() else {
            return Reply::error(ferry_core::ReturnCode::ProcessException, "ticket lost");
        };
        self.with_engine_bg(|svc, now| svc.finish_pull(ticket, result, now))
    }

    fn handle_source_failure(&self, msg: Message) -> Message {
        let Some(origin) = msg.origin().map(str::to_owned) else {
            return Message::error(WireCode::InvalidRequest, "notice without origin");
        };
        let body = match codec::main_body(&msg) {
            Ok(b) => b,
            Err(e) => return Message::error(WireCode::InvalidRequest, e.to_string()),
        };
        let (reply, failed) = lock(&self.failures).handle_payload(&origin, &body, now());
        for f in failed {
            let key = (f.source.clone(), f.ref_id.as_str().to_string());
            if let Some(ws) = lock(&self.watches).get(&key) {
                for w in ws {
                    let _ = w.send(Some(f.reason.clone()));
                }
            }
        }
        self.wake.notify_one();
        codec::reply_message(reply)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every handle is gone without a shutdown: stop the timer task.
        self.stop.cancel();
    }
}

/// The timer task: sleep until the engine's (or the failure table's) next deadline, or until an
/// engine call may have moved it. It holds the service only weakly, so dropping every
/// [`DownloadService`] handle ends it even without [`DownloadService::shutdown`].
async fn drive(weak: std::sync::Weak<Inner>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let deadline = {
            let Some(inner) = weak.upgrade() else { break };
            let a = lock(&inner.engine).poll_timeout();
            let b = lock(&inner.failures).poll_timeout();
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
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
                lock(&inner.failures).handle_timeout(now());
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
                // Missed events cost only promptness: idle budgets and the inactivity timeout
                // still end a transaction whose receiver is gone.
                tracing::warn!(missed = n, "peer events missed");
            }
            Err(RecvError::Closed) => break,
        }
    }
}

/// Gives a pull ticket back to the engine if the serving future is dropped early.
struct TicketGuard {
    inner: Arc<Inner>,
    ticket: Option<PullTicket>,
}

impl TicketGuard {
    fn abandon(&mut self) -> Reply {
        match self.ticket.take() {
            Some(t) => self
                .inner
                .with_engine_bg(|svc, now| svc.abandon_pull(t, now)),
            None => Reply::error(
                ferry_core::ReturnCode::ServiceUnavailable,
                "service stopping",
            ),
        }
    }
}

impl Drop for TicketGuard {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let _ = self.abandon();
        }
    }
}

/// How long a source-failure notice may take per target (NVFlare: 3 s per attempt).
pub(crate) const NOTICE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
