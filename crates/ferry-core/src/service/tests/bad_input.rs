//! Bad input: hostile states, unknown or missing refs, bad receiver names, bad configs, objects
//! added where they may not be, and payloads dispatched in NVFlare's order — a clear refusal or
//! error, never a panic.

use super::*;

#[test]
fn bad_input_hostile_states_are_refused_or_get_a_producer_error_never_a_panic() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(10));
    let (rid, _) = h.obj(&tx, 10, 4);
    let o = Arc::new(ItemsObject::new(vec![Bytes::from_static(b"x"); 3], 2));
    let rid2 = h.svc.add_object(&tx, o, None, h.now).unwrap();
    let cases = [
        (rid.clone(), State::new().with("received_bytes", "ten")),
        (rid.clone(), State::new().with("received_bytes", -1i64)),
        (rid.clone(), State::new().with("received_bytes", 11u64)),
        (rid.clone(), State::new().with("received_bytes", u64::MAX)),
        (
            rid2.clone(),
            State::new().with("start", u64::MAX).with("count", 2u64),
        ),
        (rid2.clone(), State::new().with("start", 1u64)),
    ];
    // A state the object could not have produced is the request's fault: refused, nothing
    // recorded. One past the end is the object's `error` (as NVFlare's reference objects do).
    let invalid = [true, true, false, false, false, true];
    for (i, (r, s)) in cases.into_iter().enumerate() {
        let who = format!("site-{i}");
        let rep = h.pull(&who, &r, Some(s), true);
        if invalid[i] {
            assert_eq!(rep.rc, ReturnCode::InvalidRequest, "case {i}");
            assert_eq!(
                rep.refusal,
                Some(crate::Refusal::InvalidRequest),
                "case {i}"
            );
            assert!(!h.svc.acquired_receivers(&tx).contains(&who), "case {i}");
        } else {
            assert_eq!(status(&rep), ReplyStatus::Error, "case {i}");
        }
    }
}

#[test]
fn bad_input_unknown_ref_missing_ref_and_bad_receiver_are_invalid_requests() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    assert_eq!(
        h.pull("site-1", &RefId::new("Rnope"), None, false).rc,
        ReturnCode::InvalidRequest
    );
    assert_eq!(
        h.pull("bad fqcn", &rid, None, false).rc,
        ReturnCode::InvalidRequest
    );
    match h.svc.handle_payload("site-1", &[0x80], h.now) {
        Handled::Reply(r) => assert_eq!(r.rc, ReturnCode::InvalidRequest),
        Handled::Pull(_) => panic!("pulled without ref_id"),
    }
    match h.svc.handle_payload("site-1", &[0xff; 10], h.now) {
        Handled::Reply(r) => assert_eq!(r.rc, ReturnCode::InvalidRequest),
        Handled::Pull(_) => panic!("pulled garbage"),
    }
}

#[test]
fn bad_input_config_errors_are_clear() {
    let mut h = H::new();
    let bad = [
        TxConfig::new(Duration::ZERO),
        TxConfig::new(S).with_receiver_ids(Vec::<String>::new()),
        TxConfig::new(S)
            .with_receiver_ids(["a", "b"])
            .with_num_receivers(3),
        TxConfig::new(S).with_receiver_ids(["a b"]),
        TxConfig::new(S).with_num_receivers(2).with_min_receivers(3),
        TxConfig::new(S).with_min_receivers(0),
        TxConfig::new(S).with_idle_timeout(Duration::ZERO),
    ];
    for cfg in bad {
        assert!(h.svc.new_transaction(cfg, h.now).is_err());
    }
    // duplicate ids are deduplicated and derive num_receivers
    let tx = h.tx(TxConfig::new(S).with_receiver_ids(["a", "b", "a"]));
    assert_eq!(h.svc.transaction_info(&tx).unwrap().num_receivers, 2);
}

#[test]
fn bad_input_adding_to_a_finished_or_unknown_tx_and_duplicate_ref_ids_are_refused() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    let o = || Arc::new(BytesObject::new(vec![1u8], 1)) as Arc<dyn Downloadable>;
    assert_eq!(
        h.svc.add_object(&tx, o(), Some(rid.clone()), h.now),
        Err(Error::RefIdInUse(rid.clone()))
    );
    let _ = h.download("site-1", &rid, false);
    assert_eq!(
        h.svc.add_object(&tx, o(), None, h.now),
        Err(Error::TransactionNotLive(tx.clone()))
    );
    h.fire();
    assert_eq!(
        h.svc.add_object(&tx, o(), None, h.now),
        Err(Error::UnknownTransaction(tx.clone()))
    );
    // re-adding the finished rid in a new tx clears its tombstone
    let tx2 = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    assert_eq!(h.svc.tombstone_count(), 1);
    h.svc
        .add_object(&tx2, o(), Some(rid.clone()), h.now)
        .unwrap();
    assert_eq!(h.svc.tombstone_count(), 0);
}

#[test]
fn payload_dispatch_follows_nvflare_order() {
    let mut h = H::with(nvflare());
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    let pull = crate::message::encode(&PullRequest {
        ref_id: rid.clone(),
        state: None,
        confirm_capable: Some(true),
    });
    let Handled::Pull(t) = h.svc.handle_payload("site-1", &pull, h.now) else {
        panic!("a pull")
    };
    let p = t.produce();
    let r = h.svc.finish_pull(t, p, h.now);
    assert!(
        r.body.unwrap().ferry_plan.is_none(),
        "unplanned object: no ferry_plan key"
    );
    let cancel = crate::message::encode(&crate::message::CancelRequest::new(rid.clone()));
    assert!(
        matches!(h.svc.handle_payload("site-1", &cancel, h.now), Handled::Reply(r) if r == Reply::ack())
    );
    assert_eq!(
        h.svc.receiver_status(&rid, "site-1"),
        Some(DownloadStatus::Failed)
    );
}
