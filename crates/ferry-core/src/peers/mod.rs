//! Peer-assisted distribution: the sender's scheduler and the messages of its protocol.
//!
//! Receivers that accept connections offer themselves as sources of the object they are
//! pulling. The sender runs one [`Scheduler`] per shared ref: it answers a receiver that joins
//! with the source to pull from — the sender itself (the *origin*) or a receiver already
//! pulling — so that sources form a tree of fan-out `k` (a pipelined chain when `k = 1`) and the
//! origin's egress stays near `k` copies of the object. Receivers report their position
//! periodically; the scheduler moves the children of a source that stopped advancing (a crash,
//! a stall, a slow link) and hands a receiver whose source failed a new one, from which it
//! continues at its position. A peer is never trusted with integrity: every receiver checks
//! the ticket's digest, and a receiver that got bad data reports its source, which the
//! scheduler bans.
//!
//! Like the rest of this crate the scheduler is sans-IO: every call takes `now`,
//! [`Scheduler::poll_timeout`]/[`Scheduler::handle_timeout`] drive its timers and
//! [`Scheduler::poll_event`] yields what happened, for logs and reports.
//! [`Scheduler::sources`] says who fed whom: the bytes of each receiver credited to the
//! origin or to each peer, from the positions receivers report (the sender never sees the
//! bytes that move between peers), and what each peer says it served.
//!
//! - [`message`]: the join / report / failure requests and the scheduler's replies (msgpack).
//! - [`Scheduler`]: the engine.

pub mod message;
mod scheduler;
#[cfg(test)]
mod source_tests;
#[cfg(test)]
mod tests;

pub use scheduler::{
    FailureKind, PeerEvent, PeerServed, PeerStats, ReceiverSources, Scheduler, SchedulerConfig,
    SchedulerError, SourceReport, MAX_NAMED_SOURCES, MAX_URL_LEN,
};

/// Where a receiver that offers itself as a source can be reached.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerOffer {
    /// The cell name (FQCN) the receiver serves under; with TLS its certificate proves it.
    pub fqcn: String,
    /// The URL it listens on (`tcp://HOST:PORT` or `stcp://HOST:PORT`).
    pub url: String,
}

/// The source a receiver is told to pull from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The sender itself.
    Origin,
    /// Another receiver.
    Peer(PeerOffer),
}

impl Source {
    /// The peer's FQCN, `None` for the origin.
    pub fn peer_fqcn(&self) -> Option<&str> {
        match self {
            Source::Origin => None,
            Source::Peer(p) => Some(&p.fqcn),
        }
    }
}

/// The scheduler's answer to a periodic report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Keep pulling from the current source (or keep serving, once complete).
    Stay,
    /// Continue from the current position at this source instead.
    Switch(Source),
    /// Nobody needs this receiver as a source any more: it may stop serving.
    Release,
}
