//! A seeded, single-threaded network on virtual time: one producer [`Service`] (named
//! [`SimConfig::sender`]) and N receivers running [`Download`]s, with latency, loss,
//! duplication, reordering (random latency), slow receivers, slow `produce`, receiver crash and
//! restart, transaction deletion and source-failure notices. The simulator plays the glue: it
//! encodes every request and reply with the real wire types, runs `produce` on the objects and
//! the consumer calls the engines ask for, and records every service event with its instant.
//!
//! Quinn's `Pair` idea, for the download service. Everything is deterministic for a seed.
//!
//! ```
//! use ferry_core::testing::{BytesObject, MemorySink, Sim, SimConfig};
//! use ferry_core::{DownloadConfig, TxConfig};
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//!
//! let mut sim = Sim::new(SimConfig { seed: 7, ..SimConfig::default() }, Instant::now());
//! let now = sim.now();
//! let tx = sim.service().new_transaction(TxConfig::new(Duration::from_secs(60)).with_num_receivers(2), now)?;
//! let obj = Arc::new(BytesObject::new((0..100u8).collect::<Vec<u8>>(), 16));
//! let rid = sim.service().add_object(&tx, obj, None, now)?;
//! let mut sinks = Vec::new();
//! for name in ["site-1", "site-2"] {
//!     let r = sim.add_receiver(name);
//!     let (sink, result) = MemorySink::bytes();
//!     let mut sink = Some(sink);
//!     sim.start_download(r, rid.clone(), DownloadConfig::default(), move || {
//!         Box::new(sink.take().unwrap_or_else(|| MemorySink::bytes().0))
//!     });
//!     sinks.push(result);
//! }
//! sim.run_for(Duration::from_secs(3600));
//! assert!(sim.outcomes()[0].completed());
//! assert_eq!(sinks[0].lock().unwrap().bytes, (0..100u8).collect::<Vec<u8>>());
//! # Ok::<(), ferry_core::Error>(())
//! ```

mod config;
mod deliver;
mod events;
mod link;
mod receiver;

pub use config::{DownloadHandle, ReceiverId, SimConfig, SimStats};
use events::{Event, Schedule};
use link::Link;
use receiver::{Receiver, Slot};

use super::SplitMix64;
use crate::message::{encode, SourceFailureNotice};
use crate::{
    Action, Consumer, Download, DownloadConfig, DownloadFailure, RefId, Service, ServiceConfig,
    ServiceEvent, SourceFailureTable, TransferOutcome, TxId,
};
use std::time::{Duration, Instant};

/// The simulated network. See the [module docs](self).
///
/// # Replaying a failure
///
/// A run is a function of its [`SimConfig`] (above all its `seed`), its starting instant and
/// the calls made on it: the network's choices come from a generator seeded with `seed`, and
/// so do the ids and nonces the service mints (the simulator sets
/// [`ServiceConfig::id_seed`] to `seed` unless the service's config chose one). Two runs with
/// the same seed and the same calls produce the same events, with the same ids, at the same
/// virtual instants — and so does a failing run:
///
/// ```
/// use ferry_core::testing::{BytesObject, MemorySink, Sim, SimConfig};
/// use ferry_core::{DownloadConfig, TxConfig};
/// use std::sync::Arc;
/// use std::time::{Duration, Instant};
///
/// fn run(seed: u64, t0: Instant) -> String {
///     let cfg = SimConfig { seed, loss: 0.2, ..SimConfig::default() };
///     let mut sim = Sim::new(cfg, t0);
///     let tx = sim.service().new_transaction(TxConfig::new(Duration::from_secs(30)).with_num_receivers(2), t0).unwrap();
///     let rid = sim.service().add_object(&tx, Arc::new(BytesObject::new(vec![7u8; 500], 64)), None, t0).unwrap();
///     for name in ["site-1", "site-2"] {
///         let r = sim.add_receiver(name);
///         sim.start_download(r, rid.clone(), DownloadConfig::default(), || Box::new(MemorySink::bytes().0));
///     }
///     sim.run_for(Duration::from_secs(600));
///     format!("{:?}", sim.service_events())
/// }
/// let t0 = Instant::now();
/// assert_eq!(run(7, t0), run(7, t0)); // ids, nonces, order and instants included
/// assert_ne!(run(7, t0), run(8, t0));
/// ```
///
/// So a property test over simulations only has to say which seed failed. Put the seed in
/// what the test prints on failure (proptest prints the failing input, seed included, and
/// keeps it in `proptest-regressions/` to try it first on the next run); to replay it,
/// build the same simulation with that seed in a plain `#[test]` (`tests/sim.rs` has
/// `fixed(Scenario { seed, .. })` for its scenarios) and add tracing or assertions there: it
/// fails the same way every time.
pub struct Sim {
    cfg: SimConfig,
    rng: SplitMix64,
    t0: Instant,
    now: Instant,
    service: Service,
    receivers: Vec<Receiver>,
    /// What the network will do, in time order.
    schedule: Schedule,
    log: Vec<(Instant, ServiceEvent)>,
    stats: SimStats,
    /// With [`SimConfig::pace`]: data replies waiting for the capped link.
    link: Link,
}

impl Sim {
    /// A network with a default-configured service, starting at virtual instant `t0` (any
    /// `Instant`: only differences matter; the simulator never reads the clock).
    pub fn new(cfg: SimConfig, t0: Instant) -> Self {
        Self::with_service(cfg, ServiceConfig::default(), t0)
    }

    /// A network whose producer uses `service_cfg`.
    /// Its ids and nonces are seeded with `cfg.seed` unless `service_cfg.id_seed` is set.
    pub fn with_service(cfg: SimConfig, mut service_cfg: ServiceConfig, t0: Instant) -> Self {
        service_cfg.id_seed.get_or_insert(cfg.seed);
        Self {
            rng: SplitMix64::new(cfg.seed),
            cfg,
            t0,
            now: t0,
            service: Service::new(service_cfg),
            receivers: Vec::new(),
            schedule: Schedule::default(),
            log: Vec::new(),
            stats: SimStats::default(),
            link: Link::default(),
        }
    }

    /// Virtual now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The instant the simulation started.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// The producer engine (create transactions and add objects through it).
    pub fn service(&mut self) -> &mut Service {
        &mut self.service
    }

    /// Add a receiver cell named `name` (an FQCN).
    pub fn add_receiver(&mut self, name: &str) -> ReceiverId {
        self.receivers.push(Receiver {
            name: name.to_string(),
            slowness: 1,
            crashed: false,
            slots: Vec::new(),
            failures: SourceFailureTable::new(),
        });
        self.receivers.len() - 1
    }

    /// Multiply this receiver's link latency by `factor` (a slow receiver).
    pub fn set_slowness(&mut self, r: ReceiverId, factor: u32) {
        self.receivers[r].slowness = factor.max(1);
    }

    /// Start downloading `ref_id` from the sender on receiver `r`. `factory` builds the consumer
    /// (once now, again after each restart).
    pub fn start_download(
        &mut self,
        r: ReceiverId,
        ref_id: RefId,
        cfg: DownloadConfig,
        factory: impl FnMut() -> Box<dyn Consumer> + 'static,
    ) -> DownloadHandle {
        let rc = &mut self.receivers[r];
        rc.slots.push(Slot {
            ref_id,
            cfg,
            factory: Box::new(factory),
            live: None,
            life: 0,
            result: None,
            finished_at: None,
        });
        let index = rc.slots.len() - 1;
        if !rc.crashed {
            self.launch(r, index);
        }
        self.pump();
        DownloadHandle { receiver: r, index }
    }

    /// (Re)create the engine of a slot.
    fn launch(&mut self, r: ReceiverId, index: usize) {
        let now = self.now;
        let sender = self.cfg.sender.clone();
        let rc = &mut self.receivers[r];
        let slot = &mut rc.slots[index];
        slot.life += 1;
        let consumer = (slot.factory)();
        let mut dl = match Download::new(
            sender.clone(),
            slot.ref_id.clone(),
            slot.cfg.clone(),
            consumer.needs_order(),
            now,
        ) {
            Ok(d) => d,
            Err(e) => {
                slot.result = Some(Err(DownloadFailure::BadReply(e.to_string())));
                slot.finished_at = Some(now);
                return;
            }
        };
        if let Some(reason) = rc.failures.check(&sender, &slot.ref_id, now) {
            dl.source_failed(&reason, now);
        }
        slot.live = Some((dl, consumer));
    }

    /// Crash receiver `r` at `at`: its engines and consumers are dropped, messages to it are
    /// lost, unfinished downloads restart from scratch at [`restart_at`](Self::restart_at).
    pub fn crash_at(&mut self, r: ReceiverId, at: Instant) {
        self.schedule(at, Event::Crash(r));
    }

    /// Restart receiver `r` at `at`.
    pub fn restart_at(&mut self, r: ReceiverId, at: Instant) {
        self.schedule(at, Event::Restart(r));
    }

    /// Delete a transaction at `at` (the owner gives up).
    pub fn delete_at(&mut self, tx: TxId, at: Instant) {
        self.schedule(at, Event::DeleteTx(tx));
    }

    /// Deliver a source-failure notice to receiver `r` at `at` (origin: the notice's parent).
    pub fn source_failure_at(&mut self, r: ReceiverId, notice: SourceFailureNotice, at: Instant) {
        self.schedule(at, Event::SourceFailure(r, notice));
    }

    fn schedule(&mut self, at: Instant, ev: Event) {
        self.schedule.push(at.max(self.now), ev);
    }

    fn latency(&mut self, r: ReceiverId) -> Duration {
        let (lo, hi) = self.cfg.latency;
        let ns = self.rng.range(lo.as_nanos() as u64, hi.as_nanos() as u64);
        Duration::from_nanos(ns).saturating_mul(self.receivers[r].slowness)
    }

    /// Put a message on the wire: maybe lose it, maybe duplicate it.
    fn transmit(&mut self, r: ReceiverId, lossy: bool, dup: bool, ev: impl Fn() -> Event) {
        self.stats.sent += 1;
        if lossy && self.rng.chance(self.cfg.loss) {
            self.stats.lost += 1;
            return;
        }
        let d = self.latency(r);
        self.schedule(self.now + d, ev());
        if dup && self.rng.chance(self.cfg.duplicate) {
            self.stats.duplicated += 1;
            let d = self.latency(r);
            self.schedule(self.now + d, ev());
        }
    }

    /// With [`SimConfig::pace`]: if the link is idle, start sending the next waiting reply of
    /// the next receiver in turn.
    fn start_link(&mut self) {
        let Some(rate) = self.cfg.pace else { return };
        if let Some((r, p, d)) = self.link.start(rate) {
            self.schedule(self.now + d, Event::LinkDone(r, p));
        }
    }

    /// Execute every pending action of every live download and collect service events,
    /// until nothing is left to do at this instant.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for r in 0..self.receivers.len() {
                for s in 0..self.receivers[r].slots.len() {
                    while let Some(action) = self.next_action(r, s) {
                        progressed = true;
                        self.execute(r, s, action);
                    }
                }
            }
            while let Some(ev) = self.service.poll_event() {
                self.log.push((self.now, ev));
            }
            if !progressed {
                break;
            }
        }
    }

    fn next_action(&mut self, r: ReceiverId, s: usize) -> Option<Action> {
        self.receivers[r].slots[s].live.as_mut()?.0.poll_action()
    }

    fn execute(&mut self, r: ReceiverId, s: usize, action: Action) {
        let life = self.receivers[r].slots[s].life;
        let lossy_ff = self.cfg.lossy_fire_and_forget;
        // (request id, payload, may be lost, may be duplicated): pulls are request/reply,
        // confirm and cancel fire-and-forget
        let (id, payload, lossy, dup) = match action {
            Action::Send { id, request } => (Some(id), encode(&request), true, false),
            Action::SendConfirm(c) => (None, encode(&c), lossy_ff, true),
            Action::SendCancel(c) => (None, encode(&c), lossy_ff, true),
            Action::Progress(_) => return,
            other => return self.receivers[r].slots[s].run_consumer(other, self.now),
        };
        self.transmit(r, lossy, dup, || Event::Request {
            from: r,
            slot: s,
            life,
            id,
            payload: payload.clone(),
        });
    }

    /// The earliest instant anything has work.
    fn next_instant(&self) -> Option<Instant> {
        let mut next = self.schedule.next_instant();
        let mut take = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        take(self.service.poll_timeout());
        for rc in &self.receivers {
            take(rc.failures.poll_timeout());
            for s in &rc.slots {
                if let Some((dl, _)) = &s.live {
                    take(dl.poll_timeout());
                }
            }
        }
        next
    }

    /// Run until nothing is scheduled before `deadline` (time then stands at the last event, or
    /// at `deadline` if work remains). Returns the number of steps taken.
    pub fn run_until(&mut self, deadline: Instant) -> u64 {
        let mut steps = 0;
        self.pump();
        while let Some(next) = self.next_instant() {
            if next > deadline {
                self.now = deadline.max(self.now);
                break;
            }
            steps += 1;
            assert!(
                steps <= self.cfg.max_steps,
                "simulation exceeded {} steps (livelock?)",
                self.cfg.max_steps
            );
            self.now = self.now.max(next);
            self.step();
        }
        steps
    }

    /// Run for `d` of virtual time (or until quiescent).
    pub fn run_for(&mut self, d: Duration) -> u64 {
        self.run_until(self.now + d)
    }

    /// Do everything due at `self.now`.
    fn step(&mut self) {
        let now = self.now;
        while let Some(ev) = self.schedule.pop_due(now) {
            self.deliver(ev);
            self.pump();
        }
        if self.service.poll_timeout().is_some_and(|t| t <= now) {
            self.service.handle_timeout(now);
        }
        for r in 0..self.receivers.len() {
            self.receivers[r].failures.handle_timeout(now);
            for s in 0..self.receivers[r].slots.len() {
                if let Some((dl, _)) = self.receivers[r].slots[s].live.as_mut() {
                    if dl.poll_timeout().is_some_and(|t| t <= now) {
                        dl.handle_timeout(now);
                    }
                }
            }
        }
        self.pump();
    }

    /// The result of a download, once finished.
    pub fn result(&self, h: DownloadHandle) -> Option<&Result<(), DownloadFailure>> {
        self.receivers[h.receiver].slots[h.index].result.as_ref()
    }

    /// When a download finished.
    pub fn finished_at(&self, h: DownloadHandle) -> Option<Instant> {
        self.receivers[h.receiver].slots[h.index].finished_at
    }

    /// Every service event so far, with the instant it was polled.
    pub fn service_events(&self) -> &[(Instant, ServiceEvent)] {
        &self.log
    }

    /// The outcomes of settled transactions, in settlement order.
    pub fn outcomes(&self) -> Vec<&TransferOutcome> {
        self.log
            .iter()
            .filter_map(|(_, e)| match e {
                ServiceEvent::TransactionDone { outcome, .. } => Some(outcome),
                _ => None,
            })
            .collect()
    }

    /// Message counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// The seed of this run (what a failing test should print; see [Replaying a
    /// failure](Sim#replaying-a-failure)).
    pub fn seed(&self) -> u64 {
        self.cfg.seed
    }
}
