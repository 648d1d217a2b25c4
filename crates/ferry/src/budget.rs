//! The global byte budget on produced-but-unsent chunks.
//!
//! Every chunk a producer makes holds permits for its size until the bytes have left the
//! process: the permits travel inside the chunk's `Bytes` (via [`Bytes::from_owner`]) and are
//! returned when the connection writer drops the frame after writing it. However many
//! receivers pull at once, the sender never holds more than the budget in chunk buffers —
//! the bound the issue asks for ("a global byte budget, not per-receiver buffers").
//!
//! One peer may hold at most a share of the budget ([`PEER_SHARE`]): a receiver that stops
//! reading leaves its chunks stuck in the connection writer until the send timeout, and without
//! the share a couple of such peers would hold the whole budget and stall every other receiver.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A peer may hold at most 1/`PEER_SHARE` of the budget.
pub const PEER_SHARE: u32 = 4;

/// Per-peer semaphores are pruned (those nobody holds or waits on) once the map grows past
/// this many entries, so a sender that has served many receivers keeps no state for them.
const PRUNE_ABOVE: usize = 64;

/// Permits are counted in units of this many bytes (a semaphore holds at most `u32::MAX >> 3`
/// permits per acquisition, so bytes would not fit for multi-GiB budgets).
const UNIT: u64 = 4096;

/// A shared budget of bytes.
#[derive(Clone, Debug)]
pub struct ByteBudget {
    sem: Arc<Semaphore>,
    /// Total units; a single acquisition is capped at this so one oversized chunk can still
    /// go out (alone), instead of waiting forever.
    units: u32,
    /// Units one peer may hold ([`PEER_SHARE`] of the total, at least one).
    peer_units: u32,
    /// Each peer's share, by peer name (the requester's FQCN).
    peers: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
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
        }
    }

    /// Like [`acquire`](Self::acquire), for a chunk owed to `peer`: the peer's share is taken
    /// first, then the global budget. A request above the share takes the whole share.
    pub async fn acquire_for(&self, peer: &str, bytes: u64) -> BudgetPermit {
        let share = self.peer_semaphore(peer);
        let want = bytes.div_ceil(UNIT).clamp(1, self.peer_units as u64) as u32;
        let peer_permit = share.acquire_many_owned(want).await.ok();
        let mut permit = self.acquire(bytes).await;
        permit._peer = peer_permit;
        permit
    }

    /// Bytes `peer` may still take before waiting for its own chunks to leave.
    pub fn available_for(&self, peer: &str) -> u64 {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(peer)
            .map_or(self.peer_units, |s| s.available_permits() as u32) as u64
            * UNIT
    }

    fn peer_semaphore(&self, peer: &str) -> Arc<Semaphore> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = peers.get(peer) {
            return Arc::clone(s);
        }
        if peers.len() >= PRUNE_ABOVE {
            // Every permit and every waiter holds a clone of its semaphore: a count of one
            // means the peer holds nothing and nobody waits for it.
            peers.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let s = Arc::new(Semaphore::new(self.peer_units as usize));
        peers.insert(peer.to_string(), Arc::clone(&s));
        s
    }
}

/// Bytes taken from a [`ByteBudget`]; returned on drop.
#[derive(Debug)]
pub struct BudgetPermit {
    /// The peer's share, when taken with [`ByteBudget::acquire_for`].
    _peer: Option<OwnedSemaphorePermit>,
    _permit: Option<OwnedSemaphorePermit>,
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
        // The stuck peer takes its whole share (a quarter) ...
        let stuck: Vec<_> =
            futures::future::join_all((0..4).map(|_| b.acquire_for("stuck", UNIT))).await;
        assert_eq!(b.available_for("stuck"), 0);
        assert_eq!(b.available(), 12 * UNIT);
        // ... and its next chunk waits, while another peer still gets budget.
        let b2 = b.clone();
        let more = tokio::spawn(async move { b2.acquire_for("stuck", UNIT).await });
        tokio::task::yield_now().await;
        assert!(!more.is_finished(), "the stuck peer is over its share");
        let _other = b.acquire_for("healthy", 4 * UNIT).await;
        assert_eq!(b.available(), 8 * UNIT);
        drop(stuck);
        let _p = more.await.unwrap();
        assert_eq!(b.available_for("stuck"), 3 * UNIT);
    }

    #[tokio::test]
    async fn idle_peers_are_forgotten() {
        let b = ByteBudget::new(1 << 20);
        for i in 0..(PRUNE_ABOVE * 3) {
            drop(b.acquire_for(&format!("peer-{i}"), UNIT).await);
        }
        let held = b.acquire_for("holder", UNIT).await;
        for i in 0..PRUNE_ABOVE {
            drop(b.acquire_for(&format!("late-{i}"), UNIT).await);
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
