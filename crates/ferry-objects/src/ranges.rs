//! A set of half-open `u64` ranges, used to know which bytes (or items) of an object arrived
//! when chunks come out of order or twice. Public for the `ferry` crate's relay spill and
//! sharing receivers, which keep the same books.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent half-open ranges `[start, end)`, merged on insert.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end; invariant: ranges are disjoint and never touch (touching ones are merged).
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut new_start, mut new_end) = (start, end);
        // Merge with a range that starts before `start` and reaches it.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                new_start = s;
                new_end = new_end.max(e);
                self.ranges.remove(&s);
            }
        }
        // Merge with every range that starts inside [new_start, new_end].
        let overlapping: Vec<u64> = self
            .ranges
            .range(new_start..=new_end)
            .map(|(&s, _)| s)
            .collect();
        for s in overlapping {
            if let Some(e) = self.ranges.remove(&s) {
                new_end = new_end.max(e);
            }
        }
        self.ranges.insert(new_start, new_end);
    }

    /// The parts of `[start, end)` not yet covered, in order.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cursor = start;
        if let Some((_, &e)) = self.ranges.range(..=start).next_back() {
            cursor = cursor.max(e);
        }
        for (&s, &e) in self.ranges.range(start..end) {
            if s > cursor {
                out.push((cursor, s.min(end)));
            }
            cursor = cursor.max(e);
        }
        if cursor < end {
            out.push((cursor, end));
        }
        out
    }

    /// End of the covered run that starts at `from` (`from` itself when `from` is not covered).
    pub(crate) fn covered_end_from(&self, from: u64) -> u64 {
        match self.ranges.range(..=from).next_back() {
            Some((_, &e)) if e > from => e,
            _ => from,
        }
    }

    /// Whether `[start, end)` is covered whole (an empty range always is).
    pub fn covers(&self, start: u64, end: u64) -> bool {
        start >= end
            || self
                .ranges
                .range(..=start)
                .next_back()
                .is_some_and(|(_, &e)| e >= end)
    }

    /// Length of the covered prefix `[0, n)`.
    pub fn prefix_len(&self) -> u64 {
        self.covered_end_from(0)
    }

    /// Whether exactly `[0, total)` is covered (and nothing beyond).
    pub(crate) fn is_exactly(&self, total: u64) -> bool {
        if total == 0 {
            return self.ranges.is_empty();
        }
        self.ranges.len() == 1 && self.ranges.get(&0) == Some(&total)
    }

    /// Largest covered end (0 when empty).
    pub(crate) fn max_end(&self) -> u64 {
        self.ranges.values().next_back().copied().unwrap_or(0)
    }

    /// Total covered length.
    pub fn covered(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Forget every range.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_and_reports_gaps() {
        let mut r = RangeSet::new();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.gaps(0, 50), vec![(0, 10), (20, 30), (40, 50)]);
        assert_eq!(r.gaps(12, 35), vec![(20, 30)]);
        assert_eq!(r.prefix_len(), 0);
        r.insert(0, 10);
        assert_eq!(r.prefix_len(), 20);
        r.insert(20, 30);
        assert!(r.is_exactly(40));
        assert_eq!(r.gaps(0, 40), vec![]);
        assert_eq!(r.covered_end_from(15), 40);
        assert_eq!(r.max_end(), 40);
        assert!(r.covers(12, 40) && !r.covers(12, 41) && r.covers(45, 45));
        assert!(!r.covers(40, 41) && r.covered() == 40);
        r.clear();
        assert_eq!((r.covered(), r.prefix_len()), (0, 0));
    }

    proptest! {
        #[test]
        fn matches_a_bitmap(ops in proptest::collection::vec((0u64..64, 0u64..16), 0..40)) {
            let mut r = RangeSet::new();
            let mut bits = [false; 80];
            for (s, l) in ops {
                r.insert(s, s + l);
                for b in &mut bits[s as usize..(s + l) as usize] { *b = true; }
            }
            let covered = bits.iter().filter(|b| **b).count() as u64;
            prop_assert_eq!(r.covered(), covered);
            let gaps: u64 = r.gaps(0, 80).iter().map(|(s, e)| e - s).sum();
            prop_assert_eq!(gaps, 80 - covered);
            let prefix = bits.iter().take_while(|b| **b).count() as u64;
            prop_assert_eq!(r.prefix_len(), prefix);
        }
    }
}
