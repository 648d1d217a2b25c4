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
    // the URL form shows what an NVFlare receiver needs
    let (mut server, ticket) = serve(&[src.to_str().unwrap(), "--ticket-format", "url"]);
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

/// A real NVFlare 2.9 sender (no `ferry_plan`, NVFlare's `add_file`) serving one file that
/// three tickets pin differently: `ferry get` accepts only the ticket that pins what it
/// serves, and fails the others with nothing left behind.
#[test]
fn ferry_get_holds_an_nvflare_sender_to_the_ticket() {
    use std::io::{BufRead, BufReader};
    let py = python().expect(
        "no NVFlare interop venv: run `cargo xtask interop-setup` (or set FERRY_INTEROP_PYTHON)",
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/py/nv_download_sender.py");
    let d = tempfile::tempdir().unwrap();
    let served = random_file(&d.path().join("served.bin"), 13 * 1024 * 1024, 31);
    let pinned = random_file(&d.path().join("pinned.bin"), 8 * 1024 * 1024, 32);
    let mut child = Command::new(py)
        .arg(&script)
        .args([
            "--listen",
            "--file",
            d.path().join("served.bin").to_str().unwrap(),
        ])
        .args(["--chunk-size", "1048576", "--num-receivers", "0"])
        .args(["--tx-timeout", "120", "--timeout", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running the NVFlare sender");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        let line = lines.next().expect("READY line").unwrap();
        if let Some(r) = line.strip_prefix("READY ") {
            break json(r);
        }
    };
    let port = ready["port"].as_u64().unwrap();
    let rid = ready["file"]["ref_id"].as_str().unwrap().to_string();
    let ticket = |size: usize, digest: blake3::Hash| {
        format!(
            "ferry+tcp://127.0.0.1:{port}/server/{rid}?kind=file&name=model.bin&size={size}&b3={}",
            digest.to_hex()
        )
    };
    let out = d.path().join("out");
    let get = |t: String| {
        let a = ferry()
            .args(["get", &t, "-o", out.to_str().unwrap()])
            .assert();
        let code = a.get_output().status.code();
        (
            code,
            String::from_utf8_lossy(&a.get_output().stderr).into_owned(),
        )
    };

    // 8 MiB pinned, 13 MiB served: refused at the first byte beyond the pin
    let (code, err) = get(ticket(pinned.len(), blake3::hash(&pinned)));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("but the ticket pins 8388608 bytes"), "{err}");
    assert!(list(&out).is_empty(), "{:?}", list(&out));

    // the right size, another digest: refused at the end
    let other = blake3::hash(b"not the served file");
    let (code, err) = get(ticket(served.len(), other));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("model.bin is not what the ticket pins")
            && err.contains(&format!("expected {}", other.to_hex())),
        "{err}"
    );
    assert!(list(&out).is_empty(), "{:?}", list(&out));

    // the ticket that pins what is served: verified while receiving, without any plan
    let (code, err) = get(ticket(served.len(), blake3::hash(&served)));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("verified: size + BLAKE3 pinned by the ticket"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), served);
    let _ = child.kill();
    let _ = child.wait();
}
