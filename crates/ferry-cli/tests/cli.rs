//! The `ferry` binary driven as a user would: real processes, real TCP on OS-assigned loopback
//! ports, real files, real TLS certificates. No timing assertions: every wait is a generous
//! hang guard, and "mid-way" is made deterministic with `serve --limit-rate`.

mod common;

use common::*;
use ferry::ticket::{Kind, Ticket};
use predicates::prelude::*;

#[test]
fn serve_then_get_delivers_identical_bytes() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("weights.bin");
    let data = random_file(&src, 3 * 1024 * 1024 + 17, 1);
    let (mut server, ticket) = serve(&[path_str(&src)]);
    let t: Ticket = ticket.parse().unwrap();
    assert!(!t.tls && t.addr.starts_with("127.0.0.1:"), "{t:?}");
    assert!(
        !t.addr.ends_with(":0"),
        "ticket must carry the bound port: {t:?}"
    );
    assert!(
        ticket.starts_with("ferry1") && ticket.bytes().all(|b| b.is_ascii_alphanumeric()),
        "compact by default: {ticket}"
    );
    let out = d.path().join("out");
    let got = ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&got.get_output().stdout).to_string();
    let dest = out.join("weights.bin");
    assert_eq!(stdout.trim(), dest.display().to_string());
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(list(&out), ["weights.bin"], "no .part or other leftovers");
    let st = server.wait();
    assert!(st.success(), "serve: {st:?} {}", server.stderr_text());
}

#[test]
fn json_mode_serves_a_directory_to_two_receivers() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("ckpt");
    std::fs::create_dir_all(tree.join("shards")).unwrap();
    let a = random_file(&tree.join("config.bin"), 1000, 2);
    let b = random_file(&tree.join("shards/0.bin"), 2 * 1024 * 1024, 3);
    let mut server = Proc::spawn(&[
        "--json",
        "serve",
        path_str(&tree),
        "--listen",
        "tcp://127.0.0.1:0",
        "--receivers",
        "2",
        "--chunk",
        "256KiB",
        "--ticket-per-object",
    ]);
    let t1 = json(&server.line());
    let t2 = json(&server.line());
    assert_eq!(t1["event"], "ticket");
    assert_eq!(t1["name"], "ckpt/config.bin");
    assert_eq!(t2["name"], "ckpt/shards/0.bin");
    assert_eq!(t2["size"], 2 * 1024 * 1024);
    let tickets = [
        t1["ticket"].as_str().unwrap().to_string(),
        t2["ticket"].as_str().unwrap().to_string(),
    ];
    for site in ["site-a", "site-b"] {
        let out = d.path().join(site);
        let got = ferry()
            .args(["--json", "get", "--name", site, "-o", path_str(&out)])
            .args(&tickets)
            .assert()
            .success();
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&got.get_output().stdout)
            .lines()
            .map(json)
            .collect();
        let done: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "done").collect();
        assert_eq!(done.len(), 2, "{lines:?}");
        assert!(lines.iter().any(|l| l["event"] == "progress"));
        assert_eq!(std::fs::read(out.join("ckpt/config.bin")).unwrap(), a);
        assert_eq!(std::fs::read(out.join("ckpt/shards/0.bin")).unwrap(), b);
    }
    assert!(server.wait().success(), "{}", server.stderr_text());
    let rest: Vec<serde_json::Value> = server.rest().iter().map(|l| json(l)).collect();
    let outcome = rest
        .iter()
        .find(|l| l["event"] == "outcome")
        .expect("outcome line");
    assert_eq!(outcome["status"], "completed");
    let received = rest.iter().filter(|l| l["event"] == "received").count();
    assert_eq!(received, 4, "2 objects x 2 receivers: {rest:?}");
}

#[test]
fn safetensors_are_served_as_a_tensor_dict() {
    use ferry::objects::tensors::Dtype;
    use ferry::objects::{Tensor, TensorDict};
    let d = tempfile::tempdir().unwrap();
    let mut dict = TensorDict::new();
    for i in 0..3u8 {
        let data: Vec<u8> = (0..4096u32).map(|x| (x as u8) ^ i).collect();
        let t = Tensor::new(Dtype::F32, vec![32, 32], bytes::Bytes::from(data)).unwrap();
        dict.insert(format!("layer.{i}"), t).unwrap();
    }
    let src = d.path().join("model.safetensors");
    std::fs::write(&src, dict.to_safetensors().unwrap()).unwrap();
    let (mut server, ticket) = serve(&[path_str(&src), "--tensors"]);
    assert_eq!(ticket.parse::<Ticket>().unwrap().kind, Kind::Tensors);
    let out = d.path().join("out");
    ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .assert()
        .success();
    let got = TensorDict::load_safetensors(out.join("model.safetensors")).unwrap();
    assert_eq!(got.len(), 3);
    for (name, t) in dict.iter() {
        let g = got.get(name).expect(name);
        assert_eq!(g.shape(), t.shape());
        assert_eq!(g.data(), t.data());
    }
    assert!(server.wait().success());
}

/// The JSON header of a safetensors file.
fn safetensors_header(bytes: &[u8]) -> serde_json::Value {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).expect("a JSON header")
}

/// A PyTorch checkpoint's `{"format": "pt"}` (the safetensors `__metadata__`) survives
/// `serve --tensors` and `get`. The file is written by hand, as torch's `save_file` writes it.
#[test]
fn tensors_keep_their_safetensors_metadata() {
    let d = tempfile::tempdir().unwrap();
    let header = br#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend((0..16u8).map(|i| i * 3));
    let src = d.path().join("ckpt.safetensors");
    std::fs::write(&src, &file).unwrap();
    let (mut server, ticket) = serve(&[path_str(&src), "--tensors"]);
    let out = d.path().join("out");
    ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .assert()
        .success();
    let got = std::fs::read(out.join("ckpt.safetensors")).unwrap();
    let h = safetensors_header(&got);
    assert_eq!(
        h["__metadata__"],
        serde_json::json!({"format": "pt"}),
        "{h}"
    );
    assert_eq!(h["w"]["shape"], serde_json::json!([2, 2]), "{h}");
    assert_eq!(&got[got.len() - 16..], &file[file.len() - 16..]);
    assert!(server.wait().success());
}

#[test]
fn mutual_tls_end_to_end() {
    let pki = Pki::new();
    let (scert, skey) = pki.issue("ferry-sender");
    let (ccert, ckey) = pki.issue("site-1");
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("secret.bin");
    let data = random_file(&src, 100_000, 4);
    let (mut server, ticket) = serve(&[
        path_str(&src),
        "--tls-cert",
        path_str(&scert),
        "--tls-key",
        path_str(&skey),
        "--tls-ca",
        path_str(&pki.ca()),
    ]);
    assert!(ticket.parse::<Ticket>().unwrap().tls, "{ticket}");
    let out = d.path().join("out");
    // Without TLS files: a usage error, before any connection.
    assert!(
        error_line(ferry().args(["get", &ticket, "-o", path_str(&out)]), 2).contains("--tls-cert")
    );
    // With them (the cell name defaults to the certificate's CN).
    ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .args(["--tls-cert", path_str(&ccert), "--tls-key", path_str(&ckey)])
        .args(["--tls-ca", path_str(&pki.ca())])
        .assert()
        .success();
    assert_eq!(std::fs::read(out.join("secret.bin")).unwrap(), data);
    assert!(server.wait().success());
}

// ---------------------------------------------------------------------------------------------
// Bad input: one line saying what and what to do, the right exit code, nothing at the final path
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_tickets_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    for bad in [
        "hello",
        "ferry+tcp://127.0.0.1/sender/R1",
        "ferry+tcp://127.0.0.1:7000/sender/R1?name=../../etc/passwd",
    ] {
        let line = error_line(ferry().args(["get", bad, "-o", path_str(d.path())]), 2);
        assert!(line.contains("malformed ticket"), "{line}");
        assert!(line.contains("copy it whole"), "says what to do: {line}");
    }
    assert!(list(d.path()).is_empty());
}

#[test]
fn unreachable_sender_fails_with_exit_1() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = tempfile::tempdir().unwrap();
    let ticket = format!(
        "ferry+tcp://127.0.0.1:{port}/ferry-sender/R1?kind=file&name=x.bin&size=1&b3={}",
        "ab".repeat(32)
    );
    let a = ferry()
        .args(["get", &ticket, "-o", path_str(d.path())])
        .assert()
        .code(1);
    let line = one_error_line(&a.get_output().stderr);
    assert!(line.contains("nothing listens"), "{line}");
    assert!(line.contains("ferry serve"), "{line}");
    assert!(list(d.path()).is_empty(), "{:?}", list(d.path()));
}

#[test]
fn sender_refuses_a_receiver_it_does_not_expect() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.bin");
    random_file(&src, 10_000, 5);
    let (mut server, ticket) = serve(&[path_str(&src), "--allow", "site-1", "--timeout", "5m"]);
    let out = d.path().join("out");
    let a = ferry()
        .args(["get", &ticket, "--name", "intruder", "-o", path_str(&out)])
        .assert()
        .code(1);
    let line = one_error_line(&a.get_output().stderr);
    // The sender's own reason, then what to do.
    assert!(
        line.contains("refused") && line.contains("intruder is not an expected receiver"),
        "{line}"
    );
    assert!(
        line.contains("--allow list") && line.contains("--name"),
        "{line}"
    );
    assert!(list(&out).is_empty(), "{:?}", list(&out));
    // The expected receiver still gets it.
    ferry()
        .args(["get", &ticket, "--name", "site-1", "-o", path_str(&out)])
        .assert()
        .success();
    assert!(server.wait().success(), "{}", server.stderr_text());
}

#[test]
fn serving_a_missing_path_is_a_usage_error() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.bin");
    let line = error_line(
        ferry().args(["serve", path_str(&missing), "--listen", "tcp://127.0.0.1:0"]),
        2,
    );
    assert!(
        line.contains("nope.bin") && line.contains("no such file"),
        "{line}"
    );
}

/// A sender's name travels in every ticket it prints, and a ticket carries at most 1,024 bytes
/// of it: `serve` and `relay` refuse a longer `--name` before they start, instead of printing
/// tickets that every receiver would refuse.
#[test]
fn a_sender_name_no_ticket_can_carry_is_a_usage_error() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.bin");
    random_file(&src, 1_000, 3);
    let long = "n".repeat(1025);
    assert_eq!(long.len(), 1025);
    let upstream = format!(
        "ferry+tcp://127.0.0.1:9/server/R1?kind=file&name=a.bin&size=1&b3={}",
        "ab".repeat(32)
    );
    for args in [
        vec!["serve", path_str(&src), "--listen", "tcp://127.0.0.1:0"],
        vec!["relay", upstream.as_str(), "--listen", "tcp://127.0.0.1:0"],
    ] {
        let line = error_line(ferry().args(&args).args(["--name", &long]), 2);
        assert!(
            line.contains("--name is 1025 bytes") && line.contains("shorter cell name"),
            "{args:?}: {line}"
        );
    }
}

#[test]
fn existing_destination_needs_force() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.bin");
    let data = random_file(&src, 50_000, 6);
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("a.bin"), b"precious").unwrap();
    let (mut server, ticket) = serve(&[path_str(&src)]);
    let line = error_line(ferry().args(["get", &ticket, "-o", path_str(&out)]), 2);
    assert!(
        line.contains("already exists") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), b"precious");
    ferry()
        .args(["get", &ticket, "-o", path_str(&out), "--force"])
        .assert()
        .success();
    assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), data);
    assert!(server.wait().success());
}

#[test]
fn missing_or_wrong_tls_files() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.bin");
    random_file(&src, 1000, 7);
    let pki = Pki::new();
    let (cert, key) = pki.issue("ferry-sender");
    let missing = d.path().join("missing.pem");
    // missing file
    let line = error_line(
        ferry()
            .args(["serve", path_str(&src), "--listen", "tcp://127.0.0.1:0"])
            .args(["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)])
            .args(["--tls-ca", path_str(&missing)]),
        2,
    );
    assert!(
        line.contains("--tls-ca") && line.contains("no such file"),
        "{line}"
    );
    // not PEM at all
    let junk = d.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let line = error_line(
        ferry()
            .args(["serve", path_str(&src), "--listen", "tcp://127.0.0.1:0"])
            .args(["--tls-cert", path_str(&junk), "--tls-key", path_str(&key)])
            .args(["--tls-ca", path_str(&pki.ca())]),
        2,
    );
    assert!(
        line.contains("--tls-cert") && line.contains("not a PEM file"),
        "{line}"
    );
    // a CA that did not sign the sender: the receiver refuses the handshake
    let (mut server, ticket) = serve(&[
        path_str(&src),
        "--tls-cert",
        path_str(&cert),
        "--tls-key",
        path_str(&key),
        "--tls-ca",
        path_str(&pki.ca()),
    ]);
    let other = Pki::new();
    let (ccert, ckey) = other.issue("site-1");
    let out = d.path().join("out");
    let a = ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .args(["--tls-cert", path_str(&ccert), "--tls-key", path_str(&ckey)])
        .args(["--tls-ca", path_str(&other.ca())])
        .assert()
        .failure();
    assert_eq!(a.get_output().status.code(), Some(2));
    let line = one_error_line(&a.get_output().stderr);
    assert!(line.contains("TLS") && line.contains("--tls-ca"), "{line}");
    assert!(list(&out).is_empty());
    // the right CA, but a certificate the sender's CA did not sign: the sender refuses us
    let a = ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .args(["--tls-cert", path_str(&ccert), "--tls-key", path_str(&ckey)])
        .args(["--tls-ca", path_str(&pki.ca())])
        .assert()
        .failure();
    assert_eq!(a.get_output().status.code(), Some(2));
    let line = one_error_line(&a.get_output().stderr);
    assert!(
        line.contains("refused our TLS certificate")
            && line.contains("signed by the CA the sender trusts"),
        "says what to fix: {line}"
    );
    assert!(list(&out).is_empty());
    server.signal("INT");
    assert_eq!(server.wait().code(), Some(130));
}

#[test]
fn usage_errors_exit_2() {
    ferry().args(["get"]).assert().code(2);
    ferry()
        .args(["serve", "x", "--chunk", "12 parsecs"])
        .assert()
        .code(2);
    ferry().args(["demo", "--receivers", "0"]).assert().code(2);
    ferry()
        .args(["serve", "x", "--receivers", "2", "--allow", "site-1"])
        .assert()
        .code(2);
    ferry()
        .args(["--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Exit codes: 0 ok, 1 transfer failed, 2 usage or input error",
        ));
}

// ---------------------------------------------------------------------------------------------
// The demo
// ---------------------------------------------------------------------------------------------

#[test]
fn demo_smoke_json() {
    let a = ferry()
        .args(["--json", "demo", "--receivers", "2", "--size", "8MiB"])
        .assert()
        .success();
    let out = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    let last = out.lines().last().expect("a result line");
    let v = json(last);
    assert_eq!(v["event"], "demo");
    assert_eq!(v["ok"], true);
    assert_eq!(v["aggregate"]["bytes"], 2 * 8 * 1024 * 1024);
    assert_eq!(v["transaction"]["status"], "completed");
    let rows = v["receivers"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r["outcome"], "success");
        assert_eq!(r["bytes"], 8 * 1024 * 1024);
    }
}

#[test]
fn demo_smoke_text_with_tensors() {
    let a = ferry()
        .args(["demo", "--receivers", "2", "--size", "8MiB", "--tensors"])
        .assert()
        .success();
    let out = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    let result = out.lines().find(|l| l.starts_with("result:")).expect(&out);
    assert!(result.contains("delivered to 2 receivers"), "{result}");
    // 8 MiB file + 2 MiB tensors, twice
    assert!(result.contains("20.00 MiB"), "{result}");
    assert!(out.contains("completed (all_receivers_succeeded)"), "{out}");
}

#[test]
fn demo_keep_runs_twice_and_keeps_verified_copies() {
    let d = tempfile::tempdir().unwrap();
    let keep = d.path().join("demo");
    for _ in 0..2 {
        ferry()
            .args(["demo", "--receivers", "1", "--size", "1MiB", "--keep"])
            .arg(&keep)
            .assert()
            .success();
    }
    let sent = std::fs::read(keep.join("sender/demo.bin")).unwrap();
    assert_eq!(sent.len(), 1 << 20);
    assert_eq!(
        std::fs::read(keep.join("demo-site-1/demo.bin")).unwrap(),
        sent
    );
}

#[test]
fn one_get_pulls_from_two_senders_with_the_same_name() {
    let d = tempfile::tempdir().unwrap();
    let a = random_file(&d.path().join("a.bin"), 700_000, 31);
    let b = random_file(&d.path().join("b.bin"), 900_000, 32);
    let (mut sa, ta) = serve(&[path_str(&d.path().join("a.bin"))]);
    let (mut sb, tb) = serve(&[path_str(&d.path().join("b.bin"))]);
    for t in [&ta, &tb] {
        assert_eq!(t.parse::<Ticket>().unwrap().source, "ferry-sender");
    }
    let out = d.path().join("out");
    ferry()
        .args(["get", &ta, &tb, "-o", path_str(&out)])
        .assert()
        .success();
    assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(out.join("b.bin")).unwrap(), b);
    assert!(sa.wait().success());
    assert!(sb.wait().success());
}
