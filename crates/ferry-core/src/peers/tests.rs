//! The scheduler alone, then in the fan-out simulator: crashes, hangs, slow and lying peers,
//! late joins.

use super::*;
use crate::testing::fanout::{run, FanoutConfig, HostSpec};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn offer(name: &str) -> Option<PeerOffer> {
    Some(PeerOffer {
        fqcn: name.into(),
        url: format!("tcp://{name}:7000"),
    })
}

fn peer(s: &Source) -> Option<&str> {
    s.peer_fqcn()
}

#[test]
fn a_chain_forms_with_fan_out_one_and_a_tree_with_fan_out_two() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(SchedulerConfig::default());
    let a = s.join("a", offer("a"), 0, t0).unwrap();
    let b = s.join("b", offer("b"), 0, t0).unwrap();
    let c = s.join("c", offer("c"), 0, t0).unwrap();
    assert_eq!((peer(&a), peer(&b), peer(&c)), (None, Some("a"), Some("b")));

    let mut s = Scheduler::new(SchedulerConfig {
        fan_out: 2,
        ..SchedulerConfig::default()
    });
    let got: Vec<Option<String>> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|n| peer(&s.join(n, offer(n), 0, t0).unwrap()).map(str::to_string))
        .collect();
    let origin = got.iter().filter(|g| g.is_none()).count();
    assert_eq!(origin, 2, "the origin serves fan_out receivers: {got:?}");
    for n in ["a", "b"] {
        let kids = got.iter().filter(|g| g.as_deref() == Some(n)).count();
        assert_eq!(kids, 2, "{n} serves two: {got:?}");
    }
}

#[test]
fn a_receiver_that_does_not_share_is_never_a_source() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(SchedulerConfig::default());
    assert_eq!(s.join("leech", None, 0, t0).unwrap(), Source::Origin);
    let next = s.join("b", offer("b"), 0, t0).unwrap();
    assert_eq!(next, Source::Origin, "the origin is least loaded: {next:?}");
    let third = s.join("c", offer("c"), 0, t0).unwrap();
    assert_eq!(peer(&third), Some("b"));
}

#[test]
fn disabled_or_closed_schedules_send_everyone_to_the_origin() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(SchedulerConfig {
        enabled: false,
        ..SchedulerConfig::default()
    });
    for n in ["a", "b", "c"] {
        assert_eq!(s.join(n, offer(n), 0, t0).unwrap(), Source::Origin);
    }
    let mut s = Scheduler::new(SchedulerConfig::default());
    s.join("a", offer("a"), 0, t0).unwrap();
    s.close();
    assert_eq!(s.join("b", offer("b"), 0, t0).unwrap(), Source::Origin);
    assert_eq!(s.report("a", 5, false, t0).unwrap(), Directive::Release);
}

#[test]
fn offers_under_another_name_and_reports_from_strangers_are_refused() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(SchedulerConfig::default());
    assert!(matches!(
        s.join("a", offer("b"), 0, t0),
        Err(SchedulerError::InvalidOffer(_))
    ));
    let long = Some(PeerOffer {
        fqcn: "a".into(),
        url: "x".repeat(MAX_URL_LEN + 1),
    });
    assert!(matches!(
        s.join("a", long, 0, t0),
        Err(SchedulerError::InvalidOffer(_))
    ));
    assert!(matches!(
        s.join("bad..name", None, 0, t0),
        Err(SchedulerError::InvalidOffer(_))
    ));
    assert!(matches!(
        s.report("nobody", 0, false, t0),
        Err(SchedulerError::UnknownReceiver(_))
    ));
    assert!(matches!(
        s.source_failed("nobody", FailureKind::Failed, 0, t0),
        Err(SchedulerError::UnknownReceiver(_))
    ));
    assert_eq!(s.stats().receivers, 0);
}

#[test]
fn a_failed_source_loses_its_children_and_a_liar_is_banned_for_good() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(SchedulerConfig::default());
    for n in ["a", "b", "c", "d"] {
        s.join(n, offer(n), 0, t0).unwrap();
    }
    // chain origin -> a -> b -> c -> d; c says b failed: c moves, d is told at its report
    let c = s.source_failed("c", FailureKind::Failed, 10, t0).unwrap();
    assert_ne!(peer(&c), Some("b"));
    match s.report("d", 5, false, t0).unwrap() {
        Directive::Stay => assert_eq!(peer(&s.source_of("d").unwrap()), Some("c")),
        Directive::Switch(src) => assert_ne!(peer(&src), Some("b")),
        Directive::Release => panic!("d is not done"),
    }
    // b reports again: it is live, and gets a source (not below itself)
    let back = s.report("b", 20, false, t0).unwrap();
    assert!(matches!(back, Directive::Switch(_)), "{back:?}");
    // a liar never serves again, even after reporting
    let by = s
        .source_of("b")
        .and_then(|x| x.peer_fqcn().map(str::to_string));
    if let Some(liar) = by {
        s.source_failed("b", FailureKind::Lied, 0, t0).unwrap();
        s.report(&liar, 30, false, t0).unwrap();
        s.join("z", offer("z"), 0, t0).unwrap();
        for n in ["b", "c", "d", "z"] {
            assert_ne!(
                s.source_of(n)
                    .and_then(|x| x.peer_fqcn().map(str::to_string))
                    .as_deref(),
                Some(liar.as_str()),
                "{n} pulls from the banned {liar}"
            );
        }
        assert_eq!(s.stats().banned, 1);
    }
}

#[test]
fn a_silent_receiver_is_lost_and_a_stalled_one_is_moved() {
    let t0 = Instant::now();
    let cfg = SchedulerConfig::default();
    let mut s = Scheduler::new(cfg.clone());
    for n in ["a", "b", "c"] {
        s.join(n, offer(n), 0, t0).unwrap();
    }
    // a keeps reporting and advancing; b reports but is stuck; c reports too
    let mut t = t0;
    let mut pos_a = 0;
    while t < t0 + cfg.stall_timeout * 2 {
        t += Duration::from_secs(1);
        pos_a += 10 * MIB;
        s.report("a", pos_a, false, t).unwrap();
        s.report("b", 0, false, t).unwrap();
        s.report("c", 0, false, t).unwrap();
        while s.poll_timeout().is_some_and(|d| d <= t) {
            s.handle_timeout(t);
        }
    }
    let evs: Vec<PeerEvent> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        evs.contains(&PeerEvent::Stalled {
            receiver: "b".into()
        }),
        "{evs:?}"
    );
    assert!(
        !evs.contains(&PeerEvent::Stalled {
            receiver: "c".into()
        }),
        "c is starved by b, not stalled: {evs:?}"
    );
    // now a falls silent: lost after the silence timeout
    let t_end = t + cfg.silence_timeout;
    while t < t_end {
        t += Duration::from_secs(1);
        s.report("b", 0, false, t).unwrap();
        s.report("c", 0, false, t).unwrap();
        while s.poll_timeout().is_some_and(|d| d <= t) {
            s.handle_timeout(t);
        }
    }
    let evs: Vec<PeerEvent> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        evs.contains(&PeerEvent::Lost { peer: "a".into() }),
        "{evs:?}"
    );
    for n in ["b", "c"] {
        assert_ne!(peer(&s.source_of(n).unwrap()), Some("a"), "{n}");
    }
}

fn sim(n: usize, cfg: &FanoutConfig) -> Vec<HostSpec> {
    vec![HostSpec::sharing(cfg.origin_rate); n]
}

fn small() -> FanoutConfig {
    FanoutConfig {
        size: 64 * MIB,
        origin_rate: 8 * MIB,
        ..FanoutConfig::default()
    }
}

#[test]
fn sixteen_sharing_receivers_take_about_the_time_of_one_and_the_origin_sends_one_copy() {
    let t0 = Instant::now();
    let cfg = small();
    let one = run(&cfg, &sim(1, &cfg), t0);
    let t1 = one.all_done(0..1).expect("one receiver done");
    let many = run(&cfg, &sim(16, &cfg), t0);
    let t16 = many.all_done(0..16).expect("all sixteen done");
    assert!(
        t16.as_secs_f64() <= 1.5 * t1.as_secs_f64(),
        "16 receivers in {t16:?}, one in {t1:?}"
    );
    assert!(
        many.origin_bytes as f64 <= 1.5 * cfg.size as f64,
        "origin sent {} for {}",
        many.origin_bytes,
        cfg.size
    );
    // the baseline the scheduler is measured against: nobody shares
    let mut direct = sim(16, &cfg);
    direct.iter_mut().for_each(|h| h.share = false);
    let d = run(&cfg, &direct, t0);
    let td = d.all_done(0..16).expect("direct done");
    assert!(
        td.as_secs_f64() > 10.0 * t1.as_secs_f64(),
        "{td:?} vs {t1:?}"
    );
    assert_eq!(d.origin_bytes, 16 * cfg.size);
}

#[test]
fn a_peer_crash_mid_transfer_leaves_every_other_receiver_complete() {
    let t0 = Instant::now();
    let cfg = small();
    let mut hosts = sim(8, &cfg);
    hosts[2].crash_at = Some(Duration::from_secs(4));
    let r = run(&cfg, &hosts, t0);
    let others: Vec<usize> = (0..8).filter(|&i| i != 2).collect();
    assert!(r.all_done(others.clone()).is_some(), "{:?}", r.finished);
    assert!(r.finished[2].is_none());
    assert!(
        r.origin_bytes <= 2 * cfg.size,
        "origin sent {} for {}",
        r.origin_bytes,
        cfg.size
    );
    assert!(
        r.events.contains(&PeerEvent::Lost {
            peer: "site-2".into()
        }),
        "{:?}",
        r.events
    );
}

#[test]
fn a_hung_peer_is_detected_by_silence_and_its_children_move_on() {
    let t0 = Instant::now();
    let cfg = small();
    let mut hosts = sim(6, &cfg);
    hosts[1].hang_at = Some(Duration::from_secs(3));
    let r = run(&cfg, &hosts, t0);
    let others: Vec<usize> = (0..6).filter(|&i| i != 1).collect();
    assert!(r.all_done(others).is_some(), "{:?}", r.finished);
    assert!(r.events.contains(&PeerEvent::Lost {
        peer: "site-1".into()
    }));
}

#[test]
fn a_slow_peer_stops_serving_and_does_not_hold_back_the_chain() {
    let t0 = Instant::now();
    let cfg = small();
    let one = run(&cfg, &sim(1, &cfg), t0).all_done(0..1).unwrap();
    let mut hosts = sim(6, &cfg);
    hosts[0].upload_rate = cfg.origin_rate / 20;
    let r = run(&cfg, &hosts, t0);
    let all = r.all_done(0..6).expect("all done");
    assert!(
        r.events.contains(&PeerEvent::SlowSource {
            peer: "site-0".into()
        }),
        "{:?}",
        r.events
    );
    assert!(
        all.as_secs_f64() < 4.0 * one.as_secs_f64(),
        "{all:?} vs {one:?}"
    );
}

#[test]
fn receivers_joining_mid_transfer_are_served_by_peers() {
    let t0 = Instant::now();
    let cfg = small();
    let mut hosts = sim(8, &cfg);
    for (i, h) in hosts.iter_mut().enumerate().skip(4) {
        h.join_at = Duration::from_secs(2 + i as u64);
    }
    let r = run(&cfg, &hosts, t0);
    assert!(r.all_done(0..8).is_some(), "{:?}", r.finished);
    assert!(
        r.origin_bytes as f64 <= 1.5 * cfg.size as f64,
        "{}",
        r.origin_bytes
    );
    let late_served_by_peers = r.events.iter().any(
        |e| matches!(e, PeerEvent::Assigned { receiver, source: Some(_) } if receiver == "site-7"),
    );
    assert!(late_served_by_peers, "{:?}", r.events);
}

#[test]
fn a_lying_peer_cannot_leave_anyone_with_bad_data_and_is_banned() {
    let t0 = Instant::now();
    let cfg = small();
    let mut hosts = sim(6, &cfg);
    hosts[1].lies = true;
    let r = run(&cfg, &hosts, t0);
    // every honest receiver ends verified (the simulator only completes untainted ones)
    let honest: Vec<usize> = (0..6).filter(|&i| i != 1).collect();
    assert!(r.all_done(honest).is_some(), "{:?}", r.finished);
    assert!(r.verify_failures > 0);
    assert!(
        r.events
            .iter()
            .any(|e| matches!(e, PeerEvent::Banned { peer, .. } if peer == "site-1")),
        "{:?}",
        r.events
    );
}

#[test]
fn simulations_replay_exactly() {
    let t0 = Instant::now();
    let cfg = small();
    let mut hosts = sim(6, &cfg);
    hosts[3].crash_at = Some(Duration::from_secs(3));
    let a = run(&cfg, &hosts, t0);
    let b = run(&cfg, &hosts, t0);
    assert_eq!(a.finished, b.finished);
    assert_eq!(a.events, b.events);
}

#[test]
fn scheduling_messages_round_trip_and_hostile_ones_are_refused() {
    use super::message::*;
    let join = JoinRequest {
        ref_id: "R1".into(),
        position: 7,
        offer: offer("a"),
    };
    let back: JoinRequest = decode(&encode_request(&join)).unwrap();
    assert_eq!(back, join);
    let no_offer = JoinRequest {
        offer: None,
        ..join.clone()
    };
    let bytes = encode_request(&no_offer);
    assert!(
        !bytes.windows(5).any(|w| w == b"offer"),
        "an absent offer is omitted, not nil"
    );
    for d in [
        Directive::Stay,
        Directive::Release,
        Directive::Switch(Source::Origin),
        Directive::Switch(Source::Peer(offer("b").unwrap())),
    ] {
        let r: ScheduleReply = decode(&ScheduleReply::directive(d.clone()).encode()).unwrap();
        assert_eq!(r.answer(), Answer::Directive(d));
    }
    let pulled: ScheduleReply = decode(&ScheduleReply::pull(Source::Origin).encode()).unwrap();
    assert_eq!(pulled.answer(), Answer::Pull(Source::Origin));
    let refused: ScheduleReply = decode(&ScheduleReply::refused("no").encode()).unwrap();
    assert_eq!(refused.answer(), Answer::Refused("no".into()));
    let odd = ScheduleReply {
        action: "fly".into(),
        peer: None,
        error: None,
    };
    assert!(matches!(odd.answer(), Answer::Refused(why) if why.contains("fly")));
    // garbage, a wrong shape, and a payload above the request limit
    assert!(decode::<JoinRequest>(&[0xc1]).is_err());
    assert!(decode::<ReportRequest>(&encode_request(&join)).is_err());
    let huge = vec![0x90u8; crate::message::MAX_REQUEST_BYTES + 1];
    let err = decode::<FailedRequest>(&huge).unwrap_err();
    assert!(err.contains("too large"), "{err}");
}
