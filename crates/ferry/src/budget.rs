//! The global byte budget on produced-but-unsent chunks.
//!
//! Every chunk a producer makes holds permits for its size until the bytes have left the
//! process: the permits travel inside the chunk's `Bytes` (via [`Bytes::from_owner`]) and are
//! returned when the connection writer drops the frame after writing it (or when a connection
//! that stopped reading is closed and its queue dropped, see `Limits::send_timeout`). However
//! many receivers pull at once, the sender never holds more than the budget in chunk buffers.
//!
//! The permits are taken **before** the chunk is produced, for the chunk's real size: objects
//! with a byte plan (files, in-memory bytes) say exactly how long the next chunk is; for the
//! others the largest chunk seen so far of the same object stands in ([`ChunkSizes`]), and a
//! chunk that turns out larger waits for the rest before it is sent. A chunk larger than the
//! whole budget takes all of it and travels alone.
//!
//! One connection may hold at most a share of the budget ([`PEER_SHARE`]): a receiver that
//! stops reading leaves its chunks stuck in the connection writer until the send timeout, and
//! without the share a couple of such peers would hold the whole budget and stall every other
//! receiver. The share belongs to the *connection* a pull arrived on
//! ([`ferry_cellnet::ConnectionInfo`]), not to the name it claims: a connection speaks for
//! every cell below its own name, so names are free and connections are not.

use bytes::Bytes;
use ferry_core::service::PullTicket;
use ferry_core::{PlanLayout, RefId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection may hold at most 1/`PEER_SHARE` of the budget.
pub const PEER_SHARE: u32 = 4;

/// Per-connection semaphores are pruned (those nobody holds or waits on) once the map grows
/// past this many entries, so a sender that has served many receivers keeps no state for them.
const PRUNE_ABOVE: usize = 64;

/// Permits are counted in units of this many bytes (a semaphore holds at most `u32::MAX >> 3`
/// permits per acquisition, so bytes would not fit for multi-GiB budgets).
const UNIT: u64 = 4096;

/// Whose share of the budget a chunk is taken from: the connection its pull arrived on, or,
/// for a pull that came by no connection (a handler called directly), the receiver's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareKey {
    key: String,
    /// The receiver's name, to answer [`ByteBudget::available_for`] by name.
    name: String,
}

impl ShareKey {
    /// The share of the connection the current request arrived on, pulled by `receiver`.
    pub fn current(receiver: &str) -> Self {
        match ferry_cellnet::ConnectionInfo::current() {
            Some(c) => ShareKey {
                key: format!("conn:{}", c.id),
                name: receiver.to_string(),
            },
            None => Self::named(receiver),
        }
    }

    /// A share by receiver name alone.
    pub fn named(receiver: &str) -> Self {
        ShareKey {
            key: format!("name:{receiver}"),
            name: receiver.to_string(),
        }
    }
}

struct Share {
    sem: Arc<Semaphore>,
    /// The receiver that took from it last.
    name: String,
}

/// A shared budget of bytes.
#[derive(Clone)]
pub struct ByteBudget {
    sem: Arc<Semaphore>,
    /// Total units; a single acquisition is capped at this so one oversized chunk can still
    /// go out (alone), instead of waiting forever.
    units: u32,
    /// Units one connection may hold ([`PEER_SHARE`] of the total, at least one).
    peer_units: u32,
    /// Each connection's share.
    peers: Arc<Mutex<HashMap<String, Share>>>,
}

impl std::fmt::Debug for ByteBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteBudget")
            .field("capacity", &self.capacity())
            .field("available", &self.available())
            .finish()
    }
}

impl ByteBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: u64) -> Self {
        let units = (bytes.div_ceil(UNIT))
            .clamp(1, (Semaphore::MAX_PERMITS as u64).min(u32::MAX as u64))
            as u32;
        let peer_units = (units / PEER_SHARE).max(1);
        Self {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            peer_units,
            peers: Arc::default(),
        }
    }

    /// The budget in bytes.
    pub fn capacity(&self) -> u64 {
        self.units as u64 * UNIT
    }

    /// Bytes currently free.
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64 * UNIT
    }

    /// Wait until `bytes` are free and take them. A request above the whole budget takes the
    /// whole budget (the chunk then travels alone).
    pub async fn acquire(&self, bytes: u64) -> BudgetPermit {
        let want = bytes.div_ceil(UNIT).clamp(1, self.units as u64) as u32;
        // The semaphore is never closed, so acquisition only fails if it were; fall back to an
        // empty permit rather than panicking.
        let permit = Arc::clone(&self.sem).acquire_many_owned(want).await.ok();
        BudgetPermit {
            _peer: None,
            _permit: permit,
            bytes,
        }
    }

    /// Like [`acquire`](Self::acquire), for a chunk owed to `share`: the connection's share
    /// is taken first, then the global budget. A request above the share takes the whole
    /// share.
    pub async fn acquire_for(&self, share: &ShareKey, bytes: u64) -> BudgetPermit {
        let sem = self.peer_semaphore(share);
        let want = bytes.div_ceil(UNIT).clamp(1, self.peer_units as u64) as u32;
        let peer_permit = sem.acquire_many_owned(want).await.ok();
        let mut permit = self.acquire(bytes).await;
        permit._peer = peer_permit;
        permit
    }

    /// Bytes the connection `receiver` pulled by last may still take before waiting for its
    /// own chunks to leave (its whole share if it holds nothing).
    pub fn available_for(&self, receiver: &str) -> u64 {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .values()
            .filter(|s| s.name == receiver)
            .map(|s| s.sem.available_permits() as u32)
            .min()
            .unwrap_or(self.peer_units) as u64
            * UNIT
    }

    fn peer_semaphore(&self, share: &ShareKey) -> Arc<Semaphore> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = peers.get_mut(&share.key) {
            if s.name != share.name {
                s.name.clone_from(&share.name);
            }
            return Arc::clone(&s.sem);
        }
        if peers.len() >= PRUNE_ABOVE {
            // Every permit and every waiter holds a clone of its semaphore: a count of one
            // means the connection holds nothing and nobody waits for it.
            peers.retain(|_, s| Arc::strong_count(&s.sem) > 1);
        }
        let sem = Arc::new(Semaphore::new(self.peer_units as usize));
        peers.insert(
            share.key.clone(),
            Share {
                sem: Arc::clone(&sem),
                name: share.name.clone(),
            },
        );
        sem
    }
}

/// Bytes taken from a [`ByteBudget`]; returned on drop.
#[derive(Debug)]
pub struct BudgetPermit {
    /// The connection's share, when taken with [`ByteBudget::acquire_for`].
    _peer: Option<OwnedSemaphorePermit>,
    _permit: Option<OwnedSemaphorePermit>,
    /// The bytes asked for (the permits are these, rounded up to units and capped).
    bytes: u64,
}

impl BudgetPermit {
    /// The bytes this permit was taken for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A buffer that returns its budget when the last `Bytes` pointing into it is dropped.
struct Budgeted {
    bytes: Bytes,
    _permit: BudgetPermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Tie `permit` to `bytes`: the permit is released when the returned `Bytes` (and every clone
/// or slice of it) is dropped.
pub fn attach(bytes: Bytes, permit: BudgetPermit) -> Bytes {
    Bytes::from_owner(Budgeted {
        bytes,
        _permit: permit,
    })
}

/// Objects whose learned chunk size is remembered; beyond this the memory is cleared (the
/// next chunk of each object is estimated from scratch).
const REMEMBER_OBJECTS: usize = 4096;

/// How big the next chunk of an object will be, before it is produced.
#[derive(Debug, Default)]
pub(crate) struct ChunkSizes {
    /// Largest chunk seen per object without a byte plan.
    seen: Mutex<HashMap<RefId, u64>>,
}

impl ChunkSizes {
    /// The size of the chunk `ticket` will produce: exact for a byte plan (the chunk after
    /// `received_bytes`), else the largest chunk of this object seen so far, else `fallback`.
    pub fn estimate(&self, ticket: &PullTicket, fallback: u64) -> u64 {
        if let Some(plan) = ticket.object().plan() {
            if let PlanLayout::Bytes { total, chunk } = plan.layout {
                let at = ticket
                    .state()
                    .and_then(|s| s.get_u64(ferry_core::plan::KEY_RECEIVED_BYTES).ok())
                    .flatten()
                    .unwrap_or(0);
                return chunk.min(total.saturating_sub(at)).max(1);
            }
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(ticket.ref_id()).copied().unwrap_or(fallback)
    }

    /// Remember that `ref_id` produced a chunk of `len` bytes.
    pub fn learn(&self, ref_id: &RefId, len: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= REMEMBER_OBJECTS && !seen.contains_key(ref_id) {
            seen.clear();
        }
        let e = seen.entry(ref_id.clone()).or_insert(0);
        *e = (*e).max(len);
    }

    /// The transaction of these objects ended: forget them (a sender that runs transaction
    /// after transaction keeps nothing per object it no longer serves).
    pub fn forget<'a>(&self, refs: impl IntoIterator<Item = &'a RefId>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for r in refs {
            seen.remove(r);
        }
        if seen.is_empty() {
            // give back the table's memory too
            seen.shrink_to_fit();
        }
    }

    /// Objects remembered.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_travel_with_the_bytes() {
        let b = ByteBudget::new(1 << 20);
        assert_eq!(b.available(), 1 << 20);
        let p = b.acquire(300 * 1024).await;
        let chunk = attach(Bytes::from(vec![7u8; 300 * 1024]), p);
        assert_eq!(b.available(), (1 << 20) - 300 * 1024);
        let slice = chunk.slice(10..20);
        drop(chunk);
        assert_eq!(
            b.available(),
            (1 << 20) - 300 * 1024,
            "a slice still holds the buffer"
        );
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        assert_eq!(b.available(), 1 << 20);
    }

    #[tokio::test]
    async fn oversized_requests_take_the_whole_budget_instead_of_waiting_forever() {
        let b = ByteBudget::new(64 * 1024);
        let p = b.acquire(10 << 20).await;
        assert_eq!(b.available(), 0);
        drop(p);
        assert_eq!(b.available(), 64 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn one_peer_cannot_take_more_than_its_share() {
        let b = ByteBudget::new(16 * UNIT);
        let stuck_key = ShareKey::named("stuck");
        // The stuck peer takes its whole share (a quarter) ...
        let stuck: Vec<_> =
            futures::future::join_all((0..4).map(|_| b.acquire_for(&stuck_key, UNIT))).await;
        assert_eq!(b.available_for("stuck"), 0);
        assert_eq!(b.available(), 12 * UNIT);
        // ... and its next chunk waits, while another peer still gets budget.
        let b2 = b.clone();
        let more =
            tokio::spawn(async move { b2.acquire_for(&ShareKey::named("stuck"), UNIT).await });
        tokio::task::yield_now().await;
        assert!(!more.is_finished(), "the stuck peer is over its share");
        let _other = b.acquire_for(&ShareKey::named("healthy"), 4 * UNIT).await;
        assert_eq!(b.available(), 8 * UNIT);
        drop(stuck);
        let _p = more.await.unwrap();
        assert_eq!(b.available_for("stuck"), 3 * UNIT);
    }

    #[tokio::test]
    async fn idle_peers_are_forgotten() {
        let b = ByteBudget::new(1 << 20);
        for i in 0..(PRUNE_ABOVE * 3) {
            drop(
                b.acquire_for(&ShareKey::named(&format!("peer-{i}")), UNIT)
                    .await,
            );
        }
        let held = b.acquire_for(&ShareKey::named("holder"), UNIT).await;
        for i in 0..PRUNE_ABOVE {
            drop(
                b.acquire_for(&ShareKey::named(&format!("late-{i}")), UNIT)
                    .await,
            );
        }
        let peers = b.peers.lock().unwrap().len();
        assert!(peers <= PRUNE_ABOVE + 1, "{peers} peer entries kept");
        assert_eq!(b.available_for("holder"), b.peer_units as u64 * UNIT - UNIT);
        drop(held);
        assert_eq!(b.available(), 1 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn acquisition_waits_for_release() {
        let b = ByteBudget::new(8192);
        let p = b.acquire(8192).await;
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire(4096).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(p);
        let _p2 = waiter.await.unwrap();
        assert_eq!(b.available(), 4096);
    }
}
