//! The producer's capped link of a [`Sim`](super::Sim) ([`SimConfig::pace`](super::SimConfig::pace)):
//! data replies wait in one queue per receiver and leave one at a time, the receivers with
//! waiting replies served in turn (round robin), as `ferry serve --limit-rate` shares its cap.

use super::ReceiverId;
use crate::{RequestId, ReturnCode};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// A data reply waiting for the link.
pub(super) struct Paced {
    pub(super) slot: usize,
    pub(super) life: u64,
    pub(super) id: RequestId,
    pub(super) rc: ReturnCode,
    pub(super) payload: Option<Bytes>,
    /// Chunk bytes, which decide how long it holds the link.
    pub(super) len: u64,
}

/// The link: its queues and whose turn is next.
#[derive(Default)]
pub(super) struct Link {
    queues: BTreeMap<ReceiverId, VecDeque<Paced>>,
    /// A reply is on the link; the next starts when [`Link::done`] is called.
    busy: bool,
    /// The receiver served last (the next turn starts after it).
    last: Option<ReceiverId>,
}

impl Link {
    /// Queue a reply to receiver `r`.
    pub(super) fn push(&mut self, r: ReceiverId, p: Paced) {
        self.queues.entry(r).or_default().push_back(p);
    }

    /// If the link is idle and a reply waits, put the next one in turn on the link: returns it,
    /// its receiver and how long its bytes take at `rate` bytes per second (`rate` > 0).
    pub(super) fn start(&mut self, rate: u64) -> Option<(ReceiverId, Paced, Duration)> {
        if self.busy || rate == 0 {
            return None;
        }
        let after = self.last.map_or(0, |r| r + 1);
        let r = self
            .queues
            .range(after..)
            .chain(self.queues.range(..after))
            .find(|(_, q)| !q.is_empty())
            .map(|(r, _)| *r)?;
        let p = self.queues.get_mut(&r)?.pop_front()?;
        self.busy = true;
        self.last = Some(r);
        let d = Duration::from_secs_f64(p.len as f64 / rate as f64);
        Some((r, p, d))
    }

    /// The reply on the link has gone.
    pub(super) fn done(&mut self) {
        self.busy = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced(slot: usize, len: u64) -> Paced {
        Paced {
            slot,
            life: 0,
            id: RequestId(slot as u64),
            rc: ReturnCode::Ok,
            payload: None,
            len,
        }
    }

    #[test]
    fn receivers_take_turns_one_reply_each_and_the_link_holds_one_at_a_time() {
        let mut link = Link::default();
        link.push(0, paced(0, 100));
        link.push(0, paced(1, 100));
        link.push(2, paced(2, 50));
        let (r, p, d) = link.start(100).expect("a reply waits");
        assert_eq!((r, p.slot, d), (0, 0, Duration::from_secs(1)));
        assert!(link.start(100).is_none(), "busy until done");
        link.done();
        let (r, p, d) = link.start(100).expect("receiver 2's turn");
        assert_eq!((r, p.slot, d), (2, 2, Duration::from_millis(500)));
        link.done();
        let (r, p, _) = link.start(100).expect("back to receiver 0");
        assert_eq!((r, p.slot), (0, 1));
        link.done();
        assert!(link.start(100).is_none(), "nothing waits");
    }
}
