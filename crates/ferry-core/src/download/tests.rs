//! Receiver-engine tests on virtual time: stop-and-wait (NVFlare), retries and backoff,
//! failures and cancel, confirm, the window with reordering, plan checks.

use super::*;
use crate::plan::KEY_RECEIVED_BYTES;
use crate::{PlanLayout, WirePlan};
use bytes::Bytes;

const S: Duration = Duration::from_secs(1);

fn cfg() -> DownloadConfig {
    DownloadConfig {
        per_request_timeout: 10 * S,
        ..DownloadConfig::default()
    }
}

fn drain(d: &mut Download) -> Vec<Action> {
    std::iter::from_fn(|| d.poll_action()).collect()
}

fn sends(actions: &[Action]) -> Vec<(RequestId, Option<State>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { id, request } => Some((*id, request.state.clone())),
            _ => None,
        })
        .collect()
}

fn rb(n: u64) -> State {
    State::new().with(KEY_RECEIVED_BYTES, n)
}

fn data(state: State, bytes: &[u8]) -> ReplyBody {
    ReplyBody::data(state, ChunkData::Bytes(Bytes::copy_from_slice(bytes)))
}

fn eof(nonce: Option<&str>) -> ReplyBody {
    ReplyBody {
        confirm_expected: nonce.map(|_| true),
        confirm_nonce: nonce.map(str::to_string),
        ..ReplyBody::terminal(ReplyStatus::Eof)
    }
}

fn planned(total: u64, chunk: u64) -> WirePlan {
    TransferPlan {
        layout: PlanLayout::Bytes { total, chunk },
        total_bytes: Some(total),
        blake3: None,
    }
    .to_wire()
}

#[test]
fn stop_and_wait_sends_the_state_the_consumer_returned() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let a = drain(&mut d);
    assert_eq!(a.len(), 1);
    let Action::Send { id, request } = &a[0] else {
        panic!()
    };
    assert_eq!(request.state, None);
    assert_eq!(request.confirm_capable, Some(true));
    d.reply(*id, Ok(data(rb(2), b"ab")), t0);
    assert_eq!(
        drain(&mut d),
        vec![Action::Consume {
            seq: 0,
            state: rb(2),
            data: ChunkData::Bytes(Bytes::from_static(b"ab"))
        }]
    );
    // the consumer transforms the state (NVFlare's file consumer does): it is sent as is
    d.consumed(0, Ok(rb(2).with("mine", 1u64)), t0);
    let a = drain(&mut d);
    let s = sends(&a);
    assert_eq!(s[0].1, Some(rb(2).with("mine", 1u64)));
    d.reply(s[0].0, Ok(eof(Some("n1"))), t0);
    assert_eq!(drain(&mut d), vec![Action::Complete]);
    d.completion_result(Ok(()), t0);
    let a = drain(&mut d);
    assert_eq!(
        a,
        vec![
            Action::SendConfirm(ConfirmRequest {
                ref_id: RefId::new("R1"),
                confirm: DownloadStatus::Success,
                confirm_nonce: "n1".into()
            }),
            Action::Finished(Ok(()))
        ]
    );
    assert_eq!(d.poll_timeout(), None);
}

#[test]
fn a_resumed_download_starts_from_its_initial_state_and_ignores_no_plan() {
    let t0 = Instant::now();
    let c = DownloadConfig {
        initial_state: Some(rb(4)),
        ..cfg()
    };
    let mut d = Download::new("server", RefId::new("R1"), c, false, t0).unwrap();
    let s = sends(&drain(&mut d));
    assert_eq!(s, vec![(s[0].0, Some(rb(4)))]);
    d.reply(s[0].0, Ok(data(rb(6), b"ef")), t0);
    assert!(!d.is_windowed());
    let a = drain(&mut d);
    assert!(matches!(&a[..], [Action::Consume { seq: 0, state, .. }] if *state == rb(6)));
    d.consumed(0, Ok(rb(6)), t0);
    assert_eq!(sends(&drain(&mut d))[0].1, Some(rb(6)));
}

#[test]
fn timeouts_retry_the_same_state_with_exponential_backoff_then_fail() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let first = sends(&drain(&mut d))[0].0;
    let mut t = t0 + 10 * S;
    assert_eq!(d.poll_timeout(), Some(t));
    d.handle_timeout(t - Duration::from_nanos(1));
    assert!(drain(&mut d).is_empty());
    for backoff in [2u32, 4, 8] {
        d.handle_timeout(t);
        assert!(drain(&mut d).is_empty(), "backing off");
        assert_eq!(d.poll_timeout(), Some(t + S * backoff));
        t += S * backoff;
        d.handle_timeout(t);
        let s = sends(&drain(&mut d));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].1, None, "same state");
        assert_ne!(s[0].0, first, "new request id");
        t += 10 * S;
    }
    // a late reply to the first request is ignored
    d.reply(first, Ok(data(rb(1), b"a")), t0);
    assert!(drain(&mut d).is_empty());
    d.handle_timeout(t);
    let a = drain(&mut d);
    assert!(
        matches!(
            &a[..],
            [Action::Finished(Err(DownloadFailure::RetriesExhausted {
                attempts: 4,
                ..
            }))]
        ),
        "no cancel: the producer never said cancel_capable: {a:?}"
    );
}

#[test]
fn glue_reported_timeouts_count_too_and_an_ok_reply_resets_the_counter() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.max_retries = 1;
    let mut d = Download::new("server", RefId::new("R1"), c, true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Err(ReturnCode::Timeout), t0);
    d.handle_timeout(t0 + 2 * S);
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Ok(data(rb(1), b"a")), t0 + 2 * S);
    d.consumed(0, Ok(rb(1)), t0 + 2 * S);
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Err(ReturnCode::Timeout), t0 + 3 * S);
    assert!(!d.is_finished(), "counter is per chunk and was reset");
}

#[test]
fn non_timeout_codes_fail_at_once_and_cancel_when_the_producer_can() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Ok(data(rb(1), b"a")), t0);
    d.consumed(0, Ok(rb(1)), t0);
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Err(ReturnCode::InvalidRequest), t0);
    let a = drain(&mut d);
    assert!(
        matches!(
            &a[..],
            [
                Action::SendCancel(_),
                Action::Finished(Err(DownloadFailure::RequestFailed {
                    rc: ReturnCode::InvalidRequest,
                    ..
                }))
            ]
        ),
        "{a:?}"
    );
}

#[test]
fn the_senders_error_text_is_kept_and_shown() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply_error(
        id,
        ReturnCode::InvalidRequest,
        Some("site-9 is not an expected receiver of R1"),
        None,
        t0,
    );
    let a = drain(&mut d);
    let Some(Action::Finished(Err(failure))) = a.last() else {
        panic!("{a:?}");
    };
    assert_eq!(
        failure,
        &DownloadFailure::RequestFailed {
            source_fqcn: "server".into(),
            rc: ReturnCode::InvalidRequest,
            detail: Some("site-9 is not an expected receiver of R1".into()),
        }
    );
    assert_eq!(
        failure.to_string(),
        "error requesting data from server: invalid_request: site-9 is not an expected receiver of R1"
    );
    // Without text the message is what it always was.
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply_error(id, ReturnCode::CommError, None, None, t0);
    let a = drain(&mut d);
    let Some(Action::Finished(Err(failure))) = a.last() else {
        panic!("{a:?}");
    };
    assert_eq!(
        failure.to_string(),
        "error requesting data from server: comm_error"
    );
}

#[test]
fn the_senders_error_text_is_capped_and_cleaned() {
    let t0 = Instant::now();
    let fail_with = |text: &str| {
        let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
        let id = sends(&drain(&mut d))[0].0;
        d.reply_error(id, ReturnCode::ProcessException, Some(text), None, t0);
        match d.result() {
            Some(Err(DownloadFailure::RequestFailed { detail, .. })) => detail.clone(),
            other => panic!("{other:?}"),
        }
    };
    // Far beyond the cap, with multi-byte characters straddling it.
    let long = "é".repeat(10_000);
    let kept = fail_with(&long).unwrap();
    assert!(kept.len() <= MAX_FAILURE_DETAIL, "{}", kept.len());
    assert!(kept.len() > MAX_FAILURE_DETAIL - 8, "{}", kept.len());
    assert!(kept.ends_with('…'), "marked as cut");
    // Terminal escapes and line breaks cannot reach the user's terminal or logs as such.
    let kept = fail_with("bad\u{1b}[2Jthing\nsecond line\r\n").unwrap();
    assert_eq!(kept, "bad [2Jthing second line");
    // Blank text is no text.
    assert_eq!(fail_with(" \t\n"), None);
    // Exactly at the cap: kept whole.
    let exact = "x".repeat(MAX_FAILURE_DETAIL);
    assert_eq!(fail_with(&exact), Some(exact));
}

#[test]
fn an_error_text_does_not_change_the_retry_rules() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.max_retries = 1;
    let mut d = Download::new("server", RefId::new("R1"), c, true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    // A timeout with text is still a timeout: retried after the backoff.
    d.reply_error(id, ReturnCode::Timeout, Some("took too long"), None, t0);
    assert!(!d.is_finished());
    d.handle_timeout(t0 + 2 * S);
    let retry = sends(&drain(&mut d))[0].0;
    assert_ne!(retry, id);
    // A late error for the superseded request is ignored.
    d.reply_error(
        id,
        ReturnCode::InvalidRequest,
        Some("stale"),
        None,
        t0 + 2 * S,
    );
    assert!(!d.is_finished());
    // `ok` without a payload is a bad reply, text or not.
    d.reply_error(retry, ReturnCode::Ok, Some("odd"), None, t0 + 2 * S);
    assert!(matches!(
        d.result(),
        Some(Err(DownloadFailure::BadReply(_)))
    ));
    // After the end, nothing changes the verdict.
    d.reply_error(
        retry,
        ReturnCode::InvalidRequest,
        Some("late"),
        None,
        t0 + 3 * S,
    );
    assert!(matches!(
        d.result(),
        Some(Err(DownloadFailure::BadReply(_)))
    ));
}

#[test]
fn producer_error_confirms_failed_and_does_not_cancel() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Ok(data(rb(1), b"a")), t0);
    d.consumed(0, Ok(rb(1)), t0);
    let id = sends(&drain(&mut d))[0].0;
    let body = ReplyBody {
        confirm_expected: Some(true),
        confirm_nonce: Some("n".into()),
        ..ReplyBody::terminal(ReplyStatus::Error)
    };
    d.reply(id, Ok(body), t0);
    let a = drain(&mut d);
    assert!(
        matches!(&a[..], [Action::SendConfirm(c), Action::Finished(Err(DownloadFailure::ProducerError { .. }))]
        if c.confirm == DownloadStatus::Failed),
        "{a:?}"
    );
}

#[test]
fn completion_failure_confirms_failed() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Ok(eof(Some("n"))), t0);
    assert_eq!(drain(&mut d), vec![Action::Complete]);
    d.completion_result(Err(ConsumeError::Integrity("digest".into())), t0);
    let a = drain(&mut d);
    assert!(
        matches!(&a[..], [Action::SendConfirm(c), Action::Finished(Err(DownloadFailure::CompletionFailed(_)))]
        if c.confirm == DownloadStatus::Failed),
        "{a:?}"
    );
}

#[test]
fn consume_failure_cancels() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Ok(data(rb(1), b"a")), t0);
    drain(&mut d);
    d.consumed(0, Err(ConsumeError::Other("disk full".into())), t0);
    let a = drain(&mut d);
    assert!(
        matches!(
            &a[..],
            [
                Action::SendCancel(_),
                Action::Finished(Err(DownloadFailure::ConsumeFailed(_)))
            ]
        ),
        "{a:?}"
    );
}

/// Windowed mode against a planned 5-chunk object, W = 3, replies out of order.
#[test]
fn window_keeps_w_chunks_outstanding_reorders_and_requests_eof_last() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.window = 3;
    let mut d = Download::new("server", RefId::new("R1"), c, true, t0).unwrap();
    let id0 = sends(&drain(&mut d))[0].0;
    let mut first = data(rb(2), b"00");
    first.ferry_plan = Some(planned(10, 2));
    d.reply(id0, Ok(first), t0);
    let a = drain(&mut d);
    assert!(matches!(&a[..], [Action::CheckPlan(p)] if p.chunk_count() == 5));
    d.plan_result(Ok(()), t0);
    let a = drain(&mut d);
    assert!(matches!(&a[0], Action::Consume { seq: 0, .. }));
    let s = sends(&a);
    assert_eq!(
        s.iter().map(|x| x.1.clone()).collect::<Vec<_>>(),
        vec![Some(rb(2)), Some(rb(4))]
    );
    assert!(d.is_windowed());
    // reply for chunk 2 first: buffered until chunk 1 arrives
    d.reply(s[1].0, Ok(data(rb(6), b"22")), t0);
    assert!(drain(&mut d).is_empty(), "window full, chunk 2 buffered");
    d.consumed(0, Ok(rb(2)), t0);
    let s3 = sends(&drain(&mut d));
    assert_eq!(s3[0].1, Some(rb(6)), "a slot freed: chunk 3 requested");
    d.reply(s[0].0, Ok(data(rb(4), b"11")), t0);
    let a = drain(&mut d);
    let seqs: Vec<u64> = a
        .iter()
        .filter_map(|x| match x {
            Action::Consume { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![1, 2], "in order");
    d.consumed(1, Ok(rb(4)), t0);
    d.consumed(2, Ok(rb(6)), t0);
    let s4 = sends(&drain(&mut d));
    assert_eq!(s4[0].1, Some(rb(8)));
    d.reply(s3[0].0, Ok(data(rb(8), b"33")), t0);
    d.reply(s4[0].0, Ok(data(rb(10), b"44")), t0);
    let a = drain(&mut d);
    let s5 = sends(&a);
    assert_eq!(s5.len(), 1);
    assert_eq!(
        s5[0].1,
        Some(rb(10)),
        "EOF request once all data replies arrived"
    );
    d.reply(s5[0].0, Ok(eof(None)), t0);
    assert!(
        !drain(&mut d).contains(&Action::Complete),
        "not before every chunk is consumed"
    );
    d.consumed(3, Ok(rb(8)), t0);
    d.consumed(4, Ok(rb(10)), t0);
    assert_eq!(drain(&mut d), vec![Action::Complete]);
    d.completion_result(Ok(()), t0);
    assert_eq!(drain(&mut d), vec![Action::Finished(Ok(()))]);
}

fn windowed(t0: Instant, order: bool) -> (Download, Vec<(RequestId, Option<State>)>) {
    let mut c = cfg();
    c.window = 4;
    let mut d = Download::new("server", RefId::new("R1"), c, order, t0).unwrap();
    let id0 = sends(&drain(&mut d))[0].0;
    let mut first = data(rb(2), b"00");
    first.ferry_plan = Some(planned(8, 2));
    d.reply(id0, Ok(first), t0);
    drain(&mut d);
    d.plan_result(Ok(()), t0);
    let s = sends(&drain(&mut d));
    (d, s)
}

#[test]
fn window_fails_when_the_consumer_changes_the_state() {
    let t0 = Instant::now();
    let (mut d, _) = windowed(t0, true);
    d.consumed(0, Ok(rb(3)), t0);
    let a = drain(&mut d);
    assert!(
        matches!(
            &a[..],
            [
                Action::SendCancel(_),
                Action::Finished(Err(DownloadFailure::StateChanged))
            ]
        ),
        "{a:?}"
    );
}

#[test]
fn window_fails_when_the_producer_diverges_from_its_plan() {
    let t0 = Instant::now();
    let (mut d, s) = windowed(t0, false);
    d.reply(s[0].0, Ok(eof(None)), t0);
    let a = drain(&mut d);
    assert!(matches!(
        a.last(),
        Some(Action::Finished(Err(DownloadFailure::PlanMismatch(_))))
    ));
    let (mut d, s) = windowed(t0, false);
    d.reply(s[0].0, Ok(data(rb(5), b"xx")), t0);
    let a = drain(&mut d);
    assert!(matches!(
        a.last(),
        Some(Action::Finished(Err(DownloadFailure::PlanMismatch(_))))
    ));
}

#[test]
fn unordered_consumers_get_chunks_as_they_arrive() {
    let t0 = Instant::now();
    let (mut d, s) = windowed(t0, false);
    d.reply(s[2].0, Ok(data(rb(8), b"33")), t0);
    assert!(matches!(
        &drain(&mut d)[..],
        [Action::Consume { seq: 3, .. }, ..]
    ));
}

#[test]
fn a_refused_plan_fails_and_cancels() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id0 = sends(&drain(&mut d))[0].0;
    let mut first = data(rb(2), b"00");
    first.ferry_plan = Some(planned(8, 2));
    d.reply(id0, Ok(first), t0);
    drain(&mut d);
    d.plan_result(Err(ConsumeError::Integrity("too big".into())), t0);
    let a = drain(&mut d);
    assert!(
        matches!(
            &a[..],
            [
                Action::SendCancel(_),
                Action::Finished(Err(DownloadFailure::PlanRefused(_)))
            ]
        ),
        "{a:?}"
    );
}

#[test]
fn window_one_keeps_nvflare_stop_and_wait_even_with_a_plan() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.window = 1;
    let mut d = Download::new("server", RefId::new("R1"), c, true, t0).unwrap();
    let id0 = sends(&drain(&mut d))[0].0;
    let mut first = data(rb(2), b"00");
    first.ferry_plan = Some(planned(8, 2));
    d.reply(id0, Ok(first), t0);
    drain(&mut d);
    d.plan_result(Ok(()), t0);
    assert!(!d.is_windowed());
    let a = drain(&mut d);
    assert_eq!(sends(&a).len(), 0, "nothing before consume returns");
    d.consumed(0, Ok(rb(2).with("x", 1u64)), t0);
    assert_eq!(sends(&drain(&mut d))[0].1, Some(rb(2).with("x", 1u64)));
}

#[test]
fn abort_and_source_failure() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    d.source_failed("trainer died", t0);
    let a = drain(&mut d);
    assert_eq!(
        a,
        vec![Action::Finished(Err(DownloadFailure::SourceFailed(
            "trainer died".into()
        )))],
        "the unpolled first request is dropped; no cancel (never learned cancel_capable)"
    );
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Ok(data(rb(1), b"a")), t0);
    d.abort(t0);
    let a = drain(&mut d);
    assert!(
        matches!(
            &a[..],
            [
                Action::SendCancel(_),
                Action::Finished(Err(DownloadFailure::Aborted))
            ]
        ),
        "{a:?}"
    );
    d.abort(t0);
    assert!(drain(&mut d).is_empty(), "terminal once");
}

#[test]
fn bad_replies_fail_cleanly() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply_payload(
        id,
        ReturnCode::Ok,
        Some(&Bytes::from_static(&[0xc1, 0x00])),
        t0,
    );
    assert!(matches!(
        drain(&mut d).last(),
        Some(Action::Finished(Err(DownloadFailure::BadReply(_))))
    ));
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Ok(ReplyBody::terminal(ReplyStatus::Ok)), t0);
    assert!(matches!(
        drain(&mut d).last(),
        Some(Action::Finished(Err(DownloadFailure::BadReply(_))))
    ));
    assert!(Download::new("bad fqcn", RefId::new("R1"), cfg(), true, t0).is_err());
}

#[test]
fn duplicate_replies_are_ignored() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Ok(data(rb(1), b"a")), t0);
    d.reply(id, Ok(data(rb(1), b"a")), t0);
    assert_eq!(drain(&mut d).len(), 1);
}

#[test]
fn progress_reports_start_active_and_terminal() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.progress_interval = Some(Duration::ZERO);
    let mut d = Download::new("server", RefId::new("R1"), c, true, t0).unwrap();
    let a = drain(&mut d);
    let id = sends(&a)[0].0;
    assert!(matches!(&a[0], Action::Progress(p) if p.state == ProgressState::Start));
    d.reply(id, Ok(data(rb(3), b"abc")), t0);
    drain(&mut d);
    d.consumed(0, Ok(rb(3)), t0);
    let a = drain(&mut d);
    assert!(
        matches!(&a[0], Action::Progress(p) if p.state == ProgressState::Active && p.bytes_done == 3)
    );
    d.abort(t0);
    let a = drain(&mut d);
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Progress(p) if p.state == ProgressState::Aborted)));
}

#[test]
fn progress_counts_chunks_and_carries_the_planned_total() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.window = 4;
    c.progress_interval = Some(Duration::ZERO);
    let mut d = Download::new("server", RefId::new("R1"), c, true, t0).unwrap();
    let id0 = sends(&drain(&mut d))[0].0;
    let mut first = data(rb(2), b"00");
    first.ferry_plan = Some(planned(8, 2));
    d.reply(id0, Ok(first), t0);
    drain(&mut d);
    d.plan_result(Ok(()), t0);
    drain(&mut d);
    let progress = |a: Vec<Action>| {
        a.into_iter().find_map(|x| match x {
            Action::Progress(p) => Some(p),
            _ => None,
        })
    };
    d.consumed(0, Ok(rb(2)), t0 + Duration::from_millis(1));
    let p = progress(drain(&mut d)).expect("an active report");
    assert_eq!(
        (p.state, p.bytes_done, p.chunks_done, p.total_bytes),
        (ProgressState::Active, 2, 1, Some(8))
    );
    // Stop-and-wait without a plan: no total, chunks still counted.
    let mut c = cfg();
    c.progress_interval = Some(Duration::ZERO);
    let mut d = Download::new("server", RefId::new("R1"), c, true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Ok(data(rb(3), b"abc")), t0);
    drain(&mut d);
    d.consumed(0, Ok(rb(3)), t0);
    let p = progress(drain(&mut d)).expect("an active report");
    assert_eq!((p.chunks_done, p.total_bytes), (1, None));
}

/// NVFlare's receiver kill switch (`streaming_receiver_confirm_enabled = false`): the receiver
/// does not say `confirm_capable`, and it does not confirm even when a producer (wrongly, or
/// replaying an old serve) asks it to — for success and for a producer error.
#[test]
fn nvflare_receiver_confirm_switch_off_never_confirms_even_when_asked() {
    let t0 = Instant::now();
    let c = DownloadConfig {
        confirm_capable: false,
        ..cfg()
    };
    let mut d = Download::new("server", RefId::new("R1"), c.clone(), true, t0).unwrap();
    let a = drain(&mut d);
    let Action::Send { id, request } = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(request.confirm_capable, None);
    d.reply(*id, Ok(eof(Some("n1"))), t0);
    assert_eq!(drain(&mut d), vec![Action::Complete]);
    d.completion_result(Ok(()), t0);
    assert_eq!(drain(&mut d), vec![Action::Finished(Ok(()))]);

    let mut d = Download::new("server", RefId::new("R1"), c, true, t0).unwrap();
    let s = sends(&drain(&mut d));
    let error = ReplyBody {
        confirm_expected: Some(true),
        confirm_nonce: Some("n2".into()),
        ..ReplyBody::terminal(ReplyStatus::Error)
    };
    d.reply(s[0].0, Ok(error), t0);
    let a = drain(&mut d);
    assert!(
        !a.iter().any(|a| matches!(a, Action::SendConfirm(_))),
        "{a:?}"
    );
    assert!(matches!(a.last(), Some(Action::Finished(Err(_)))), "{a:?}");
}

/// A ferry sender's refusal code travels with its words: the failure is `Refused` with the
/// typed code, so a tool tells "refused" from "gone" without reading text. Without a code (an
/// NVFlare sender) it stays `RequestFailed`.
#[test]
fn a_typed_refusal_fails_as_refused_with_its_code_and_words() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply_error(
        id,
        ReturnCode::InvalidRequest,
        Some("site-3 cannot pull R1: the sender already serves the 2 receivers it expects"),
        Some(Refusal::ReceiverLimitReached),
        t0,
    );
    assert_eq!(
        d.result(),
        Some(&Err(DownloadFailure::Refused {
            source_fqcn: "server".into(),
            refusal: Refusal::ReceiverLimitReached,
            detail: Some(
                "site-3 cannot pull R1: the sender already serves the 2 receivers it expects"
                    .into()
            ),
        }))
    );
    assert!(d
        .result()
        .unwrap()
        .as_ref()
        .unwrap_err()
        .to_string()
        .starts_with("server refused the request (RECEIVER_LIMIT_REACHED): site-3 cannot"));
    // a timeout with a code is still just a timeout: retried
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply_error(id, ReturnCode::Timeout, None, Some(Refusal::ShutDown), t0);
    assert!(!d.is_finished());
}

/// NVFlare's `max_retries = 0`: the first timeout fails the download at once (one attempt, no
/// backoff, no resend), with a cancel when the producer understands it.
#[test]
fn nvflare_max_retries_zero_fails_at_the_first_timeout() {
    let t0 = Instant::now();
    let c = DownloadConfig {
        max_retries: 0,
        ..cfg()
    };
    let mut d = Download::new("server", RefId::new("R1"), c, true, t0).unwrap();
    let s = sends(&drain(&mut d));
    d.reply(s[0].0, Ok(data(rb(2), b"ab")), t0);
    let _ = drain(&mut d);
    d.consumed(0, Ok(rb(2)), t0);
    assert_eq!(sends(&drain(&mut d)).len(), 1);
    assert_eq!(d.poll_timeout(), Some(t0 + 10 * S));
    d.handle_timeout(t0 + 10 * S);
    let a = drain(&mut d);
    assert!(sends(&a).is_empty(), "no resend: {a:?}");
    assert!(matches!(&a[0], Action::SendCancel(_)), "{a:?}");
    assert_eq!(
        a.last(),
        Some(&Action::Finished(Err(DownloadFailure::RetriesExhausted {
            source_fqcn: "server".into(),
            attempts: 1
        })))
    );
    assert_eq!(d.poll_timeout(), None);
}

/// Start a windowed download of `chunks` 2-byte chunks at `t0` and return it with the ids of
/// the requests in flight after the plan was accepted (chunks 1..=window-1).
fn paced_window(chunks: u64, window: usize, t0: Instant) -> (Download, Vec<RequestId>) {
    let c = DownloadConfig { window, ..cfg() };
    let mut d = Download::new("server", RefId::new("R1"), c, false, t0).unwrap();
    let first = sends(&drain(&mut d))[0].0;
    let mut body = data(rb(2), b"ab");
    body.ferry_plan = Some(planned(2 * chunks, 2));
    d.reply(first, Ok(body), t0);
    assert!(matches!(drain(&mut d)[..], [Action::CheckPlan(_)]));
    d.plan_result(Ok(()), t0);
    let ids = sends(&drain(&mut d))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    (d, ids)
}

#[test]
fn queued_requests_do_not_time_out_while_the_source_keeps_answering() {
    // A source paced at one answer per 4 s with 7 requests queued: the 7th is answered 28 s
    // after it was sent, far past the 10 s timeout, and none of them may time out.
    let t0 = Instant::now();
    let (mut d, ids) = paced_window(8, 8, t0);
    assert_eq!(ids.len(), 7);
    let mut t = t0;
    for (k, id) in ids.iter().enumerate() {
        assert_eq!(
            d.poll_timeout(),
            Some(t + 10 * S),
            "counts from the last answer"
        );
        t += 4 * S;
        d.handle_timeout(t);
        let k = k as u64 + 1;
        d.reply(*id, Ok(data(rb(2 * (k + 1)), b"ab")), t);
        let a = drain(&mut d);
        assert!(
            a.iter().all(|a| !matches!(a, Action::Send { .. })) || k == 7,
            "no retry: {a:?}"
        );
    }
    assert!(!d.is_finished());
    // every data reply arrived: the EOF request went out, nothing was re-sent
    assert_eq!(d.in_flight(), 1);
}

#[test]
fn a_silent_source_still_times_out_every_request_after_the_timeout() {
    let t0 = Instant::now();
    let (mut d, ids) = paced_window(8, 4, t0);
    assert_eq!(ids.len(), 3);
    // one answer at t0 + 3 s, then silence: the rest time out 10 s after that answer
    let t1 = t0 + 3 * S;
    d.reply(ids[0], Ok(data(rb(4), b"ab")), t1);
    drain(&mut d);
    assert_eq!(d.poll_timeout(), Some(t1 + 10 * S));
    d.handle_timeout(t1 + 10 * S - Duration::from_nanos(1));
    assert_eq!(d.in_flight(), 2, "not yet");
    d.handle_timeout(t1 + 10 * S);
    assert_eq!(d.in_flight(), 0, "all timed out at once");
    assert_eq!(d.poll_timeout(), Some(t1 + 12 * S), "first backoff");
}

#[test]
fn a_request_the_source_dropped_times_out_once_the_others_are_answered() {
    let t0 = Instant::now();
    let (mut d, ids) = paced_window(4, 4, t0);
    // chunk 1's request is never answered; chunks 2 and 3 are, 1 s apart
    d.reply(ids[1], Ok(data(rb(6), b"ab")), t0 + S);
    d.reply(ids[2], Ok(data(rb(8), b"ab")), t0 + 2 * S);
    drain(&mut d);
    assert_eq!(d.poll_timeout(), Some(t0 + 12 * S));
    d.handle_timeout(t0 + 12 * S);
    assert!(drain(&mut d).is_empty(), "backing off");
    d.handle_timeout(t0 + 14 * S);
    let s = sends(&drain(&mut d));
    assert_eq!(s, vec![(s[0].0, Some(rb(2)))], "chunk 1 again, same state");
}

#[test]
fn a_late_answer_to_a_retried_request_shows_the_source_is_alive() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let first = sends(&drain(&mut d))[0].0;
    d.handle_timeout(t0 + 10 * S);
    d.handle_timeout(t0 + 12 * S);
    let second = sends(&drain(&mut d))[0].0;
    // the first request's answer arrives late: ignored as data, but it restarts the clock
    d.reply(first, Ok(data(rb(1), b"a")), t0 + 20 * S);
    assert!(drain(&mut d).is_empty());
    assert_eq!(d.poll_timeout(), Some(t0 + 30 * S));
    d.reply(second, Ok(data(rb(1), b"a")), t0 + 25 * S);
    assert!(matches!(
        drain(&mut d)[..],
        [Action::Consume { seq: 0, .. }]
    ));
}
