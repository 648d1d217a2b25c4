//! Child plumbing: the stdout line protocol, the GO handshake, deadlines and small I/O helpers.

use crate::common::*;
use crate::os;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::thread;
use std::time::Duration;

/// Print one protocol line on stdout.
pub(crate) fn emit(kind: &str, v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{kind} {v}");
    let _ = out.flush();
}

/// Run a child role with a deadline; stdin EOF (the orchestrator went away) ends it too,
/// unless the role reads stdin itself (receivers read GO first, then watch EOF).
pub(crate) fn child_main(timeout: f64, f: impl FnOnce() -> Result<()>) -> Result<()> {
    thread::spawn(move || {
        thread::sleep(Duration::from_secs_f64(timeout));
        emit(
            "RESULT",
            &json!({"error": format!("deadline of {timeout}s reached")}),
        );
        std::process::exit(3);
    });
    match f() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            emit("RESULT", &json!({"error": format!("{e:#}")}));
            std::process::exit(1);
        }
    }
}

/// Block until `GO {json}` arrives on stdin; afterwards a thread ends the process on EOF.
pub(crate) fn wait_go() -> Result<Value> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            std::process::exit(4);
        }
        if let Some(rest) = line.trim().strip_prefix("GO") {
            let v: Value = if rest.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(rest.trim())?
            };
            watch_stdin_eof();
            return Ok(v);
        }
    }
}

/// End the process when stdin closes (no child outlives the orchestrator).
pub(crate) fn watch_stdin_eof() {
    thread::spawn(|| {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut sink) {
                Ok(0) | Err(_) => std::process::exit(4),
                Ok(_) => {}
            }
        }
    });
}

pub(crate) fn cpu_now() -> f64 {
    os::self_usage().cpu_s()
}

/// Fill `buf` from `r` until it is full or EOF; returns the bytes read.
pub(crate) fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// BLAKE3 of the first `len` bytes of a file (or all of it with `None`).
pub(crate) fn blake3_file(path: &Path, len: Option<u64>) -> Result<String> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut r = f.take(len.unwrap_or(u64::MAX));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; BLAST_BUF];
    loop {
        let n = fill(&mut r, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}
