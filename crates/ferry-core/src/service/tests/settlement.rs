//! The settlement ceremony (§3.4): NVFlare's order of hooks and callbacks, a panicking
//! callback not skipping the rest, the activity gate (in-flight pulls, abandoned tickets, the
//! drain deadline) and exactly one `TransactionDone` per transaction.

use super::*;

#[test]
fn s3_4_settlement_runs_in_nvflare_order() {
    let mut h = H::new();
    let log = HookLog::new();
    let (l1, l2) = (log.clone(), log.clone());
    let tx = h.tx(TxConfig::new(10 * S)
        .with_num_receivers(1)
        .on_done(move |_, st, objs| l1.push(format!("done_cb:{}:{}", st.as_str(), objs.len())))
        .on_outcome(move |o| l2.push(format!("outcome_cb:{}", o.status.as_str()))));
    let a = Arc::new(BytesObject::unplanned(vec![1u8; 4], 4));
    let b = Arc::new(BytesObject::unplanned(vec![2u8; 4], 4));
    let ra = h.svc.add_object(&tx, a.clone(), None, h.now).unwrap();
    let rb = h.svc.add_object(&tx, b.clone(), None, h.now).unwrap();
    let _ = h.download("site-1", &ra, false);
    let _ = h.download("site-1", &rb, false);
    h.fire();
    let ev = h.events();
    assert!(matches!(
        ev.last(),
        Some(ServiceEvent::TransactionDone { recorded: true, .. })
    ));
    let hooks = |o: &BytesObject| -> Vec<String> {
        o.probe
            .log
            .entries()
            .into_iter()
            .filter(|e| e.starts_with("transaction_done") || e == "release")
            .collect()
    };
    assert_eq!(hooks(&a), vec!["transaction_done:finished", "release"]);
    assert_eq!(hooks(&b), vec!["transaction_done:finished", "release"]);
    assert_eq!(
        log.entries(),
        vec!["done_cb:finished:2", "outcome_cb:completed"]
    );
    assert!(h.svc.outcome(&tx, h.now).is_some());
}

/// An object whose hooks append to a shared log, to see the global order.
struct Ordered(HookLog, &'static str);
impl Downloadable for Ordered {
    fn produce(&self, _: Option<&State>, _: &str) -> Result<Produced, ProduceError> {
        Ok(Produced::Eof)
    }
    fn transaction_done(&self, _: &TxId, _: DoneStatus) {
        self.0.push(format!("{}.transaction_done", self.1));
    }
    fn release(&self) {
        self.0.push(format!("{}.release", self.1));
    }
}

#[test]
fn s3_4_global_order_is_obj_done_then_done_cb_then_outcome_cb_then_release() {
    let mut h = H::new();
    let log = HookLog::new();
    let (l1, l2) = (log.clone(), log.clone());
    let tx = h.tx(TxConfig::new(10 * S)
        .with_num_receivers(1)
        .on_done(move |_, _, _| l1.push("done_cb"))
        .on_outcome(move |_| l2.push("outcome_cb")));
    for name in ["a", "b"] {
        h.svc
            .add_object(&tx, Arc::new(Ordered(log.clone(), name)), None, h.now)
            .unwrap();
    }
    h.svc.delete_transaction(&tx, h.now).unwrap();
    // Queued in order, run by the driver outside the engine.
    assert!(log.entries().is_empty(), "nothing runs inside the engine");
    h.pump();
    assert_eq!(
        log.entries(),
        vec![
            "a.transaction_done",
            "b.transaction_done",
            "done_cb",
            "outcome_cb",
            "a.release",
            "b.release"
        ]
    );
    assert_eq!(h.done_events().len(), 1, "event after the ceremony");
}

#[test]
fn s3_4_a_panicking_callback_does_not_skip_the_rest() {
    let mut h = H::new();
    let log = HookLog::new();
    let l2 = log.clone();
    let tx = h.tx(TxConfig::new(10 * S)
        .on_done(|_, _, _| panic!("user bug"))
        .on_outcome(move |_| l2.push("outcome_cb")));
    h.svc
        .add_object(&tx, Arc::new(Ordered(log.clone(), "a")), None, h.now)
        .unwrap();
    h.svc.delete_transaction(&tx, h.now).unwrap();
    h.pump();
    assert_eq!(
        log.entries(),
        vec!["a.transaction_done", "outcome_cb", "a.release"]
    );
    assert_eq!(h.done_events().len(), 1);
}

#[test]
fn s3_4_settlement_waits_for_in_flight_pulls_and_no_pull_starts_after_release() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, obj) = h.obj(&tx, 8, 4);
    let req = |s: Option<State>| PullRequest {
        ref_id: rid.clone(),
        state: s,
        confirm_capable: None,
    };
    let t = h.svc.begin_pull("site-1", req(None), h.now).unwrap();
    h.svc.delete_transaction(&tx, h.now).unwrap();
    assert!(h.done_events().is_empty(), "gate: a pull is in flight");
    assert!(!obj.probe.released());
    // the gate is closed: no new pull starts
    assert_eq!(
        h.svc.begin_pull("site-1", req(None), h.now).unwrap_err().rc,
        ReturnCode::InvalidRequest
    );
    let p = t.produce();
    let r = h.svc.finish_pull(t, p, h.now);
    assert_eq!(r.rc, ReturnCode::Ok, "the in-flight pull is still answered");
    assert_eq!(h.svc.poll_timeout(), Some(h.now));
    h.fire();
    assert_eq!(h.done_events().len(), 1);
    assert!(obj.probe.released());
    assert!(h.svc.begin_pull("site-1", req(None), h.now).is_err());
    assert_eq!(obj.probe.produced_after_release(), 0);
}

#[test]
fn s3_4_drain_deadline_settles_anyway_and_blocks_tx_id_reuse_until_the_ticket_returns() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S)
        .with_tx_id("Tfixed")
        .with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 8, 4);
    let t = h
        .svc
        .begin_pull(
            "site-1",
            PullRequest {
                ref_id: rid,
                state: None,
                confirm_capable: None,
            },
            h.now,
        )
        .unwrap();
    h.svc.delete_transaction(&tx, h.now).unwrap();
    assert_eq!(h.svc.poll_timeout(), Some(h.now + 60 * S + NS));
    h.now += 60 * S + NS;
    h.fire();
    assert_eq!(h.done_events().len(), 1);
    h.now += 1801 * S;
    h.fire(); // outcome receipt expired
    assert_eq!(
        h.svc
            .new_transaction(TxConfig::new(S).with_tx_id("Tfixed"), h.now),
        Err(Error::TxNotTerminated(TxId::new("Tfixed")))
    );
    let p = t.produce();
    assert_eq!(
        h.svc.finish_pull(t, p, h.now).rc,
        ReturnCode::InvalidRequest
    );
    assert!(h
        .svc
        .new_transaction(TxConfig::new(S).with_tx_id("Tfixed"), h.now)
        .is_ok());
}

#[test]
fn an_abandoned_ticket_releases_the_gate_without_recording_anything() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, obj) = h.obj(&tx, 4, 4);
    let req = PullRequest {
        ref_id: rid.clone(),
        state: Some(State::new().with("received_bytes", 4u64)),
        confirm_capable: None,
    };
    let t = h.svc.begin_pull("site-1", req, h.now).unwrap();
    assert_eq!(h.svc.tickets_in_flight(), 1);
    h.svc.delete_transaction(&tx, h.now).unwrap();
    assert!(!obj.probe.released());
    let r = h.svc.abandon_pull(t, h.now);
    assert_eq!(r.rc, ReturnCode::ProcessException);
    assert_eq!(h.svc.tickets_in_flight(), 0);
    h.fire();
    let o = h.done_events();
    assert_eq!(o.len(), 1);
    assert!(o[0].refs[0].1.is_empty(), "nothing recorded");
    assert!(obj.probe.released());
    assert_eq!(obj.probe.produce_calls(), 0);
}

#[test]
fn exactly_one_transaction_done_event_even_when_several_triggers_coincide() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    let _ = h.download("site-1", &rid, false);
    h.now += 5 * S;
    h.fire();
    h.fire();
    assert!(h.svc.delete_transaction(&tx, h.now).is_err());
    assert_eq!(h.done_events().len(), 1);
}
