//! Budgets, timeouts and progress (R8–R10): the acquire and idle budgets fail receivers that
//! never pulled or fell silent (a receiver waiting on its own pull is not silent); a
//! transaction timeout writes no per-receiver status; terminal progress is latched and forced
//! at settlement for receivers that started.

use super::*;

#[test]
fn r8_acquire_budget_fails_a_declared_receiver_that_never_pulled() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(100 * S)
        .with_receiver_ids(["site-1", "site-2"])
        .with_acquire_timeout(5 * S));
    let (rid, _) = h.obj(&tx, 4, 4);
    let _ = h.download("site-1", &rid, false);
    assert_eq!(h.svc.poll_timeout(), Some(h.t0 + 5 * S + NS));
    h.now = h.t0 + 5 * S;
    h.fire();
    assert_eq!(h.svc.receiver_status(&rid, "site-2"), None, "strict >");
    h.now += NS;
    h.fire();
    // the budget failure made the tx finished in the same pass (not at TTL)
    let o = h.done_events();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].done_status, DoneStatus::Finished);
    assert_eq!(o[0].refs[0].1.get("site-2"), Some(&DownloadStatus::Failed));
}

#[test]
fn r8_idle_budget_fails_a_silent_receiver_and_a_late_confirm_is_rejected() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(100 * S)
        .with_num_receivers(2)
        .with_idle_timeout(5 * S));
    let (rid, _) = h.obj(&tx, 4, 4);
    let r = h.download("site-1", &rid, true);
    h.at(3);
    let _ = h.pull("site-2", &rid, None, false);
    h.now = h.t0 + 5 * S + NS;
    h.fire();
    assert_eq!(
        h.svc.receiver_status(&rid, "site-1"),
        Some(DownloadStatus::Failed)
    );
    assert!(
        h.svc.pending_confirms(&tx).is_empty(),
        "provisional record popped"
    );
    assert_eq!(
        h.svc.receiver_status(&rid, "site-2"),
        None,
        "site-2 is not idle yet"
    );
    h.confirm("site-1", &rid, DownloadStatus::Success, &nonce(&r));
    assert_eq!(
        h.svc.receiver_status(&rid, "site-1"),
        Some(DownloadStatus::Failed)
    );
    assert_eq!(h.svc.poll_timeout(), Some(h.t0 + 8 * S + NS));
}

#[test]
fn a_receiver_waiting_for_its_pull_is_not_idle() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(100 * S)
        .with_num_receivers(1)
        .with_idle_timeout(5 * S));
    let (rid, _obj) = h.obj(&tx, 4, 4);
    let req = PullRequest {
        ref_id: rid.clone(),
        state: None,
        confirm_capable: None,
    };
    let t = h.now;
    let ticket = h.svc.begin_pull("site-1", req, t).unwrap();
    // The sender takes 20 s to produce (e.g. waiting for its byte budget).
    h.now += 20 * S;
    h.fire();
    assert!(h.done_events().is_empty(), "not failed while being served");
    let result = ticket.produce();
    let now = h.now;
    let reply = h.svc.finish_pull(ticket, result, now);
    assert_eq!(reply.rc, ReturnCode::Ok);
    // The idle clock restarts at the answer: 5 s later (strictly) it fires.
    h.now += 5 * S;
    h.fire();
    assert!(h.done_events().is_empty());
    h.now += S;
    h.fire();
    h.fire();
    let o = h.done_events();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].reason, "receiver_failed", "{:?}", o[0]);
}

#[test]
fn r9_timeout_writes_no_status_for_provisional_or_unseen_receivers() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_receiver_ids(["site-1", "site-2"]));
    let (rid, _) = h.obj(&tx, 4, 4);
    let _ = h.download("site-1", &rid, true);
    h.now = h.t0 + 10 * S;
    h.fire();
    assert!(h.done_events().is_empty(), "strict >: not yet");
    h.now += NS;
    h.fire();
    let o = h.done_events();
    assert_eq!(
        (o[0].done_status, o[0].status),
        (DoneStatus::Timeout, OutcomeStatus::Failed)
    );
    assert!(o[0].refs[0].1.is_empty(), "fail-closed: no entries");
}

#[test]
fn r10_progress_terminal_is_latched_and_settlement_forces_it_for_started_receivers() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S)
        .with_num_receivers(2)
        .with_progress(Duration::ZERO));
    let (rid, _) = h.obj(&tx, 8, 4);
    let _ = h.download("site-1", &rid, false); // completed (latched)
    let _ = h.pull("site-2", &rid, None, false); // active only
    let _ = h.pull("site-1", &rid, None, false); // after terminal: nothing
    h.svc.delete_transaction(&tx, h.now).unwrap();
    let prog: Vec<(String, ProgressState, u64)> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ServiceEvent::Progress(p) => Some((p.receiver.unwrap(), p.state, p.sequence)),
            _ => None,
        })
        .collect();
    let s1: Vec<_> = prog
        .iter()
        .filter(|p| p.0 == "site-1")
        .map(|p| p.1)
        .collect();
    let s2: Vec<_> = prog
        .iter()
        .filter(|p| p.0 == "site-2")
        .map(|p| p.1)
        .collect();
    assert_eq!(
        s1,
        vec![
            ProgressState::Active,
            ProgressState::Active,
            ProgressState::Active,
            ProgressState::Completed
        ]
    );
    assert_eq!(
        s2,
        vec![
            ProgressState::Active,
            ProgressState::Active,
            ProgressState::Aborted
        ]
    );
}
