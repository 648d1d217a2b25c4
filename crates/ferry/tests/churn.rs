//! A sender that runs transaction after transaction keeps nothing of the ended ones but its
//! bounded receipts (issue 14, "scale"): 1,000 transactions, half completed by a receiver
//! over loopback TCP, half left to expire, leave no live state in the service's maps and no
//! growth of the live heap, measured by a counting allocator around the loop.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry::core::OutcomeStatus;
use ferry::prelude::*;
use ferry::Retained;

static LIVE: AtomicI64 = AtomicI64::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counter is only arithmetic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        // SAFETY: `p` came from `System` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Receipts held at most (so that the warm-up fills them and they stop growing).
const RECEIPTS: usize = 16;

async fn pairs(n: usize, sender: &DownloadService, receiver: &DownloadService, data: &Bytes) {
    for i in 0..n {
        let done = ObjectDownloader::new(
            sender,
            TxConfig::new(Duration::from_secs(120)).with_num_receivers(1),
        )
        .unwrap();
        let rid = done.add_bytes(data.clone()).unwrap();
        let lapse = ObjectDownloader::new(
            sender,
            TxConfig::new(Duration::from_millis(10)).with_num_receivers(1),
        )
        .unwrap();
        lapse.add_bytes(data.clone()).unwrap();
        let got = download_bytes(receiver, "server", &rid, DownloadOptions::default())
            .await
            .unwrap();
        assert_eq!(got.len(), data.len());
        let o = done.waiter().wait().await.expect("an outcome");
        assert!(o.completed(), "pair {i}: {o:?}");
        let o = lapse.waiter().wait().await.expect("an outcome");
        assert_ne!(o.status, OutcomeStatus::Completed, "pair {i}: {o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_transactions_leave_nothing_behind_but_bounded_receipts() {
    let cell = Cell::new("server").unwrap();
    let url = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    let mut opts = ServiceOptions::default();
    opts.engine.max_outcomes = RECEIPTS;
    opts.engine.max_tombstones = RECEIPTS;
    let sender = DownloadService::new(&cell, opts);
    let rcell = Cell::new("site-1").unwrap();
    rcell.connect(&url).await.unwrap();
    let receiver = DownloadService::new(&rcell, ServiceOptions::default());
    let data = Bytes::from(vec![7u8; 64 * 1024]);
    // warm-up: receipts fill to their caps, tables and pools reach their working size
    pairs(100, &sender, &receiver, &data).await;
    let before = LIVE.load(Ordering::Relaxed);
    pairs(500, &sender, &receiver, &data).await;
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(
        sender.retained(),
        Retained {
            transactions: 0,
            pull_tickets: 0,
            learnt_chunk_sizes: 0,
            parked_waiters: 0,
            tombstones: RECEIPTS,
            outcomes: RECEIPTS,
        }
    );
    // Per transaction, state that stayed would show as tens of bytes or more each: 1,000
    // transactions leaving 40 bytes apiece is 40 KB. Allow for what the runtime's pools
    // and the maps' capacities may still settle into.
    let grew = after - before;
    assert!(
        grew < 24 * 1024,
        "the live heap grew by {grew} bytes over 1,000 transactions"
    );
}
