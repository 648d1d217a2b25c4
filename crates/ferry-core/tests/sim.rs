//! End-to-end behaviour of both engines over the simulated network (`ferry_core::testing`),
//! on virtual time: fixed scenarios, then property tests over random schedules.

use bytes::Bytes;
use ferry_core::message::SourceFailureNotice;
use ferry_core::testing::{
    BytesObject, DownloadHandle, ItemsObject, MemorySink, ObjectProbe, Sim, SimConfig, SinkResult,
};
use ferry_core::{
    Consumer, DoneStatus, DownloadConfig, DownloadFailure, OutcomeStatus, RefId, Service,
    ServiceConfig, ServiceEvent, TxConfig, TxId,
};
use proptest::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// The latest sink a factory built (a restart builds a new one).
type Latest = Rc<RefCell<Arc<Mutex<SinkResult>>>>;

fn factory(items: bool) -> (impl FnMut() -> Box<dyn Consumer> + 'static, Latest) {
    let latest: Latest = Rc::new(RefCell::new(Arc::default()));
    let l2 = latest.clone();
    let f = move || {
        let (sink, res) = if items {
            MemorySink::items()
        } else {
            MemorySink::bytes()
        };
        *l2.borrow_mut() = res;
        Box::new(sink) as Box<dyn Consumer>
    };
    (f, latest)
}

fn payload(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn items(n: usize, salt: u8) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(payload(1 + i % 7, salt.wrapping_add(i as u8))))
        .collect()
}

/// One object: its bytes, its probe, and per receiver (download, latest sink).
type Tracked = (Vec<u8>, Arc<ObjectProbe>, Vec<(DownloadHandle, Latest)>);

struct World {
    sim: Sim,
    tx: TxId,
    /// (expected bytes, probe, per-receiver (handle, latest sink))
    objects: Vec<Tracked>,
}

#[derive(Clone, Debug)]
struct Scenario {
    seed: u64,
    receivers: usize,
    bytes_len: usize,
    chunk: usize,
    item_count: usize,
    per_chunk: usize,
    planned: bool,
    window: usize,
    loss: f64,
    duplicate: f64,
    produce_ms: u64,
    tx_timeout_s: u64,
    crash: Option<(u64, u64)>,
    delete_ms: Option<u64>,
}

fn build(sc: &Scenario, t0: Instant) -> World {
    let cfg = SimConfig {
        seed: sc.seed,
        loss: sc.loss,
        duplicate: sc.duplicate,
        produce_time: (Duration::ZERO, MS * sc.produce_ms as u32),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg, t0);
    let names: Vec<String> = (0..sc.receivers).map(|i| format!("site-{i}")).collect();
    let tx = sim
        .service()
        .new_transaction(
            TxConfig::new(S * sc.tx_timeout_s as u32).with_receiver_ids(names.clone()),
            t0,
        )
        .unwrap();
    let bytes = payload(sc.bytes_len, 3);
    let its = items(sc.item_count, 9);
    let b_obj = if sc.planned {
        BytesObject::new(bytes.clone(), sc.chunk)
    } else {
        BytesObject::unplanned(bytes.clone(), sc.chunk)
    };
    let i_obj = if sc.planned {
        ItemsObject::new(its.clone(), sc.per_chunk)
    } else {
        ItemsObject::unplanned(its.clone(), sc.per_chunk)
    };
    let (bp, ip) = (b_obj.probe.clone(), i_obj.probe.clone());
    let rb = sim
        .service()
        .add_object(&tx, Arc::new(b_obj), None, t0)
        .unwrap();
    let ri = sim
        .service()
        .add_object(&tx, Arc::new(i_obj), None, t0)
        .unwrap();
    let dcfg = DownloadConfig {
        per_request_timeout: 5 * S,
        window: sc.window,
        ..DownloadConfig::default()
    };
    let mut objects = vec![(bytes, bp, Vec::new()), (its.concat(), ip, Vec::new())];
    for name in &names {
        let r = sim.add_receiver(name);
        for (k, rid) in [(0usize, &rb), (1, &ri)] {
            let (f, latest) = factory(k == 1);
            let h = sim.start_download(r, rid.clone(), dcfg.clone(), f);
            objects[k].2.push((h, latest));
        }
    }
    if let Some((at, down)) = sc.crash {
        sim.crash_at(0, t0 + MS * at as u32);
        sim.restart_at(0, t0 + MS * (at + down) as u32);
    }
    if let Some(ms) = sc.delete_ms {
        sim.delete_at(tx.clone(), t0 + MS * ms as u32);
    }
    World { sim, tx, objects }
}

fn all_received(w: &World) -> bool {
    w.objects.iter().all(|(want, _, per)| {
        per.iter().all(|(h, latest)| {
            let got = latest.borrow().lock().unwrap().clone();
            w.sim.result(*h) == Some(&Ok(())) && got.completed && &got.bytes == want
        })
    })
}

fn done_count(sim: &Sim, tx: &TxId) -> usize {
    sim.service_events()
        .iter()
        .filter(|(_, e)| matches!(e, ServiceEvent::TransactionDone { outcome, .. } if &outcome.tx_id == tx))
        .count()
}

fn check_invariants(sc: &Scenario, w: &World) -> Result<(), TestCaseError> {
    let sim = &w.sim;
    prop_assert_eq!(
        done_count(sim, &w.tx),
        1,
        "exactly one transaction-done event"
    );
    for (_, probe, per) in &w.objects {
        prop_assert_eq!(
            probe.produced_after_release(),
            0,
            "no chunk produced after release"
        );
        prop_assert!(probe.released());
        for (h, _) in per {
            prop_assert!(sim.result(*h).is_some(), "every download ended");
        }
    }
    let outcome = sim.outcomes()[0].clone();
    let got_all = all_received(w);
    if outcome.completed() {
        prop_assert!(got_all, "COMPLETED implies every receiver has every object");
    }
    if sc.delete_ms.is_none() {
        prop_assert_eq!(
            outcome.completed(),
            got_all,
            "COMPLETED iff all received: {:?}",
            outcome
        );
    }
    Ok(())
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        1usize..5,
        (0usize..3000, 1usize..700),
        (0usize..40, 1usize..9),
        any::<bool>(),
        1usize..6,
        prop_oneof![Just(0.0), 0.0..0.15f64],
        prop_oneof![Just(0.0), 0.0..0.2f64],
        0u64..30,
        prop_oneof![Just(3600u64), 1u64..4],
        proptest::option::of((0u64..200, 1u64..3000)),
        proptest::option::weighted(0.2, 0u64..400),
    )
        .prop_map(
            |(
                seed,
                receivers,
                (bytes_len, chunk),
                (item_count, per_chunk),
                planned,
                window,
                loss,
                duplicate,
                produce_ms,
                tx_timeout_s,
                crash,
                delete_ms,
            )| Scenario {
                seed,
                receivers,
                bytes_len,
                chunk,
                item_count,
                per_chunk,
                planned,
                window,
                loss,
                duplicate,
                produce_ms,
                tx_timeout_s,
                crash,
                delete_ms,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random schedules: exactly one transaction-done event; COMPLETED iff every expected
    /// receiver got every object byte-identical (without deletes); no chunk after release;
    /// every download ends.
    #[test]
    fn random_schedules_keep_the_invariants(sc in scenario()) {
        let t0 = Instant::now();
        let mut w = build(&sc, t0);
        w.sim.run_for(Duration::from_secs(20_000));
        if std::env::var_os("FERRY_SIM_TRACE").is_some() {
            let o = w.sim.outcomes()[0];
            eprintln!("{:?} {:?} {} {:?}", o.done_status, o.status, all_received(&w), w.sim.stats());
        }
        check_invariants(&sc, &w).map_err(|e| {
            TestCaseError::fail(format!(
                "seed {}: {e} (the case replays exactly: run fixed() on the Scenario printed below)",
                sc.seed
            ))
        })?;
    }

    /// A seed replays exactly: the same scenario run twice gives the same service events
    /// (transaction and ref ids, confirm nonces, order, virtual instants) and the same
    /// download results, losses, crashes and deletes included.
    #[test]
    fn a_seed_replays_exactly(sc in scenario()) {
        let t0 = Instant::now();
        let run = || {
            let mut w = build(&sc, t0);
            w.sim.run_for(Duration::from_secs(20_000));
            let results: Vec<_> = w
                .objects
                .iter()
                .flat_map(|(_, _, per)| per.iter().map(|(h, _)| (w.sim.result(*h).cloned(), w.sim.finished_at(*h))))
                .collect();
            (format!("{:?}", w.sim.service_events()), results, w.sim.stats())
        };
        let (first, again) = (run(), run());
        prop_assert!(first == again, "seed {} did not replay", sc.seed);
    }

    /// The inactivity timeout fires exactly at last activity + timeout + 1 ns, never earlier.
    #[test]
    fn timeouts_fire_at_the_exact_virtual_instant(
        timeout_ms in 1u64..100_000,
        pulls in proptest::collection::vec(0u64..50_000, 0..6),
    ) {
        let t0 = Instant::now();
        let timeout = MS * timeout_ms as u32;
        let mut svc = Service::new(ServiceConfig::default());
        let tx = svc.new_transaction(TxConfig::new(timeout).with_num_receivers(2), t0).unwrap();
        let rid = svc.add_object(&tx, Arc::new(BytesObject::new(vec![1u8; 64], 8)), None, t0).unwrap();
        let mut last = t0;
        let mut done = Vec::new();
        let mut pulls = pulls;
        pulls.sort_unstable();
        let fire_until = |svc: &mut Service, limit: Instant, last: Instant, done: &mut Vec<_>| -> Result<(), TestCaseError> {
            while let Some(d) = svc.poll_timeout() {
                if d > limit || svc.transaction_info(&tx).is_none() {
                    break;
                }
                prop_assert_eq!(d, last + timeout + Duration::from_nanos(1));
                svc.handle_timeout(d - Duration::from_nanos(1));
                prop_assert!(svc.transaction_info(&tx).is_some(), "fired early");
                svc.handle_timeout(d);
                done.extend(std::iter::from_fn(|| svc.poll_event()).filter_map(|e| match e {
                    ServiceEvent::TransactionDone { outcome, .. } => Some(outcome),
                    _ => None,
                }));
            }
            Ok(())
        };
        for p in pulls {
            let at = t0 + MS * p as u32;
            fire_until(&mut svc, at, last, &mut done)?;
            if svc.transaction_info(&tx).is_none() {
                break;
            }
            let req = ferry_core::message::PullRequest { ref_id: rid.clone(), state: None, confirm_capable: None };
            if let Ok(t) = svc.begin_pull("site-1", req, at) {
                let r = t.produce();
                let _ = svc.finish_pull(t, r, at);
                last = at;
            }
        }
        fire_until(&mut svc, t0 + 1000 * S, last, &mut done)?;
        prop_assert_eq!(done.len(), 1);
        prop_assert_eq!(done[0].done_status, DoneStatus::Timeout);
        prop_assert_eq!(done[0].timestamp, last + timeout + Duration::from_nanos(1));
    }

    /// One receiver 100x slower than the rest: the fast ones finish within their own bound.
    #[test]
    fn a_slow_receiver_never_stalls_the_others(
        seed in any::<u64>(),
        fast in 1usize..5,
        len in 1usize..4000,
        chunk in 64usize..1024,
        planned in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let mut sim = Sim::new(SimConfig { seed, ..SimConfig::default() }, t0);
        let tx = sim.service().new_transaction(TxConfig::new(3600 * S).with_num_receivers(fast + 1), t0).unwrap();
        let data = payload(len, 1);
        let obj = if planned { BytesObject::new(data.clone(), chunk) } else { BytesObject::unplanned(data.clone(), chunk) };
        let rid: RefId = sim.service().add_object(&tx, Arc::new(obj), None, t0).unwrap();
        let slow = sim.add_receiver("slow");
        sim.set_slowness(slow, 100);
        let (f, _) = factory(false);
        let hs = sim.start_download(slow, rid.clone(), DownloadConfig::default(), f);
        let mut fast_h = Vec::new();
        for i in 0..fast {
            let r = sim.add_receiver(&format!("fast-{i}"));
            let (f, latest) = factory(false);
            fast_h.push((sim.start_download(r, rid.clone(), DownloadConfig::default(), f), latest));
        }
        sim.run_for(Duration::from_secs(3600));
        // stop-and-wait worst case: (chunks + 1) round trips of at most 2 x 5 ms
        let chunks = len.div_ceil(chunk) as u32 + 1;
        let bound = t0 + MS * 10 * chunks + MS;
        for (h, latest) in &fast_h {
            prop_assert_eq!(sim.result(*h), Some(&Ok(())));
            prop_assert!(sim.finished_at(*h).unwrap() <= bound);
            let got = latest.borrow().lock().unwrap().bytes.clone();
            prop_assert_eq!(&got, &data);
        }
        prop_assert_eq!(sim.result(hs), Some(&Ok(())));
        prop_assert!(sim.finished_at(hs).unwrap() > bound, "the slow one is really slower");
        prop_assert!(sim.outcomes()[0].completed());
    }
}

fn fixed(sc: Scenario) -> World {
    let mut w = build(&sc, Instant::now());
    w.sim.run_for(Duration::from_secs(20_000));
    check_invariants(&sc, &w).unwrap();
    w
}

fn base() -> Scenario {
    Scenario {
        seed: 1,
        receivers: 8,
        bytes_len: 100_000,
        chunk: 4096,
        item_count: 50,
        per_chunk: 4,
        planned: true,
        window: 8,
        loss: 0.0,
        duplicate: 0.0,
        produce_ms: 0,
        tx_timeout_s: 3600,
        crash: None,
        delete_ms: None,
    }
}

#[test]
fn eight_receivers_pipelined_all_complete() {
    let w = fixed(base());
    let o = w.sim.outcomes()[0];
    assert!(o.completed());
    assert_eq!(o.done_status, DoneStatus::Finished);
}

#[test]
fn nvflare_stop_and_wait_completes_too() {
    let w = fixed(Scenario {
        planned: false,
        window: 1,
        ..base()
    });
    assert!(w.sim.outcomes()[0].completed());
}

#[test]
fn lossy_duplicating_network_still_completes() {
    let w = fixed(Scenario {
        loss: 0.05,
        duplicate: 0.1,
        produce_ms: 3,
        ..base()
    });
    assert!(w.sim.stats().lost > 0 && w.sim.stats().duplicated > 0);
    assert!(w.sim.outcomes()[0].completed());
}

#[test]
fn crashed_receiver_restarts_and_completes() {
    let w = fixed(Scenario {
        crash: Some((20, 500)),
        ..base()
    });
    assert!(w.sim.stats().dropped_by_crash > 0 || w.sim.outcomes()[0].completed());
    assert!(w.sim.outcomes()[0].completed());
}

#[test]
fn deleting_during_transfer_aborts_and_serves_nothing_after_release() {
    let w = fixed(Scenario {
        delete_ms: Some(15),
        produce_ms: 4,
        ..base()
    });
    let o = w.sim.outcomes()[0];
    assert_eq!(
        (o.done_status, o.status),
        (DoneStatus::Deleted, OutcomeStatus::Aborted)
    );
}

#[test]
fn source_failure_notice_fails_the_matching_download_at_once() {
    let t0 = Instant::now();
    let mut sim = Sim::new(
        SimConfig {
            sender: "site-1.trainer".into(),
            ..SimConfig::default()
        },
        t0,
    );
    let tx = sim
        .service()
        .new_transaction(TxConfig::new(60 * S).with_receiver_ids(["server"]), t0)
        .unwrap();
    let rid = sim
        .service()
        .add_object(
            &tx,
            Arc::new(BytesObject::unplanned(vec![0u8; 10_000], 10)),
            None,
            t0,
        )
        .unwrap();
    let r = sim.add_receiver("server");
    let (f, _) = factory(false);
    let h = sim.start_download(r, rid.clone(), DownloadConfig::default(), f);
    let notice = SourceFailureNotice {
        source_fqcn: "site-1.trainer".into(),
        ref_ids: vec![rid.as_str().to_string()],
        reason: "trainer process died".into(),
    };
    sim.source_failure_at(r, notice, t0 + 50 * MS);
    sim.run_until(t0 + 50 * MS);
    assert_eq!(
        sim.result(h),
        Some(&Err(DownloadFailure::SourceFailed(
            "trainer process died".into()
        )))
    );
    assert_eq!(sim.finished_at(h), Some(t0 + 50 * MS));
    // a download started later fails before its first request
    let (f, _) = factory(false);
    let h2 = sim.start_download(r, rid, DownloadConfig::default(), f);
    assert!(matches!(
        sim.result(h2),
        Some(Err(DownloadFailure::SourceFailed(_)))
    ));
    // the cancel reached the producer: the (declared) receiver is FAILED there and the tx
    // finishes (in count mode a cancel would give the place back instead)
    sim.run_for(10 * S);
    assert_eq!(sim.outcomes()[0].status, OutcomeStatus::Failed);
}

/// Four transactions that expire at the same virtual instant settle in one order, run after
/// run with the same seed, with the same ids: the order they were created in. (With ids from
/// OS randomness and settlement in id order, 20 runs gave 13 different orders.)
#[test]
fn simultaneous_expiries_settle_in_one_order_with_the_same_ids() {
    let t0 = Instant::now();
    let run = || {
        let mut sim = Sim::new(
            SimConfig {
                seed: 7,
                ..SimConfig::default()
            },
            t0,
        );
        let mut created = Vec::new();
        for _ in 0..4 {
            let tx = sim
                .service()
                .new_transaction(TxConfig::new(10 * S).with_num_receivers(1), t0)
                .unwrap();
            let obj = Arc::new(BytesObject::new(vec![1u8; 16], 4));
            sim.service().add_object(&tx, obj, None, t0).unwrap();
            created.push(tx);
        }
        sim.run_for(60 * S);
        let settled: Vec<(TxId, Instant)> = sim
            .outcomes()
            .iter()
            .map(|o| (o.tx_id.clone(), o.timestamp))
            .collect();
        (created, settled)
    };
    let (created, first) = run();
    assert_eq!(first.len(), 4);
    let expiry = t0 + 10 * S + Duration::from_nanos(1);
    assert!(first.iter().all(|(_, at)| *at == expiry), "{first:?}");
    let order: Vec<TxId> = first.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(order, created, "settled in creation order");
    for _ in 1..20 {
        assert_eq!(run(), (created.clone(), first.clone()));
    }
}
