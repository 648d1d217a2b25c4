//! Who fed whom: the scheduler's per-source credits, alone and in the fan-out simulator
//! against the simulation's ground truth.

use super::*;
use crate::testing::fanout::{run, FanoutConfig, FanoutResult, HostSpec};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn offer(name: &str) -> Option<PeerOffer> {
    Some(PeerOffer {
        fqcn: name.into(),
        url: format!("tcp://{name}:7000"),
    })
}

#[test]
fn bytes_are_credited_to_the_source_a_receiver_was_told_to_use() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(SchedulerConfig::default());
    assert_eq!(s.join("a", offer("a"), 0, t0).unwrap(), Source::Origin);
    assert_eq!(
        s.join("b", offer("b"), 0, t0).unwrap().peer_fqcn(),
        Some("a")
    );
    s.report("a", 10 * MIB, false, t0).unwrap();
    s.report("b", 4 * MIB, false, t0).unwrap();
    // a moves on: b's next 2 MiB came from a, the rest from wherever it goes next
    s.source_failed("b", FailureKind::Failed, 6 * MIB, t0)
        .unwrap();
    let next = s.source_of("b");
    // a move continues from the last durable point: bytes fetched twice count once
    s.report("b", 5 * MIB, false, t0).unwrap();
    s.report("b", 16 * MIB, true, t0).unwrap();
    s.report("a", 16 * MIB, true, t0).unwrap();
    s.record_served("a", 7 * MIB);
    let r = s.sources();
    let a = r.receiver("a").unwrap();
    assert_eq!(
        (a.from_origin, a.credited(), a.complete),
        (16 * MIB, 16 * MIB, true)
    );
    let b = r.receiver("b").unwrap();
    assert_eq!(b.from_peers.get("a"), Some(&(6 * MIB)), "{b:?}");
    assert_eq!(b.credited(), 16 * MIB, "{b:?}");
    match next {
        Some(Source::Origin) => assert_eq!(b.from_origin, 10 * MIB),
        other => panic!("b's only other source is the origin: {other:?}"),
    }
    let pa = r.peer("a").unwrap();
    assert_eq!(
        (pa.receivers, pa.bytes, pa.reported_served, pa.banned),
        (1, 6 * MIB, Some(7 * MIB), false)
    );
    // b offered to serve and fed nobody
    let pb = r.peer("b").unwrap();
    assert_eq!((pb.receivers, pb.bytes, pb.reported_served), (0, 0, None));
    assert_eq!(r.from_origin(), 26 * MIB);
}

#[test]
fn a_resumed_part_is_nobodys_and_data_that_failed_verification_is_discarded() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(SchedulerConfig::default());
    s.join("a", offer("a"), 0, t0).unwrap();
    // c resumes a part of 3 MiB
    s.join("c", offer("c"), 3 * MIB, t0).unwrap();
    assert_eq!(
        s.source_of("c")
            .and_then(|x| x.peer_fqcn().map(str::to_string)),
        Some("a".into())
    );
    s.report("c", 8 * MIB, false, t0).unwrap();
    s.source_failed("c", FailureKind::Lied, 0, t0).unwrap();
    s.report("c", 2 * MIB, false, t0).unwrap();
    let r = s.sources();
    let c = r.receiver("c").unwrap();
    assert_eq!(c.discarded, 8 * MIB, "{c:?}");
    assert_eq!(
        (c.before_join, c.from_origin, c.credited()),
        (0, 2 * MIB, 2 * MIB)
    );
    assert!(c.from_peers.is_empty(), "{c:?}");
    let a = r.peer("a").unwrap();
    assert!(a.banned && a.bytes == 0 && a.receivers == 0, "{a:?}");
}

#[test]
fn credits_follow_what_a_receiver_was_told_not_the_tree() {
    // The tree may move a receiver (its source stalled) before it hears of it at its next
    // report: until then it still pulls from the old source.
    let t0 = Instant::now();
    let cfg = SchedulerConfig::default();
    let mut s = Scheduler::new(cfg.clone());
    s.join("a", offer("a"), 0, t0).unwrap();
    s.join("b", offer("b"), 0, t0).unwrap();
    let later = t0 + cfg.silence_timeout;
    // a falls silent: the tree takes b off it
    s.report("b", MIB, false, t0 + cfg.silence_timeout / 2)
        .unwrap();
    s.handle_timeout(later);
    assert_eq!(s.source_of("b"), None, "b is being moved");
    // b's report says it got 3 MiB more, all from a, and moves it
    let d = s.report("b", 4 * MIB, false, later).unwrap();
    assert!(matches!(d, Directive::Switch(_)), "{d:?}");
    assert_eq!(
        s.sources().receiver("b").unwrap().from_peers.get("a"),
        Some(&(4 * MIB))
    );
}

#[test]
fn a_receiver_moved_among_many_peers_keeps_bounded_credits() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(SchedulerConfig::default());
    // the origin's one slot is held, so the victim goes to peers
    s.join("holder", None, 0, t0).unwrap();
    let mut pos = 0;
    for i in 0..(MAX_NAMED_SOURCES + 10) {
        // a new complete peer, the victim sent to it (its previous source failed)
        let name = format!("p{i}");
        s.join(&name, offer(&name), 0, t0).unwrap();
        s.report(&name, 100 * MIB, true, t0).unwrap();
        let src = if i == 0 {
            s.join("victim", None, pos, t0).unwrap()
        } else {
            s.source_failed("victim", FailureKind::Failed, pos, t0)
                .unwrap()
        };
        assert_eq!(src.peer_fqcn(), Some(name.as_str()));
        pos += 1;
        s.report("victim", pos, false, t0).unwrap();
    }
    let r = s.sources();
    let v = r.receiver("victim").unwrap();
    assert_eq!(v.from_peers.len(), MAX_NAMED_SOURCES);
    assert_eq!(v.from_other_peers, 10);
    assert_eq!(v.credited(), pos);
}

/// Every receiver that finished is credited with exactly the object, and each credit matches
/// the simulation's ground truth (sources change only at scheduler calls in the simulator,
/// so attribution is exact but for rounding).
fn assert_credits_match(r: &FanoutResult, size: u64) {
    let slack = 16; // bytes: positions are rounded in the simulator
    for (i, fin) in r.finished.iter().enumerate() {
        let name = format!("site-{i}");
        if fin.is_none() {
            continue;
        }
        let got = r.sources.receiver(&name).expect("tracked");
        assert!(got.complete, "{got:?}");
        assert_eq!(got.credited(), size, "{got:?}");
        let truth = &r.received_from[i];
        let origin = truth.get(&None).copied().unwrap_or(0);
        assert!(
            got.from_origin.abs_diff(origin) <= slack,
            "{name}: {got:?} vs {truth:?}"
        );
        for (src, bytes) in truth.iter().filter_map(|(k, v)| k.map(|k| (k, *v))) {
            let credited = got
                .from_peers
                .get(&format!("site-{src}"))
                .copied()
                .unwrap_or(0);
            assert!(
                credited.abs_diff(bytes) <= slack,
                "{name}: {got:?} vs {truth:?}"
            );
        }
    }
}

#[test]
fn in_a_chain_each_peer_is_credited_with_what_it_served() {
    let t0 = Instant::now();
    let cfg = FanoutConfig {
        size: 64 * MIB,
        origin_rate: 8 * MIB,
        ..FanoutConfig::default()
    };
    let r = run(&cfg, &vec![HostSpec::sharing(cfg.origin_rate); 6], t0);
    assert!(r.all_done(0..6).is_some(), "{:?}", r.finished);
    assert_credits_match(&r, cfg.size);
    // a chain: the origin fed one receiver the whole object, every peer but the last fed one
    assert_eq!(r.sources.from_origin(), cfg.size);
    let feeders: Vec<&PeerServed> = r.sources.peers.iter().filter(|p| p.receivers > 0).collect();
    assert_eq!(feeders.len(), 5, "{:?}", r.sources.peers);
    for p in feeders {
        assert_eq!((p.receivers, p.bytes), (1, cfg.size), "{p:?}");
        // and says so itself, at its last report
        let i: usize = p.peer["site-".len()..].parse().unwrap();
        assert_eq!(p.reported_served, Some(r.peer_bytes[i]), "{p:?}");
    }
}

#[test]
fn after_a_peer_crash_the_credits_split_between_the_dead_peer_and_the_next_source() {
    let t0 = Instant::now();
    let cfg = FanoutConfig {
        size: 64 * MIB,
        origin_rate: 8 * MIB,
        ..FanoutConfig::default()
    };
    let mut hosts = vec![HostSpec::sharing(cfg.origin_rate); 8];
    hosts[2].crash_at = Some(Duration::from_secs(4));
    hosts[5].join_at = Duration::from_secs(3);
    let r = run(&cfg, &hosts, t0);
    assert!(r.finished[2].is_none());
    assert_credits_match(&r, cfg.size);
    let dead = r.sources.peer("site-2").unwrap();
    assert!(dead.bytes > 0 && dead.bytes < cfg.size, "{dead:?}");
    let fed_by_dead: Vec<&ReceiverSources> = r
        .sources
        .receivers
        .iter()
        .filter(|x| x.complete && x.from_peers.contains_key("site-2"))
        .collect();
    assert!(!fed_by_dead.is_empty());
    for x in fed_by_dead {
        assert!(
            x.from_peers.len() + usize::from(x.from_origin > 0) >= 2,
            "{x:?}"
        );
    }
}

#[test]
fn a_lying_peer_is_credited_nothing_in_any_verified_copy() {
    let t0 = Instant::now();
    let cfg = FanoutConfig {
        size: 64 * MIB,
        origin_rate: 8 * MIB,
        ..FanoutConfig::default()
    };
    let mut hosts = vec![HostSpec::sharing(cfg.origin_rate); 6];
    hosts[1].lies = true;
    let r = run(&cfg, &hosts, t0);
    assert_credits_match(&r, cfg.size);
    let discarded: u64 = r.sources.receivers.iter().map(|x| x.discarded).sum();
    assert!(discarded > 0);
    for x in r
        .sources
        .receivers
        .iter()
        .filter(|x| x.complete && x.receiver != "site-1")
    {
        assert!(!x.from_peers.contains_key("site-1"), "{x:?}");
    }
    assert!(r.sources.peer("site-1").unwrap().banned);
}
