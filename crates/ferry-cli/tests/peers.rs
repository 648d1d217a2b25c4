//! Peer-assisted mode with real `ferry` processes over loopback TCP (issue 15 §2): receivers
//! started with `get --share` pull from each other as the sender schedules; a sharing peer
//! killed mid-transfer leaves its downstream receiver verified; `serve --no-peers` serves
//! everyone itself. "Mid-transfer" is made deterministic with `serve --limit-rate`; every wait
//! is for an event (a line, an exit) under the common hang guard.

mod common;

use common::*;
use std::path::Path;

/// `ferry --json get TICKET -o OUT --share EXTRA...`, returned once its first bytes arrived.
fn sharing_get(ticket: &str, out: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["--json", "get", ticket, "-o", path_str(out), "--share"];
    args.extend_from_slice(extra);
    let mut get = Proc::spawn(&args);
    get.line_where(|l| json(l)["bytes"].as_u64().is_some_and(|b| b > 0));
    get
}

/// The `peers` event (which sources served it) and the `done` event of a `--json get`.
fn peers_and_done(p: &mut Proc) -> (serde_json::Value, serde_json::Value) {
    let peers = json(&p.line_where(|l| json(l)["event"] == "peers"));
    let done = json(&p.line_where(|l| json(l)["event"] == "done"));
    (peers, done)
}

/// The peers a receiver pulled from (`null` sources are the sender).
fn peer_sources(peers: &serde_json::Value) -> Vec<String> {
    peers["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[test]
fn sharing_receivers_pull_from_each_other_and_the_sender_counts_them_all() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("model.bin");
    let data = random_file(&src, 6 * 1024 * 1024, 7);
    // the sender is slow, so the later receivers join while the first is pulling
    let (mut server, ticket) = serve(&[
        path_str(&src),
        "--receivers",
        "3",
        "--limit-rate",
        "2MiB",
        "--chunk",
        "256KiB",
    ]);
    let mut gets = Vec::new();
    for i in 0..3 {
        let out = d.path().join(format!("out{i}"));
        gets.push((
            sharing_get(&ticket, &out, &["--name", &format!("site-{i}")]),
            out,
        ));
    }
    let mut from_peers = 0;
    for (g, out) in gets.iter_mut() {
        let (peers, done) = peers_and_done(g);
        assert_eq!(
            done["verified"].as_str().map(|v| v.contains("BLAKE3")),
            Some(true),
            "{done}"
        );
        assert_eq!(peers["scheduled"], true, "{peers}");
        from_peers += usize::from(!peer_sources(&peers).is_empty());
        assert!(g.wait().success(), "{}", g.stderr_text());
        assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), data);
    }
    assert!(
        from_peers >= 2,
        "the second and third receivers pull from peers"
    );
    let st = server.wait();
    assert!(st.success(), "serve: {}", server.stderr_text());
}

#[test]
fn the_senders_json_says_who_fed_whom_and_its_egress() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("model.bin");
    let size = 6 * 1024 * 1024 + 17;
    random_file(&src, size, 9);
    let size = size as u64;
    let mut all = vec!["--json", "serve", "--listen", "tcp://127.0.0.1:0"];
    all.extend_from_slice(&[
        path_str(&src),
        "--receivers",
        "2",
        "--limit-rate",
        "2MiB",
        "--chunk",
        "256KiB",
    ]);
    let mut server = Proc::spawn(&all);
    let ticket = json(&server.line())["ticket"].as_str().unwrap().to_string();
    // site-a takes the sender's one slot; site-b is scheduled under it
    let mut a = sharing_get(&ticket, &d.path().join("a"), &["--name", "site-a"]);
    let mut b = sharing_get(&ticket, &d.path().join("b"), &["--name", "site-b"]);
    let (peers_b, _) = peers_and_done(&mut b);
    assert_eq!(
        peer_sources(&peers_b),
        vec!["site-a".to_string()],
        "{peers_b}"
    );
    peers_and_done(&mut a);
    let out = json(&server.line_where(|l| json(l)["event"] == "outcome"));
    assert!(server.wait().success(), "serve: {}", server.stderr_text());
    assert!(a.wait().success() && b.wait().success());
    let receivers = out["receivers"].as_array().unwrap();
    assert_eq!(receivers.len(), 2, "{out}");
    for r in receivers {
        let from_peers: u64 = r["from_peers"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        let credited =
            r["from_sender"].as_u64().unwrap() + from_peers + r["resumed"].as_u64().unwrap();
        assert_eq!(
            credited, size,
            "every receiver's sources add up to the object: {r}"
        );
        assert_eq!(r["status"], "success", "{r}");
    }
    let site = |n: &str| receivers.iter().find(|r| r["name"] == n).unwrap();
    let fed = site("site-b")["from_peers"]["site-a"].as_u64().unwrap_or(0);
    assert!(fed > 0, "site-b was fed by site-a: {out}");
    assert_eq!(site("site-a")["from_sender"].as_u64(), Some(size), "{out}");
    let peer_a = out["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "site-a")
        .unwrap_or_else(|| panic!("site-a is listed as a peer: {out}"));
    assert_eq!(peer_a["receivers"], 1, "{peer_a}");
    assert_eq!(peer_a["bytes"].as_u64(), Some(fed), "{peer_a}");
    // what the sender measured: site-a's copy, and whatever site-b got from it directly
    let sent = out["bytes_sent"].as_u64().unwrap();
    assert_eq!(out["object_bytes"].as_u64(), Some(size));
    assert!(sent >= size && sent < 2 * size, "{out}");
    let ratio = out["egress_ratio"].as_f64().unwrap();
    assert!((ratio - sent as f64 / size as f64).abs() < 1e-9, "{out}");
    // the guide's example has this shape and obeys the same sums
    let doc = guide_peer_report();
    same_shape(&doc, &out, "outcome");
    check_sums(&doc);
    check_sums(&out);
}

/// The ```json block after `<!-- peer-report-json -->` in docs/user-guide.md.
fn guide_peer_report() -> serde_json::Value {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/user-guide.md"),
    )
    .unwrap();
    let at = guide
        .find("<!-- peer-report-json -->")
        .expect("the guide marks its peer report example");
    let block: Vec<&str> = guide[at..]
        .lines()
        .skip_while(|l| l.trim() != "```json")
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .collect();
    serde_json::from_str(&block.join("\n")).expect("the guide's example is JSON")
}

/// Same keys at every level (maps keyed by receiver or peer names excepted), same kinds of
/// values; arrays compared element by element against the real one's first element.
fn same_shape(doc: &serde_json::Value, real: &serde_json::Value, at: &str) {
    use serde_json::Value as V;
    match (doc, real) {
        (V::Object(d), V::Object(r)) => {
            if ["from_peers", "receivers"].iter().any(|k| at.ends_with(k)) && !at.ends_with("]") {
                return; // keyed by names
            }
            let dk: Vec<&String> = d.keys().collect();
            let rk: Vec<&String> = r.keys().collect();
            assert_eq!(dk, rk, "keys of {at}");
            for (k, v) in d {
                same_shape(v, &r[k], &format!("{at}.{k}"));
            }
        }
        (V::Array(d), V::Array(r)) => {
            if let Some(first) = r.first() {
                for (i, v) in d.iter().enumerate() {
                    same_shape(v, first, &format!("{at}[{i}]"));
                }
            }
        }
        (V::Number(_), V::Number(_)) | (V::String(_), V::String(_)) | (V::Bool(_), V::Bool(_)) => {}
        (V::Null, _) | (_, V::Null) => {}
        _ => panic!("{at}: {doc} in the guide, {real} from ferry"),
    }
}

/// A one-object report: each receiver's credits add up to the object, the peers' figures to
/// the receivers' credits, `bytes_sent` to the receivers' bytes.
fn check_sums(v: &serde_json::Value) {
    let size = v["object_bytes"].as_u64().unwrap();
    let receivers = v["receivers"].as_array().unwrap();
    let mut by_peer = std::collections::BTreeMap::<String, (u64, u64)>::new();
    for r in receivers {
        let mut credited = r["from_sender"].as_u64().unwrap() + r["resumed"].as_u64().unwrap();
        credited += r["from_other_peers"].as_u64().unwrap();
        for (p, b) in r["from_peers"].as_object().unwrap() {
            let b = b.as_u64().unwrap();
            credited += b;
            let e = by_peer.entry(p.clone()).or_default();
            e.0 += 1;
            e.1 += b;
        }
        assert_eq!(credited, size, "{r}");
    }
    for p in v["peers"].as_array().unwrap() {
        let (n, b) = by_peer
            .get(p["name"].as_str().unwrap())
            .copied()
            .unwrap_or_default();
        assert_eq!(
            (p["receivers"].as_u64(), p["bytes"].as_u64()),
            (Some(n), Some(b)),
            "{p}"
        );
    }
    let sent: u64 = receivers.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(v["bytes_sent"].as_u64(), Some(sent));
    let ratio = v["egress_ratio"].as_f64().unwrap();
    assert!((ratio - sent as f64 / size as f64).abs() < 1e-9, "{v}");
}

#[test]
fn a_sharing_peer_killed_mid_transfer_leaves_its_downstream_receiver_verified() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("model.bin");
    let data = random_file(&src, 8 * 1024 * 1024, 8);
    let (_server, ticket) = serve(&[
        path_str(&src),
        "--keep-serving",
        "--limit-rate",
        "1MiB",
        "--chunk",
        "256KiB",
    ]);
    // A takes the sender's one slot; B is scheduled under A
    let mut a = sharing_get(&ticket, &d.path().join("a"), &["--name", "peer-a"]);
    let out_b = d.path().join("b");
    let mut b = sharing_get(&ticket, &out_b, &["--name", "peer-b"]);
    a.signal("KILL");
    let _ = a.wait();
    let (peers, done) = peers_and_done(&mut b);
    assert_eq!(done["size"].as_u64(), Some(data.len() as u64), "{done}");
    assert_eq!(std::fs::read(out_b.join("model.bin")).unwrap(), data);
    assert_eq!(peer_sources(&peers), vec!["peer-a".to_string()], "{peers}");
    assert_eq!(
        peers["sources"].as_array().unwrap().last(),
        Some(&serde_json::Value::Null),
        "the rest came from the sender: {peers}"
    );
    // B keeps seeding while the sender lives: stop it like a user would
    b.signal("INT");
    let _ = b.wait();
}

#[test]
fn with_no_peers_the_sender_serves_every_sharing_receiver_itself() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("model.bin");
    let data = random_file(&src, 1024 * 1024, 9);
    let (mut server, ticket) = serve(&[path_str(&src), "--receivers", "2", "--no-peers"]);
    for i in 0..2 {
        let out = d.path().join(format!("o{i}"));
        let got = ferry()
            .args(["--json", "get", &ticket, "-o", path_str(&out), "--share"])
            .assert()
            .success();
        let out_text = String::from_utf8_lossy(&got.get_output().stdout).to_string();
        let peers = out_text
            .lines()
            .map(json)
            .find(|v| v["event"] == "peers")
            .expect("a peers event");
        assert_eq!(peers["scheduled"], false, "{peers}");
        assert_eq!(peers["sources"], serde_json::json!([null]));
        assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), data);
    }
    assert!(server.wait().success());
}

#[test]
fn over_tls_a_receiver_pulls_from_a_peer_whose_certificate_proves_its_name() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let ca = pki.ca();
    let src = d.path().join("model.bin");
    let data = random_file(&src, 4 * 1024 * 1024, 10);
    let tls = |cn: &str| -> Vec<String> {
        let (c, k) = pki.issue(cn);
        vec![
            "--tls-cert".into(),
            c.display().to_string(),
            "--tls-key".into(),
            k.display().to_string(),
            "--tls-ca".into(),
            ca.display().to_string(),
        ]
    };
    let mut sargs: Vec<String> = vec![
        path_str(&src).into(),
        "--receivers".into(),
        "2".into(),
        "--limit-rate".into(),
        "1MiB".into(),
        "--chunk".into(),
        "256KiB".into(),
    ];
    sargs.extend(tls("ferry-sender"));
    let sargs: Vec<&str> = sargs.iter().map(String::as_str).collect();
    let (mut server, ticket) = serve(&sargs);
    let mut gets = Vec::new();
    for name in ["site-a", "site-b"] {
        let out = d.path().join(name);
        let mut extra: Vec<String> = vec!["--name".into(), name.into()];
        extra.extend(tls(name));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        gets.push((sharing_get(&ticket, &out, &extra), out));
    }
    let (peers_a, _) = peers_and_done(&mut gets[0].0);
    let (peers_b, _) = peers_and_done(&mut gets[1].0);
    assert_eq!(peer_sources(&peers_a), Vec::<String>::new(), "{peers_a}");
    assert_eq!(
        peer_sources(&peers_b),
        vec!["site-a".to_string()],
        "{peers_b}"
    );
    for (g, out) in gets.iter_mut() {
        assert!(g.wait().success(), "{}", g.stderr_text());
        assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), data);
    }
    assert!(server.wait().success());
}
