//! The `ferry` binary interrupted as a user would interrupt it: a sender that stops midway,
//! Ctrl-C on `get` (with and without `--resume`) and on `serve`, a sender nobody pulls from.
//! Real processes on loopback; "midway" is deterministic with `serve --limit-rate`, and every
//! wait is a generous hang guard, never a timing assertion.

mod common;

use common::*;

#[test]
fn sender_that_stops_midway_leaves_nothing_then_resume_completes() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    let data = random_file(&src, 16 * 1024 * 1024, 8);
    let out = d.path().join("out");
    let dest = out.join("big.bin");

    // Without --resume: no file, no .part.
    let (mut server, ticket) = slow_serve(&src, &[]);
    let mut get = get_in_progress(&ticket, &out, &[]);
    server.child.kill().unwrap();
    let st = get.wait();
    assert_eq!(st.code(), Some(1), "{}", get.stderr_text());
    let err = get.stderr_text();
    assert!(
        err.contains("lost the sender") || err.contains("stopped answering"),
        "{err}"
    );
    assert!(err.contains("nothing was left"), "says what is left: {err}");
    let resume = get
        .rest()
        .into_iter()
        .map(|l| json(&l))
        .find(|l| l["event"] == "resume");
    let cmd = resume.expect("a resume event")["command"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        cmd.contains(" get --resume -o ") && cmd.ends_with(&format!(" {ticket}")),
        "{cmd}"
    );
    assert!(list(&out).is_empty(), "{:?}", list(&out));
    drop(server);

    // With --resume: the .part stays, and a second run with a fresh ticket finishes it.
    let (mut server, ticket) = slow_serve(&src, &[]);
    let mut get = get_in_progress(&ticket, &out, &["--resume"]);
    server.child.kill().unwrap();
    assert_eq!(get.wait().code(), Some(1));
    assert!(!dest.exists());
    let part = out.join("big.bin.part");
    assert!(part.exists(), "{:?}", list(&out));
    drop(server);

    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0, "the verified prefix is kept");
    let (mut server, ticket) = serve(&[path_str(&src)]);
    let got = ferry()
        .args(["get", &ticket, "-o", path_str(&out), "--resume"])
        .assert()
        .success();
    let err = String::from_utf8_lossy(&got.get_output().stderr).to_string();
    assert!(
        err.contains("resumed at ")
            && err.contains("of 16.00 MiB")
            && err.contains("verified: size + BLAKE3 pinned by the ticket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(list(&out), ["big.bin"]);
    assert!(server.wait().success());
}

#[test]
fn ctrl_c_on_get_cancels_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    random_file(&src, 16 * 1024 * 1024, 9);
    let out = d.path().join("out");
    // Two expected receivers: the cancelled one alone cannot settle the transaction, so the
    // sender is still serving when it gets its own Ctrl-C.
    let (mut server, ticket) = slow_serve(&src, &["--receivers", "2"]);
    let mut get = get_in_progress(&ticket, &out, &[]);
    get.signal("INT");
    assert_eq!(get.wait().code(), Some(130), "{}", get.stderr_text());
    let rest = get.rest();
    let err = rest.iter().map(|l| json(l)).find(|l| l["event"] == "error");
    assert_eq!(err.expect("json error line")["kind"], "interrupted");
    assert!(list(&out).is_empty(), "{:?}", list(&out));
    server.signal("INT");
    assert_eq!(server.wait().code(), Some(130));
}

#[test]
fn ctrl_c_on_serve_deletes_the_transaction() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    random_file(&src, 16 * 1024 * 1024, 10);
    let out = d.path().join("out");
    let (mut server, ticket) = slow_serve(&src, &[]);
    let mut get = get_in_progress(&ticket, &out, &[]);
    server.signal("INT");
    assert_eq!(server.wait().code(), Some(130), "{}", server.stderr_text());
    assert!(server.stderr_text().contains("interrupted"));
    assert_eq!(get.wait().code(), Some(1));
    let err = get.stderr_text();
    assert!(
        err.contains("no longer serves") || err.contains("lost the sender"),
        "{err}"
    );
    assert!(list(&out).is_empty(), "{:?}", list(&out));
}

#[test]
fn serve_times_out_without_receivers() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.bin");
    random_file(&src, 1000, 11);
    let (mut server, _ticket) = serve(&[path_str(&src), "--timeout", "1s"]);
    assert_eq!(server.wait().code(), Some(1));
    let err = server.stderr_text();
    let line = one_error_line(err.as_bytes());
    assert!(
        line.contains("timeout") && line.contains("--timeout"),
        "{line}"
    );
}

#[test]
fn ctrl_c_on_get_with_resume_keeps_only_the_part_file() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    random_file(&src, 16 * 1024 * 1024, 12);
    let out = d.path().join("out");
    let (mut server, ticket) = slow_serve(&src, &["--receivers", "2"]);
    let mut get = get_in_progress(&ticket, &out, &["--resume"]);
    get.signal("TERM");
    assert_eq!(get.wait().code(), Some(130), "{}", get.stderr_text());
    assert!(!out.join("big.bin").exists());
    assert!(out.join("big.bin.part").exists(), "{:?}", list(&out));
    server.signal("INT");
    assert_eq!(server.wait().code(), Some(130));
}
