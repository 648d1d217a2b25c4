//! `cargo xtask bench scale`: issue 14's scale targets, each in child processes whose peak RSS
//! the kernel reports (wait4's `ru_maxrss`).
//!
//! - **fan-in**: one sender process serves a file (256 MiB) to 64 receivers; the receivers are
//!   64 tasks in a second process, each its own cell and connection, hashing what arrives and
//!   checking the BLAKE3 digest. Target: all verified, sender peak RSS ≤ 64 MiB.
//! - **churn**: one process with a sender and a receiver cell creates 1,000 pairs of
//!   transactions, one completed by the receiver and one left to expire, and samples its RSS
//!   (`/proc/self/status`) and its live heap (a counting allocator) every 50. Target: after
//!   the warm-up (the first 200) every sample within ±5 % of the sample at the end of the
//!   warm-up, and no live state left behind. Judged with the receipts (finished refs,
//!   outcomes) capped at 64, filled during the warm-up; a first run with the default caps
//!   shows what receipts cost (they are kept 30 minutes by design).
//!
//! `bench_scale [--receivers N] [--size MIB] [--iterations N] [--only fanin|churn]`; the
//! roles run as `bench_scale sender|receivers|churn ...`.

// The OS measurements of bench_download (wait4), shared; not every helper is used here.
#[path = "../bench_download/os.rs"]
#[allow(dead_code)]
mod os;

mod churn;
mod fanin;
mod heap;

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

pub(crate) const MIB: u64 = 1 << 20;
/// Receipts held in the judged churn run.
const RECEIPTS: usize = 64;

/// Print one protocol line (`KIND {json}`) on stdout.
pub(crate) fn emit(kind: &str, v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{kind} {v}");
    let _ = out.flush();
}

/// `--name value` from `args`.
pub(crate) fn opt<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .ok_or_else(|| anyhow!("{name} needs a value"))?
            .parse()
            .map_err(|_| anyhow!("{name}: not a valid value")),
    }
}

pub(crate) fn opt_str(args: &[String], name: &str) -> Result<String> {
    opt::<String>(args, name, String::new()).and_then(|s| {
        if s.is_empty() {
            bail!("{name} is required")
        }
        Ok(s)
    })
}

/// A role of this binary, as a child process whose stdout we read.
pub(crate) struct Role {
    pub child: Child,
    pub out: BufReader<ChildStdout>,
    pub started: Instant,
}

impl Role {
    pub fn spawn(args: &[&str]) -> Result<Role> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning a role")?;
        let out = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Role {
            child,
            out,
            started: Instant::now(),
        })
    }

    /// The next line of `kind`, parsed (other lines are passed through).
    pub fn expect(&mut self, kind: &str) -> Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.out.read_line(&mut line)? == 0 {
                bail!("the role ended before its {kind} line");
            }
            if let Some(rest) = line.trim().strip_prefix(kind) {
                let v: Value = serde_json::from_str(rest.trim())?;
                if let Some(e) = v.get("error").and_then(Value::as_str) {
                    bail!("{kind}: {e}");
                }
                return Ok(v);
            }
            print!("{line}");
        }
    }

    /// Wait for it to exit: its status and peak RSS in KiB (the kernel's figure).
    pub fn reap(mut self) -> Result<(i32, os::Usage)> {
        drop(self.child.stdin.take());
        os::wait4(self.child.id(), true)?.ok_or_else(|| anyhow!("wait4 returned nothing"))
    }
}

/// VmRSS of this process in KiB, from /proc/self/status.
pub(crate) fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn write_file(path: &Path, len: u64) -> Result<String> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut h = blake3::Hasher::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let n = left.min(MIB) as usize;
        f.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush()?;
    Ok(h.finalize().to_hex().to_string())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sender") => return fanin::sender(&args[1..]),
        Some("receivers") => return fanin::receivers(&args[1..]),
        Some("churn") => return churn::role(&args[1..]),
        _ => {}
    }
    let receivers: usize = opt(&args, "--receivers", 64)?;
    let size_mib: u64 = opt(&args, "--size", 256)?;
    let iterations: usize = opt(&args, "--iterations", 1000)?;
    let only: String = opt(&args, "--only", String::new())?;
    let mut pass = true;
    println!(
        "bench scale: load {} on {} cores",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if only.is_empty() || only == "fanin" {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("object.bin");
        let digest = write_file(&file, size_mib * MIB)?;
        pass &= fanin::drive(&file, size_mib * MIB, &digest, receivers)?;
    }
    if only.is_empty() || only == "churn" {
        // The target is judged with receipts capped (filled during the warm-up): receipts are
        // kept 30 minutes by design (NVFlare's FINISHED_REFS_TTL, TX_OUTCOME_TTL), so with the
        // defaults a 1,000-transaction loop grows by what they hold, shown first.
        churn::drive(iterations, 0)?;
        pass &= churn::drive(iterations, RECEIPTS)?;
    }
    println!("overall: {}", if pass { "PASS" } else { "FAIL" });
    if !pass {
        std::process::exit(1);
    }
    Ok(())
}
