//! Progress events, as NVFlare's download service emits them
//! (`nvflare.fuel.f3.streaming.download_service`, `_Ref.emit_progress`): per (ref, receiver) on
//! the producer, per download on the receiver; throttled on virtual time, terminal state
//! latched.

use crate::{RefId, TxId};
use std::time::{Duration, Instant};

/// The phase a progress event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgressState {
    /// Receiver side: the download starts.
    Start,
    /// Bytes are moving.
    Active,
    /// Done, successfully (terminal).
    Completed,
    /// Done, failed (terminal).
    Failed,
    /// Done, aborted (terminal).
    Aborted,
}

impl ProgressState {
    /// NVFlare's string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }

    /// Whether this state ends the stream of events for its receiver.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Aborted)
    }
}

/// One progress report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressEvent {
    /// The transaction (producer side only).
    pub tx_id: Option<TxId>,
    /// The ref.
    pub ref_id: RefId,
    /// The receiver (producer side only).
    pub receiver: Option<String>,
    /// Monotonic per (ref, receiver), starting at 1 (NVFlare's first event is sequence 1).
    pub sequence: u64,
    /// Chunk bytes served / consumed so far.
    pub bytes_done: u64,
    /// Chunks served / consumed so far.
    pub chunks_done: u64,
    /// Items served / consumed so far (`None` when the chunks are raw bytes).
    pub items_done: Option<u64>,
    /// The object's size, when known: on the receiver, from the producer's transfer plan
    /// (a ferry producer sends one; NVFlare's do not); on the producer, `None`.
    pub total_bytes: Option<u64>,
    /// When (virtual time).
    pub at: Instant,
    /// The phase.
    pub state: ProgressState,
}

/// Whose progress an event reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProgressKey<'a> {
    /// The transaction (producer side).
    pub(crate) tx_id: Option<&'a TxId>,
    /// The ref.
    pub(crate) ref_id: &'a RefId,
    /// The receiver (producer side).
    pub(crate) receiver: Option<&'a str>,
}

/// Counters and throttle of one progress stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProgressTracker {
    /// Sequence number of the last event (0: none yet).
    seq: u64,
    /// Bytes so far.
    pub(crate) bytes: u64,
    /// Chunks so far.
    pub(crate) chunks: u64,
    /// The object's size, once known (reported, never throttled on).
    pub(crate) total: Option<u64>,
    /// Items so far (`None` until a list chunk was seen).
    pub(crate) items: Option<u64>,
    /// When the last event was emitted and the counters it carried, for throttling.
    last: Option<(Instant, u64, Option<u64>)>,
    /// A terminal event was emitted: nothing more (R10).
    terminal: bool,
}

impl ProgressTracker {
    /// Add one chunk's worth of counters.
    pub(crate) fn add(&mut self, bytes: u64, items: Option<usize>) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.chunks = self.chunks.saturating_add(1);
        if let Some(n) = items {
            self.items = Some(self.items.unwrap_or(0).saturating_add(n as u64));
        }
    }

    /// Whether an event was ever emitted.
    pub(crate) fn started(&self) -> bool {
        self.last.is_some()
    }

    /// Whether a terminal event was emitted.
    pub(crate) fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// Build the next event if the rules allow one: nothing after a terminal event; terminal,
    /// forced and first events always; otherwise only if the counters advanced AND at least
    /// `interval` passed since the last event.
    pub(crate) fn emit(
        &mut self,
        state: ProgressState,
        force: bool,
        interval: Duration,
        now: Instant,
        who: ProgressKey<'_>,
    ) -> Option<ProgressEvent> {
        if self.terminal {
            return None;
        }
        let allowed = force
            || state.is_terminal()
            || match self.last {
                None => true,
                Some((at, b, i)) => {
                    (self.bytes != b || self.items != i)
                        && now.saturating_duration_since(at) >= interval
                }
            };
        if !allowed {
            return None;
        }
        self.terminal = state.is_terminal();
        self.last = Some((now, self.bytes, self.items));
        self.seq += 1;
        Some(ProgressEvent {
            tx_id: who.tx_id.cloned(),
            ref_id: who.ref_id.clone(),
            receiver: who.receiver.map(str::to_string),
            sequence: self.seq,
            bytes_done: self.bytes,
            chunks_done: self.chunks,
            items_done: self.items,
            total_bytes: self.total,
            at: now,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_on_virtual_time_and_latched_after_terminal() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let r = RefId::new("R");
        let k = ProgressKey {
            tx_id: None,
            ref_id: &r,
            receiver: None,
        };
        let mut p = ProgressTracker::default();
        let iv = Duration::from_secs(30);
        let e = p.emit(ProgressState::Active, false, iv, t0, k).unwrap();
        assert_eq!((e.sequence, e.bytes_done), (1, 0));
        p.add(10, None);
        assert!(p
            .emit(ProgressState::Active, false, iv, t0 + s, k)
            .is_none());
        let e = p
            .emit(ProgressState::Active, false, iv, t0 + 30 * s, k)
            .unwrap();
        assert_eq!((e.sequence, e.bytes_done, e.chunks_done), (2, 10, 1));
        assert!(
            p.emit(ProgressState::Active, false, iv, t0 + 90 * s, k)
                .is_none(),
            "counters did not advance"
        );
        assert!(p
            .emit(ProgressState::Active, true, iv, t0 + 91 * s, k)
            .is_some());
        assert!(p
            .emit(ProgressState::Failed, false, iv, t0 + 92 * s, k)
            .is_some());
        assert!(p.is_terminal());
        assert!(p
            .emit(ProgressState::Completed, true, iv, t0 + 93 * s, k)
            .is_none());
    }
}
