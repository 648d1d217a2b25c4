//! Progress actions: start, active and terminal reports, chunk counts and the planned total.

use super::*;

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
