//! What every part of the glue takes from the runtime: tokio's clock as the engines want it,
//! locks that survive a poisoning panic, and the words of a caught panic.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// The current instant on tokio's clock, as the engines want it (virtual under
/// `tokio::time::pause`).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Lock a mutex even if a panicking thread poisoned it: the engines keep their own invariants
/// and never panic on input, so the data is still consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The message of a caught panic (`"panic"` when it carried no text).
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
