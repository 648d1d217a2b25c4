//! One test per rule of download-semantics §3 (R1–R10, §3.2–§3.6), on virtual time, plus the
//! bad-input cases. Names follow the rule they pin.

use super::*;
use crate::message::{DownloadRequest, PullRequest, Reply, ReplyBody, ReplyStatus};
use crate::progress::ProgressState;
use crate::testing::{BytesObject, HookLog, ItemsObject};
use crate::OutcomeStatus;
use crate::{
    DoneStatus, Downloadable, Error, ProduceError, Produced, ReturnCode, State, TransferOutcome,
};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

pub(super) const S: Duration = Duration::from_secs(1);
pub(super) const NS: Duration = Duration::from_nanos(1);

/// A driver on virtual time: after each engine call it runs the queued hooks and collects the
/// events, as the glue does (outside the engine).
pub(super) struct H {
    pub(super) svc: Service,
    pub(super) t0: Instant,
    pub(super) now: Instant,
    /// Events delivered and not yet taken by a test.
    ev: Vec<ServiceEvent>,
}

/// NVFlare's exact receiver rules: no count-mode places, first final status wins for FAILED
/// too, undeclared receivers served but not counted.
pub(super) fn nvflare() -> ServiceConfig {
    ServiceConfig {
        refuse_undeclared: false,
        count_slots: false,
        reopen_failed: false,
        ..ServiceConfig::default()
    }
}

impl H {
    pub(super) fn new() -> Self {
        Self::with(ServiceConfig::default())
    }

    pub(super) fn with(cfg: ServiceConfig) -> Self {
        let t0 = Instant::now();
        Self {
            svc: Service::new(cfg),
            t0,
            now: t0,
            ev: Vec::new(),
        }
    }

    pub(super) fn at(&mut self, secs: u64) {
        self.now = self.t0 + S * secs as u32;
    }

    /// Run the hooks and collect the events queued so far.
    pub(super) fn pump(&mut self) {
        while let Some(out) = self.svc.poll_output() {
            match out {
                ServiceOutput::Hook(h) => h.run(),
                ServiceOutput::Event(e) => self.ev.push(e),
            }
        }
    }

    pub(super) fn tx(&mut self, cfg: TxConfig) -> TxId {
        let id = self.svc.new_transaction(cfg, self.now).unwrap();
        self.pump();
        id
    }

    pub(super) fn obj(&mut self, tx: &TxId, len: usize, chunk: usize) -> (RefId, Arc<BytesObject>) {
        let o = Arc::new(BytesObject::unplanned(vec![7u8; len], chunk));
        let rid = self.svc.add_object(tx, o.clone(), None, self.now).unwrap();
        self.pump();
        (rid, o)
    }

    pub(super) fn pull(&mut self, rcv: &str, rid: &RefId, state: Option<State>, cc: bool) -> Reply {
        let req = PullRequest {
            ref_id: rid.clone(),
            state,
            confirm_capable: cc.then_some(true),
        };
        let r = match self.svc.begin_pull(rcv, req, self.now) {
            Err(r) => r,
            Ok(t) => {
                let p = t.produce();
                self.svc.finish_pull(t, p, self.now)
            }
        };
        self.pump();
        r
    }

    /// Pull until a terminal reply (stop-and-wait, state echoed).
    pub(super) fn download(&mut self, rcv: &str, rid: &RefId, cc: bool) -> Reply {
        let mut state = None;
        loop {
            let r = self.pull(rcv, rid, state.take(), cc);
            match &r.body {
                Some(b) if b.status == ReplyStatus::Ok => state = b.state.clone(),
                _ => return r,
            }
        }
    }

    pub(super) fn confirm(&mut self, rcv: &str, rid: &RefId, st: DownloadStatus, nonce: &str) {
        let r = self.svc.confirm(rcv, rid, Some(st), Some(nonce), self.now);
        assert_eq!(r, Reply::ack());
        self.pump();
    }

    pub(super) fn cancel(&mut self, rcv: &str, rid: &RefId) {
        assert_eq!(self.svc.cancel(rcv, rid, self.now), Reply::ack());
        self.pump();
    }

    pub(super) fn fire(&mut self) {
        self.svc.handle_timeout(self.now);
        self.pump();
    }

    pub(super) fn events(&mut self) -> Vec<ServiceEvent> {
        self.pump();
        std::mem::take(&mut self.ev)
    }

    pub(super) fn done_events(&mut self) -> Vec<TransferOutcome> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                ServiceEvent::TransactionDone { outcome, .. } => Some(outcome),
                _ => None,
            })
            .collect()
    }
}

pub(super) fn nonce(r: &Reply) -> String {
    r.body.as_ref().unwrap().confirm_nonce.clone().unwrap()
}

pub(super) fn status(r: &Reply) -> ReplyStatus {
    r.body.as_ref().unwrap().status
}

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
fn r6_confirm_with_wrong_nonce_is_ignored() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    let _ = h.download("site-1", &rid, true);
    h.confirm("site-1", &rid, DownloadStatus::Success, "0000");
    assert_eq!(h.svc.receiver_status(&rid, "site-1"), None);
    // an unsolicited confirm from someone who was never served is ignored too
    h.confirm("site-2", &rid, DownloadStatus::Success, "0000");
    assert_eq!(h.svc.receiver_status(&rid, "site-2"), None);
    // and a confirm with an invalid status
    let r = h.svc.confirm("site-1", &rid, None, Some("0000"), h.now);
    assert_eq!(r, Reply::ack());
}

#[test]
fn r6_replayed_confirm_is_ignored_and_receiver_truth_wins() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(2));
    let (rid, obj) = h.obj(&tx, 4, 4);
    let r = h.download("site-1", &rid, true);
    let n = nonce(&r);
    // served EOF, but the receiver says its finalization failed
    h.confirm("site-1", &rid, DownloadStatus::Failed, &n);
    assert_eq!(
        h.svc.receiver_status(&rid, "site-1"),
        Some(DownloadStatus::Failed)
    );
    h.confirm("site-1", &rid, DownloadStatus::Success, &n);
    assert_eq!(
        h.svc.receiver_status(&rid, "site-1"),
        Some(DownloadStatus::Failed)
    );
    assert_eq!(obj.probe.log.count("downloaded_to_one"), 1);
}

#[test]
fn r6_only_an_accepted_confirm_refreshes_tx_activity_and_it_settles_at_once() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    let r = h.download("site-1", &rid, true);
    h.at(5);
    h.confirm("site-1", &rid, DownloadStatus::Success, "bad");
    assert_eq!(
        h.svc.poll_timeout(),
        Some(h.t0 + 10 * S + NS),
        "rejected: no refresh"
    );
    h.at(6);
    h.confirm("site-1", &rid, DownloadStatus::Success, &nonce(&r));
    assert_eq!(
        h.svc.poll_timeout(),
        Some(h.now),
        "finished: settlement due now"
    );
    h.fire();
    let o = h.done_events();
    assert_eq!(o.len(), 1);
    assert!(o[0].completed());
    assert_eq!(o[0].timestamp, h.now);
}

#[test]
fn r7_cancel_from_a_receiver_that_never_pulled_is_ignored() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    assert_eq!(h.svc.cancel("site-9", &rid, h.now), Reply::ack());
    assert_eq!(h.svc.receiver_status(&rid, "site-9"), None);
    h.fire();
    assert!(h.done_events().is_empty());
}

#[test]
fn r7_cancel_fails_the_receiver_on_every_ref_of_the_tx() {
    // NVFlare's rule; ferry keeps it in identity mode (and with `count_slots` off).
    let mut h = H::with(nvflare());
    let tx = h.tx(TxConfig::new(10 * S).with_num_receivers(1));
    let (a, _) = h.obj(&tx, 8, 4);
    let (b, _) = h.obj(&tx, 8, 4);
    let _ = h.pull("site-1", &a, None, true);
    let req = DownloadRequest::Cancel { ref_id: a.clone() };
    assert!(
        matches!(h.svc.handle_request("site-1", req, h.now), Handled::Reply(r) if r == Reply::ack())
    );
    assert_eq!(
        h.svc.receiver_status(&a, "site-1"),
        Some(DownloadStatus::Failed)
    );
    assert_eq!(
        h.svc.receiver_status(&b, "site-1"),
        Some(DownloadStatus::Failed),
        "sibling ref too"
    );
    h.fire();
    let o = h.done_events();
    assert_eq!(
        (o[0].done_status, o[0].status),
        (DoneStatus::Finished, OutcomeStatus::Failed)
    );
}

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
