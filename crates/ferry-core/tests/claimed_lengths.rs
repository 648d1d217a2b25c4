//! A source-failure notice's list header cannot make a cell reserve memory: the length a peer
//! claims for `ref_ids` reserves nothing (found by the `download_request` fuzz target, whose
//! allocation budget caught serde's 1 MiB reservation for a 77-byte notice).
//!
//! Its own test binary: the counting allocator is global, and this is its only test.

// The counting allocator below is the only unsafe code: it forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use ferry_core::message::SourceFailureNotice;

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

/// `{"source_fqcn": "site-1.job", "ref_ids": [...], "reason": "gone"}` in msgpack, the list's
/// header claiming `claimed` ref ids and `held` following.
fn notice(claimed: u32, held: usize) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, 3).unwrap();
    rmp::encode::write_str(&mut out, "source_fqcn").unwrap();
    rmp::encode::write_str(&mut out, "site-1.job").unwrap();
    rmp::encode::write_str(&mut out, "ref_ids").unwrap();
    rmp::encode::write_array_len(&mut out, claimed).unwrap();
    for i in 0..held {
        rmp::encode::write_str(&mut out, &format!("R{i}")).unwrap();
    }
    rmp::encode::write_str(&mut out, "reason").unwrap();
    rmp::encode::write_str(&mut out, "gone").unwrap();
    out
}

#[test]
fn a_claimed_ref_id_count_reserves_nothing() {
    // the honest encoding decodes
    let ok = SourceFailureNotice::decode(&notice(2, 2)).unwrap();
    assert_eq!(ok.ref_ids, ["R0", "R1"]);
    for claimed in [1_000, u32::MAX] {
        let input = notice(claimed, 1);
        LARGEST.store(0, Relaxed);
        ARMED.store(true, Relaxed);
        let r = SourceFailureNotice::decode(&input);
        ARMED.store(false, Relaxed);
        assert!(r.is_err(), "a list claiming {claimed} ref ids, holding one");
        let largest = LARGEST.load(Relaxed);
        assert!(
            largest < 16 * 1024,
            "a {}-byte notice claiming {claimed} ref ids made a {largest}-byte allocation",
            input.len()
        );
    }
}
