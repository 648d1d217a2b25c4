//! How a download fails and what it sends on the way out: non-retryable codes, the sender's
//! error text and typed refusal, producer and consumer errors, abort, source failure, bad
//! replies; cancel when the producer can, confirm only when asked and allowed.

use super::*;

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
