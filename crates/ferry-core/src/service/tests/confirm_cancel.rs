//! Confirm and cancel (R6, R7): a confirm counts only with the right nonce, once, for a
//! provisional receiver, and only an accepted one refreshes the transaction; a cancel from a
//! receiver that pulled fails it on every ref of the transaction, one from a stranger is
//! ignored.

use super::*;

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
