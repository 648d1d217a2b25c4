//! A set manifest's list header cannot make the receiver reserve memory: the length a sender
//! claims for `entries` reserves nothing (found by the `manifest` fuzz target, whose allocation
//! budget caught serde's 1 MiB reservation for a 5-byte header claiming 4 billion entries).
//!
//! Its own test binary: the counting allocator is global, and this is its only test.

// The counting allocator below is the only unsafe code: it forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use ferry::manifest::{Manifest, FORMAT};

/// Largest single allocation made while `ARMED`.
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Relaxed) {
            LARGEST.fetch_max(layout.size(), Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Relaxed) {
            LARGEST.fetch_max(new_size, Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// `{"format": FORMAT, "entries": [...]}` in msgpack, the list's header claiming `claimed`
/// entries and one following.
fn claiming(claimed: u32) -> Vec<u8> {
    let entry = ferry::manifest::Entry {
        name: "a.bin".into(),
        kind: "file".into(),
        size: 1,
        b3: "ab".repeat(32),
        ref_id: "R1".into(),
        mode: None,
        mtime: None,
        mtime_ns: None,
    };
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, 2).unwrap();
    rmp::encode::write_str(&mut out, "format").unwrap();
    rmp::encode::write_str(&mut out, FORMAT).unwrap();
    rmp::encode::write_str(&mut out, "entries").unwrap();
    rmp::encode::write_array_len(&mut out, claimed).unwrap();
    out.extend_from_slice(&rmp_serde::to_vec_named(&entry).unwrap());
    out
}

#[test]
fn a_claimed_entry_count_reserves_nothing() {
    // the honest encoding of the same one-entry list decodes
    assert_eq!(Manifest::decode(&claiming(1)).unwrap().entries.len(), 1);
    for claimed in [1_000, u32::MAX] {
        let input = claiming(claimed);
        LARGEST.store(0, Relaxed);
        ARMED.store(true, Relaxed);
        let r = Manifest::decode(&input);
        ARMED.store(false, Relaxed);
        assert!(r.is_err(), "a list claiming {claimed} entries, holding one");
        let largest = LARGEST.load(Relaxed);
        assert!(
            largest < 16 * 1024,
            "a {}-byte manifest claiming {claimed} entries made a {largest}-byte allocation",
            input.len()
        );
    }
}
