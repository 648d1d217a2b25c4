//! A small pool of chunk buffers, so a producer does not allocate and zero a fresh buffer for
//! every chunk it reads.
//!
//! A buffer leaves the pool inside a `Bytes` (via [`Bytes::from_owner`]); when the last `Bytes`
//! pointing into it is dropped — after the connection wrote it — the buffer comes back. Reused
//! buffers of the same length are not zeroed again (only a longer request zeroes its new tail),
//! and a steady set of buffers also keeps the allocator from spreading chunk-sized blocks over
//! per-thread arenas.

use bytes::Bytes;
use std::sync::{Arc, Mutex, Weak};

type Free = Mutex<Vec<Vec<u8>>>;

/// A pool keeping at most `max_idle` idle buffers.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: Arc<Free>,
    /// Idle buffers kept; more are freed. Buffers in use are not limited here (the sender's
    /// byte budget limits them).
    max_idle: usize,
}

impl BufferPool {
    /// A pool keeping up to `max_idle` idle buffers.
    pub(crate) fn new(max_idle: usize) -> Self {
        Self {
            free: Arc::new(Mutex::new(Vec::new())),
            max_idle,
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified: the caller overwrites them).
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = reused.unwrap_or_default();
        // Shrinking keeps the old bytes (no zeroing); growing zeroes only the new tail.
        buf.resize(len, 0);
        buf
    }

    /// An empty buffer with room for at least `capacity` bytes, for a caller that appends:
    /// an idle buffer that is big enough is preferred (its pages are already resident, so
    /// appending neither zeroes nor faults), else any idle one is grown.
    pub(crate) fn take_empty(&self, capacity: usize) -> Vec<u8> {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            match free.iter().rposition(|b| b.capacity() >= capacity) {
                Some(i) => Some(free.swap_remove(i)),
                None => free.pop(),
            }
        };
        let mut buf = reused.unwrap_or_default();
        buf.clear();
        buf.reserve(capacity);
        buf
    }

    /// Freeze `buf` into `Bytes` that return it to this pool when dropped.
    pub(crate) fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            home: Arc::downgrade(&self.free),
            max_idle: self.max_idle,
        })
    }

    /// Give back a buffer that was taken but not used.
    pub(crate) fn recycle(&self, buf: Vec<u8>) {
        drop(self.freeze(buf));
    }

    /// Drop every idle buffer.
    pub(crate) fn clear(&self) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Idle buffers (for tests).
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A pooled buffer lent out inside a `Bytes`.
struct Pooled {
    buf: Vec<u8>,
    home: Weak<Free>,
    max_idle: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            let mut free = home.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < self.max_idle {
                free.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_bytes_is_dropped() {
        let pool = BufferPool::new(2);
        let mut b = pool.take(8);
        b.copy_from_slice(b"abcdefgh");
        let ptr = b.as_ptr();
        let bytes = pool.freeze(b);
        let slice = bytes.slice(2..4);
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a slice still uses it");
        assert_eq!(&slice[..], b"cd");
        drop(slice);
        assert_eq!(pool.idle(), 1);
        let again = pool.take(4);
        assert_eq!(again.as_ptr(), ptr, "reused");
        assert_eq!(again.len(), 4);
        let longer = {
            drop(pool.freeze(again));
            pool.take(16)
        };
        assert_eq!(&longer[8..], &[0u8; 8], "a grown tail is zeroed");
    }

    #[test]
    fn take_empty_prefers_a_buffer_that_is_big_enough() {
        let pool = BufferPool::new(4);
        let small = pool.freeze(Vec::with_capacity(16));
        let big = {
            let mut b = pool.take_empty(4096);
            b.extend_from_slice(&[1; 100]);
            b
        };
        let big_ptr = big.as_ptr();
        let big = pool.freeze(big);
        drop(big);
        drop(small);
        let again = pool.take_empty(1000);
        assert!(again.is_empty());
        assert!(again.capacity() >= 1000);
        assert_eq!(
            again.as_ptr(),
            big_ptr,
            "the big buffer was reused, not the small one"
        );
        let grown = pool.take_empty(8192);
        assert!(grown.is_empty() && grown.capacity() >= 8192);
    }

    #[test]
    fn idle_buffers_are_capped_and_cleared() {
        let pool = BufferPool::new(1);
        let a = pool.freeze(pool.take(4));
        let b = pool.freeze(pool.take(4));
        drop(a);
        drop(b);
        assert_eq!(pool.idle(), 1);
        pool.clear();
        assert_eq!(pool.idle(), 0);
        // a pool dropped while buffers are out: they are simply freed
        let c = {
            let p = BufferPool::new(4);
            p.freeze(p.take(4))
        };
        drop(c);
    }
}
