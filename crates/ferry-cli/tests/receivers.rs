//! Who `ferry serve` serves and counts, driven as a user would (issue 12 §3, issue 11 §5):
//! extra receivers are refused at once, a receiver that stopped can come back and resume, a
//! receiver that died is failed promptly by name, `--keep-serving` serves anyone until Ctrl-C.
//! Real processes and TCP; "mid-way" is made deterministic with `serve --limit-rate`, and every
//! wait is for an event (a line, an exit) under a generous hang guard.

mod common;

use common::*;
use std::path::Path;

/// `ferry serve SRC EXTRA...` paced at 1 MiB/s in 256 KiB chunks.
fn slow_serve(src: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![path_str(src), "--limit-rate", "1MiB", "--chunk", "256KiB"];
    args.extend_from_slice(extra);
    serve(&args)
}

/// `ferry --json get TICKET -o OUT EXTRA...`, returned once its first bytes have arrived.
fn get_in_progress(ticket: &str, out: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["--json", "get", ticket, "-o", path_str(out)];
    args.extend_from_slice(extra);
    let mut get = Proc::spawn(&args);
    get.line_where(|l| json(l)["bytes"].as_u64().is_some_and(|b| b > 0));
    get
}

/// The `ferry: error:` line of a failed command's stderr.
fn error_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("ferry: error:"))
        .unwrap_or_else(|| panic!("no error line in: {stderr}"))
        .to_string()
}

/// With `--receivers 1`, a second receiver is refused at its first request, is told so, and
/// writes nothing (it used to download, then be cut off when the sender exited: "lost the
/// sender ... is ferry serve still running?").
#[test]
fn a_receiver_beyond_the_count_is_refused_at_its_first_request() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    random_file(&src, 16 * 1024 * 1024, 21);
    let (mut server, ticket) = slow_serve(&src, &["--receivers", "1"]);
    let mut first = get_in_progress(&ticket, &d.path().join("one"), &["--name", "first"]);
    let out2 = d.path().join("two");
    let second = ferry()
        .args(["get", &ticket, "-o", path_str(&out2), "--name", "second"])
        .assert()
        .code(1);
    let err = error_line(&String::from_utf8_lossy(&second.get_output().stderr));
    assert!(
        err.contains("refused big.bin: it already serves all the receivers it expects")
            && !err.contains("still running"),
        "{err}"
    );
    assert!(list(&out2).is_empty(), "nothing written: {:?}", list(&out2));
    first.signal("INT");
    assert_eq!(first.wait().code(), Some(130));
    server.signal("INT");
    server.wait();
    let serr = server.stderr_text();
    assert!(
        serr.contains("refused second: every expected receiver already has its place"),
        "{serr}"
    );
}

/// A receiver interrupted with `--resume` comes back with the same ticket and name, resumes
/// from its `.part` and counts: the sender completes (its cancel used to fail the transfer, so
/// the sender exited 1 and the retry found nobody).
#[test]
fn an_interrupted_receiver_comes_back_resumes_and_counts() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    let data = random_file(&src, 6 * 1024 * 1024, 22);
    let out = d.path().join("out");
    let (mut server, ticket) = slow_serve(&src, &["--receivers", "1"]);
    let mut get = get_in_progress(&ticket, &out, &["--resume", "--name", "site-a"]);
    get.signal("INT");
    assert_eq!(get.wait().code(), Some(130), "{}", get.stderr_text());
    assert!(out.join("big.bin.part").exists(), "{:?}", list(&out));
    ferry()
        .args([
            "get",
            &ticket,
            "-o",
            path_str(&out),
            "--resume",
            "--name",
            "site-a",
        ])
        .assert()
        .success();
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), data);
    let st = server.wait();
    let serr = server.stderr_text();
    assert!(st.success(), "{st:?}: {serr}");
    assert!(
        serr.contains("site-a cancelled: its place is open again"),
        "{serr}"
    );
    assert!(serr.contains("site-a: big.bin success"), "{serr}");
}

/// `--receivers 2` and one receiver killed mid-download: the sender fails it as soon as its
/// reconnect budget passes and names it (it used to wait its whole `--timeout`, then say "no
/// receiver pulled for 10m" without a name).
#[test]
fn a_killed_receiver_is_failed_promptly_and_named() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    random_file(&src, 4 * 1024 * 1024, 23);
    let (mut server, ticket) = slow_serve(&src, &["--receivers", "2", "--reconnect-timeout", "1s"]);
    let mut victim = get_in_progress(&ticket, &d.path().join("v"), &["--name", "victim"]);
    victim.signal("KILL");
    victim.wait();
    ferry()
        .args([
            "get",
            &ticket,
            "-o",
            path_str(&d.path().join("ok")),
            "--name",
            "healthy",
        ])
        .assert()
        .success();
    let st = server.wait();
    let serr = server.stderr_text();
    assert_eq!(st.code(), Some(1), "{serr}");
    assert!(
        serr.contains("victim: big.bin failed (connection lost, not back within 1s)"),
        "{serr}"
    );
    assert!(
        error_line(&serr).contains("victim failed on big.bin (connection lost"),
        "{serr}"
    );
}

/// `--keep-serving` serves anyone with the ticket, any number of times, until Ctrl-C; then it
/// exits 0 with a summary of who got everything.
#[test]
fn keep_serving_serves_anyone_until_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.bin");
    let data = random_file(&src, 300_000, 24);
    let (mut server, ticket) = serve(&[path_str(&src), "--keep-serving"]);
    for who in ["r1", "r2", "r3"] {
        let out = d.path().join(who);
        ferry()
            .args(["get", &ticket, "-o", path_str(&out), "--name", who])
            .assert()
            .success();
        assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), data);
    }
    assert!(server.child.try_wait().unwrap().is_none(), "still serving");
    server.signal("INT");
    let st = server.wait();
    let serr = server.stderr_text();
    assert_eq!(st.code(), Some(0), "{serr}");
    assert!(
        serr.contains("stopped serving: 3 receivers got every object (r1, r2, r3)"),
        "{serr}"
    );
    // and it is refused with the options it replaces
    ferry()
        .args([
            "serve",
            path_str(&src),
            "--keep-serving",
            "--receivers",
            "2",
        ])
        .assert()
        .code(2);
}
