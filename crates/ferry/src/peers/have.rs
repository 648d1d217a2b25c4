//! What a sharing receiver has of the object it is pulling: the received ranges of its part
//! file, a read handle on it, and a wait for a range to arrive. The download writes through
//! [`Tracked`] (a consumer wrapper that records each chunk once it is stored); the peer
//! source ([`super::part_source`]) reads.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ferry_core::{ChunkData, ConsumeError, Consumer, State, TransferPlan};
use ferry_objects::{RangeSet, RECEIVED_BYTES};

use crate::runtime::lock;

#[derive(Debug, Default)]
struct Inner {
    /// Received ranges.
    ranges: RangeSet,
    /// The whole object is here and verified.
    complete: bool,
    /// Where it is read from (the part file, renamed in place when complete).
    file: Option<Arc<File>>,
    /// When a downstream receiver was last served.
    last_served: Option<Instant>,
    /// Bytes served to downstream receivers.
    served: u64,
}

/// The received ranges of one object (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Have {
    size: u64,
    inner: Mutex<Inner>,
    arrived: Condvar,
}

impl Have {
    pub(crate) fn new(size: u64) -> Arc<Self> {
        Arc::new(Self {
            size,
            inner: Mutex::new(Inner::default()),
            arrived: Condvar::new(),
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Forget everything (the part is about to be reopened or thrown away).
    pub(crate) fn reset(&self) {
        let mut g = lock(&self.inner);
        g.ranges.clear();
        g.complete = false;
        g.file = None;
    }

    /// Read from `file`, which holds `[0, prefix)`.
    pub(crate) fn set_file(&self, file: File, prefix: u64) {
        let mut g = lock(&self.inner);
        g.file = Some(Arc::new(file));
        if prefix > 0 {
            g.ranges.insert(0, prefix.min(self.size));
        }
        self.arrived.notify_all();
    }

    pub(crate) fn add(&self, start: u64, end: u64) {
        let mut g = lock(&self.inner);
        g.ranges.insert(start, end.min(self.size));
        self.arrived.notify_all();
    }

    pub(crate) fn set_complete(&self) {
        let mut g = lock(&self.inner);
        g.ranges.clear();
        g.ranges.insert(0, self.size);
        g.complete = true;
        self.arrived.notify_all();
    }

    /// Contiguous bytes from 0.
    pub(crate) fn position(&self) -> u64 {
        let g = lock(&self.inner);
        g.ranges.prefix_len()
    }

    /// When a downstream receiver was last served, and bytes served so far.
    pub(crate) fn served(&self) -> (Option<Instant>, u64) {
        let g = lock(&self.inner);
        (g.last_served, g.served)
    }

    pub(crate) fn note_served(&self, bytes: u64) {
        let mut g = lock(&self.inner);
        g.served += bytes;
        g.last_served = Some(Instant::now());
    }

    /// The read handle once `[start, end)` is here, waiting up to `wait`; `None` if it is not.
    pub(crate) fn wait_for(&self, start: u64, end: u64, wait: Duration) -> Option<Arc<File>> {
        let deadline = Instant::now() + wait;
        let mut g = lock(&self.inner);
        loop {
            if g.ranges.covers(start, end) {
                if let Some(f) = &g.file {
                    return Some(Arc::clone(f));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            g = self
                .arrived
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The read handle if `[start, end)` is here now.
    pub(crate) fn ready(&self, start: u64, end: u64) -> Option<Arc<File>> {
        self.wait_for(start, end, Duration::ZERO)
    }
}

/// A consumer that records in a [`Have`] each chunk its inner consumer stored.
pub(crate) struct Tracked<C> {
    pub(crate) inner: C,
    have: Arc<Have>,
}

impl<C: Consumer> Tracked<C> {
    pub(crate) fn new(inner: C, have: Arc<Have>) -> Self {
        Self { inner, have }
    }
}

impl<C: Consumer> Consumer for Tracked<C> {
    fn consume(
        &mut self,
        ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError> {
        let len = data.byte_len();
        let next = self.inner.consume(ref_id, state, data)?;
        // A byte stream's state after a chunk is where it ends.
        if let Ok(Some(end)) = state.get_u64(RECEIVED_BYTES) {
            self.have.add(end.saturating_sub(len), end);
        }
        Ok(next)
    }

    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        self.inner.plan_received(plan)
    }

    fn needs_order(&self) -> bool {
        self.inner.needs_order()
    }

    fn blocks(&self) -> bool {
        self.inner.blocks()
    }

    fn completed(&mut self, ref_id: &str) -> Result<(), ConsumeError> {
        self.inner.completed(ref_id)?;
        self.have.set_complete();
        Ok(())
    }

    fn failed(&mut self, ref_id: &str, reason: &str) {
        self.inner.failed(ref_id, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_the_contiguous_position_grows() {
        let h = Have::new(100);
        h.add(10, 20);
        h.add(30, 40);
        assert_eq!(h.position(), 0);
        h.add(0, 10);
        assert_eq!(h.position(), 20);
        h.add(15, 35);
        assert_eq!(h.position(), 40);
        h.add(90, 200);
        assert_eq!(
            lock(&h.inner).ranges.gaps(0, 200),
            vec![(40, 90), (100, 200)],
            "a range is cut at the object's size"
        );
    }

    #[test]
    fn a_wait_ends_when_the_range_arrives_or_times_out() {
        let h = Have::new(100);
        let f = tempfile::tempfile().unwrap();
        h.set_file(f, 0);
        assert!(h.ready(0, 10).is_none());
        assert!(h.wait_for(0, 10, Duration::from_millis(1)).is_none());
        let h2 = Arc::clone(&h);
        let t = std::thread::spawn(move || h2.wait_for(0, 10, Duration::from_secs(600)));
        h.add(0, 10);
        assert!(t.join().unwrap().is_some());
        h.reset();
        assert!(h.ready(0, 10).is_none(), "a reset forgets what was there");
    }
}
