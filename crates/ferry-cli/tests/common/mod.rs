//! Helpers for driving the real `ferry` binary: background `serve` processes whose first stdout
//! line is read with a generous deadline, polling waits, random files, a throw-away PKI.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Generous: the CI machine has 2 loaded cores. Never a timing assertion, only a hang guard.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("ferry")
}

/// The `FERRY_*` variables of this environment, which would stand for options of the binary
/// under test (`ferry --help` lists them): removed from every child.
pub fn ferry_env_vars() -> Vec<String> {
    std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("FERRY_"))
        .collect()
}

/// `assert_cmd` command for the binary, with a hang guard.
pub fn ferry() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(bin());
    c.timeout(DEADLINE);
    c.env_remove("RUST_LOG");
    for k in ferry_env_vars() {
        c.env_remove(k);
    }
    c
}

/// A background `ferry` process with its stdout read line by line on a thread.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Proc {
    /// Spawn `ferry ARGS...`.
    pub fn spawn(args: &[&str]) -> Proc {
        Self::spawn_with_env(args, &[])
    }

    /// Spawn `ferry ARGS...` with these environment variables.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args(args).env_remove("RUST_LOG");
        for k in ferry_env_vars() {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning ferry");
        let out: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let (etx, stderr) = mpsc::channel();
        thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            let _ = etx.send(s);
        });
        Proc {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line (panics after [`DEADLINE`], showing stderr).
    pub fn line(&mut self) -> String {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                panic!(
                    "no stdout line from ferry ({e}); stderr: {}",
                    self.stderr_text()
                );
            }
        }
    }

    /// Next stdout line that satisfies `pred`.
    pub fn line_where(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let l = self.line();
            if pred(&l) {
                return l;
            }
        }
    }

    /// Wait for the exit (panics after [`DEADLINE`]).
    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("ferry did not exit within {DEADLINE:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything it wrote on stderr (after it exited).
    pub fn stderr_text(&mut self) -> String {
        self.stderr.recv_timeout(DEADLINE).unwrap_or_default()
    }

    /// Remaining stdout lines, up to EOF (call after it exited).
    pub fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(DEADLINE) {
            out.push(l);
        }
        out
    }

    /// Send a signal with the `kill` utility (no libc in tests).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(st.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `ferry serve ARGS... --listen tcp://127.0.0.1:0` and read its first ticket.
pub fn serve(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["serve", "--listen", "tcp://127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut p = Proc::spawn(&all);
    let first = p.line();
    let ticket = if first.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&first).expect("json ticket line");
        v["ticket"].as_str().expect("ticket field").to_string()
    } else {
        first
    };
    assert!(ticket.starts_with("ferry"), "not a ticket: {ticket}");
    (p, ticket)
}

/// Write `len` pseudo-random bytes (xorshift; no zeros-only files) to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).expect("writing test file");
    data
}

/// Files (recursively) below `dir`, relative, sorted.
pub fn list(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Parse a JSON line.
pub fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// A CA and cell certificates, as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "ferry-test-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issue `<cn>.pem` / `<cn>.key`; returns (cert, key).
    pub fn issue(&self, cn: &str) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![cn.to_string(), "localhost".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let c = self.dir.path().join(format!("{cn}.pem"));
        let k = self.dir.path().join(format!("{cn}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// Run `cmd`, which must fail with exit `code` and print nothing on stdout; its only error
/// line.
pub fn error_line(cmd: &mut assert_cmd::Command, code: i32) -> String {
    let a = cmd.assert().code(code).stdout(predicates::str::is_empty());
    one_error_line(&a.get_output().stderr)
}

/// The only stderr line of a failed command.
pub fn one_error_line(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let errs: Vec<&str> = s
        .lines()
        .filter(|l| l.starts_with("ferry: error:"))
        .collect();
    assert_eq!(errs.len(), 1, "expected one error line, got: {s}");
    errs[0].to_string()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `ferry serve SRC EXTRA...` paced at 1 MiB/s in 256 KiB chunks: a 16 MiB transfer is still
/// running, whatever the machine's speed, when the test interrupts it.
pub fn slow_serve(src: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![path_str(src), "--limit-rate", "1MiB", "--chunk", "256KiB"];
    args.extend_from_slice(extra);
    serve(&args)
}

/// `ferry --json get TICKET -o OUT EXTRA...`, returned once its first bytes have arrived.
pub fn get_in_progress(ticket: &str, out: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["--json", "get", ticket, "-o", path_str(out)];
    args.extend_from_slice(extra);
    let mut get = Proc::spawn(&args);
    get.line_where(|l| json(l)["bytes"].as_u64().is_some_and(|b| b > 0));
    get
}

// ---------------------------------------------------------------------------------------------
// Happy paths
// ---------------------------------------------------------------------------------------------
