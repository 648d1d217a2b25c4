//! One ticket for a whole serve, and tickets that survive a shell: real `ferry serve` and
//! `ferry get` processes (and, for hostile manifests, an in-process sender) on loopback.

mod common;
#[path = "integrity/sender.rs"]
#[allow(dead_code)]
mod sender;

use common::*;
use ferry::manifest::{Entry, Manifest};
use ferry::objects::{BytesObject, Pin};
use ferry::ticket::{Kind, Ticket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

fn stdout_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

/// `ckpt/` with a nested file, an executable one with an old mtime, and a read-only one.
fn tree(root: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let dir = root.join("ckpt");
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    let files = vec![
        (
            "ckpt/config.json",
            random_file(&dir.join("config.json"), 1000, 41),
        ),
        ("ckpt/run.sh", random_file(&dir.join("run.sh"), 300, 42)),
        (
            "ckpt/shards/0.bin",
            random_file(&dir.join("shards/0.bin"), 2 * 1024 * 1024 + 5, 43),
        ),
        (
            "ckpt/shards/1.bin",
            random_file(&dir.join("shards/1.bin"), 0, 44),
        ),
    ];
    let set_mode = |rel: &str, mode: u32| {
        std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let old = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    std::fs::File::open(dir.join("run.sh"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    set_mode("ckpt/run.sh", 0o750);
    set_mode("ckpt/shards/0.bin", 0o440);
    files
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn one_ticket_fetches_a_whole_directory_with_modes_and_times() {
    let d = tempfile::tempdir().unwrap();
    let files = tree(d.path());
    let (mut server, ticket) = serve(&[path_str(&d.path().join("ckpt"))]);
    let t: Ticket = ticket.parse().unwrap();
    assert_eq!((t.kind, t.name.as_str()), (Kind::Set, "ckpt"));
    let out = d.path().join("out");
    let a = ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .assert()
        .success();
    // one path per file on stdout, one summary line on stderr
    let mut printed: Vec<String> = stdout_of(&a).lines().map(str::to_string).collect();
    printed.sort();
    let mut want: Vec<String> = files
        .iter()
        .map(|(n, _)| out.join(n).display().to_string())
        .collect();
    want.sort();
    assert_eq!(printed, want);
    let err = stderr_of(&a);
    assert!(
        err.contains("got ckpt (4 files, ") && err.contains("pinned by the ticket's manifest"),
        "{err}"
    );
    for (name, data) in &files {
        assert_eq!(&std::fs::read(out.join(name)).unwrap(), data, "{name}");
        let (src, dst) = (d.path().join(name), out.join(name));
        assert_eq!(mode(&dst), mode(&src), "mode of {name}");
        assert_eq!(mtime(&dst), mtime(&src), "mtime of {name}");
    }
    assert_eq!(mode(&out.join("ckpt/run.sh")), 0o750);
    assert_eq!(
        list(&out),
        [
            "ckpt/config.json",
            "ckpt/run.sh",
            "ckpt/shards/0.bin",
            "ckpt/shards/1.bin"
        ]
    );
    // serve printed exactly one ticket, and the receiver got every object
    let st = server.wait();
    assert!(st.success(), "{st:?} {}", server.stderr_text());
    assert!(server.rest().is_empty(), "only one ticket on stdout");
}

#[test]
fn several_paths_are_one_set_and_json_reports_one_progress() {
    let d = tempfile::tempdir().unwrap();
    let a = random_file(&d.path().join("a.bin"), 700_000, 45);
    let b = random_file(&d.path().join("b.bin"), 900_000, 46);
    let mut server = Proc::spawn(&[
        "--json",
        "serve",
        path_str(&d.path().join("a.bin")),
        path_str(&d.path().join("b.bin")),
        "--listen",
        "tcp://127.0.0.1:0",
        "--ticket-format",
        "url",
    ]);
    let ev = json(&server.line());
    assert_eq!(ev["event"], "ticket");
    assert_eq!(ev["kind"], "set");
    assert_eq!(ev["name"], "ferry-set");
    assert_eq!(ev["total"], 1_600_000);
    let objects = ev["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 2, "{ev}");
    assert_eq!(objects[1]["name"], "b.bin");
    let ticket = ev["ticket"].as_str().unwrap();
    assert!(
        ticket.starts_with("ferry+tcp://"),
        "--ticket-format url: {ticket}"
    );
    assert_eq!(
        ev["url"].as_str().unwrap().parse::<Ticket>().unwrap(),
        ticket.parse::<Ticket>().unwrap()
    );
    let out = d.path().join("out");
    let got = ferry()
        .args(["--json", "get", ticket, "-o", path_str(&out)])
        .assert()
        .success();
    let lines: Vec<serde_json::Value> = stdout_of(&got).lines().map(json).collect();
    let progress: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["event"] == "progress").collect();
    assert!(!progress.is_empty());
    for p in &progress {
        assert_eq!(p["name"], "ferry-set", "one progress for the set: {p}");
        assert_eq!(p["total"], 1_600_000);
        assert_eq!(p["files"], 2);
    }
    let done: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "done").collect();
    assert_eq!(done.len(), 2, "{lines:?}");
    assert!(done.iter().all(|l| l["set"] == "ferry-set"));
    let summary = lines
        .iter()
        .find(|l| l["event"] == "set")
        .expect("a set event");
    assert_eq!(summary["files_ok"], 2);
    assert_eq!(summary["bytes"], 1_600_000);
    assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(out.join("b.bin")).unwrap(), b);
    assert!(server.wait().success(), "{}", server.stderr_text());
}

/// A set interrupted after some files: `get --resume` with a fresh ticket keeps the complete
/// files (checked, not fetched again), continues the partial one from its part, and the new
/// sender counts this receiver for every object (it exits 0).
#[test]
fn a_set_resumes_file_by_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let small = random_file(&dir.join("a-small.bin"), 100_000, 47);
    let big = random_file(&dir.join("b-big.bin"), 16 * 1024 * 1024, 48);
    let out = d.path().join("out");
    let args = [path_str(&dir), "--limit-rate", "1MiB", "--chunk", "256KiB"];
    let (mut server, ticket) = serve(&args);
    let mut get = Proc::spawn(&[
        "--json",
        "get",
        &ticket,
        "-o",
        path_str(&out),
        "--resume",
        "--sync-every",
        "256KiB",
    ]);
    // the small file is in, and some of the big one
    get.line_where(|l| {
        let v = json(l);
        v["event"] == "progress"
            && v["files_done"].as_u64() >= Some(1)
            && v["bytes"]
                .as_u64()
                .is_some_and(|b| b > 100_000 + 512 * 1024)
    });
    server.child.kill().unwrap();
    assert_eq!(get.wait().code(), Some(1), "{}", get.stderr_text());
    let rest: Vec<serde_json::Value> = get.rest().iter().map(|l| json(l)).collect();
    let resume = rest
        .iter()
        .find(|l| l["event"] == "resume")
        .expect("a resume event");
    assert!(
        resume["command"].as_str().unwrap().contains("--resume"),
        "{resume}"
    );
    assert_eq!(std::fs::read(out.join("run/a-small.bin")).unwrap(), small);
    assert!(!out.join("run/b-big.bin").exists());
    assert!(out.join("run/b-big.bin.part").exists(), "{:?}", list(&out));
    drop(server);

    let (mut server, ticket) = serve(&[path_str(&dir)]);
    let a = ferry()
        .args(["get", &ticket, "-o", path_str(&out), "--resume"])
        .assert()
        .success();
    let err = stderr_of(&a);
    assert!(err.contains("1 complete files kept"), "{err}");
    assert!(err.contains("got run (2 files, resumed at "), "{err}");
    assert_eq!(std::fs::read(out.join("run/b-big.bin")).unwrap(), big);
    assert_eq!(list(&out), ["run/a-small.bin", "run/b-big.bin"]);
    let st = server.wait();
    assert!(
        st.success(),
        "the kept file counted: {}",
        server.stderr_text()
    );
}

#[test]
fn an_existing_file_of_a_set_needs_force_or_resume() {
    let d = tempfile::tempdir().unwrap();
    tree(d.path());
    let out = d.path().join("out");
    std::fs::create_dir_all(out.join("ckpt")).unwrap();
    std::fs::write(out.join("ckpt/config.json"), b"precious").unwrap();
    let (mut server, ticket) = serve(&[path_str(&d.path().join("ckpt"))]);
    for extra in [&[][..], &["--resume"][..]] {
        let a = ferry()
            .args(["get", &ticket, "-o", path_str(&out)])
            .args(extra)
            .assert()
            .code(2);
        let err = stderr_of(&a);
        assert!(
            err.contains("config.json already exists") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(list(&out), ["ckpt/config.json"], "nothing fetched");
    }
    assert_eq!(
        std::fs::read(out.join("ckpt/config.json")).unwrap(),
        b"precious"
    );
    ferry()
        .args(["get", &ticket, "-o", path_str(&out), "--force"])
        .assert()
        .success();
    assert!(server.wait().success());
}

/// Served one by one, as before (e.g. for NVFlare receivers).
#[test]
fn ticket_per_object_prints_one_ticket_each() {
    let d = tempfile::tempdir().unwrap();
    tree(d.path());
    let mut server = Proc::spawn(&[
        "serve",
        path_str(&d.path().join("ckpt")),
        "--listen",
        "tcp://127.0.0.1:0",
        "--ticket-per-object",
    ]);
    let tickets: Vec<String> = (0..4).map(|_| server.line()).collect();
    let kinds: Vec<Kind> = tickets
        .iter()
        .map(|t| t.parse::<Ticket>().unwrap().kind)
        .collect();
    assert_eq!(kinds, [Kind::File; 4]);
    let out = d.path().join("out");
    ferry()
        .args(["get", "-o", path_str(&out)])
        .args(&tickets)
        .assert()
        .success();
    assert_eq!(list(&out).len(), 4);
    assert!(server.wait().success());
}

/// The compact ticket needs no quoting: a real shell runs `ferry get TICKET` unquoted. Cut
/// short (a line wrapped in a terminal or an e-mail), it is refused with exit 2.
#[test]
fn compact_tickets_survive_a_shell_and_cut_ones_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = random_file(&d.path().join("w.bin"), 50_000, 49);
    let (mut server, ticket) = serve(&[path_str(&d.path().join("w.bin"))]);
    let out = d.path().join("out");
    for cut in [10, ticket.len() / 2, ticket.len() - 1] {
        let a = ferry()
            .args(["get", &ticket[..cut], "-o", path_str(&out)])
            .assert()
            .code(2);
        let err = stderr_of(&a);
        assert!(
            err.contains("malformed ticket") && err.contains("cut short or mistyped"),
            "{err}"
        );
    }
    assert!(list(&out).is_empty());
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} get {ticket} -o {}",
            bin().display(),
            path_str(&out)
        ))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    assert_eq!(std::fs::read(out.join("w.bin")).unwrap(), data);
    assert!(server.wait().success());
}

/// A sender whose manifest does not match the ticket, or whose manifest names a path outside
/// the output directory, gets nothing written.
#[test]
fn hostile_manifests_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    // several expected receivers, so that the transaction is still open for the second get
    let s = sender::Sender::start(3);
    let entry = |name: &str| Entry {
        name: name.into(),
        kind: "file".into(),
        size: 3,
        b3: blake3::hash(b"abc").to_hex().to_string(),
        ref_id: "R1".into(),
        mode: None,
        mtime: None,
        mtime_ns: None,
    };
    let manifest = |names: &[&str]| Manifest {
        entries: names.iter().map(|n| entry(n)).collect(),
        ..Manifest::new()
    };
    let offer = |m: &Manifest| {
        let bytes = m.encode();
        let pin = Pin::new(bytes.len() as u64, blake3::hash(&bytes));
        let rid = s.offer(Arc::new(BytesObject::new(bytes.into())));
        (rid, pin)
    };
    let (evil, pin) = offer(&manifest(&["ok.bin", "../escape.bin"]));
    let (rid, _) = offer(&manifest(&["ok.bin"]));
    let (_, other) = offer(&manifest(&["other.bin"]));
    // 1. an escaping name, pinned by the ticket: refused after verification
    let rid_ok = rid.clone();
    let rid = evil;
    let a = ferry()
        .args([
            "get",
            &s.ticket(&rid, Kind::Set, "evil", pin),
            "-o",
            path_str(&out),
        ])
        .assert()
        .code(1);
    let err = stderr_of(&a);
    assert!(
        err.contains("refusing the set evil") && err.contains("not a plain relative path"),
        "{err}"
    );
    // 2. the sender serves another manifest than the ticket pins
    let rid = rid_ok;
    let a = ferry()
        .args([
            "get",
            &s.ticket(&rid, Kind::Set, "swapped", other),
            "-o",
            path_str(&out),
        ])
        .assert()
        .code(1);
    let err = stderr_of(&a);
    assert!(
        err.contains("not what the ticket pins") && err.contains("set manifest"),
        "{err}"
    );
    assert!(list(&out).is_empty(), "{:?}", list(&out));
    assert!(!d.path().join("escape.bin").exists());
}
