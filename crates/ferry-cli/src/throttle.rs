//! [`Throttled`]: `ferry serve --limit-rate`, a cap on the bytes per second the sender produces
//! (all receivers together), so a transfer does not saturate a shared link.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::core::{
    DoneStatus, DownloadStatus, Downloadable, ExpectedReceivers, ProduceError, Produced, RefId,
    State, TransferPlan, TxId,
};

/// A shared pacing clock: each produced chunk books the next `len / rate` seconds of the link.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: f64,
    /// When the link is free again; chunks are released no earlier than their slot's end.
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter for `bytes_per_sec` (> 0).
    pub fn new(bytes_per_sec: u64) -> Arc<Self> {
        Arc::new(Self {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            next_free: Mutex::new(Instant::now()),
        })
    }

    /// Book `len` bytes at `now`; returns how long the caller must wait before releasing them.
    pub fn book(&self, len: u64, now: Instant) -> Duration {
        let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(len as f64 / self.bytes_per_sec);
        *next - now
    }
}

/// A downloadable whose chunks are paced by a [`RateLimiter`]. `produce` runs on tokio's
/// blocking pool, so sleeping there stalls no reactor thread.
pub struct Throttled {
    inner: Arc<dyn Downloadable>,
    limiter: Arc<RateLimiter>,
}

impl Throttled {
    /// Pace `inner` with `limiter`.
    pub fn new(inner: Arc<dyn Downloadable>, limiter: Arc<RateLimiter>) -> Self {
        Self { inner, limiter }
    }
}

// `try_produce_now` is deliberately not forwarded: every chunk must go through the sleeping
// `produce`, on the blocking pool, or the rate limit would be skipped for cached chunks.
impl Downloadable for Throttled {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        let produced = self.inner.produce(state, requester)?;
        if let Produced::Data { data, .. } = &produced {
            let wait = self.limiter.book(data.byte_len(), Instant::now());
            std::thread::sleep(wait);
        }
        Ok(produced)
    }

    fn plan(&self) -> Option<TransferPlan> {
        self.inner.plan()
    }

    fn set_transaction(&self, tx_id: &TxId, ref_id: &RefId, receivers: &ExpectedReceivers) {
        self.inner.set_transaction(tx_id, ref_id, receivers)
    }

    fn downloaded_to_one(&self, receiver: &str, status: DownloadStatus) {
        self.inner.downloaded_to_one(receiver, status)
    }

    fn downloaded_to_all(&self) {
        self.inner.downloaded_to_all()
    }

    fn transaction_done(&self, tx_id: &TxId, status: DoneStatus) {
        self.inner.transaction_done(tx_id, status)
    }

    fn release(&self) {
        self.inner.release()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn books_consecutive_slots() {
        let l = RateLimiter::new(1 << 20);
        let t0 = Instant::now();
        assert_eq!(l.book(1 << 20, t0), Duration::from_secs(1));
        // the second MiB waits for the first one's slot, then its own
        assert_eq!(l.book(1 << 20, t0), Duration::from_secs(2));
        // an idle link does not bank credit
        let later = t0 + Duration::from_secs(10);
        assert_eq!(l.book(512 << 10, later), Duration::from_millis(500));
    }
}
