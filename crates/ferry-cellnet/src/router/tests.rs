use super::*;

/// A link without a socket.
#[derive(Debug)]
struct Fake {
    id: u64,
    peer: String,
}

impl Link for Fake {
    fn id(&self) -> u64 {
        self.id
    }
    fn peer(&self) -> &str {
        &self.peer
    }
}

fn link(id: u64, peer: &str) -> Arc<Fake> {
    Arc::new(Fake {
        id,
        peer: peer.into(),
    })
}

fn routed(r: &Router<Fake>, target: &str, exclude: Option<&str>) -> Option<u64> {
    r.route(target, exclude).map(|l| l.id)
}

#[test]
fn routes_direct_then_ancestor_then_server_then_parent() {
    let r = Router::default();
    assert_eq!(routed(&r, "site-1", None), None);
    r.insert(link(1, "relay"));
    r.set_parent(Fqcn::new("relay").unwrap());
    assert_eq!(r.parent().unwrap().as_str(), "relay");
    // nothing better: the parent
    assert_eq!(routed(&r, "site-9.job", None), Some(1));
    r.insert(link(2, SERVER_ROOT));
    assert_eq!(routed(&r, "site-9.job", None), Some(2));
    r.insert(link(3, "site-9"));
    assert_eq!(routed(&r, "site-9.job.x", None), Some(3));
    r.insert(link(4, "site-9.job.x"));
    assert_eq!(routed(&r, "site-9.job.x", None), Some(4));
    // a forwarded message never goes back to the hop it came from
    assert_eq!(routed(&r, "site-9.job.x", Some("site-9.job.x")), Some(3));
    assert_eq!(routed(&r, "site-9", Some("site-9")), Some(2));
    assert_eq!(routed(&r, "other", Some(SERVER_ROOT)), Some(1));
    assert_eq!(r.peers(), ["relay", SERVER_ROOT, "site-9", "site-9.job.x"]);
}

#[test]
fn a_held_name_is_not_taken_and_first_runs_only_for_the_taker() {
    let r: Router<Fake> = Router::default();
    let mut events = r.subscribe();
    let mut ran = 0;
    let a = link(1, "site-1");
    let c = r.claim::<()>(&a, || {
        ran += 1;
        Ok(())
    });
    assert!(matches!(c, Ok(Claim::Taken)));
    let b = link(2, "site-1");
    match r.claim::<()>(&b, || unreachable!("the name is held")) {
        Ok(Claim::Held(h)) => assert_eq!(h.id, 1),
        _ => panic!("expected the holder"),
    }
    assert_eq!(ran, 1);
    // a failing `first` leaves the name free
    let c = link(3, "site-2");
    assert!(matches!(r.claim(&c, || Err("closed")), Err("closed")));
    assert!(!r.is_connected("site-2"));
    // the holder found dead is evicted; the newcomer takes the name
    r.evict(&a);
    assert!(matches!(r.claim::<()>(&b, || Ok(())), Ok(Claim::Taken)));
    assert_eq!(r.get("site-1").unwrap().id, 2);
    // evicting or removing a stale link touches nothing
    r.evict(&a);
    r.remove(&a);
    assert_eq!(r.get("site-1").unwrap().id, 2);
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert_eq!(
        seen,
        [
            PeerEvent::Connected("site-1".into()),
            PeerEvent::Connected("site-1".into())
        ]
    );
    r.remove(&b);
    assert_eq!(
        events.try_recv().unwrap(),
        PeerEvent::Disconnected("site-1".into())
    );
}

#[tokio::test]
async fn a_plain_reply_must_come_from_the_target() {
    let r: Router<Fake> = Router::default();
    let id = RequestId::new();
    let key = WaitKey::Reply(id);
    let rx = r.wait(key, "server", 1, None);
    let m = Message::new().with_header("x", 1);
    assert!(!r.resolve(&key, ReplyFrom::Target("site-2"), m.clone()));
    // the same id in the other namespace is another waiter
    assert!(!r.resolve(&WaitKey::StreamReply(id), ReplyFrom::Anyone, m.clone()));
    assert!(r.resolve(&key, ReplyFrom::Target("server"), m.clone()));
    assert_eq!(rx.await.unwrap(), m);
    // answered once
    assert!(!r.resolve(&key, ReplyFrom::Anyone, m));
}

#[tokio::test(start_paused = true)]
async fn a_target_is_matched_whole_however_long() {
    let r: Router<Fake> = Router::default();
    let long = format!(
        "site-1.{}.{}",
        RequestId::new().to_text(),
        RequestId::new().to_text()
    );
    assert!(long.len() > TARGET_INLINE, "kept out of line");
    let m = Message::new().with_header("x", 1);
    for target in [
        "server",
        "site-1.8c2d4e6f-0a1b-4c3d-9e8f-123456789abc",
        long.as_str(),
    ] {
        let key = WaitKey::Reply(RequestId::new());
        let rx = r.wait(key, target, 1, None);
        let shorter = &target[..target.len() - 1];
        let longer = format!("{target}x");
        for other in ["", shorter, longer.as_str(), &target.to_uppercase()] {
            assert!(
                !r.resolve(&key, ReplyFrom::Target(other), m.clone()),
                "{other:?}"
            );
        }
        assert!(r.resolve(&key, ReplyFrom::Target(target), m.clone()));
        assert_eq!(rx.await.unwrap(), m);
    }
    // a timeout names the target
    let now = Instant::now();
    let after = Duration::from_secs(3);
    let rx = r.wait(
        WaitKey::Reply(RequestId::new()),
        &long,
        1,
        Some(Expiry { at: now, after }),
    );
    r.expire(now);
    let m = rx.await.unwrap();
    assert_eq!(
        m.error_text(),
        Some(&*format!("no reply from {long} in 3s"))
    );
}

#[tokio::test]
async fn a_closed_link_fails_its_waiters_only() {
    let r: Router<Fake> = Router::default();
    let a = link(1, "server");
    r.insert(a.clone());
    let on_a = r.wait(WaitKey::Reply(RequestId::new()), "server", 1, None);
    let on_a2 = r.wait(WaitKey::StreamReply(RequestId::new()), "server", 1, None);
    let on_b = r.wait(WaitKey::Reply(RequestId::new()), "other", 2, None);
    r.remove(&a);
    for rx in [on_a, on_a2] {
        let m = rx.await.unwrap();
        assert_eq!(m.return_code(), ReturnCode::CommError);
        assert_eq!(m.error_text(), Some("connection to server lost"));
    }
    let r3 = WaitKey::Reply(RequestId::new());
    let forgotten = r.wait(r3, "other", 2, None);
    r.forget(&r3);
    assert!(forgotten.await.is_err(), "a forgotten waiter is dropped");
    r.fail_all("cell is shut down");
    let m = on_b.await.unwrap();
    assert_eq!(m.error_text(), Some("cell is shut down"));
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_times_out_only_waiters_past_their_expiry() {
    let r: Router<Fake> = Router::default();
    let now = Instant::now();
    let after = Duration::from_secs(5);
    let expiry = |at| Some(Expiry { at, after });
    let due = r.wait(
        WaitKey::Reply(RequestId::new()),
        "server",
        1,
        expiry(now + after),
    );
    let later_key = WaitKey::Reply(RequestId::new());
    let later = r.wait(later_key, "server", 1, expiry(now + after * 2));
    let own_timer_key = WaitKey::Reply(RequestId::new());
    let own_timer = r.wait(own_timer_key, "server", 1, None);
    r.expire(now + after - Duration::from_millis(1));
    r.expire(now + after);
    let m = due.await.unwrap();
    assert_eq!(m.return_code(), ReturnCode::Timeout);
    assert_eq!(m.error_text(), Some("no reply from server in 5s"));
    // the others still wait: a reply reaches them
    let reply = Message::new().with_header("x", 1);
    assert!(r.resolve(&later_key, ReplyFrom::Target("server"), reply.clone()));
    assert_eq!(later.await.unwrap(), reply);
    r.expire(now + after * 100);
    assert!(r.resolve(&own_timer_key, ReplyFrom::Anyone, reply.clone()));
    assert_eq!(own_timer.await.unwrap(), reply);
}

#[tokio::test]
async fn a_sweeper_that_stops_fails_the_waiters_relying_on_it() {
    let r: Router<Fake> = Router::default();
    assert!(!r.sweeping(), "none until one starts");
    r.start_sweeping();
    assert!(r.sweeping());
    let at = Instant::now() + Duration::from_secs(3600);
    let after = Duration::from_secs(3600);
    let swept = r.wait(
        WaitKey::Reply(RequestId::new()),
        "server",
        1,
        Some(Expiry { at, after }),
    );
    let own_key = WaitKey::Reply(RequestId::new());
    let own = r.wait(own_key, "server", 1, None);
    r.stop_sweeping("timer stopped");
    assert!(!r.sweeping());
    let m = swept.await.unwrap();
    assert_eq!(m.return_code(), ReturnCode::CommError);
    assert_eq!(m.error_text(), Some("timer stopped"));
    // one with a timer of its own is left alone
    let reply = Message::new();
    assert!(r.resolve(&own_key, ReplyFrom::Anyone, reply.clone()));
    assert_eq!(own.await.unwrap(), reply);
}
