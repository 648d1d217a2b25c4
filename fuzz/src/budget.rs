//! The allocation budget: a counting global allocator that aborts the moment the bytes live
//! during one input exceed `per_byte × input length + fixed` above what was live before it.
//!
//! libFuzzer's own `-malloc_limit_mb` needs a sanitizer's malloc hooks, which a
//! `--sanitizer none` build on the stable toolchain does not have, and its `-rss_limit_mb`
//! only sees the process as a whole. This allocator makes an *amplification* (a few input
//! bytes that make a decoder allocate many times their size — an allocation sized by what a
//! peer claims) a crash that libFuzzer reports and saves like any other, with a message that
//! names the sizes. The check runs before the allocation is made, so a claimed 4 GiB buffer
//! aborts cleanly instead of being attempted.

#![allow(unsafe_code)] // a GlobalAlloc cannot be written without it

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Bytes currently allocated through the global allocator.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Highest `LIVE` since the current input started.
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// `LIVE` may not exceed this (`usize::MAX` outside an input).
static CEILING: AtomicUsize = AtomicUsize::new(usize::MAX);
/// `LIVE` when the current input started, and its length (for the abort message).
static BASE: AtomicUsize = AtomicUsize::new(0);
static INPUT_LEN: AtomicUsize = AtomicUsize::new(0);
/// Largest `PEAK - BASE` seen by any input so far, and the largest ratio of it to the input
/// length (inputs of at least [`RATIO_MIN_LEN`] bytes, ×100), for `FERRY_FUZZ_REPORT`.
static MAX_SEEN: AtomicUsize = AtomicUsize::new(0);
static MAX_RATIO: AtomicUsize = AtomicUsize::new(0);
/// Shorter inputs are dominated by fixed costs; their ratio says nothing about amplification.
const RATIO_MIN_LEN: usize = 256;

/// The counting allocator (installed as the global allocator of every fuzz target).
pub struct Counting;

/// What one input may allocate: `per_byte` bytes per input byte plus `fixed` bytes, counted as
/// the most bytes live at any moment while the input is processed (above the bytes live before
/// it).
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    /// Bytes allowed per input byte.
    pub per_byte: usize,
    /// Bytes allowed whatever the input (fixed costs: a runtime, a cell, buffers).
    pub fixed: usize,
}

impl Limit {
    /// The ceiling for an input of `len` bytes.
    pub const fn for_len(&self, len: usize) -> usize {
        self.per_byte.saturating_mul(len).saturating_add(self.fixed)
    }
}

/// Run `f` for one input of `input_len` bytes under `limit`; any allocation that would take the
/// live bytes over the limit aborts the process with a message naming the sizes.
pub fn within<R>(limit: Limit, input_len: usize, f: impl FnOnce() -> R) -> R {
    let base = LIVE.load(Relaxed);
    BASE.store(base, Relaxed);
    INPUT_LEN.store(input_len, Relaxed);
    PEAK.store(base, Relaxed);
    CEILING.store(base.saturating_add(limit.for_len(input_len)), Relaxed);
    let r = f();
    CEILING.store(usize::MAX, Relaxed);
    let used = PEAK.load(Relaxed).saturating_sub(base);
    let ratio = if input_len >= RATIO_MIN_LEN {
        used.saturating_mul(100) / input_len
    } else {
        0
    };
    let new_peak = MAX_SEEN.fetch_max(used, Relaxed) < used;
    let new_ratio = MAX_RATIO.fetch_max(ratio, Relaxed) < ratio;
    if (new_peak || new_ratio) && std::env::var_os("FERRY_FUZZ_REPORT").is_some() {
        eprintln!(
            "ferry-fuzz: {used} bytes live at peak for a {input_len}-byte input ({}.{:02} per byte)",
            used / input_len.max(1),
            used * 100 / input_len.max(1) % 100
        );
    }
    r
}

/// Bytes live right now (tests of the harness itself).
pub fn live() -> usize {
    LIVE.load(Relaxed)
}

/// A fixed-size text buffer: the abort message is formatted without allocating.
struct StackText {
    buf: [u8; 320],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cold]
#[inline(never)]
fn over_budget(live: usize, request: usize) -> ! {
    // No allocation from here on: the message is formatted on the stack.
    CEILING.store(usize::MAX, Relaxed);
    let base = BASE.load(Relaxed);
    let len = INPUT_LEN.load(Relaxed);
    let mut t = StackText {
        buf: [0; 320],
        len: 0,
    };
    let _ = write!(
        t,
        "\nferry-fuzz: allocation budget exceeded: an allocation of {request} bytes would make \
         {} bytes live for a {len}-byte input (limit {} bytes)\n",
        live.saturating_sub(base),
        CEILING_AT_START.load(Relaxed),
    );
    let _ = std::io::stderr().write_all(&t.buf[..t.len]);
    std::process::abort()
}

/// The limit in force when the budget was exceeded (CEILING is reset before printing).
static CEILING_AT_START: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    #[inline]
    fn grow(&self, n: usize) {
        let live = LIVE.fetch_add(n, Relaxed).saturating_add(n);
        let ceiling = CEILING.load(Relaxed);
        if live > ceiling {
            LIVE.fetch_sub(n, Relaxed);
            CEILING_AT_START.store(ceiling - BASE.load(Relaxed), Relaxed);
            over_budget(live, n);
        }
        PEAK.fetch_max(live, Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's layout and pointer unchanged;
// the counters are plain atomics and never touch the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.grow(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.grow(layout.size());
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old {
            self.grow(new_size - old);
        }
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > old {
                LIVE.fetch_sub(new_size - old, Relaxed);
            }
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Relaxed);
        }
        p
    }
}
