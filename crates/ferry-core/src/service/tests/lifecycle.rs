//! How transactions end and what they leave (§3.3, §3.6): tombstones for final receivers of a
//! finished transaction only, none after a timeout or delete, shutdown settling everything as
//! deleted, finished beating expired in one pass, capped tombstones and outcome receipts, and a
//! transaction id used once while it is known.

use super::*;

#[test]
fn s3_3_finished_tx_leaves_tombstones_for_its_final_receivers_only() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    let _ = h.download("site-1", &rid, false);
    h.fire();
    assert_eq!(h.done_events().len(), 1);
    assert_eq!(h.svc.tombstone_count(), 1);
    let r = h.pull(
        "site-1",
        &rid,
        Some(State::new().with("received_bytes", 4u64)),
        true,
    );
    assert_eq!(
        r,
        Reply::ok(ReplyBody::terminal(ReplyStatus::Eof)),
        "replay, no confirm_expected"
    );
    assert_eq!(
        h.pull("site-2", &rid, None, false).rc,
        ReturnCode::InvalidRequest
    );
    // the TTL is a hard bound: retries do not extend it
    h.now = h.t0 + 1800 * S;
    assert_eq!(h.pull("site-1", &rid, None, false).rc, ReturnCode::Ok);
    assert_eq!(h.svc.poll_timeout(), Some(h.t0 + 1800 * S + NS));
    h.now += NS;
    assert_eq!(
        h.pull("site-1", &rid, None, false).rc,
        ReturnCode::InvalidRequest
    );
}

#[test]
fn s3_3_timeout_and_delete_leave_no_tombstones() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(2));
    let (rid, _) = h.obj(&tx, 4, 4);
    let _ = h.download("site-1", &rid, false);
    h.now += 11 * S;
    h.fire();
    assert_eq!(h.done_events()[0].done_status, DoneStatus::Timeout);
    assert_eq!(
        h.pull("site-1", &rid, None, false).rc,
        ReturnCode::InvalidRequest
    );
    let tx2 = h.tx(TxConfig::new(10 * S).with_num_receivers(2));
    let (rid2, _) = h.obj(&tx2, 4, 4);
    let _ = h.download("site-1", &rid2, false);
    h.svc.delete_transaction(&tx2, h.now).unwrap();
    let o = h.done_events();
    assert_eq!(
        (o[0].done_status, o[0].status),
        (DoneStatus::Deleted, OutcomeStatus::Aborted)
    );
    assert_eq!(
        h.pull("site-1", &rid2, None, false).rc,
        ReturnCode::InvalidRequest
    );
    assert_eq!(h.svc.tombstone_count(), 0);
    assert!(
        h.svc.outcome(&tx2, h.now).is_some(),
        "delete records its outcome"
    );
}

#[test]
fn s3_3_shutdown_settles_everything_as_deleted_without_recording() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, obj) = h.obj(&tx, 4, 4);
    h.svc.shutdown(h.now);
    let ev = h.events();
    assert!(
        matches!(&ev[..], [ServiceEvent::TransactionDone { outcome, recorded: false }]
        if outcome.done_status == DoneStatus::Deleted)
    );
    assert!(obj.probe.released());
    assert_eq!(
        h.pull("site-1", &rid, None, false).rc,
        ReturnCode::ServiceUnavailable
    );
    assert_eq!(
        h.svc.new_transaction(TxConfig::new(S), h.now),
        Err(Error::ShutDown)
    );
    assert!(h.svc.outcome(&tx, h.now).is_none());
}

#[test]
fn s3_3_finished_beats_expired_in_the_same_pass() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S)
        .with_receiver_ids(["site-1", "site-2"])
        .with_acquire_timeout(10 * S));
    let (rid, _) = h.obj(&tx, 4, 4);
    let _ = h.download("site-1", &rid, false);
    // at t0+10s+1ns both the tx TTL and site-2's acquire budget are due
    h.now = h.t0 + 10 * S + NS;
    h.fire();
    let o = h.done_events();
    assert_eq!(o[0].done_status, DoneStatus::Finished);
}

#[test]
fn tombstones_and_outcomes_are_capped_oldest_first() {
    let mut h = H::with(ServiceConfig {
        max_tombstones: 3,
        max_outcomes: 2,
        ..ServiceConfig::default()
    });
    let mut rids = Vec::new();
    let mut txs = Vec::new();
    for i in 0..5 {
        let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
        let (rid, _) = h.obj(&tx, 1, 1);
        let _ = h.download("site-1", &rid, false);
        h.now += S;
        h.fire();
        rids.push(rid);
        txs.push(tx);
        assert!(
            h.svc.tombstone_count() <= 3 && h.svc.outcome_count() <= 2,
            "round {i}"
        );
    }
    assert_eq!(
        h.pull("site-1", &rids[0], None, false).rc,
        ReturnCode::InvalidRequest
    );
    assert_eq!(h.pull("site-1", &rids[4], None, false).rc, ReturnCode::Ok);
    assert!(h.svc.outcome(&txs[0], h.now).is_none());
    assert!(h.svc.outcome(&txs[4], h.now).is_some());
}

#[test]
fn s3_6_tx_id_is_single_use_while_known() {
    let mut h = H::new();
    let id = TxId::new("Tmine");
    h.tx(TxConfig::new(10 * S).with_tx_id(id.clone()));
    let dup = h
        .svc
        .new_transaction(TxConfig::new(S).with_tx_id(id.clone()), h.now);
    assert_eq!(dup, Err(Error::TxIdInUse(id.clone())), "live");
    h.svc.delete_transaction(&id, h.now).unwrap();
    let settling = h
        .svc
        .new_transaction(TxConfig::new(S).with_tx_id(id.clone()), h.now);
    assert_eq!(
        settling,
        Err(Error::TxNotTerminated(id.clone())),
        "settled, its hooks and outcome not yet delivered"
    );
    h.pump();
    let again = h
        .svc
        .new_transaction(TxConfig::new(S).with_tx_id(id.clone()), h.now);
    assert_eq!(again, Err(Error::TxIdInUse(id.clone())), "receipted");
    h.now += 1800 * S;
    assert!(h
        .svc
        .new_transaction(TxConfig::new(S).with_tx_id(id.clone()), h.now)
        .is_err());
    h.now += NS;
    assert!(
        h.svc
            .new_transaction(TxConfig::new(S).with_tx_id(id.clone()), h.now)
            .is_ok(),
        "expiry checked inline"
    );
}

#[test]
fn s3_6_settlement_callback_sees_original_objects() {
    let mut h = H::new();
    let seen = Arc::new(Mutex::new(0usize));
    let s2 = seen.clone();
    let tx = h.tx(TxConfig::new(S).on_done(move |_, _, objs| *s2.lock().unwrap() = objs.len()));
    h.obj(&tx, 1, 1);
    h.now += 2 * S;
    h.fire();
    assert_eq!(*seen.lock().unwrap(), 1);
}
