//! Who counts towards completion (§3.2): count mode counts any receivers' final statuses,
//! identity mode only the expected ones (and refuses others by default), and an unknown
//! receiver count never finishes a transaction.

use super::*;

#[test]
fn s3_2_count_mode_counts_any_receivers_final_statuses() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(2));
    let (rid, obj) = h.obj(&tx, 4, 4);
    let _ = h.download("x", &rid, false);
    assert_eq!(obj.probe.log.count("downloaded_to_all"), 0);
    let _ = h.download("y", &rid, false);
    assert_eq!(obj.probe.log.count("downloaded_to_all"), 1);
    h.fire();
    assert_eq!(h.done_events()[0].done_status, DoneStatus::Finished);
}

#[test]
fn s3_2_identity_mode_ignores_unexpected_receivers() {
    // NVFlare's behaviour: served, not counted.
    let mut h = H::with(ServiceConfig {
        refuse_undeclared: false,
        ..ServiceConfig::default()
    });
    let tx = h.tx(TxConfig::new(10 * S).with_receiver_ids(["site-1"]));
    let (rid, obj) = h.obj(&tx, 4, 4);
    let _ = h.download("intruder", &rid, false);
    h.fire();
    assert_eq!(obj.probe.log.count("downloaded_to_all"), 0);
    assert!(h.done_events().is_empty());
    let _ = h.download("site-1", &rid, false);
    h.fire();
    let o = h.done_events();
    assert!(o[0].completed());
}

#[test]
fn identity_mode_refuses_undeclared_receivers_by_default() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_receiver_ids(["site-1"]));
    let (rid, _obj) = h.obj(&tx, 4, 4);
    let err = h.pull("intruder", &rid, None, false);
    assert_eq!(err.rc, ReturnCode::InvalidRequest);
    assert!(
        h.svc.acquired_receivers(&tx).is_empty(),
        "no activity recorded"
    );
    let _ = h.download("site-1", &rid, false);
    h.fire();
    assert!(h.done_events()[0].completed());
}

#[test]
fn s3_2_unknown_receiver_count_never_finishes() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S));
    let (rid, obj) = h.obj(&tx, 4, 4);
    let _ = h.download("a", &rid, false);
    h.fire();
    assert!(h.done_events().is_empty());
    assert_eq!(obj.probe.log.count("downloaded_to_all"), 0);
    h.now += 11 * S;
    h.fire();
    let o = h.done_events();
    assert_eq!(
        (o[0].done_status, o[0].status),
        (DoneStatus::Timeout, OutcomeStatus::Failed)
    );
}
