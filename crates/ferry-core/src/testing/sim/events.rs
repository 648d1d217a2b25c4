//! The event schedule of a [`Sim`](super::Sim): what the network will do, and when.

use super::link::Paced;
use super::ReceiverId;
use crate::message::SourceFailureNotice;
use crate::{PullTicket, RequestId, ReturnCode, TxId};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Instant;

/// Something the network will do at an instant.
pub(super) enum Event {
    /// A topic-A message arrives at the producer.
    Request {
        from: ReceiverId,
        slot: usize,
        life: u64,
        id: Option<RequestId>,
        payload: Vec<u8>,
    },
    /// `produce` for a ticket is done.
    Produced {
        ticket: PullTicket,
        from: ReceiverId,
        slot: usize,
        life: u64,
        id: RequestId,
    },
    /// A reply arrives at a receiver.
    Reply {
        to: ReceiverId,
        slot: usize,
        life: u64,
        id: RequestId,
        rc: ReturnCode,
        payload: Option<Bytes>,
    },
    /// The paced reply on the link has gone: send it, start the next.
    LinkDone(ReceiverId, Paced),
    Crash(ReceiverId),
    Restart(ReceiverId),
    DeleteTx(TxId),
    SourceFailure(ReceiverId, SourceFailureNotice),
}

/// Events by instant; events due at the same instant come out in the order they were pushed
/// (so a seed replays exactly).
#[derive(Default)]
pub(super) struct Schedule {
    /// (when, sequence), earliest first; the sequence breaks ties in push order.
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Event>,
    seq: u64,
}

impl Schedule {
    /// Schedule `ev` at `at`.
    pub(super) fn push(&mut self, at: Instant, ev: Event) {
        let s = self.seq;
        self.seq += 1;
        self.queue.push(Reverse((at, s)));
        self.events.insert(s, ev);
    }

    /// When the earliest event is due.
    pub(super) fn next_instant(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    /// The earliest event due at or before `now`, removed.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Event> {
        loop {
            let Reverse((t, s)) = *self.queue.peek()?;
            if t > now {
                return None;
            }
            self.queue.pop();
            if let Some(ev) = self.events.remove(&s) {
                return Some(ev);
            }
        }
    }
}
