//! The window against a producer that sent a plan: `W` chunks outstanding, reordering for
//! consumers that need order, the EOF request last, and the plan checks (a refused plan, a
//! consumer or producer that departs from it, window 1 staying stop-and-wait).

use super::*;

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
