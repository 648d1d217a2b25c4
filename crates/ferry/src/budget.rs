//! The global byte budget on produced-but-unsent chunks.
//!
//! Every chunk a producer makes holds permits for its size until the bytes have left the
//! process: the permits travel inside the chunk's `Bytes` (via [`Bytes::from_owner`]) and are
//! returned when the connection writer drops the frame after writing it. However many
//! receivers pull at once, the sender never holds more than the budget in chunk buffers —
//! the bound the issue asks for ("a global byte budget, not per-receiver buffers").

use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
}

impl ByteBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: u64) -> Self {
        let units = (bytes.div_ceil(UNIT))
            .clamp(1, (Semaphore::MAX_PERMITS as u64).min(u32::MAX as u64))
            as u32;
        Self {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
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
        BudgetPermit { _permit: permit }
    }
}

/// Bytes taken from a [`ByteBudget`]; returned on drop.
#[derive(Debug)]
pub struct BudgetPermit {
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
