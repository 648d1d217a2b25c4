//! What a pull does (NVFlare's rules R1–R5): every pull marks the transaction, the receiver
//! and the ref active; a data serve changes no status; a terminal serve is final for a receiver
//! that does not confirm (first final status wins) and provisional with a fresh nonce for one
//! that does; a failing `produce` changes no status. Plus: the plan rides only on the first
//! data reply.

use super::*;

#[test]
fn r1_every_pull_marks_tx_receiver_and_ref_active() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S)
        .with_num_receivers(1)
        .with_progress(30 * S));
    let (rid, _) = h.obj(&tx, 10, 4);
    h.at(8);
    let _ = h.pull("site-1", &rid, None, false);
    assert_eq!(h.svc.acquired_receivers(&tx), vec!["site-1".to_string()]);
    assert_eq!(
        h.svc.poll_timeout(),
        Some(h.now + 10 * S + NS),
        "expiry moved to pull time"
    );
    let ev = h.events();
    // NVFlare numbers a receiver's progress events from 1.
    assert!(matches!(&ev[0], ServiceEvent::Progress(p)
        if p.state == ProgressState::Active && p.bytes_done == 0 && p.sequence == 1));
}

#[test]
fn r2_data_serve_changes_no_status() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 10, 4);
    let r = h.pull("site-1", &rid, None, true);
    assert_eq!(status(&r), ReplyStatus::Ok);
    assert_eq!(r.body.as_ref().unwrap().cancel_capable, Some(true));
    assert_eq!(h.svc.receiver_status(&rid, "site-1"), None);
    assert!(h.svc.pending_confirms(&tx).is_empty());
    assert!(h.events().is_empty());
}

#[test]
fn r3_legacy_terminal_serve_is_final_and_first_final_wins() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(2));
    let (rid, obj) = h.obj(&tx, 10, 4);
    let r = h.download("site-1", &rid, false);
    assert_eq!(
        r.body,
        Some(ReplyBody::terminal(ReplyStatus::Eof)),
        "no confirm_expected"
    );
    assert_eq!(
        h.svc.receiver_status(&rid, "site-1"),
        Some(DownloadStatus::Success)
    );
    // A retried EOF and a hostile state that now errors: both ignored, no second callback.
    let _ = h.pull(
        "site-1",
        &rid,
        Some(State::new().with("received_bytes", 10u64)),
        false,
    );
    let _ = h.pull(
        "site-1",
        &rid,
        Some(State::new().with("received_bytes", 99u64)),
        false,
    );
    assert_eq!(
        h.svc.receiver_status(&rid, "site-1"),
        Some(DownloadStatus::Success)
    );
    assert_eq!(obj.probe.log.count("downloaded_to_one"), 1);
    // error → FAILED
    let r = h.pull(
        "site-2",
        &rid,
        Some(State::new().with("received_bytes", 99u64)),
        false,
    );
    assert_eq!(status(&r), ReplyStatus::Error);
    assert_eq!(
        h.svc.receiver_status(&rid, "site-2"),
        Some(DownloadStatus::Failed)
    );
    assert_eq!(obj.probe.log.count("downloaded_to_all"), 1);
    // The tx is finished but not settled from the request: settlement is the next timer.
    assert!(h.done_events().is_empty());
    assert_eq!(h.svc.poll_timeout(), Some(h.now));
    h.fire();
    let o = h.done_events();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].done_status, DoneStatus::Finished);
    assert_eq!(o[0].reason, crate::outcome::reason::RECEIVER_FAILED);
}

#[test]
fn r4_confirm_capable_terminal_serve_is_provisional_with_a_fresh_nonce() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    let r1 = h.download("site-1", &rid, true);
    let b = r1.body.clone().unwrap();
    assert_eq!(
        (b.status, b.confirm_expected),
        (ReplyStatus::Eof, Some(true))
    );
    assert_eq!(nonce(&r1).len(), 32);
    assert_eq!(h.svc.receiver_status(&rid, "site-1"), None, "not final yet");
    assert_eq!(h.svc.pending_confirms(&tx).len(), 1);
    // a retried EOF replaces the provisional record with a new nonce
    let r2 = h.pull(
        "site-1",
        &rid,
        Some(State::new().with("received_bytes", 4u64)),
        true,
    );
    assert_ne!(nonce(&r1), nonce(&r2));
    h.confirm("site-1", &rid, DownloadStatus::Success, &nonce(&r1));
    assert_eq!(
        h.svc.receiver_status(&rid, "site-1"),
        None,
        "old nonce is stale"
    );
    h.confirm("site-1", &rid, DownloadStatus::Success, &nonce(&r2));
    assert_eq!(
        h.svc.receiver_status(&rid, "site-1"),
        Some(DownloadStatus::Success)
    );
}

#[test]
fn r4_terminal_serve_to_an_already_final_receiver_has_no_confirm_expected() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(2));
    let (rid, _) = h.obj(&tx, 4, 4);
    let r = h.download("site-1", &rid, true);
    h.confirm("site-1", &rid, DownloadStatus::Success, &nonce(&r));
    let r = h.pull(
        "site-1",
        &rid,
        Some(State::new().with("received_bytes", 4u64)),
        true,
    );
    assert_eq!(r.body, Some(ReplyBody::terminal(ReplyStatus::Eof)));
}

#[test]
fn r4_confirm_switch_off_makes_serves_legacy() {
    let mut h = H::with(ServiceConfig {
        confirm_enabled: false,
        ..ServiceConfig::default()
    });
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    let r = h.download("site-1", &rid, true);
    assert_eq!(r.body, Some(ReplyBody::terminal(ReplyStatus::Eof)));
    assert_eq!(
        h.svc.receiver_status(&rid, "site-1"),
        Some(DownloadStatus::Success)
    );
}

struct Failing;
impl Downloadable for Failing {
    fn produce(&self, _: Option<&State>, _: &str) -> Result<Produced, ProduceError> {
        Err(ProduceError("disk gone".into()))
    }
}

#[test]
fn r5_produce_failure_changes_no_status_and_replies_process_exception() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1).with_progress(S));
    let rid = h
        .svc
        .add_object(&tx, Arc::new(Failing), None, h.now)
        .unwrap();
    let r = h.pull("site-1", &rid, None, true);
    assert_eq!(r.rc, ReturnCode::ProcessException);
    assert!(r.body.is_none());
    assert_eq!(h.svc.receiver_status(&rid, "site-1"), None);
    let states: Vec<_> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ServiceEvent::Progress(p) => Some(p.state),
            _ => None,
        })
        .collect();
    assert_eq!(states, vec![ProgressState::Active, ProgressState::Failed]);
}

#[test]
fn ferry_plan_is_sent_only_on_the_first_data_reply() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let o = Arc::new(ItemsObject::new(vec![Bytes::from_static(b"ab"); 5], 2));
    let rid = h.svc.add_object(&tx, o, None, h.now).unwrap();
    let r = h.pull("site-1", &rid, None, false);
    let b = r.body.unwrap();
    let plan = b.ferry_plan.unwrap().to_plan().unwrap();
    assert_eq!(plan.chunk_count(), 3);
    let r = h.pull("site-1", &rid, b.state, false);
    assert!(r.body.unwrap().ferry_plan.is_none());
}
