//! Unit tests of the shared item cache.

use super::*;
use crate::testutil::pattern;
use bytes::Bytes;
use ferry_core::{ChunkData, Downloadable, PlanLayout, Produced, State};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Items of given sizes; counts productions per item and accepted prefetches.
struct VecSource {
    items: Vec<Bytes>,
    hints: bool,
    prefetch: bool,
    calls: Vec<AtomicU64>,
    prefetched: AtomicU64,
    released: AtomicU64,
}

impl VecSource {
    fn new(sizes: &[usize]) -> Self {
        Self {
            items: sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| Bytes::from(pattern(s, i as u64)))
                .collect(),
            hints: true,
            prefetch: false,
            calls: sizes.iter().map(|_| AtomicU64::new(0)).collect(),
            prefetched: AtomicU64::new(0),
            released: AtomicU64::new(0),
        }
    }
    fn max_calls(&self) -> u64 {
        self.calls
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}

impl ItemSource for VecSource {
    fn item_count(&self) -> u64 {
        self.items.len() as u64
    }
    fn produce_item(&self, index: u64) -> Result<Bytes, ItemError> {
        self.calls[index as usize].fetch_add(1, Ordering::Relaxed);
        Ok(self.items[index as usize].clone())
    }
    fn item_size_hint(&self, index: u64) -> Option<u64> {
        self.hints.then(|| self.items[index as usize].len() as u64)
    }
    fn prefetch_item(&self, _index: u64) -> bool {
        if self.prefetch {
            self.prefetched.fetch_add(1, Ordering::Relaxed);
        }
        self.prefetch
    }
    fn release(&self) {
        self.released.fetch_add(1, Ordering::Relaxed);
    }
}

/// Receivers pull round-robin, one request each per round; returns each receiver's items.
/// `check` runs after every request.
fn pull_all<T: ItemSource>(
    obj: &CacheableObject<T>,
    receivers: &[&str],
    mut check: impl FnMut(&CacheableObject<T>),
) -> Vec<Vec<Bytes>> {
    let mut states: Vec<Option<State>> = vec![None; receivers.len()];
    let mut done = vec![false; receivers.len()];
    let mut got = vec![Vec::new(); receivers.len()];
    while done.iter().any(|d| !d) {
        for (r, name) in receivers.iter().enumerate() {
            if done[r] {
                continue;
            }
            match obj.produce(states[r].as_ref(), name).unwrap() {
                Produced::Data {
                    data: ChunkData::Items(items),
                    state,
                } => {
                    got[r].extend(items);
                    states[r] = Some(state);
                }
                Produced::Eof => done[r] = true,
                other => panic!("{other:?}"),
            }
            check(obj);
        }
    }
    got
}

const EIGHT: [&str; 8] = ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"];

#[test]
fn eight_receivers_share_every_item_once_and_the_cache_drains() {
    let sizes: Vec<usize> = (0..20).map(|i| 100 + i * 10).collect();
    let obj = CacheableObject::new(
        VecSource::new(&sizes),
        CacheOptions::default().with_receivers(ExpectedReceivers::Count(8)),
    )
    .unwrap();
    let got = pull_all(&obj, &EIGHT, |_| {});
    for g in &got {
        assert_eq!(g, &obj.source().items);
    }
    assert_eq!(obj.source().max_calls(), 1, "each item produced once");
    let st = obj.stats();
    assert_eq!(st.productions, 20);
    assert_eq!((st.cached_items, st.cached_bytes), (0, 0), "{st:?}");
    assert_eq!(st.retired_items, 20);
}

#[test]
fn plan_is_advertised_for_fixed_packing_only() {
    let obj = CacheableObject::new(
        VecSource::new(&[10, 20, 30]),
        CacheOptions::default().with_packing(ChunkPacking::PerChunk(2)),
    )
    .unwrap();
    let plan = obj.plan().unwrap();
    assert_eq!(
        plan.layout,
        PlanLayout::Items {
            count: 3,
            per_chunk: 2
        }
    );
    assert_eq!(plan.total_bytes, Some(60));
    let Produced::Data { data, state } = obj.produce(None, "a").unwrap() else {
        panic!()
    };
    assert_eq!(data.item_count(), Some(2));
    assert_eq!(state, State::new().with(START, 0u64).with(COUNT, 2u64));
    let obj = CacheableObject::new(
        VecSource::new(&[10]),
        CacheOptions::default().with_packing(ChunkPacking::MaxBytes(100)),
    )
    .unwrap();
    assert!(obj.plan().is_none());
    assert!(CacheableObject::new(
        VecSource::new(&[1]),
        CacheOptions::default().with_packing(ChunkPacking::PerChunk(0))
    )
    .is_err());
}

#[test]
fn max_bytes_packing_follows_nvflare() {
    // limit 100: [60, 30] fits (90 < 100); 10 would reach 100 -> next chunk.
    let mut src = VecSource::new(&[60, 30, 10, 500, 5, 5]);
    src.hints = false;
    let obj = CacheableObject::new(
        src,
        CacheOptions::default()
            .with_packing(ChunkPacking::MaxBytes(100))
            .with_receivers(ExpectedReceivers::Count(1)),
    )
    .unwrap();
    let mut counts = Vec::new();
    let mut state = None;
    while let Produced::Data { data, state: s } = obj.produce(state.as_ref(), "a").unwrap() {
        counts.push(data.item_count().unwrap());
        state = Some(s);
    }
    // [60,30] [10] (500 produced, rejected, cached) [500 alone] [5,5]
    assert_eq!(counts, vec![2, 1, 1, 2]);
    assert_eq!(
        obj.source().max_calls(),
        1,
        "a rejected item is reused from the cache"
    );
}

#[test]
fn byte_budget_is_never_exceeded_and_oversized_items_go_alone() {
    let sizes = [300, 300, 300, 2000, 300, 300];
    let obj = CacheableObject::new(
        VecSource::new(&sizes),
        CacheOptions::default()
            .with_receivers(ExpectedReceivers::Count(3))
            .with_budget(700),
    )
    .unwrap();
    // A slow receiver: it starts after the two others finished, so the cache fills up.
    let fast = pull_all(&obj, &["a", "b"], |o| {
        assert!(o.stats().cached_bytes <= 700)
    });
    let slow = pull_all(&obj, &["c"], |o| assert!(o.stats().cached_bytes <= 700));
    for g in fast.iter().chain(&slow) {
        assert_eq!(g, &obj.source().items);
    }
    let st = obj.stats();
    assert!(st.peak_bytes <= 700, "{st:?}");
    assert_eq!(
        st.cached_bytes, 0,
        "everything acknowledged by all three: {st:?}"
    );
    // the 2000-byte item never fit: produced for each receiver
    assert_eq!(obj.source().calls[3].load(Ordering::Relaxed), 3);
}

#[test]
fn prefetch_reservations_count_against_the_budget() {
    let mut src = VecSource::new(&[100; 10]);
    src.prefetch = true;
    let obj = CacheableObject::new(
        src,
        CacheOptions::default()
            .with_receivers(ExpectedReceivers::Count(2))
            .with_budget(350),
    )
    .unwrap();
    pull_all(&obj, &["a", "b"], |o| {
        let st = o.stats();
        assert!(st.cached_bytes + st.reserved_bytes <= 350, "{st:?}");
    });
    assert!(obj.source().prefetched.load(Ordering::Relaxed) > 0);
    let st = obj.stats();
    assert_eq!((st.cached_bytes, st.reserved_bytes), (0, 0), "{st:?}");
}

#[test]
fn identity_mode_ignores_strangers_and_retries_do_not_double_ack() {
    let obj = CacheableObject::new(
        VecSource::new(&[10, 10]),
        CacheOptions::default()
            .with_receivers(ExpectedReceivers::Ids(vec!["a".into(), "b".into()])),
    )
    .unwrap();
    let ack0 = State::new().with(START, 0u64).with(COUNT, 1u64);
    obj.produce(None, "a").unwrap();
    obj.produce(Some(&ack0), "x").unwrap();
    obj.produce(Some(&ack0), "a").unwrap();
    obj.produce(Some(&ack0), "a").unwrap(); // retry
    assert_eq!(
        obj.stats().retired_items,
        0,
        "x does not count, a counts once"
    );
    obj.produce(Some(&ack0), "b").unwrap();
    assert_eq!(
        obj.stats().retired_items,
        0,
        "b acknowledged before it was served (pipelining)"
    );
    obj.produce(None, "b").unwrap();
    assert_eq!(
        obj.stats().retired_items,
        1,
        "served to and acknowledged by a and b"
    );

    // count mode: one receiver retrying is still one receiver
    let obj = CacheableObject::new(
        VecSource::new(&[10, 10]),
        CacheOptions::default().with_receivers(ExpectedReceivers::Count(2)),
    )
    .unwrap();
    obj.produce(None, "a").unwrap();
    obj.produce(Some(&ack0), "a").unwrap();
    obj.produce(Some(&ack0), "a").unwrap();
    assert_eq!(obj.stats().retired_items, 0);
    obj.set_expected_receivers(ExpectedReceivers::Count(1));
    obj.produce(Some(&ack0), "a").unwrap();
    assert_eq!(obj.stats().retired_items, 1);
}

/// NVFlare's `CacheableObject.set_transaction` reads `num_receivers` from its transaction: with
/// default options the object learns the count there and produces each item once for all of
/// them; receivers given in the options are kept.
#[test]
fn nvflare_cacheable_learns_the_receiver_count_from_its_transaction() {
    let tx = ferry_core::TxId::new("T1");
    let rid = ferry_core::RefId::new("R1");
    let obj = CacheableObject::new(VecSource::new(&[10, 10, 10]), CacheOptions::default()).unwrap();
    obj.set_transaction(&tx, &rid, &ExpectedReceivers::Count(3));
    pull_all(&obj, &["a", "b", "c"], |_| {});
    assert_eq!(obj.source().max_calls(), 1, "each item produced once");
    assert_eq!(obj.stats().retired_items, 3, "and dropped after the third");

    let given = CacheableObject::new(
        VecSource::new(&[10, 10]),
        CacheOptions::default().with_receivers(ExpectedReceivers::Count(1)),
    )
    .unwrap();
    given.set_transaction(&tx, &rid, &ExpectedReceivers::Count(5));
    pull_all(&given, &["a"], |_| {});
    assert_eq!(
        given.stats().retired_items,
        2,
        "the given count (1) is kept"
    );
}

#[test]
fn unknown_receivers_evict_at_first_ack() {
    let obj = CacheableObject::new(VecSource::new(&[10, 10, 10]), CacheOptions::default()).unwrap();
    pull_all(&obj, &["a", "b"], |_| {});
    assert!(obj.source().max_calls() >= 1);
    assert_eq!(obj.stats().cached_bytes, 0);
}

#[test]
fn bad_states_are_invalid_requests() {
    let obj = CacheableObject::new(VecSource::new(&[10, 10]), CacheOptions::default()).unwrap();
    let st = |s: rmpv::Value, c: rmpv::Value| State::new().with(START, s).with(COUNT, c);
    for (s, c) in [
        (rmpv::Value::from(-1i64), rmpv::Value::from(1u64)),
        (0u64.into(), "1".into()),
        (u64::MAX.into(), 1u64.into()),
        (1.0f64.into(), 1u64.into()),
    ] {
        assert!(
            matches!(
                obj.produce(Some(&st(s.clone(), c.clone())), "a").unwrap(),
                Produced::Invalid { .. }
            ),
            "{s:?} {c:?}"
        );
    }
    assert_eq!(
        obj.produce(Some(&st(1u64.into(), 1u64.into())), "a")
            .unwrap(),
        Produced::Eof
    );
    assert_eq!(
        obj.produce(Some(&st(50u64.into(), 7u64.into())), "a")
            .unwrap(),
        Produced::Eof
    );
    // absent keys are 0 (NVFlare)
    assert!(matches!(
        obj.produce(Some(&State::new()), "a").unwrap(),
        Produced::Data { .. }
    ));
}

#[test]
fn lifecycle_hooks_clear_and_release() {
    let obj = CacheableObject::new(
        VecSource::new(&[10, 10]),
        CacheOptions::default().with_receivers(ExpectedReceivers::Count(5)),
    )
    .unwrap();
    obj.produce(None, "a").unwrap();
    assert_eq!(obj.stats().cached_items, 1);
    obj.downloaded_to_all();
    assert_eq!(obj.stats().cached_items, 0);
    obj.produce(None, "b").unwrap();
    assert_eq!(obj.stats().cached_items, 0, "nothing cached after clear");
    obj.release();
    assert_eq!(obj.source().released.load(Ordering::Relaxed), 1);
    assert!(obj.produce(None, "a").is_err());
    let empty = CacheableObject::new(VecSource::new(&[]), CacheOptions::default()).unwrap();
    assert_eq!(empty.produce(None, "a").unwrap(), Produced::Eof);
}

#[test]
fn concurrent_receivers_get_identical_items() {
    let sizes: Vec<usize> = (0..64).map(|i| 1000 + i).collect();
    let obj = Arc::new(
        CacheableObject::new(
            VecSource::new(&sizes),
            CacheOptions::default().with_receivers(ExpectedReceivers::Count(8)),
        )
        .unwrap(),
    );
    let handles: Vec<_> = EIGHT
        .iter()
        .map(|name| {
            let obj = Arc::clone(&obj);
            std::thread::spawn(move || pull_all(&*obj, &[name], |_| {}).pop().unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), obj.source().items);
    }
    let st = obj.stats();
    assert!(st.productions >= 64, "{st:?}");
    assert_eq!(st.cached_bytes, 0, "{st:?}");
    assert_eq!(st.retired_items, 64);
}

#[test]
fn tracker_checks_shapes_duplicates_and_completeness() {
    let mut t = ItemTracker::new();
    let plan = ferry_core::TransferPlan {
        layout: PlanLayout::Items {
            count: 3,
            per_chunk: 2,
        },
        total_bytes: None,
        blake3: None,
    };
    t.plan_received(&plan).unwrap();
    let st = |s: u64, c: u64| State::new().with(START, s).with(COUNT, c);
    let items = |n: usize| ChunkData::Items(vec![Bytes::from_static(b"x"); n]);
    assert!(t.accept(&st(0, 2), ChunkData::Bytes(Bytes::new())).is_err());
    assert!(t.accept(&st(0, 2), items(1)).is_err(), "count mismatch");
    assert!(t.accept(&st(2, 2), items(2)).is_err(), "beyond the plan");
    assert!(t.accept(&State::new(), items(0)).is_err(), "no state");
    assert_eq!(t.accept(&st(2, 1), items(1)).unwrap().len(), 1);
    assert!(t.finish().is_err());
    assert_eq!(t.accept(&st(0, 2), items(2)).unwrap().len(), 2);
    assert_eq!(t.accept(&st(0, 2), items(2)).unwrap().len(), 0, "duplicate");
    assert_eq!(t.finish().unwrap(), 3);
    let mut small = ItemTracker::with_max_items(2);
    assert!(small.plan_received(&plan).is_err());
}

#[test]
fn max_bytes_packing_is_a_chunk_size() {
    for (max, ok) in [
        (0, false),
        (1, true),
        (crate::MAX_CHUNK_SIZE, true),
        (crate::MAX_CHUNK_SIZE + 1, false),
    ] {
        let options = CacheOptions {
            packing: ChunkPacking::MaxBytes(max),
            ..CacheOptions::default()
        };
        assert_eq!(
            CacheableObject::new(VecSource::new(&[4]), options).is_ok(),
            ok,
            "{max}"
        );
    }
}
