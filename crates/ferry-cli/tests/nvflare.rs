//! `ferry serve` to a real NVFlare 2.9 receiver: NVFlare's own `download_file`, in a Python cell
//! connected to the address in the ticket, with the sender FQCN and ref id from the ticket.
//!
//! Needs the interop venv (`cargo xtask interop-setup`; `$FERRY_INTEROP_PYTHON` or
//! `target/interop-venv/bin/python`). Without it the test fails and says how to create it; the
//! `interop-setup` case of `cargo xtask test-matrix` runs before every test case.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = std::env::var_os("FERRY_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/interop-venv/bin/python"));
    p.exists().then_some(p)
}

#[test]
fn nvflare_download_file_pulls_from_ferry_serve() {
    let py = python().expect(
        "no NVFlare interop venv: run `cargo xtask interop-setup` (or set FERRY_INTEROP_PYTHON)",
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/py/nv_download_receiver.py");
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("model.bin");
    let data = random_file(&src, 3 * 1024 * 1024 + 5, 21);
    let (mut server, ticket) = serve(&[src.to_str().unwrap()]);
    // ferry+tcp://HOST:PORT/SENDER/REF?...
    let rest = ticket.strip_prefix("ferry+tcp://").unwrap();
    let (path, _) = rest.split_once('?').unwrap();
    let parts: Vec<&str> = path.split('/').collect();
    let (addr, sender, rid) = (parts[0], parts[1], parts[2]);
    let out = d.path().join("py");
    std::fs::create_dir(&out).unwrap();
    let child = Command::new(py)
        .arg(&script)
        .args(["--connect", &format!("tcp://{addr}")])
        .args(["--source", sender, "--file-ref", rid])
        .args(["--out-dir", out.to_str().unwrap(), "--timeout", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("running the NVFlare receiver");
    let stdout = String::from_utf8_lossy(&child.stdout);
    let result = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(json)
        .find(|v| v["event"] == "file")
        .unwrap_or_else(|| {
            panic!(
                "no file RESULT; stdout: {stdout} stderr: {}",
                String::from_utf8_lossy(&child.stderr)
            )
        });
    assert!(result["error"].is_null(), "{result}");
    let got = std::fs::read(result["path"].as_str().unwrap()).unwrap();
    assert_eq!(got, data);
    // The NVFlare receiver confirmed: the ferry sender's transaction completed.
    assert!(server.wait().success(), "{}", server.stderr_text());
}
