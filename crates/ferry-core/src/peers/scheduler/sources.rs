//! Who fed whom: the scheduler's per-source accounting of one ref.
//!
//! The sender cannot see the bytes that move between peers. What it does know is what every
//! scheduled receiver tells it — its contiguous position, at each join, report and failure —
//! and which source it told that receiver to pull from. The bytes a receiver's position
//! advanced past its high-water mark are credited to the source it was told to use at the
//! time, so each receiver's credits add up to its position (the object's size once complete),
//! and bytes fetched twice (a move continues from the last durable point) are credited once.
//! A byte that arrived between a report and a move may be credited to the next source: the
//! figures are exact to within what one source delivers in one report interval.
//!
//! Sources report, beside their position, how many bytes they served to other receivers
//! ([`Scheduler::record_served`]); that figure is the peer's own word, kept apart.

use std::collections::BTreeMap;

use super::{Health, Scheduler};

/// Peers credited by name per receiver; beyond, credits are summed in
/// [`ReceiverSources::from_other_peers`] (a receiver moved between many peers cannot grow the
/// sender's memory).
pub const MAX_NAMED_SOURCES: usize = 64;

/// One receiver's credits (kept in its node).
#[derive(Clone, Debug, Default)]
pub(super) struct Credits {
    /// The source it was last told to pull from (`None`: the origin). It pulls there until
    /// told otherwise, even after the tree moved it.
    pub(super) told: Option<String>,
    /// The highest position credited so far.
    pub(super) high: u64,
    /// The position it first joined with (a resumed part: nobody here served it).
    pub(super) before_join: u64,
    pub(super) from_origin: u64,
    pub(super) from_peers: BTreeMap<String, u64>,
    pub(super) from_other_peers: u64,
    /// Bytes it threw away after a source's data failed verification.
    pub(super) discarded: u64,
    /// Bytes it says it served to other receivers (its latest report).
    pub(super) served: Option<u64>,
}

impl Credits {
    /// A receiver joining for the first time at `position`.
    pub(super) fn new(position: u64) -> Self {
        Self {
            high: position,
            before_join: position,
            ..Self::default()
        }
    }

    /// The receiver stands at `position`: what it gained above its high-water mark came
    /// from the source it was told to use.
    pub(super) fn advance(&mut self, position: u64) {
        let gained = position.saturating_sub(self.high);
        if gained == 0 {
            return;
        }
        self.high = position;
        match &self.told {
            None => self.from_origin += gained,
            Some(p) => {
                if let Some(b) = self.from_peers.get_mut(p) {
                    *b += gained;
                } else if self.from_peers.len() < MAX_NAMED_SOURCES {
                    self.from_peers.insert(p.clone(), gained);
                } else {
                    self.from_other_peers += gained;
                }
            }
        }
    }

    /// Everything it had failed verification and was thrown away: it starts from nothing.
    pub(super) fn discard(&mut self) {
        self.discarded += self.high;
        self.high = 0;
        self.before_join = 0;
        self.from_origin = 0;
        self.from_peers.clear();
        self.from_other_peers = 0;
    }
}

/// Where one receiver's bytes came from, as the scheduler credits them (see
/// [`SourceReport`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiverSources {
    /// The receiver.
    pub receiver: String,
    /// Its latest reported contiguous position.
    pub position: u64,
    /// It reported having everything, verified.
    pub complete: bool,
    /// Bytes it had when it first joined (a resumed part).
    pub before_join: u64,
    /// Bytes credited to the origin (the sender).
    pub from_origin: u64,
    /// Bytes credited to each peer.
    pub from_peers: BTreeMap<String, u64>,
    /// Bytes credited to peers beyond the first [`MAX_NAMED_SOURCES`].
    pub from_other_peers: u64,
    /// Bytes it discarded after a source's data failed verification (not in the credits).
    pub discarded: u64,
}

impl ReceiverSources {
    /// The sum of the credits: its high-water position (the object's size once complete).
    pub fn credited(&self) -> u64 {
        self.before_join
            + self.from_origin
            + self.from_peers.values().sum::<u64>()
            + self.from_other_peers
    }
}

/// What one peer did as a source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerServed {
    /// The peer.
    pub peer: String,
    /// Receivers credited with bytes from it.
    pub receivers: usize,
    /// Bytes credited to it, over all receivers.
    pub bytes: u64,
    /// Bytes it says it served (its own count, re-sends included); `None` if it never said
    /// (an older ferry receiver).
    pub reported_served: Option<u64>,
    /// Banned for serving data that failed verification.
    pub banned: bool,
}

/// Per-source figures of one ref: [`Scheduler::sources`].
///
/// The sender never sees the bytes that move between peers. It knows what each scheduled
/// receiver reports (its contiguous position, at each join, report and failure) and which
/// source it told that receiver to use: each advance of a receiver's position past its
/// high-water mark is credited to that source, so a receiver's credits add up to its
/// position (the object's size once complete) and bytes fetched twice after a move count
/// once. A byte that arrived between a report and a move may be credited to the next source:
/// exact to within what one source delivers in one report interval. What a peer says it
/// served ([`PeerServed::reported_served`]) is its own word, kept apart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceReport {
    /// Every receiver tracked, by name.
    pub receivers: Vec<ReceiverSources>,
    /// Every peer that offered to serve or was credited, by name.
    pub peers: Vec<PeerServed>,
}

impl SourceReport {
    /// The receiver named `name`.
    pub fn receiver(&self, name: &str) -> Option<&ReceiverSources> {
        self.receivers.iter().find(|r| r.receiver == name)
    }

    /// The peer named `name`.
    pub fn peer(&self, name: &str) -> Option<&PeerServed> {
        self.peers.iter().find(|p| p.peer == name)
    }

    /// Bytes credited to the origin, over all receivers.
    pub fn from_origin(&self) -> u64 {
        self.receivers.iter().map(|r| r.from_origin).sum()
    }
}

impl Scheduler {
    /// `receiver` says it served `bytes` to other receivers so far (ignored if unknown).
    pub fn record_served(&mut self, receiver: &str, bytes: u64) {
        if let Some(n) = self.nodes.get_mut(receiver) {
            n.credits.served = Some(bytes);
        }
    }

    /// The sender's transaction says `receiver` confirmed the whole object of `size` bytes
    /// (verified): what it got since its last report came from the source it was told to
    /// use. A receiver confirms before its last report may reach the scheduler; this keeps its
    /// credits whole. Ignored if unknown.
    pub fn confirmed(&mut self, receiver: &str, size: u64) {
        if let Some(n) = self.nodes.get_mut(receiver) {
            n.credits.advance(size);
            n.position = n.position.max(size);
            n.complete = true;
        }
    }

    /// Who fed whom, as credited so far (see [`SourceReport`]).
    pub fn sources(&self) -> SourceReport {
        let mut peers: BTreeMap<String, PeerServed> = BTreeMap::new();
        let mut receivers = Vec::with_capacity(self.nodes.len());
        for (name, n) in &self.nodes {
            let c = &n.credits;
            for (p, bytes) in &c.from_peers {
                let e = peers.entry(p.clone()).or_insert_with(|| PeerServed {
                    peer: p.clone(),
                    ..PeerServed::default()
                });
                e.receivers += 1;
                e.bytes += bytes;
            }
            receivers.push(ReceiverSources {
                receiver: name.clone(),
                position: n.position,
                complete: n.complete,
                before_join: c.before_join,
                from_origin: c.from_origin,
                from_peers: c.from_peers.clone(),
                from_other_peers: c.from_other_peers,
                discarded: c.discarded,
            });
        }
        for (name, n) in &self.nodes {
            if n.offer.is_none() && !peers.contains_key(name) {
                continue;
            }
            let e = peers.entry(name.clone()).or_insert_with(|| PeerServed {
                peer: name.clone(),
                ..PeerServed::default()
            });
            e.reported_served = n.credits.served;
            e.banned = n.health == Health::Banned;
        }
        SourceReport {
            receivers,
            peers: peers.into_values().collect(),
        }
    }
}
