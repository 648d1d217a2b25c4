//! The scheduler: which source each receiver of one ref pulls from.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::{Directive, PeerOffer, Source};
use crate::validate_fqcn;

mod choice;
mod sources;

use sources::Credits;
pub use sources::{PeerServed, ReceiverSources, SourceReport, MAX_NAMED_SOURCES};

/// Most events kept unpolled (the oldest are dropped beyond).
const MAX_EVENTS: usize = 4096;
/// Longest peer URL accepted in an offer.
pub const MAX_URL_LEN: usize = 1024;

/// How the scheduler builds its tree.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Whether receivers are redirected at all (`false`: everyone pulls from the origin).
    pub enabled: bool,
    /// Children per source, the origin included (`1`: a pipelined chain). The origin's egress
    /// is about `fan_out` copies of the object.
    pub fan_out: usize,
    /// A pulling receiver that advanced less than `min_progress` bytes in this long while its
    /// source had more is stalled: it and its children are moved.
    pub stall_timeout: Duration,
    /// See `stall_timeout`.
    pub min_progress: u64,
    /// A receiver that has not reported for this long is gone (crashed, disconnected).
    pub silence_timeout: Duration,
    /// A receiver whose source is ahead of it by more than this many bytes, and which
    /// advanced less than a quarter of what its source advanced in a stall window, is lagging:
    /// its source is slow to serve, takes no new children, and the receiver is moved.
    pub lag_bytes: u64,
    /// Most receivers tracked per ref; later ones pull from the origin, untracked.
    pub max_receivers: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fan_out: 1,
            stall_timeout: Duration::from_secs(10),
            min_progress: 1 << 20,
            silence_timeout: Duration::from_secs(15),
            lag_bytes: 16 << 20,
            max_receivers: 65_536,
        }
    }
}

/// A request the scheduler cannot act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// A report or failure from a receiver that never joined (or left).
    #[error("{0} has not joined this ref's peer schedule (join first)")]
    UnknownReceiver(String),
    /// A malformed join.
    #[error("invalid peer offer: {0}")]
    InvalidOffer(String),
}

/// What a receiver says went wrong with its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The source could not be reached or stopped answering.
    Failed,
    /// The source's data did not match the ticket's digest: it is banned as a source.
    Lied,
}

/// What the scheduler did, for logs and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// `receiver` was told to pull from `source` (`None`: the origin).
    Assigned {
        /// The receiver.
        receiver: String,
        /// Its source, `None` for the origin.
        source: Option<String>,
    },
    /// `receiver` stopped advancing while its source had more: it and its children move.
    Stalled {
        /// The receiver.
        receiver: String,
    },
    /// `peer` serves too slowly: its child was moved and it takes no new children.
    SlowSource {
        /// The slow source.
        peer: String,
    },
    /// `peer` fell silent or was reported failed: its children move.
    Lost {
        /// The receiver that is gone.
        peer: String,
    },
    /// `peer` served data that failed verification at `by`: never a source again.
    Banned {
        /// The lying source.
        peer: String,
        /// Who caught it.
        by: String,
    },
}

/// Counts, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Receivers tracked.
    pub receivers: usize,
    /// Receivers pulling from the origin now.
    pub from_origin: usize,
    /// Receivers pulling from a peer now.
    pub from_peers: usize,
    /// Receivers that have everything.
    pub complete: usize,
    /// Sources banned for serving bad data.
    pub banned: usize,
}

/// Where a node pulls from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Upstream {
    Origin,
    Peer(String),
    /// Its source was lost: it is told a new one at its next report.
    Lost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// Reporting and advancing.
    Live,
    /// Not advancing while its source is ahead; live again once it reports progress.
    Stalled,
    /// Silent, or reported failed by a child; live again if it reports.
    Gone,
    /// Served bad data: never a source again.
    Banned,
}

#[derive(Debug)]
struct Node {
    offer: Option<PeerOffer>,
    upstream: Upstream,
    children: BTreeSet<String>,
    position: u64,
    complete: bool,
    health: Health,
    /// Serves too slowly: takes no new children.
    slow: bool,
    last_report: Instant,
    /// The stall window: when it started, the node's and its source's positions then.
    window_start: Instant,
    window_pos: u64,
    window_upstream_pos: Option<u64>,
    /// Join order, for stable tie-breaks.
    seq: u64,
    /// Where its bytes came from, for reports.
    credits: Credits,
}

/// The peer scheduler of one ref (see the [module docs](super)).
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    nodes: BTreeMap<String, Node>,
    origin_children: BTreeSet<String>,
    events: VecDeque<PeerEvent>,
    next_seq: u64,
    /// The transfer is over: every report is answered `Release`.
    closed: bool,
}

impl Scheduler {
    /// A scheduler with `cfg` (`fan_out` below 1 counts as 1).
    pub fn new(mut cfg: SchedulerConfig) -> Self {
        cfg.fan_out = cfg.fan_out.max(1);
        Self {
            cfg,
            nodes: BTreeMap::new(),
            origin_children: BTreeSet::new(),
            events: VecDeque::new(),
            next_seq: 0,
            closed: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// `receiver` (the request's proven origin) starts or restarts pulling at `position`,
    /// offering to serve (`offer`, whose FQCN must be `receiver`) or not. Returns its source.
    pub fn join(
        &mut self,
        receiver: &str,
        offer: Option<PeerOffer>,
        position: u64,
        now: Instant,
    ) -> Result<Source, SchedulerError> {
        validate_fqcn(receiver).map_err(|e| SchedulerError::InvalidOffer(e.to_string()))?;
        if let Some(o) = &offer {
            if o.fqcn != receiver {
                return Err(SchedulerError::InvalidOffer(format!(
                    "{receiver} offers to serve as {}: a receiver can only serve under its own name",
                    o.fqcn
                )));
            }
            if o.url.is_empty() || o.url.len() > MAX_URL_LEN {
                return Err(SchedulerError::InvalidOffer(format!(
                    "the URL must be 1..={MAX_URL_LEN} bytes"
                )));
            }
        }
        if !self.cfg.enabled || self.closed {
            if let Some(n) = self.nodes.get_mut(receiver) {
                n.credits.advance(position);
                n.credits.told = None;
            }
            return Ok(Source::Origin);
        }
        if !self.nodes.contains_key(receiver) && self.nodes.len() >= self.cfg.max_receivers {
            return Ok(Source::Origin);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(n) = self.nodes.get_mut(receiver) {
            if n.health != Health::Banned {
                n.health = Health::Live;
            }
            n.offer = offer;
            n.position = position;
            n.last_report = now;
            n.credits.advance(position);
        } else {
            self.nodes.insert(
                receiver.to_string(),
                Node {
                    offer,
                    upstream: Upstream::Lost,
                    children: BTreeSet::new(),
                    position,
                    complete: false,
                    health: Health::Live,
                    slow: false,
                    last_report: now,
                    window_start: now,
                    window_pos: position,
                    window_upstream_pos: None,
                    seq,
                    credits: Credits::new(position),
                },
            );
        }
        self.detach(receiver);
        Ok(self.assign(receiver, now))
    }

    /// A periodic report of `receiver`: its contiguous `position` and whether it has
    /// everything (verified). Returns what it should do.
    pub fn report(
        &mut self,
        receiver: &str,
        position: u64,
        complete: bool,
        now: Instant,
    ) -> Result<Directive, SchedulerError> {
        let closed = self.closed;
        let n = self
            .nodes
            .get_mut(receiver)
            .ok_or_else(|| SchedulerError::UnknownReceiver(receiver.to_string()))?;
        n.last_report = now;
        if position > n.position && n.health == Health::Stalled {
            n.health = Health::Live;
        }
        if n.health == Health::Gone {
            n.health = Health::Live;
        }
        n.position = position;
        n.complete = complete;
        n.credits.advance(position);
        if closed {
            return Ok(Directive::Release);
        }
        if complete {
            // It keeps its place under its source: the slot it held is taken by a source that
            // has everything, so the origin's slot is not handed to a newcomer.
            let serving = n.offer.is_some() && n.health != Health::Banned;
            return Ok(if serving {
                Directive::Stay
            } else {
                Directive::Release
            });
        }
        let upstream = n.upstream.clone();
        let healthy = match &upstream {
            Upstream::Origin => true,
            Upstream::Lost => false,
            Upstream::Peer(p) => self.nodes.get(p).is_some_and(|p| {
                p.health == Health::Live || (p.complete && p.health != Health::Banned)
            }),
        };
        if healthy {
            return Ok(Directive::Stay);
        }
        self.detach(receiver);
        Ok(Directive::Switch(self.assign(receiver, now)))
    }

    /// `receiver` could not continue at its source (`kind` says why) and stands at
    /// `position`: the source is marked (failed sources take no children until they report
    /// again; lying ones never again) and the receiver gets a new source.
    pub fn source_failed(
        &mut self,
        receiver: &str,
        kind: FailureKind,
        position: u64,
        now: Instant,
    ) -> Result<Source, SchedulerError> {
        let n = self
            .nodes
            .get_mut(receiver)
            .ok_or_else(|| SchedulerError::UnknownReceiver(receiver.to_string()))?;
        n.last_report = now;
        n.position = position;
        match kind {
            FailureKind::Lied => n.credits.discard(),
            FailureKind::Failed => n.credits.advance(position),
        }
        if let Upstream::Peer(p) = n.upstream.clone() {
            match kind {
                FailureKind::Lied => {
                    self.mark(&p, Health::Banned);
                    self.push(PeerEvent::Banned {
                        peer: p.clone(),
                        by: receiver.to_string(),
                    });
                }
                FailureKind::Failed => {
                    if self
                        .nodes
                        .get(&p)
                        .is_some_and(|p| p.health != Health::Banned)
                    {
                        self.mark(&p, Health::Gone);
                        self.push(PeerEvent::Lost { peer: p.clone() });
                    }
                }
            }
        }
        self.detach(receiver);
        Ok(self.assign(receiver, now))
    }

    /// `receiver` is gone for good (it cancelled, or stopped serving): forget it; its
    /// children are moved at their next report.
    pub fn leave(&mut self, receiver: &str) {
        if !self.nodes.contains_key(receiver) {
            return;
        }
        self.detach(receiver);
        self.orphan_children(receiver);
        self.nodes.remove(receiver);
    }

    /// The transfer is over: every later report is answered [`Directive::Release`] and every
    /// join [`Source::Origin`].
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to check.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.nodes
            .values()
            .filter(|n| n.health == Health::Live || n.health == Health::Stalled)
            .flat_map(|n| {
                let silence = n.last_report + self.cfg.silence_timeout;
                let stall = (!n.complete && n.health == Health::Live)
                    .then_some(n.window_start + self.cfg.stall_timeout);
                std::iter::once(silence).chain(stall)
            })
            .min()
    }

    /// Mark silent receivers gone and stalled or lagging ones moved.
    pub fn handle_timeout(&mut self, now: Instant) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            let Some(n) = self.nodes.get(&name) else {
                continue;
            };
            if matches!(n.health, Health::Gone | Health::Banned) && n.offer.is_none() {
                continue;
            }
            if matches!(n.health, Health::Live | Health::Stalled)
                && now >= n.last_report + self.cfg.silence_timeout
            {
                self.mark(&name, Health::Gone);
                self.push(PeerEvent::Lost { peer: name });
                continue;
            }
            if n.health != Health::Live
                || n.complete
                || now < n.window_start + self.cfg.stall_timeout
            {
                continue;
            }
            let advanced = n.position.saturating_sub(n.window_pos);
            let (source_ahead, source_advanced, source) = match &n.upstream {
                Upstream::Origin => (true, None, None),
                Upstream::Lost => (false, None, None),
                Upstream::Peer(p) => match self.nodes.get(p) {
                    Some(s) => (
                        s.complete || s.position > n.position,
                        n.window_upstream_pos.map(|w| s.position.saturating_sub(w)),
                        Some((p.clone(), s.position.saturating_sub(n.position))),
                    ),
                    None => (false, None, None),
                },
            };
            if advanced < self.cfg.min_progress && source_ahead {
                self.mark(&name, Health::Stalled);
                self.push(PeerEvent::Stalled {
                    receiver: name.clone(),
                });
            } else if let (Some((p, lead)), Some(src_adv)) = (source, source_advanced) {
                if lead > self.cfg.lag_bytes && advanced.saturating_mul(4) < src_adv {
                    if let Some(s) = self.nodes.get_mut(&p) {
                        s.slow = true;
                    }
                    self.push(PeerEvent::SlowSource { peer: p });
                    self.detach(&name);
                }
            }
            self.restart_window(&name, now);
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// Counts for reports.
    pub fn stats(&self) -> PeerStats {
        let mut s = PeerStats {
            receivers: self.nodes.len(),
            ..PeerStats::default()
        };
        for n in self.nodes.values() {
            if n.complete {
                s.complete += 1;
            } else {
                match n.upstream {
                    Upstream::Origin => s.from_origin += 1,
                    Upstream::Peer(_) => s.from_peers += 1,
                    Upstream::Lost => {}
                }
            }
            if n.health == Health::Banned {
                s.banned += 1;
            }
        }
        s
    }

    /// The source `receiver` pulls from now (`None` if unknown or being moved).
    pub fn source_of(&self, receiver: &str) -> Option<Source> {
        match &self.nodes.get(receiver)?.upstream {
            Upstream::Origin => Some(Source::Origin),
            Upstream::Peer(p) => Some(Source::Peer(self.nodes.get(p)?.offer.clone()?)),
            Upstream::Lost => None,
        }
    }

    /// Pick a source for `receiver` (detached) and attach it.
    fn assign(&mut self, receiver: &str, now: Instant) -> Source {
        let pick = self.choose(receiver);
        let upstream_pos = pick
            .as_ref()
            .and_then(|p| self.nodes.get(p))
            .map(|p| p.position);
        match &pick {
            Some(p) => {
                if let Some(parent) = self.nodes.get_mut(p) {
                    parent.children.insert(receiver.to_string());
                }
            }
            None => {
                self.origin_children.insert(receiver.to_string());
            }
        }
        if let Some(n) = self.nodes.get_mut(receiver) {
            n.upstream = match &pick {
                Some(p) => Upstream::Peer(p.clone()),
                None => Upstream::Origin,
            };
            n.window_start = now;
            n.window_pos = n.position;
            n.window_upstream_pos = upstream_pos;
            n.credits.told = pick.clone();
        }
        self.push(PeerEvent::Assigned {
            receiver: receiver.to_string(),
            source: pick.clone(),
        });
        match pick.and_then(|p| self.nodes.get(&p)?.offer.clone()) {
            Some(offer) => Source::Peer(offer),
            None => Source::Origin,
        }
    }

    /// Take `name` off its source's children (it stays tracked, its upstream `Lost`).
    fn detach(&mut self, name: &str) {
        let Some(n) = self.nodes.get_mut(name) else {
            return;
        };
        let old = std::mem::replace(&mut n.upstream, Upstream::Lost);
        match old {
            Upstream::Origin => {
                self.origin_children.remove(name);
            }
            Upstream::Peer(p) => {
                if let Some(p) = self.nodes.get_mut(&p) {
                    p.children.remove(name);
                }
            }
            Upstream::Lost => {}
        }
    }

    /// Every child of `name` loses its source.
    fn orphan_children(&mut self, name: &str) {
        let children = self
            .nodes
            .get_mut(name)
            .map(|n| std::mem::take(&mut n.children))
            .unwrap_or_default();
        for c in children {
            if let Some(c) = self.nodes.get_mut(&c) {
                c.upstream = Upstream::Lost;
            }
        }
    }

    /// Set `name`'s health; a node that is no longer live is detached and its children
    /// orphaned.
    fn mark(&mut self, name: &str, health: Health) {
        let Some(n) = self.nodes.get_mut(name) else {
            return;
        };
        if n.health == Health::Banned {
            return;
        }
        n.health = health;
        if health != Health::Live {
            self.detach(name);
            self.orphan_children(name);
        }
    }

    fn restart_window(&mut self, name: &str, now: Instant) {
        let up = match self.nodes.get(name).map(|n| &n.upstream) {
            Some(Upstream::Peer(p)) => self.nodes.get(p).map(|p| p.position),
            _ => None,
        };
        if let Some(n) = self.nodes.get_mut(name) {
            n.window_start = now;
            n.window_pos = n.position;
            n.window_upstream_pos = up;
        }
    }

    fn push(&mut self, ev: PeerEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }
}
