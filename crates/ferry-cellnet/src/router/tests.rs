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
    let rx = r.wait(key, "server", 1);
    let m = Message::new().with_header("x", 1);
    assert!(!r.resolve(&key, ReplyFrom::Target("site-2"), m.clone()));
    // the same id in the other namespace is another waiter
    assert!(!r.resolve(&WaitKey::StreamReply(id), ReplyFrom::Anyone, m.clone()));
    assert!(r.resolve(&key, ReplyFrom::Target("server"), m.clone()));
    assert_eq!(rx.await.unwrap(), m);
    // answered once
    assert!(!r.resolve(&key, ReplyFrom::Anyone, m));
}

#[tokio::test]
async fn a_closed_link_fails_its_waiters_only() {
    let r: Router<Fake> = Router::default();
    let a = link(1, "server");
    r.insert(a.clone());
    let on_a = r.wait(WaitKey::Reply(RequestId::new()), "server", 1);
    let on_a2 = r.wait(WaitKey::StreamReply(RequestId::new()), "server", 1);
    let on_b = r.wait(WaitKey::Reply(RequestId::new()), "other", 2);
    r.remove(&a);
    for rx in [on_a, on_a2] {
        let m = rx.await.unwrap();
        assert_eq!(m.return_code(), ReturnCode::CommError);
        assert_eq!(m.error_text(), Some("connection to server lost"));
    }
    let r3 = WaitKey::Reply(RequestId::new());
    let forgotten = r.wait(r3, "other", 2);
    r.forget(&r3);
    assert!(forgotten.await.is_err(), "a forgotten waiter is dropped");
    r.fail_all("cell is shut down");
    let m = on_b.await.unwrap();
    assert_eq!(m.error_text(), Some("cell is shut down"));
}
