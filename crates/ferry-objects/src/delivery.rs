//! A slot through which a consumer hands its result to the code that started the download,
//! for when the consumer itself was moved into a receiver engine.

use std::sync::{Arc, Mutex, MutexGuard};

/// A shared, take-once slot for a consumer's result (the received bytes, the tensor dict...).
///
/// The consumer fills it when its download completes; the caller keeps a clone and
/// [`take`](Delivery::take)s the value afterwards.
#[derive(Debug)]
pub struct Delivery<T> {
    slot: Arc<Mutex<Option<T>>>,
}

impl<T> Clone for Delivery<T> {
    fn clone(&self) -> Self {
        Self {
            slot: Arc::clone(&self.slot),
        }
    }
}

impl<T> Default for Delivery<T> {
    fn default() -> Self {
        Self {
            slot: Arc::new(Mutex::new(None)),
        }
    }
}

impl<T> Delivery<T> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<T>> {
        // A poisoned slot still holds a consistent Option: recover it.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put the result (replacing an earlier one).
    pub(crate) fn put(&self, value: T) {
        *self.lock() = Some(value);
    }

    /// Take the result, if the download completed and nobody took it yet.
    pub fn take(&self) -> Option<T> {
        self.lock().take()
    }

    /// Whether a result is waiting.
    pub fn is_ready(&self) -> bool {
        self.lock().is_some()
    }
}
