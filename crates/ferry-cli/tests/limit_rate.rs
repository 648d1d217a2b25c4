//! `ferry serve --limit-rate` end to end on real processes: a capped transfer finishes (just
//! slower) even when the receiver's window holds more requests than it waits for, a cap of 0
//! is a usage error, and Ctrl-C acts at once on a capped sender and on its receiver. Every
//! wait is a hang guard, generous for a loaded 2-core machine.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// How long a process may take to exit after Ctrl-C: the expected is well under a second;
/// before the fix it waited for its throttled pulls' turns (tens of seconds here).
const PROMPT_EXIT: Duration = Duration::from_secs(10);

/// Wait for `p` to exit within `bound`; panics (and kills it) otherwise.
fn exits_within(p: &mut Proc, bound: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = p.child.try_wait().expect("try_wait") {
            return st;
        }
        if start.elapsed() > bound {
            let _ = p.child.kill();
            panic!("{what} did not exit within {bound:?} of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_capped_20mib_get_completes_with_a_request_timeout_shorter_than_its_window() {
    // The reported case: `--limit-rate 1MiB`, `get --request-timeout 5s`. The receiver keeps 8
    // requests in flight, so before the fix its last ones waited 8 s for their turn at the
    // capped sender, timed out, were retried onto the capped link, and the get failed at
    // about 13 of 20 MiB ("the sender stopped answering (4 attempts for one chunk)"). Now a
    // request times out only when the sender is silent for 5 s, and the capped sender answers
    // each receiver in turn, several times a second: the get takes the cap's ~20 s.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    let data = random_file(&src, 20 << 20, 21);
    let (mut server, ticket) = serve(&[path_str(&src), "--limit-rate", "1MiB"]);
    let out = d.path().join("out");
    let got = ferry()
        .args([
            "get",
            &ticket,
            "-o",
            path_str(&out),
            "--request-timeout",
            "5s",
        ])
        .assert();
    let o = got.get_output();
    assert!(
        o.status.success(),
        "get: {:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(std::fs::read(out.join("big.bin")).unwrap() == data);
    assert!(server.wait().success(), "{}", server.stderr_text());
}

#[test]
fn a_rate_cap_of_zero_is_a_usage_error() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.bin");
    random_file(&src, 1000, 22);
    for zero in ["0", "0KiB"] {
        let a = ferry()
            .args(["serve", path_str(&src), "--listen", "tcp://127.0.0.1:0"])
            .args(["--limit-rate", zero])
            .assert()
            .code(2);
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(
            err.contains("--limit-rate") && err.contains("never send anything"),
            "says why: {err}"
        );
        assert!(a.get_output().stdout.is_empty(), "no ticket printed");
    }
}

#[test]
fn ctrl_c_acts_at_once_on_a_capped_sender_and_on_its_receiver() {
    // 64 KiB/s: before the fix each 1 MiB chunk held the link for 16 s and a Ctrl-C on the
    // sender waited for the pulls already in its throttle.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    random_file(&src, 4 << 20, 23);

    // The receiver first: Ctrl-C cancels the get at once, nothing left behind.
    let out = d.path().join("out-1");
    let (mut server, ticket) =
        serve(&[path_str(&src), "--limit-rate", "64KiB", "--receivers", "2"]);
    let mut get = Proc::spawn(&["--json", "get", &ticket, "-o", path_str(&out)]);
    get.line_where(|l| json(l)["bytes"].as_u64().is_some_and(|b| b > 0));
    get.signal("INT");
    assert_eq!(
        exits_within(&mut get, PROMPT_EXIT, "ferry get").code(),
        Some(130)
    );
    assert!(list(&out).is_empty(), "{:?}", list(&out));

    // Then the sender, with another receiver mid-transfer: it exits 130 at once, and the
    // receiver fails at once too (the transaction is gone), leaving nothing.
    let out = d.path().join("out-2");
    let mut get = Proc::spawn(&["--json", "get", &ticket, "-o", path_str(&out)]);
    get.line_where(|l| json(l)["bytes"].as_u64().is_some_and(|b| b > 0));
    server.signal("INT");
    let st = exits_within(&mut server, PROMPT_EXIT, "ferry serve");
    assert_eq!(st.code(), Some(130), "{}", server.stderr_text());
    assert!(server.stderr_text().contains("interrupted"));
    assert_eq!(
        exits_within(&mut get, PROMPT_EXIT, "ferry get (sender gone)").code(),
        Some(1)
    );
    assert!(list(&out).is_empty(), "{:?}", list(&out));
}
