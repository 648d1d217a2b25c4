//! Who may pull and what counts (ferry's departures, docs/protocol.md), and NVFlare behaviour
//! that had no test. Named `ferry_*` for a ferry rule, `nvflare_*` for the NVFlare behaviour
//! the test pins.

use super::tests::{nonce, nvflare, status, H, S};
use super::*;
use crate::message::{DownloadRequest, ReplyStatus};
use crate::outcome::reason;
use crate::testing::BytesObject;
use crate::{
    DoneStatus, Downloadable, OutcomeStatus, ProduceError, Produced, Refusal, ReturnCode, State,
};
use std::sync::Arc;

fn rb(n: i64) -> State {
    State::new().with("received_bytes", n)
}

fn refusal_events(ev: &[ServiceEvent]) -> Vec<(String, Refusal)> {
    ev.iter()
        .filter_map(|e| match e {
            ServiceEvent::Refused {
                receiver, refusal, ..
            } => Some((receiver.clone(), *refusal)),
            _ => None,
        })
        .collect()
}

/// Issue 10.3: one pull with `received_bytes = -1` from a stranger failed the transaction
/// (NVFlare answers `error`, a FAILED status that completes a count of 1). It is refused as
/// invalid, takes no place and records nothing: the real receiver then completes it.
#[test]
fn ferry_invalid_state_pull_is_refused_and_counts_for_nothing() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(60 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 10, 4);
    let r = h.pull("stranger", &rid, Some(rb(-1)), true);
    assert_eq!(r.rc, ReturnCode::InvalidRequest);
    assert_eq!(r.refusal, Some(Refusal::InvalidRequest));
    assert!(h.svc.acquired_receivers(&tx).is_empty(), "no place taken");
    assert_eq!(h.svc.receiver_status(&rid, "stranger"), None);
    h.fire();
    assert!(h.done_events().is_empty(), "the transaction goes on");
    let r = h.download("site-1", &rid, false);
    assert_eq!(status(&r), ReplyStatus::Eof);
    h.fire();
    let o = h.done_events();
    assert!(o[0].completed(), "{o:?}");
    assert_eq!(o[0].refs[0].1.len(), 1, "only the real receiver: {o:?}");
}

/// Issue 10.3: a pull followed by a cancel from anyone with the ref id failed the transaction
/// for everyone. In count mode the canceller gives its place back (and is reported), so the
/// receiver that comes next takes it and completes the transfer.
#[test]
fn ferry_count_mode_cancel_gives_the_place_back() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(60 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 10, 4);
    let _ = h.pull("stranger", &rid, None, true);
    assert_eq!(h.svc.acquired_receivers(&tx), vec!["stranger".to_string()]);
    h.cancel("stranger", &rid);
    let ev = h.events();
    assert!(ev.iter().any(|e| matches!(e,
        ServiceEvent::ReceiverWithdrew { receiver, .. } if receiver == "stranger")));
    assert!(!ev
        .iter()
        .any(|e| matches!(e, ServiceEvent::DownloadedToOne { .. })));
    assert!(h.svc.acquired_receivers(&tx).is_empty());
    h.fire();
    assert!(h.done_events().is_empty());
    let _ = h.download("site-1", &rid, false);
    h.fire();
    let o = h.done_events();
    assert!(o[0].completed(), "{o:?}");
    assert_eq!(
        o[0].refs[0].1.keys().collect::<Vec<_>>(),
        vec!["site-1"],
        "the canceller is not in the outcome"
    );
}

/// Issue 12.3: a receiver beyond the expected count is refused at its first request, says so
/// with a typed code, and records nothing; the expected ones complete.
#[test]
fn ferry_count_mode_refuses_a_receiver_beyond_the_count_at_its_first_pull() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(60 * S).with_num_receivers(2));
    let (rid, obj) = h.obj(&tx, 10, 4);
    let _ = h.pull("a", &rid, None, false);
    let _ = h.pull("b", &rid, None, false);
    let produced = obj.probe.produce_calls();
    let r = h.pull("c", &rid, None, false);
    assert_eq!(r.rc, ReturnCode::InvalidRequest);
    assert_eq!(r.refusal, Some(Refusal::ReceiverLimitReached));
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("2 receivers it expects"),
        "{r:?}"
    );
    assert_eq!(
        obj.probe.produce_calls(),
        produced,
        "nothing produced for it"
    );
    assert_eq!(
        refusal_events(&h.events()),
        vec![("c".to_string(), Refusal::ReceiverLimitReached)]
    );
    assert!(!h.svc.acquired_receivers(&tx).contains(&"c".to_string()));
    // a known receiver is never refused
    let _ = h.download("a", &rid, false);
    let _ = h.download("b", &rid, false);
    h.fire();
    let o = h.done_events();
    assert!(o[0].completed());
    assert_eq!(o[0].refs[0].1.len(), 2);
    // NVFlare serves every cell in count mode
    let mut h = H::with(nvflare());
    let tx = h.tx(TxConfig::new(60 * S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 10, 4);
    let _ = h.pull("a", &rid, None, false);
    assert_eq!(status(&h.pull("b", &rid, None, false)), ReplyStatus::Ok);
}

/// Issue 12.3: a receiver that failed and comes back under the same name while the transaction
/// is live resumes and counts (NVFlare keeps its first final status, FAILED, for good).
#[test]
fn ferry_a_failed_receiver_that_comes_back_resumes_and_counts() {
    for (cfg, reopens) in [(ServiceConfig::default(), true), (nvflare(), false)] {
        let mut h = H::with(cfg);
        let tx = h.tx(TxConfig::new(60 * S)
            .with_num_receivers(2)
            .with_idle_timeout(5 * S));
        let (rid, obj) = h.obj(&tx, 8, 4);
        let _ = h.pull("a", &rid, None, true); // a: one chunk, then silent
        h.at(4);
        let _ = h.pull("b", &rid, None, true);
        h.at(6);
        h.fire(); // a's idle budget expired
        assert_eq!(
            h.svc.receiver_status(&rid, "a"),
            Some(DownloadStatus::Failed)
        );
        assert!(h.done_events().is_empty(), "b is still downloading");
        // a comes back and resumes from what it has (4 bytes)
        let r = h.pull("a", &rid, Some(rb(4)), true);
        assert_eq!(status(&r), ReplyStatus::Ok);
        let r = h.pull("a", &rid, Some(rb(8)), true);
        assert_eq!(status(&r), ReplyStatus::Eof);
        if reopens {
            h.confirm("a", &rid, DownloadStatus::Success, &nonce(&r));
            assert_eq!(
                h.svc.receiver_status(&rid, "a"),
                Some(DownloadStatus::Success)
            );
            assert_eq!(obj.probe.log.count("downloaded_to_one:a"), 2);
        } else {
            assert_eq!(r.body.as_ref().unwrap().confirm_expected, None);
            assert_eq!(
                h.svc.receiver_status(&rid, "a"),
                Some(DownloadStatus::Failed)
            );
        }
        let r = h.download("b", &rid, true);
        h.confirm("b", &rid, DownloadStatus::Success, &nonce(&r));
        h.fire();
        let o = h.done_events();
        assert_eq!(o[0].completed(), reopens, "{o:?}");
    }
}

/// Issue 10.3: a confirm or a cancel counts only for the receiver that sent it — a receiver
/// cannot confirm another's serve with its nonce, nor cancel for it.
#[test]
fn nvflare_confirm_and_cancel_count_only_for_their_sender() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(60 * S).with_receiver_ids(["a", "b"]));
    let (rid, _) = h.obj(&tx, 4, 4);
    let r = h.download("a", &rid, true);
    let _ = h.pull("b", &rid, None, true);
    h.confirm("b", &rid, DownloadStatus::Failed, &nonce(&r));
    assert_eq!(h.svc.receiver_status(&rid, "a"), None);
    assert_eq!(h.svc.receiver_status(&rid, "b"), None);
    h.cancel("b", &rid);
    assert_eq!(
        h.svc.receiver_status(&rid, "b"),
        Some(DownloadStatus::Failed)
    );
    assert_eq!(h.svc.receiver_status(&rid, "a"), None, "a untouched");
    h.confirm("a", &rid, DownloadStatus::Success, &nonce(&r));
    assert_eq!(
        h.svc.receiver_status(&rid, "a"),
        Some(DownloadStatus::Success)
    );
}

/// Issue 11.5: a receiver whose connection closed and that does not come back within the
/// reconnect budget is failed on every ref, promptly and by name (long before the 10-minute
/// inactivity timeout); one that reconnects in time is not.
#[test]
fn ferry_a_receiver_whose_connection_closed_fails_at_its_reconnect_budget() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(600 * S)
        .with_num_receivers(2)
        .with_reconnect_timeout(10 * S));
    let (a, _) = h.obj(&tx, 8, 4);
    let (b, _) = h.obj(&tx, 8, 4);
    let _ = h.pull("dead", &a, None, true);
    let _ = h.pull("blip", &a, None, true);
    h.at(1);
    h.svc.receiver_disconnected("dead", h.now);
    h.svc.receiver_disconnected("blip", h.now);
    assert_eq!(h.svc.poll_timeout(), Some(h.t0 + 11 * S + super::tests::NS));
    h.at(5);
    h.svc.receiver_connected("blip", h.now);
    h.at(11);
    h.fire();
    assert_eq!(
        h.svc.receiver_status(&a, "dead"),
        None,
        "not before the budget"
    );
    h.now += super::tests::NS;
    h.fire();
    let failed: Vec<_> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ServiceEvent::DownloadedToOne {
                receiver,
                status: DownloadStatus::Failed,
                cause,
                ref_id,
                ..
            } => Some((receiver, ref_id, cause)),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        vec![
            ("dead".to_string(), a.clone(), FinalCause::Disconnected),
            ("dead".to_string(), b.clone(), FinalCause::Disconnected),
        ]
    );
    assert_eq!(h.svc.receiver_status(&a, "blip"), None);
}

/// A pull that reaches the engine after the close of the connection it was read from (the
/// driver's reader and its peer watcher race) does not make the receiver look present: it is
/// still failed at its reconnect budget, and in count mode a newcomer still takes its place.
/// Only a new connection stops the budget.
#[test]
fn ferry_a_pull_handled_after_the_close_does_not_revive_the_receiver() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(600 * S)
        .with_num_receivers(1)
        .with_reconnect_timeout(10 * S));
    let (rid, _) = h.obj(&tx, 8, 4);
    let _ = h.pull("killed", &rid, None, true);
    h.at(1);
    h.svc.receiver_disconnected("killed", h.now);
    // the pull it sent just before dying, handled after the close was reported
    let _ = h.pull("killed", &rid, Some(rb(4)), true);
    let _ = h.events();
    // its place is still up for a newcomer
    let r = h.pull("rerun", &rid, None, true);
    assert_eq!(status(&r), ReplyStatus::Ok, "{r:?}");
    assert!(h.events().iter().any(|e| matches!(e,
        ServiceEvent::ReceiverWithdrew { receiver, replaced_by: Some(n), .. }
            if receiver == "killed" && n == "rerun")));

    // without a newcomer, the reconnect budget still fails it
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(600 * S)
        .with_num_receivers(2)
        .with_reconnect_timeout(10 * S));
    let (rid, _) = h.obj(&tx, 8, 4);
    let _ = h.pull("killed", &rid, None, true);
    let _ = h.pull("back", &rid, None, true);
    h.at(1);
    h.svc.receiver_disconnected("killed", h.now);
    h.svc.receiver_disconnected("back", h.now);
    let _ = h.pull("killed", &rid, Some(rb(4)), true);
    h.at(2);
    h.svc.receiver_connected("back", h.now);
    h.at(12);
    h.fire();
    assert_eq!(
        h.svc.receiver_status(&rid, "killed"),
        Some(DownloadStatus::Failed)
    );
    assert_eq!(
        h.svc.receiver_status(&rid, "back"),
        None,
        "reconnected in time"
    );
}

/// Count mode with every place held: a newcomer takes the place of a holder whose connection
/// closed mid-download (a `ferry get` killed and run again gets a new name), and the holder
/// withdraws; a holder that is final everywhere keeps its place, gone or not.
#[test]
fn ferry_a_newcomer_takes_the_place_of_a_receiver_whose_connection_closed() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(600 * S).with_num_receivers(2));
    let (rid, _) = h.obj(&tx, 8, 4);
    let _ = h.download("done", &rid, false); // SUCCESS, then leaves
    let _ = h.pull("killed", &rid, None, true);
    h.svc.receiver_disconnected("done", h.now);
    h.svc.receiver_disconnected("killed", h.now);
    let _ = h.events();
    let r = h.pull("rerun", &rid, Some(rb(4)), true);
    assert_eq!(status(&r), ReplyStatus::Ok, "{r:?}");
    assert!(h.events().iter().any(|e| matches!(e,
        ServiceEvent::ReceiverWithdrew { receiver, replaced_by: Some(n), .. }
            if receiver == "killed" && n == "rerun")));
    let mut acquired = h.svc.acquired_receivers(&tx);
    acquired.sort();
    assert_eq!(acquired, vec!["done".to_string(), "rerun".to_string()]);
    // both places are held by receivers that are here or done: the next one is refused
    let r = h.pull("third", &rid, None, true);
    assert_eq!(r.refusal, Some(Refusal::ReceiverLimitReached));
    let r = h.pull("rerun", &rid, Some(rb(8)), true);
    h.confirm("rerun", &rid, DownloadStatus::Success, &nonce(&r));
    h.fire();
    let o = h.done_events();
    assert!(o[0].completed(), "{o:?}");
    assert_eq!(
        o[0].refs[0].1.keys().collect::<Vec<_>>(),
        vec!["done", "rerun"]
    );
}

/// The timeout of a transaction whose every receiver left is not "unknown": a late pull is
/// told the transfer is over (still `invalid_request`, as NVFlare).
#[test]
fn ferry_a_pull_after_the_end_says_the_transfer_is_over() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(S).with_num_receivers(1));
    let (rid, _) = h.obj(&tx, 4, 4);
    h.at(2);
    h.fire();
    let r = h.pull("site-1", &rid, None, false);
    assert_eq!(r.rc, ReturnCode::InvalidRequest);
    assert_eq!(r.refusal, Some(Refusal::TransactionFinished));
    assert!(r.error.unwrap().contains("timed out"));
    let r = h.pull("site-1", &RefId::new("Rnever"), None, false);
    assert_eq!(r.refusal, Some(Refusal::UnknownRef));
}

// ------------------------------------------------------------------------------------------
// NVFlare behaviour that had no test (issue 12.7)

/// Panics in `downloaded_to_one` and `downloaded_to_all` neither lose the EOF reply nor skip
/// `downloaded_to_all` or settlement (NVFlare guards both callbacks).
#[test]
fn nvflare_panicking_downloaded_to_one_and_to_all_hooks_lose_nothing() {
    struct Boom(BytesObject);
    impl Downloadable for Boom {
        fn produce(&self, s: Option<&State>, r: &str) -> Result<Produced, ProduceError> {
            self.0.produce(s, r)
        }
        fn downloaded_to_one(&self, _: &str, _: DownloadStatus) {
            panic!("to_one bug")
        }
        fn downloaded_to_all(&self) {
            panic!("to_all bug")
        }
    }
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(60 * S).with_num_receivers(1));
    let rid = h
        .svc
        .add_object(
            &tx,
            Arc::new(Boom(BytesObject::unplanned(vec![1; 4], 4))),
            None,
            h.now,
        )
        .unwrap();
    let r = h.download("site-1", &rid, false);
    assert_eq!(status(&r), ReplyStatus::Eof, "the EOF reply is not lost");
    let ev = h.events();
    assert!(ev
        .iter()
        .any(|e| matches!(e, ServiceEvent::DownloadedToAll { .. })));
    h.fire();
    assert!(h.done_events()[0].completed());
}

/// A panicking `release` (or `transaction_done`) is logged; the other objects are still
/// released and the outcome is still delivered.
#[test]
fn nvflare_a_panicking_release_hook_does_not_skip_the_others() {
    struct BadRelease;
    impl Downloadable for BadRelease {
        fn produce(&self, _: Option<&State>, _: &str) -> Result<Produced, ProduceError> {
            Ok(Produced::Eof)
        }
        fn transaction_done(&self, _: &TxId, _: DoneStatus) {
            panic!("done bug")
        }
        fn release(&self) {
            panic!("release bug")
        }
    }
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(60 * S));
    h.svc
        .add_object(&tx, Arc::new(BadRelease), None, h.now)
        .unwrap();
    let (_, good) = h.obj(&tx, 4, 4);
    h.svc.delete_transaction(&tx, h.now).unwrap();
    let o = h.done_events();
    assert_eq!(o.len(), 1);
    assert!(good.probe.released());
    assert_eq!(good.probe.log.count("transaction_done"), 1);
}

/// A finished ref's tombstone replays `error` to a receiver whose final status was FAILED
/// (and `eof` to one that succeeded; anyone else is refused).
#[test]
fn nvflare_tombstone_replays_error_to_a_receiver_that_failed() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(60 * S).with_receiver_ids(["ok", "bad"]));
    let (rid, _) = h.obj(&tx, 4, 4);
    let r = h.download("ok", &rid, true);
    h.confirm("ok", &rid, DownloadStatus::Success, &nonce(&r));
    let r = h.download("bad", &rid, true);
    h.confirm("bad", &rid, DownloadStatus::Failed, &nonce(&r));
    h.fire();
    assert_eq!(h.done_events().len(), 1);
    assert_eq!(h.svc.tombstone_count(), 1);
    let r = h.pull("bad", &rid, Some(rb(4)), true);
    assert_eq!((r.rc, status(&r)), (ReturnCode::Ok, ReplyStatus::Error));
    assert_eq!(r.body.unwrap().confirm_expected, None);
    let r = h.pull("ok", &rid, Some(rb(4)), true);
    assert_eq!(status(&r), ReplyStatus::Eof);
    let r = h.pull("other", &rid, None, true);
    assert_eq!(r.refusal, Some(Refusal::TransactionFinished));
}

/// Confirm and cancel settle per (ref, receiver) with several receivers and several refs: the
/// transaction finishes only when every receiver is final on every ref, then at once.
#[test]
fn nvflare_confirm_and_cancel_settlement_with_several_receivers_and_refs() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(60 * S).with_receiver_ids(["a", "b", "c"]));
    let (r1, _) = h.obj(&tx, 4, 4);
    let (r2, _) = h.obj(&tx, 4, 4);
    for who in ["a", "b"] {
        for rid in [&r1, &r2] {
            let r = h.download(who, rid, true);
            h.confirm(who, rid, DownloadStatus::Success, &nonce(&r));
        }
    }
    let r = h.download("c", &r1, true);
    h.confirm("c", &r1, DownloadStatus::Success, &nonce(&r));
    assert!(
        h.svc.transaction_info(&tx).unwrap().live,
        "c is not final on r2"
    );
    h.cancel("c", &r2);
    assert!(
        !h.svc.transaction_info(&tx).unwrap().live,
        "retired by the cancel"
    );
    h.fire();
    let o = h.done_events();
    assert_eq!(o[0].reason, reason::RECEIVER_FAILED);
    let st = |rid: &RefId, who: &str| {
        o[0].refs
            .iter()
            .find(|(r, _)| r == rid)
            .and_then(|(_, m)| m.get(who).copied())
    };
    assert_eq!(st(&r1, "c"), Some(DownloadStatus::Success), "kept");
    assert_eq!(st(&r2, "c"), Some(DownloadStatus::Failed));
    assert_eq!(st(&r2, "a"), Some(DownloadStatus::Success));
}

/// After `delete_transaction`, a confirm or a cancel for its refs is acknowledged and changes
/// nothing: the outcome stays what the delete made it.
#[test]
fn nvflare_confirm_or_cancel_after_delete_changes_nothing() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(60 * S).with_receiver_ids(["a"]));
    let (rid, _) = h.obj(&tx, 4, 4);
    let r = h.download("a", &rid, true);
    h.svc.delete_transaction(&tx, h.now).unwrap();
    h.confirm("a", &rid, DownloadStatus::Success, &nonce(&r));
    h.cancel("a", &rid);
    let o = h.done_events();
    assert_eq!(o.len(), 1);
    assert_eq!(
        (o[0].status, o[0].done_status),
        (OutcomeStatus::Aborted, DoneStatus::Deleted)
    );
    assert!(o[0].refs[0].1.is_empty(), "no status written: {o:?}");
    assert_eq!(h.svc.outcome(&tx, h.now).unwrap(), o[0]);
}

/// The idle budget is per receiver across the transaction: a receiver silent for too long is
/// failed on the sibling refs it never touched too, and the transaction resolves at once.
#[test]
fn nvflare_idle_budget_fails_a_receiver_on_sibling_refs() {
    let mut h = H::new();
    let tx = h.tx(TxConfig::new(60 * S)
        .with_receiver_ids(["a"])
        .with_idle_timeout(5 * S));
    let (r1, _) = h.obj(&tx, 8, 4);
    let (r2, _) = h.obj(&tx, 8, 4);
    let _ = h.pull("a", &r1, None, true);
    h.at(6);
    h.fire();
    assert_eq!(
        h.svc.receiver_status(&r1, "a"),
        None,
        "retired: no statuses"
    );
    let o = h.done_events();
    assert_eq!(o[0].done_status, DoneStatus::Finished);
    for (_, m) in &o[0].refs {
        assert_eq!(m.get("a"), Some(&DownloadStatus::Failed));
    }
    assert!(o[0].refs.iter().any(|(r, _)| r == &r2));
}

/// Dispatch on a cancel payload in identity mode is NVFlare's R7 at once; unknown payloads are
/// refused with a typed code.
#[test]
fn nvflare_malformed_requests_are_invalid_requests_with_a_code() {
    let mut h = H::new();
    let Handled::Reply(r) =
        h.svc
            .handle_request("a", DownloadRequest::Invalid("no ref_id".into()), h.now)
    else {
        panic!("a reply")
    };
    assert_eq!(
        (r.rc, r.refusal),
        (ReturnCode::InvalidRequest, Some(Refusal::InvalidRequest))
    );
}
