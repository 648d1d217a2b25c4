//! The live and settling transactions, indexed three ways: by id, by ref id (a map, so a pull
//! finds its object in O(1)), and by the instant each one next needs the service (a timer
//! table in quinn-proto's style: a sorted set of `(deadline, transaction)` with exact
//! deletion, so [`TxTable::next_timer`] is a lookup, not a scan).
//!
//! A transaction is changed only through a [`TxMut`] handle; dropping the handle re-arms the
//! transaction's timer at its new [`Tx::wake`], so no code path can change a deadline and
//! forget the timer.

use super::tx::{RefEntry, Tx};
use crate::{RefId, TxId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{Deref, DerefMut};
use std::time::Instant;

/// A transaction with its timer: the deadline it is filed under in the timer set.
struct Entry {
    /// The transaction.
    tx: Tx,
    /// The `Instant` it is filed under in `timers` (`None`: not filed).
    armed: Option<Instant>,
}

/// Transactions, their refs and their timers. Keys are creation numbers, so iteration and
/// same-instant timers go in creation order (NVFlare's monitor walks its transactions in
/// creation order too), whatever the ids.
#[derive(Default)]
pub(crate) struct TxTable {
    /// Creation number -> transaction.
    entries: BTreeMap<u64, Entry>,
    /// Id -> creation number.
    ids: HashMap<TxId, u64>,
    /// Ref id -> (creation number of its transaction, index in its `refs`).
    refs: HashMap<RefId, (u64, usize)>,
    /// (deadline, creation number): each transaction once, at its `armed` instant.
    timers: BTreeSet<(Instant, u64)>,
    /// Next creation number.
    next_key: u64,
}

impl TxTable {
    /// Number of transactions.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `id` is here.
    pub(crate) fn contains(&self, id: &TxId) -> bool {
        self.ids.contains_key(id)
    }

    /// Add a transaction (its id must not be here) and arm its timer.
    pub(crate) fn insert(&mut self, tx: Tx) {
        let key = self.next_key;
        self.next_key += 1;
        let armed = tx.wake();
        if let Some(at) = armed {
            self.timers.insert((at, key));
        }
        self.ids.insert(tx.id.clone(), key);
        self.entries.insert(key, Entry { tx, armed });
    }

    /// Remove a transaction with its timer and refs.
    pub(crate) fn remove(&mut self, id: &TxId) -> Option<Tx> {
        let key = self.ids.remove(id)?;
        let entry = self.entries.remove(&key)?;
        if let Some(at) = entry.armed {
            self.timers.remove(&(at, key));
        }
        for r in &entry.tx.refs {
            if self.refs.get(&r.id).is_some_and(|(k, _)| *k == key) {
                self.refs.remove(&r.id);
            }
        }
        Some(entry.tx)
    }

    /// The transaction `id`.
    pub(crate) fn get(&self, id: &TxId) -> Option<&Tx> {
        self.entries.get(self.ids.get(id)?).map(|e| &e.tx)
    }

    /// The transaction `id`, to change; its timer follows when the handle is dropped.
    pub(crate) fn get_mut(&mut self, id: &TxId) -> Option<TxMut<'_>> {
        let key = *self.ids.get(id)?;
        self.handle(key)
    }

    fn handle(&mut self, key: u64) -> Option<TxMut<'_>> {
        let entry = self.entries.get_mut(&key)?;
        Some(TxMut {
            key,
            entry,
            timers: &mut self.timers,
        })
    }

    /// The transactions, in creation order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Tx> {
        self.entries.values().map(|e| &e.tx)
    }

    /// Change every transaction with `f`, in creation order.
    pub(crate) fn for_each_mut(&mut self, mut f: impl FnMut(&mut Tx)) {
        let keys: Vec<u64> = self.entries.keys().copied().collect();
        for key in keys {
            if let Some(mut tx) = self.handle(key) {
                f(&mut tx);
            }
        }
    }

    /// The ids of the transactions that match `pred`, in creation order.
    pub(crate) fn ids_where(&self, pred: impl Fn(&Tx) -> bool) -> Vec<TxId> {
        self.iter()
            .filter(|t| pred(t))
            .map(|t| t.id.clone())
            .collect()
    }

    /// Register `entry` in transaction `id` (its ref id must not be registered).
    pub(crate) fn add_ref(&mut self, id: &TxId, entry: RefEntry) {
        let Some(&key) = self.ids.get(id) else {
            return;
        };
        let rid = entry.id.clone();
        let Some(mut tx) = self.handle(key) else {
            return;
        };
        let ri = tx.add_ref(entry);
        drop(tx);
        self.refs.insert(rid, (key, ri));
    }

    /// Whether `rid` is registered in a live or settling transaction.
    pub(crate) fn has_ref(&self, rid: &RefId) -> bool {
        self.refs.contains_key(rid)
    }

    /// The transaction that owns `rid`, and the ref's index in it.
    pub(crate) fn ref_owner(&self, rid: &RefId) -> Option<(&TxId, usize)> {
        let (key, ri) = self.refs.get(rid)?;
        Some((&self.entries.get(key)?.tx.id, *ri))
    }

    /// The earliest armed timer.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// The transactions whose timer is due at `now`, by deadline, then creation order.
    pub(crate) fn due(&self, now: Instant) -> Vec<TxId> {
        self.timers
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter_map(|(_, key)| self.entries.get(key).map(|e| e.tx.id.clone()))
            .collect()
    }
}

/// A transaction being changed. Dropping it files the transaction's timer under its new
/// [`Tx::wake`] (a no-op when that did not move).
pub(crate) struct TxMut<'a> {
    /// Its creation number.
    key: u64,
    /// It, with the instant it is filed under.
    entry: &'a mut Entry,
    /// The table's timer set.
    timers: &'a mut BTreeSet<(Instant, u64)>,
}

impl Deref for TxMut<'_> {
    type Target = Tx;
    fn deref(&self) -> &Tx {
        &self.entry.tx
    }
}

impl DerefMut for TxMut<'_> {
    fn deref_mut(&mut self) -> &mut Tx {
        &mut self.entry.tx
    }
}

impl Drop for TxMut<'_> {
    fn drop(&mut self) {
        let wake = self.entry.tx.wake();
        if wake == self.entry.armed {
            return;
        }
        if let Some(old) = self.entry.armed {
            self.timers.remove(&(old, self.key));
        }
        if let Some(new) = wake {
            self.timers.insert((new, self.key));
        }
        self.entry.armed = wake;
    }
}
