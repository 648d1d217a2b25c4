//! Self-tests of the support code against real NVFlare peers talking to each other
//! (Python <-> Python): they prove the scripts, the line protocol, [`PyPeer`] and the
//! [`TestPki`] certificates work before any Ferry cell is involved.

use std::time::Duration;

use crate::{args, pattern_bytes, run_script, sha256_hex, PyPeer, TestPki};

#[test]
fn python_server_and_client_exchange_plain_and_streamed_requests() {
    let mut server = PyPeer::spawn("nv_server_cell.py", ["--timeout", "90"]);
    let url = server.ready_str("url").to_string();
    assert!(url.starts_with("tcp://127.0.0.1:"), "{url}");

    let mut client = PyPeer::spawn(
        "nv_client_cell.py",
        [
            "--url",
            &url,
            "--timeout",
            "90",
            "--kinds",
            "plain,stream,notify",
        ],
    );
    assert_eq!(client.ready()["peer"], "server");

    let small = sha256_hex(&pattern_bytes(64, 0)).unwrap();
    for kind in ["plain", "stream"] {
        let reply = client.wait_result(|v| v["event"] == "reply" && v["kind"] == kind);
        assert_eq!(reply["rc"], "ok", "{reply}");
        assert_eq!(reply["headers"]["x-ferry-reply"], "server");
        assert_eq!(reply["headers"]["x-ferry-echo"], format!("{kind}-0"));
        assert_eq!(reply["payload"]["_echo_origin"], "site-1");
        assert_eq!(reply["payload"]["small"]["sha256"], small.as_str());
    }
    let done = client.wait_event("requests_done");
    assert_eq!(done["all_ok"], true);
    let notify = server.wait_event("notify");
    assert_eq!(notify["origin"], "site-1");
    assert!(client.wait_exit(Duration::from_secs(60)).unwrap().success());
}

#[test]
fn python_cells_speak_mutual_tls_with_generated_certificates() {
    let pki = TestPki::new().unwrap();
    let server_cert = pki.issue("server").unwrap();
    let client_cert = pki.issue("site-1").unwrap();

    let mut args: Vec<std::ffi::OsString> = vec!["--timeout".into(), "90".into(), "--child".into()];
    args.extend(pki.py_tls_args(&server_cert));
    let server = PyPeer::spawn("nv_server_cell.py", &args);
    let url = server.ready_str("url").to_string();
    assert!(url.starts_with("stcp://"), "{url}");
    assert_eq!(server.ready()["child"]["fqcn"], "server.j1");

    // site-1 -> server -> server.j1 over mTLS
    let mut args: Vec<std::ffi::OsString> = vec![
        "--url".into(),
        url.clone().into(),
        "--target".into(),
        "server.j1".into(),
        "--timeout".into(),
        "90".into(),
    ];
    args.extend(pki.py_tls_args(&client_cert));
    let mut client = PyPeer::spawn("nv_client_cell.py", &args);
    assert_eq!(client.ready()["tls"], true);
    for kind in ["plain", "stream"] {
        let reply = client.wait_result(|v| v["event"] == "reply" && v["kind"] == kind);
        assert_eq!(reply["rc"], "ok", "{reply}");
        assert_eq!(reply["headers"]["x-ferry-reply"], "server.j1");
    }

    // a certificate for site-1 cannot claim to be site-9
    let mut args: Vec<std::ffi::OsString> = vec![
        "--url".into(),
        url.into(),
        "--fqcn".into(),
        "site-9".into(),
        // The listener refuses the name: its connection may close before the script ever sees
        // it connected, so READY must not wait for a connection, and the requests name their
        // target.
        "--allow-unconnected".into(),
        "--connect-timeout".into(),
        "5".into(),
        "--target".into(),
        "server.j1".into(),
        "--kinds".into(),
        "plain".into(),
        "--request-timeout".into(),
        "5".into(),
        "--timeout".into(),
        "90".into(),
    ];
    args.extend(pki.py_tls_args(&client_cert));
    let mut impostor = PyPeer::spawn("nv_client_cell.py", &args);
    let reply = impostor.wait_event("reply");
    assert_ne!(reply["rc"], "ok", "{reply}");
}

#[test]
fn python_download_sender_and_receiver_agree() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob.bin");
    let data = pattern_bytes(2_500_000, 9);
    std::fs::write(&file, &data).unwrap();

    let mut sender = PyPeer::spawn(
        "nv_download_sender.py",
        args(&[
            &"--listen",
            &"--file",
            &file,
            &"--chunk-size",
            &"1000000",
            &"--arrays",
            &"6",
            &"--array-chunk-size",
            &"5000",
            &"--tensors",
            &"4",
            &"--tensor-chunk-size",
            &"3000",
            &"--timeout",
            &"90",
        ]),
    );
    let ready = sender.ready().clone();
    assert_eq!(ready["file"]["sha256"], sha256_hex(&data).unwrap().as_str());
    let url = ready["url"].as_str().unwrap();
    let file_ref = ready["file"]["ref_id"].as_str().unwrap();
    let arrays_ref = ready["arrays"]["ref_id"].as_str().unwrap();
    let tensors_ref = ready["tensors"]["ref_id"].as_str().unwrap();

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut receiver = PyPeer::spawn(
        "nv_download_receiver.py",
        args(&[
            &"--connect",
            &url,
            &"--source",
            &"server",
            &"--file-ref",
            &file_ref,
            &"--arrays-ref",
            &arrays_ref,
            &"--tensors-ref",
            &tensors_ref,
            &"--out-dir",
            &out,
            &"--timeout",
            &"90",
        ]),
    );
    let got = receiver.wait_event("file");
    assert_eq!(got["error"], serde_json::Value::Null, "{got}");
    assert_eq!(got["sha256"], ready["file"]["sha256"]);
    let got = receiver.wait_event("arrays");
    assert_eq!(got["arrays"], ready["arrays"]["checksums"]);
    let got = receiver.wait_event("tensors");
    assert_eq!(got["arrays"], ready["tensors"]["checksums"]);

    let outcome = sender.wait_event("outcome");
    assert_eq!(outcome["status"], "completed", "{outcome}");
    assert_eq!(outcome["receivers"][file_ref]["site-1"], "success");
}

#[test]
fn safetensors_round_trip_through_python() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let made = run_script(
        "make_safetensors.py",
        args(&[&"--out", &path, &"--seed", &"3"]),
    )
    .unwrap();
    assert!(made.status.success(), "{}", made.stderr);
    let checked = run_script("check_safetensors.py", args(&[&"--file", &path])).unwrap();
    assert!(checked.status.success(), "{}", checked.stderr);
    assert_eq!(made.results[0]["tensors"], checked.results[0]["tensors"]);
    assert_eq!(
        checked.results[0]["tensors"]["layer0.weight"]["st_dtype"],
        "F32"
    );

    std::fs::write(&path, b"not a safetensors file").unwrap();
    let bad = run_script("check_safetensors.py", args(&[&"--file", &path])).unwrap();
    assert!(!bad.status.success());
    assert!(bad.results[0]["error"].is_string());
}

/// A listener port another process took before NVFlare bound it is reported, not taken for
/// the cell's own: NVFlare only logs the failed bind, and the peer used to print READY
/// because *somebody* listened on its port — the Rust cell under test then talked to that
/// other process (a TLS listener reset its plain HELLO). The peer now ends with status 75
/// and the harness, which starts it again on that status, gives up after a few tries here
/// since the port is fixed.
#[test]
fn a_peer_whose_port_is_taken_says_so_instead_of_reporting_ready() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = PyPeer::try_spawn("nv_server_cell.py", ["--timeout", "90", "--port", &port])
        .err()
        .expect("no READY from a peer whose port is taken");
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!(
            "port {port} on 127.0.0.1 is taken by another process"
        )),
        "{text}"
    );
    assert!(text.contains("exited: exit status: 75"), "{text}");
}
