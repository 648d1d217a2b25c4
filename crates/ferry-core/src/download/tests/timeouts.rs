//! Timeouts and retries: exponential backoff, the retry limit, transport timeouts reported by
//! the glue, and the source's silence clock under a paced window.

use super::*;

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
