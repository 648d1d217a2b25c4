//! A map whose entries expire after a fixed TTL and whose size is capped (oldest first out).
//!
//! Used for finished-ref tombstones, outcome receipts and receiver-side source-failure records:
//! memory stays bounded by the TTL *and* the cap, whatever peers do.

use crate::time::strict_deadline;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A TTL map with a hard entry cap.
#[derive(Debug)]
pub(crate) struct TtlMap<K, V> {
    /// How long an entry lives (hard bound: reads do not extend it).
    ttl: Duration,
    /// Maximum number of entries; inserting beyond it evicts the oldest.
    cap: usize,
    /// key -> (value, expiry, insertion sequence). `expiry == None` means the TTL overflowed
    /// `Instant` (never expires by time; the cap still bounds it).
    entries: HashMap<K, (V, Option<Instant>, u64)>,
    /// (insertion sequence) -> key, i.e. insertion order. Because the TTL is the same for every
    /// entry and time is monotonic, insertion order is also expiry order.
    order: BTreeMap<u64, K>,
    /// Next insertion sequence.
    seq: u64,
}

impl<K: Clone + Eq + Hash, V> TtlMap<K, V> {
    /// An empty map.
    pub(crate) fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            cap: cap.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Insert (or replace, restarting its TTL) `key`. Returns the keys evicted by the cap.
    pub(crate) fn insert(&mut self, key: K, value: V, now: Instant) -> Vec<K> {
        self.remove(&key);
        let mut evicted = Vec::new();
        while self.entries.len() >= self.cap {
            match self.order.pop_first() {
                Some((_, old)) => {
                    self.entries.remove(&old);
                    evicted.push(old);
                }
                None => break,
            }
        }
        let seq = self.seq;
        self.seq += 1;
        self.order.insert(seq, key.clone());
        self.entries
            .insert(key, (value, strict_deadline(now, self.ttl), seq));
        evicted
    }

    /// Remove `key`, returning its value.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let (v, _, seq) = self.entries.remove(key)?;
        self.order.remove(&seq);
        Some(v)
    }

    /// The live value of `key` at `now` (an expired entry is dropped and `None` returned).
    pub(crate) fn get(&mut self, key: &K, now: Instant) -> Option<&V> {
        let expired = match self.entries.get(key) {
            None => return None,
            Some((_, exp, _)) => exp.is_some_and(|e| now >= e),
        };
        if expired {
            self.remove(key);
            return None;
        }
        self.entries.get(key).map(|(v, _, _)| v)
    }

    /// Whether `key` is live at `now`.
    pub(crate) fn contains(&mut self, key: &K, now: Instant) -> bool {
        self.get(key, now).is_some()
    }

    /// Drop every expired entry; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some((&seq, key)) = self.order.first_key_value() {
            let exp = self.entries.get(key).and_then(|(_, e, _)| *e);
            if exp.is_some_and(|e| now >= e) {
                let key = key.clone();
                self.order.remove(&seq);
                self.entries.remove(&key);
                n += 1;
            } else {
                break;
            }
        }
        n
    }

    /// When the oldest entry expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        let (_, key) = self.order.first_key_value()?;
        self.entries.get(key).and_then(|(_, e, _)| *e)
    }

    /// Number of entries (expired ones not yet dropped included).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drop everything.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_strictly_after_ttl_and_caps_oldest_first() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut m = TtlMap::new(Duration::from_secs(10), 2);
        assert!(m.insert("a", 1, t0).is_empty());
        assert!(m.insert("b", 2, t0 + s).is_empty());
        assert_eq!(m.insert("c", 3, t0 + 2 * s), vec!["a"]);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&"b", t0 + 11 * s), Some(&2));
        assert_eq!(m.next_expiry(), Some(t0 + 11 * s + Duration::from_nanos(1)));
        assert_eq!(m.expire(t0 + 11 * s + Duration::from_nanos(1)), 1);
        assert!(!m.contains(&"b", t0));
        assert_eq!(m.get(&"c", t0 + 13 * s), None, "lazy expiry");
        assert_eq!(m.len(), 0);
        m.insert("d", 4, t0);
        m.clear();
        assert_eq!(m.next_expiry(), None);
    }
}
