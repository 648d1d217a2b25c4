//! How long the calling thread slept (blocked on a disk, a lock, an fsync) since a moment, as
//! opposed to running or waiting for a core.
//!
//! A chunk consumed on the download task that keeps its thread off the connection for longer
//! than [`SLOW_CONSUME`](super::worker) moves the rest of the download to a writer thread;
//! that is meant for a disk that stalls. Wall time also counts the time the thread was ready
//! to run while other processes had the cores: with eight receivers and a sender on two cores
//! (issue 14's benchmark, another engineer's build beside it), a 1 MiB write that needs about
//! a millisecond of CPU took longer than 100 ms of wall time often enough that every receiver
//! of two 8-receiver rounds handed its download to a writer thread, though their writes had
//! slept only on short waits for the inode's block-allocation lock. The kernel tells the two
//! apart per thread: `/proc/thread-self/schedstat` holds the time the thread ran and the
//! time it waited on a run queue; the rest of the wall time it slept — if it blocked at all:
//! on a virtual machine whose host is busy, time stolen from the virtual CPU is neither, so a
//! thread that made no voluntary context switch (`getrusage`'s `ru_nvcsw`) did not sleep.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

thread_local! {
    /// This thread's `/proc/thread-self/schedstat`, opened on first use (a read of an open
    /// file costs about a microsecond, opening it again each time about five); `None` where
    /// it cannot be opened.
    static SCHEDSTAT: RefCell<Option<Option<File>>> = const { RefCell::new(None) };
}

/// A moment on the calling thread, to measure how long that thread slept since.
#[derive(Clone, Copy, Debug)]
pub(super) struct Since {
    wall: Instant,
    /// Nanoseconds the thread had run plus waited for a core, at `wall`.
    busy: Option<u64>,
    /// The thread's voluntary context switches at `wall`: a thread that made none since did
    /// not sleep, whatever the clocks say (time the hypervisor stole from a virtual CPU is
    /// neither run time nor run-queue wait, so on a busy host it looks like sleep).
    blocked: Option<i64>,
}

impl Since {
    /// Now, on the calling thread.
    pub(super) fn now() -> Self {
        Self {
            busy: busy_ns(),
            blocked: voluntary_switches(),
            wall: Instant::now(),
        }
    }

    /// The wall time since [`Since::now`].
    pub(super) fn elapsed(&self) -> Duration {
        self.wall.elapsed()
    }

    /// How long the calling thread (the one that took `self`) slept since: the wall time
    /// less the time it ran or waited for a core. The wall time where the kernel does not
    /// say (a thread that slept is then told apart from one that waited for a core no more
    /// than by wall time).
    pub(super) fn slept(&self) -> Duration {
        let wall = self.wall.elapsed();
        if let (Some(then), Some(now)) = (self.blocked, voluntary_switches()) {
            if now == then {
                return Duration::ZERO;
            }
        }
        match (self.busy, busy_ns()) {
            (Some(then), Some(now)) => {
                wall.saturating_sub(Duration::from_nanos(now.saturating_sub(then)))
            }
            _ => wall,
        }
    }
}

/// The calling thread's voluntary context switches so far (it blocked that often).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn voluntary_switches() -> Option<i64> {
    // SAFETY: `rusage` is plain old data (all zeroes is a valid value), and getrusage only
    // writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    (rc == 0).then_some(usage.ru_nvcsw)
}

/// Not known here: the clocks alone decide.
#[cfg(not(target_os = "linux"))]
fn voluntary_switches() -> Option<i64> {
    None
}

/// The calling thread's run time plus run-queue wait so far, in nanoseconds (the first two
/// fields of `/proc/thread-self/schedstat`).
fn busy_ns() -> Option<u64> {
    SCHEDSTAT.with(|cell| {
        let mut cell = cell.borrow_mut();
        let file = cell
            .get_or_insert_with(|| File::open("/proc/thread-self/schedstat").ok())
            .as_ref()?;
        let mut buf = [0u8; 96];
        let n = file.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(buf.get(..n)?).ok()?;
        let mut fields = text.split_ascii_whitespace();
        let ran: u64 = fields.next()?.parse().ok()?;
        let waited: u64 = fields.next()?.parse().ok()?;
        ran.checked_add(waited)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that sleeps has slept about as long; one that only computes has not (being
    /// preempted is not sleeping), however loaded the machine.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_sleep_counts_and_computing_does_not() {
        let since = Since::now();
        std::thread::sleep(Duration::from_millis(40));
        assert!(since.slept() >= Duration::from_millis(30), "{since:?}");

        let since = Since::now();
        let mut x = 0u64;
        while since.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(since.slept() < Duration::from_millis(100), "{x} {since:?}");
    }
}
