//! A fluid simulation of peer-assisted fan-out on virtual time, driving a real
//! [`Scheduler`]: one origin and many receivers, each host's upload capped, receivers that
//! join late, crash, hang, serve slowly or lie. Bytes move in steps of `dt`; a source's upload
//! is shared equally among the children that can use it, and a child takes only what its
//! source already has (a pipelined chain). Receivers report to the scheduler every
//! `report_interval`, fail over when their source dies, and check the digest at the end (a
//! receiver that got any byte from a liar, directly or through a peer, fails it and starts
//! over).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::peers::{
    Directive, FailureKind, PeerEvent, PeerOffer, Scheduler, SchedulerConfig, Source, SourceReport,
};

/// The simulated network.
#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// Object size in bytes.
    pub size: u64,
    /// The origin's upload, bytes per second.
    pub origin_rate: u64,
    /// Simulation step.
    pub dt: Duration,
    /// How often receivers report.
    pub report_interval: Duration,
    /// The scheduler's settings.
    pub scheduler: SchedulerConfig,
    /// Stop after this much virtual time.
    pub limit: Duration,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            size: 256 << 20,
            origin_rate: 40 << 20,
            dt: Duration::from_millis(20),
            report_interval: Duration::from_secs(1),
            scheduler: SchedulerConfig::default(),
            limit: Duration::from_secs(3600),
        }
    }
}

/// One receiver host.
#[derive(Clone, Debug)]
pub struct HostSpec {
    /// When it starts.
    pub join_at: Duration,
    /// Its upload, bytes per second.
    pub upload_rate: u64,
    /// Whether it offers to serve.
    pub share: bool,
    /// It dies at this time (connections close: its children notice at once).
    pub crash_at: Option<Duration>,
    /// It freezes at this time (no data, no reports, connections stay open).
    pub hang_at: Option<Duration>,
    /// It serves corrupted data.
    pub lies: bool,
}

impl HostSpec {
    /// A sharing host joining at 0 with `rate` upload.
    pub fn sharing(rate: u64) -> Self {
        Self {
            join_at: Duration::ZERO,
            upload_rate: rate,
            share: true,
            crash_at: None,
            hang_at: None,
            lies: false,
        }
    }
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct FanoutResult {
    /// When each receiver had everything, verified (`None`: never).
    pub finished: Vec<Option<Duration>>,
    /// Bytes the origin sent.
    pub origin_bytes: u64,
    /// Bytes each receiver sent to others.
    pub peer_bytes: Vec<u64>,
    /// Digest failures seen by receivers.
    pub verify_failures: usize,
    /// The scheduler's events.
    pub events: Vec<PeerEvent>,
    /// What each receiver's kept bytes really came from (`None`: the origin; `Some(i)`:
    /// receiver `i`), the simulation's ground truth; bytes thrown away after a failed digest
    /// are not in it.
    pub received_from: Vec<BTreeMap<Option<usize>, u64>>,
    /// The scheduler's per-source report at the end (fed by the receivers' reports, which
    /// carry what each served).
    pub sources: SourceReport,
}

impl FanoutResult {
    /// When the last of `hosts` finished, if all did.
    pub fn all_done(&self, hosts: impl IntoIterator<Item = usize>) -> Option<Duration> {
        hosts
            .into_iter()
            .map(|i| self.finished[i])
            .try_fold(Duration::ZERO, |m, f| f.map(|f| m.max(f)))
    }
}

#[derive(Debug)]
struct Host {
    spec: HostSpec,
    name: String,
    joined: bool,
    /// `None`: the origin; `Some(i)`: receiver `i`.
    source: Option<usize>,
    position: f64,
    tainted: bool,
    complete: bool,
    released: bool,
    next_report: Duration,
}

impl Host {
    fn dead(&self, t: Duration) -> bool {
        self.spec.crash_at.is_some_and(|c| t >= c)
    }
    fn hung(&self, t: Duration) -> bool {
        self.spec.hang_at.is_some_and(|h| t >= h)
    }
    fn active(&self, t: Duration) -> bool {
        self.joined && !self.dead(t) && !self.hung(t)
    }
}

/// Run the simulation from `t0` until every receiver that neither crashed nor hung has
/// everything, or `cfg.limit`.
pub fn run(cfg: &FanoutConfig, specs: &[HostSpec], t0: Instant) -> FanoutResult {
    let mut sched = Scheduler::new(cfg.scheduler.clone());
    let mut hosts: Vec<Host> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| Host {
            spec: s.clone(),
            name: format!("site-{i}"),
            joined: false,
            source: None,
            position: 0.0,
            tainted: false,
            complete: false,
            released: false,
            // staggered so reports do not all land in the same step
            next_report: s.join_at
                + cfg
                    .report_interval
                    .mul_f64(1.0 + i as f64 / specs.len().max(1) as f64),
        })
        .collect();
    let index: HashMap<String, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.clone(), i))
        .collect();
    let to_idx = |s: Source| -> Option<usize> {
        match s {
            Source::Origin => None,
            Source::Peer(p) => index.get(&p.fqcn).copied(),
        }
    };
    let size = cfg.size as f64;
    let mut res = FanoutResult {
        finished: vec![None; hosts.len()],
        peer_bytes: vec![0; hosts.len()],
        ..FanoutResult::default()
    };
    let mut origin_sent = 0.0f64;
    let mut got_from: Vec<BTreeMap<Option<usize>, f64>> = vec![BTreeMap::new(); hosts.len()];
    let mut peer_sent = vec![0.0f64; hosts.len()];
    let mut t = Duration::ZERO;
    while t <= cfg.limit {
        let now = t0 + t;
        // joins
        for h in hosts.iter_mut() {
            if !h.joined && t >= h.spec.join_at && !h.dead(t) {
                let offer = h.spec.share.then(|| PeerOffer {
                    fqcn: h.name.clone(),
                    url: format!("tcp://{}:1", h.name),
                });
                let src = sched.join(&h.name, offer, 0, now).expect("valid join");
                h.source = to_idx(src);
                h.joined = true;
            }
        }
        // failover: a source that crashed or stopped serving closes its connections
        for i in 0..hosts.len() {
            if !hosts[i].active(t) || hosts[i].complete {
                continue;
            }
            if let Some(s) = hosts[i].source {
                if hosts[s].dead(t) || hosts[s].released {
                    let pos = hosts[i].position as u64;
                    let src = sched
                        .source_failed(&hosts[i].name, FailureKind::Failed, pos, now)
                        .expect("joined");
                    hosts[i].source = to_idx(src);
                }
            }
        }
        // transfer: water-filling of each source's upload among its children
        let dt = cfg.dt.as_secs_f64();
        let mut gains = vec![0.0f64; hosts.len()];
        let mut taint = vec![false; hosts.len()];
        for src in std::iter::once(None).chain((0..hosts.len()).map(Some)) {
            let (mut budget, have, bad) = match src {
                None => (cfg.origin_rate as f64 * dt, size, false),
                Some(s) => {
                    let h = &hosts[s];
                    if !h.active(t) || h.released || !h.spec.share {
                        continue;
                    }
                    (
                        h.spec.upload_rate as f64 * dt,
                        h.position,
                        h.spec.lies || h.tainted,
                    )
                }
            };
            let mut kids: Vec<usize> = (0..hosts.len())
                .filter(|&c| {
                    hosts[c].source == src
                        && hosts[c].active(t)
                        && !hosts[c].complete
                        && hosts[c].position < have
                })
                .collect();
            while budget > 1e-6 && !kids.is_empty() {
                let share = budget / kids.len() as f64;
                let mut next = Vec::new();
                for &c in &kids {
                    let want = (have - hosts[c].position - gains[c]).max(0.0);
                    let got = want.min(share);
                    gains[c] += got;
                    budget -= got;
                    if got > 0.0 {
                        taint[c] |= bad;
                        *got_from[c].entry(src).or_default() += got;
                    }
                    if want > share {
                        next.push(c);
                    }
                    match src {
                        None => origin_sent += got,
                        Some(s) => peer_sent[s] += got,
                    }
                }
                if next.len() == kids.len() {
                    break;
                }
                kids = next;
            }
        }
        for (i, h) in hosts.iter_mut().enumerate() {
            h.position = (h.position + gains[i]).min(size);
            h.tainted |= taint[i];
        }
        // completion and verification
        for (i, h) in hosts.iter_mut().enumerate() {
            if h.active(t) && !h.complete && h.position >= size {
                if h.tainted {
                    res.verify_failures += 1;
                    h.position = 0.0;
                    h.tainted = false;
                    got_from[i].clear();
                    let src = sched
                        .source_failed(&h.name, FailureKind::Lied, 0, now)
                        .expect("joined");
                    h.source = to_idx(src);
                } else {
                    h.complete = true;
                    res.finished[i] = Some(t);
                    // a receiver says it is done at once (then keeps reporting as a source)
                    h.next_report = t;
                }
            }
        }
        // reports
        for (i, h) in hosts.iter_mut().enumerate() {
            if h.active(t) && !h.released && t >= h.next_report {
                h.next_report = t + cfg.report_interval;
                if h.spec.share {
                    sched.record_served(&h.name, peer_sent[i].round() as u64);
                }
                match sched.report(&h.name, h.position as u64, h.complete, now) {
                    Ok(Directive::Switch(s)) => h.source = to_idx(s),
                    Ok(Directive::Release) => h.released = h.complete,
                    Ok(Directive::Stay) => {}
                    Err(_) => {
                        let src = sched
                            .join(&h.name, None, h.position as u64, now)
                            .expect("valid join");
                        h.source = to_idx(src);
                    }
                }
            }
        }
        if sched.poll_timeout().is_some_and(|d| d <= now) {
            sched.handle_timeout(now);
        }
        while let Some(ev) = sched.poll_event() {
            res.events.push(ev);
        }
        let pending = hosts
            .iter()
            .any(|h| !h.complete && !h.dead(t) && !h.hung(t));
        if !pending {
            break;
        }
        t += cfg.dt;
    }
    res.origin_bytes = origin_sent.round() as u64;
    res.peer_bytes = peer_sent.iter().map(|b| b.round() as u64).collect();
    res.received_from = got_from
        .iter()
        .map(|m| m.iter().map(|(k, v)| (*k, v.round() as u64)).collect())
        .collect();
    res.sources = sched.sources();
    res
}
