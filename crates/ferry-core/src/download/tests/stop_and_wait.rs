//! Stop-and-wait (NVFlare's mode, and any download without a plan): one request at a time,
//! each carrying the state the consumer returned; resume from an initial state; stale replies.

use super::*;

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
fn duplicate_replies_are_ignored() {
    let t0 = Instant::now();
    let mut d = Download::new("server", RefId::new("R1"), cfg(), true, t0).unwrap();
    let id = sends(&drain(&mut d))[0].0;
    d.reply(id, Ok(data(rb(1), b"a")), t0);
    d.reply(id, Ok(data(rb(1), b"a")), t0);
    assert_eq!(drain(&mut d).len(), 1);
}
