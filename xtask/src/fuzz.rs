//! `cargo xtask fuzz`: the coverage-guided fuzz harness under `fuzz/` (cargo fuzz, libFuzzer, on
//! the stable toolchain with `--sanitizer none`), run target by target with the limits of
//! docs/security.md (section Fuzzing): 512 MiB RSS, the harness's own allocation budget per
//! input, a per-input timeout. Each target starts from its committed seed corpus
//! (`fuzz/seeds/TARGET`, recorded from NVFlare 2.9 cells and ferry) plus whatever an earlier run
//! left in `fuzz/corpus/TARGET` (gitignored). A crash, an OOM or a timeout fails the command and
//! leaves the input in `fuzz/artifacts/TARGET/`. Each target's run is bounded in wall time: past
//! its seconds, one input's timeout and two minutes of slack, the run is killed and fails.
//! Before any target runs, the reproducers of fixed findings (`fuzz/regressions/TARGET/`) are
//! replayed: one that crashes again fails the command.

use anyhow::{bail, Context, Result};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::interop::{cargo_command, workspace_root};

/// Every target, with the largest input libFuzzer may generate for it (the record-based
/// targets need room for several frames or chunks).
pub const TARGETS: &[(&str, usize)] = &[
    ("f3_frames", 16 * 1024),
    ("headers", 8 * 1024),
    ("msgpack", 8 * 1024),
    ("fobs", 8 * 1024),
    // room for a name at the 4096-byte limit, in the URL form or the binary compact layout
    ("ticket", 8 * 1024),
    ("manifest", 16 * 1024),
    ("download_request", 8 * 1024),
    ("download_reply", 32 * 1024),
    ("safetensors_items", 16 * 1024),
    ("npz_items", 16 * 1024),
    ("part_record", 16 * 1024),
    ("cell_stream", 32 * 1024),
    // a sequence of scheduling requests and replies, each a few dozen bytes
    ("peer_messages", 8 * 1024),
    // the chaining values of objects of up to four groups fit in 128 bytes; room for more
    ("outboard_reply", 4 * 1024),
    ("object_ref", 4 * 1024),
];

/// libFuzzer's RSS limit for every run.
pub const RSS_LIMIT_MB: u64 = 512;
/// Seconds one input may take before it counts as a hang.
pub const INPUT_TIMEOUT_SECS: u64 = 60;

/// What to run.
pub struct Options {
    /// Seconds per target (`-max_total_time`).
    pub seconds: u64,
    /// Stop a target after this many executions (`-runs`); `None` runs for `seconds`.
    pub runs: Option<u64>,
    /// Only these targets (empty: all).
    pub only: Vec<String>,
}

/// The figures of one target's run, read from libFuzzer's final statistics.
#[derive(Debug, Default)]
pub struct Stats {
    name: String,
    execs: u64,
    secs: f64,
    cov: u64,
    ft: u64,
    corpus: u64,
    peak_rss_mb: u64,
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn target_dir() -> PathBuf {
    workspace_root().join("target").join("fuzz")
}

/// Install cargo-fuzz from crates.io when `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = cargo_command()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("cargo-fuzz is missing: cargo install cargo-fuzz --locked");
    let status = cargo_command()
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed with {status}");
    }
    Ok(())
}

fn cargo_fuzz(sub: &str) -> Command {
    let mut cmd = cargo_command();
    // `cargo xtask` runs under `cargo run`, which exports the xtask package's CARGO_* variables
    // and a LD_LIBRARY_PATH; build scripts that watch them would rebuild every dependency of
    // the harness, and again when someone runs `cargo fuzz` by hand. Give cargo fuzz the
    // environment of a shell.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let from_cargo_run = k.starts_with("CARGO_PKG_")
            || matches!(
                k.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "LD_LIBRARY_PATH"
            );
        if from_cargo_run {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.args(["fuzz", sub, "--sanitizer", "none", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(target_dir());
    cmd
}

/// `cargo fmt --check` and `cargo fuzz build` of the harness.
pub fn build() -> Result<()> {
    ensure_cargo_fuzz()?;
    let status = cargo_command()
        .args(["fmt", "--check", "--manifest-path"])
        .arg(fuzz_dir().join("Cargo.toml"))
        .status()
        .context("cargo fmt of the fuzz crate")?;
    if !status.success() {
        bail!("the fuzz crate is not formatted: cargo fmt --manifest-path fuzz/Cargo.toml");
    }
    let t = Instant::now();
    let status = cargo_fuzz("build").status().context("cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed with {status}");
    }
    eprintln!("fuzz targets built in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// The number after `key` in libFuzzer output such as `cov: 123 ft: 456`.
fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let num: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    num.parse().ok()
}

fn parse_stats(name: &str, out: &str, secs: f64) -> Stats {
    let mut s = Stats {
        name: name.to_string(),
        secs,
        ..Stats::default()
    };
    for line in out.lines() {
        if let Some(n) = line
            .strip_prefix("stat::number_of_executed_units:")
            .and_then(|v| v.trim().parse().ok())
        {
            s.execs = n;
        }
        if let Some(n) = line
            .strip_prefix("stat::peak_rss_mb:")
            .and_then(|v| v.trim().parse().ok())
        {
            s.peak_rss_mb = n;
        }
        if line.contains(" cov: ") && line.contains(" ft: ") {
            s.cov = field(line, "cov:").unwrap_or(s.cov);
            s.ft = field(line, "ft:").unwrap_or(s.ft);
            s.corpus = field(line, "corp:").unwrap_or(s.corpus);
        }
    }
    s
}

fn run_one(name: &str, max_len: usize, opts: &Options) -> Result<Stats> {
    let corpus = fuzz_dir().join("corpus").join(name);
    let seeds = fuzz_dir().join("seeds").join(name);
    let artifacts = fuzz_dir().join("artifacts").join(name);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let mut cmd = cargo_fuzz("run");
    cmd.arg(name).arg(&corpus).arg(&seeds).arg("--");
    cmd.arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-max_len={max_len}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-max_total_time={}", opts.seconds))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    if let Some(runs) = opts.runs {
        cmd.arg(format!("-runs={runs}"));
    }
    let dict = fuzz_dir().join("dict").join(format!("{name}.dict"));
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    eprintln!("--- fuzz {name}: {}s, max_len {max_len}", opts.seconds);
    let t = Instant::now();
    let out = run_bounded(cmd, deadline(opts.seconds))
        .with_context(|| format!("running cargo fuzz run {name}"))?;
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stderr);
    let Some(status) = out.status else {
        bail!(
            "fuzz target {name} did not stop within {}s of a {}s run (libFuzzer's -max_total_time and \
             per-input -timeout should have stopped it); killed. Its last output:\n{}",
            deadline(opts.seconds).as_secs(),
            opts.seconds,
            tail(&text, 40)
        );
    };
    if !status.success() {
        bail!(
            "fuzz target {name} failed ({status}): the input is in {}\n{}",
            artifacts.display(),
            tail(&text, 40)
        );
    }
    Ok(parse_stats(name, &text, secs))
}

/// How long one target's run may take in all before it is killed: its time, one input's
/// timeout, and two minutes for cargo's up-to-date check and libFuzzer's start (a busy machine).
fn deadline(seconds: u64) -> Duration {
    Duration::from_secs(seconds + INPUT_TIMEOUT_SECS + 120)
}

/// What a bounded run gave: its exit status (`None`: killed at the deadline) and its stderr.
struct Bounded {
    status: Option<ExitStatus>,
    stderr: Vec<u8>,
}

/// Run `cmd`, reading its stderr; past `limit` kill it and everything it started (cargo,
/// cargo-fuzz and the fuzzer). The fuzzer stays in our process group, so Ctrl-C reaches it.
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Bounded> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut pipe = child.stderr.take().context("stderr of the fuzzer")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= limit {
            let pids: Vec<String> = descendants(child.id()).iter().map(u32::to_string).collect();
            if !pids.is_empty() {
                let _ = Command::new("kill").arg("-KILL").args(&pids).status();
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = reader.join().unwrap_or_default();
    Ok(Bounded { status, stderr })
}

/// Every process below `root` (children first found, then theirs), from the parent pid in each
/// `/proc/PID/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `PID (COMM) STATE PPID ...`; COMM may hold spaces and parentheses
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Build, replay the reproducers of fixed findings, then run each selected target; print a table of executions, time and coverage.
pub fn run(opts: &Options) -> Result<Vec<Stats>> {
    for name in &opts.only {
        if !TARGETS.iter().any(|(t, _)| t == name) {
            bail!("no fuzz target {name:?}; targets: {}", names().join(", "));
        }
    }
    build()?;
    let n = replay_built()?;
    eprintln!("{n} reproducers of fixed findings (fuzz/regressions/) pass");
    let mut all = Vec::new();
    for (name, max_len) in TARGETS {
        if !opts.only.is_empty() && !opts.only.iter().any(|o| o == name) {
            continue;
        }
        let s = run_one(name, *max_len, opts)?;
        eprintln!(
            "    {name}: {} executions in {:.0}s, cov {} ft {}",
            s.execs, s.secs, s.cov, s.ft
        );
        all.push(s);
    }
    eprintln!(
        "\n{:<18} {:>12} {:>8} {:>10} {:>6} {:>7} {:>7} {:>8}",
        "target", "executions", "seconds", "exec/s", "cov", "ft", "corpus", "rss MiB"
    );
    for s in &all {
        eprintln!(
            "{:<18} {:>12} {:>8.0} {:>10.0} {:>6} {:>7} {:>7} {:>8}",
            s.name,
            s.execs,
            s.secs,
            s.execs as f64 / s.secs.max(1e-9),
            s.cov,
            s.ft,
            s.corpus,
            s.peak_rss_mb
        );
    }
    Ok(all)
}

/// Build, then run every committed reproducer of a fixed finding (`fuzz/regressions/TARGET/*`).
pub fn replay() -> Result<()> {
    build()?;
    replay_built().map(|n| eprintln!("{n} reproducers of fixed findings: all pass"))
}

/// Run every reproducer in `fuzz/regressions/` through its target's binary, once; fail naming
/// those that crash (a finding came back). Returns how many ran.
fn replay_built() -> Result<usize> {
    let bin_dir = target_dir()
        .join("x86_64-unknown-linux-gnu")
        .join("release");
    let (mut ran, mut failed) = (0, Vec::new());
    for (name, _) in TARGETS {
        let dir = fuzz_dir().join("regressions").join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let out = Command::new(bin_dir.join(name))
                .arg(&path)
                .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
                .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
                .output()
                .with_context(|| format!("running {name}"))?;
            ran += 1;
            if !out.status.success() {
                let text = String::from_utf8_lossy(&out.stderr);
                failed.push(format!("{name} {}:\n{}", rel(&path), tail(&text, 12)));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {ran} reproducers of fixed findings crash again (fuzz/regressions/):\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(ran)
}

fn rel(p: &Path) -> String {
    p.strip_prefix(workspace_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

fn names() -> Vec<&'static str> {
    TARGETS.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` is gone (or dead and waiting to be reaped).
    fn dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        }
    }

    #[test]
    fn a_run_past_its_deadline_is_killed_with_what_it_started() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 1000 & echo started $! >&2; wait"]);
        let out = run_bounded(cmd, Duration::from_millis(500)).unwrap();
        assert!(out.status.is_none(), "killed at the deadline");
        let text = String::from_utf8_lossy(&out.stderr);
        let pid = text
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("{text:?}"));
        // the kill is sent; wait for the grandchild to die (far longer than it takes)
        let until = Instant::now() + Duration::from_secs(30);
        while !dead(pid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(dead(pid), "the grandchild {pid} outlived the run");
    }

    #[test]
    fn a_run_within_its_deadline_gives_its_status_and_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo done >&2; exit 3"]);
        let out = run_bounded(cmd, Duration::from_secs(600)).unwrap();
        assert_eq!(out.status.and_then(|s| s.code()), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "done\n");
    }

    #[test]
    fn final_statistics_are_read() {
        let out = "#100\tINITED cov: 5 ft: 6 corp: 1/1b exec/s: 0 rss: 27Mb\n\
                   #2000\tDONE   cov: 334 ft: 1596 corp: 541/112Kb lim: 7024 exec/s: 92204 rss: 28Mb\n\
                   Done 2000 runs in 16 second(s)\n\
                   stat::number_of_executed_units: 2000\n\
                   stat::peak_rss_mb: 28\n";
        let s = parse_stats("f3_frames", out, 16.0);
        assert_eq!(
            (s.execs, s.cov, s.ft, s.corpus, s.peak_rss_mb),
            (2000, 334, 1596, 541, 28)
        );
    }

    #[test]
    fn every_target_has_seeds_and_a_source() {
        for (name, _) in TARGETS {
            let src = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
            assert!(src.exists(), "{}", src.display());
            let seeds = fuzz_dir().join("seeds").join(name);
            assert!(
                std::fs::read_dir(&seeds).is_ok_and(|mut d| d.next().is_some()),
                "no seeds in {}",
                seeds.display()
            );
        }
    }
}
