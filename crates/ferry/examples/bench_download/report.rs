//! The report: the table, the targets, how it is measured, JSON and `docs/benchmarks.md`.

use crate::cases::*;
use crate::common::*;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::fs::{self};
use std::path::Path;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) struct Report {
    pub(crate) command: String,
    pub(crate) date: String,
    pub(crate) machine: String,
    pub(crate) runs: Vec<Run>,
    pub(crate) failures: Vec<String>,
    pub(crate) orchestrator_hwm_kib: u64,
    pub(crate) total_s: f64,
    pub(crate) quick: bool,
    pub(crate) rounds: usize,
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

/// The sender's transfer CPU per GiB, with the part it spent before serving in parentheses
/// when there is one (ferry's digest pass).
fn sender_cpu(r: &Run) -> String {
    let prep = r.sender_prep_cpu_per_gib();
    if prep > 0.0 {
        format!("{:.2} ({:.2})", r.sender_cpu_per_gib(), prep)
    } else {
        format!("{:.2}", r.sender_cpu_per_gib())
    }
}

/// The lowest and highest of the round-by-round CPU ratios of `r` to `base` (each round's
/// figures against the same round's: they met the same load), per process and whole machine;
/// `None` for a single round or when a round of either failed.
fn round_spread(r: &Run, base: &Run) -> Option<String> {
    if r.rounds_cpu_s.len() < 2 || r.rounds_cpu_s.len() != base.rounds_cpu_s.len() {
        return None;
    }
    let range = |f: &dyn Fn(&(f64, f64)) -> f64| -> Option<(f64, f64)> {
        let v: Vec<f64> = r
            .rounds_cpu_s
            .iter()
            .zip(&base.rounds_cpu_s)
            .map(|(a, b)| f(a) / f(b))
            .filter(|x| x.is_finite())
            .collect();
        let lo = v.iter().copied().reduce(f64::min)?;
        let hi = v.iter().copied().reduce(f64::max)?;
        Some((lo, hi))
    };
    let (plo, phi) = range(&|c| c.0)?;
    let mut out = format!("processes {}–{}", ratio(plo), ratio(phi));
    if let Some((mlo, mhi)) = range(&|c| c.1) {
        let _ = write!(out, ", whole machine {}–{}", ratio(mlo), ratio(mhi));
    }
    Some(out)
}

pub(crate) fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}×")
    } else {
        format!("{x:.2}×")
    }
}

impl Report {
    pub(crate) fn find(&self, sc: Scenario, sys: System, n: usize) -> Option<&Run> {
        self.runs
            .iter()
            .find(|r| r.scenario == sc && r.system == sys && r.receivers == n)
    }

    pub(crate) fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "`{}` — {}; {}. {} build, loopback, every sender and receiver its own process; \
             the whole run took {:.0} s.\n",
            self.command,
            self.date,
            self.machine,
            // The figures of a debug build are not comparable; say so when one is run by hand.
            if cfg!(debug_assertions) {
                "Debug"
            } else {
                "Release"
            },
            self.total_s
        );
        if self.quick {
            let _ = writeln!(
                o,
                "**Quick smoke run (small sizes): not the reference figures.**\n"
            );
        }
        let _ = writeln!(
            o,
            "| scenario | system | receivers | size | aggregate MiB/s | × NVFlare | × plain TCP | \
             × nginx → curl | sender peak RSS MiB | receiver peak RSS MiB (max) | CPU s/GiB (transfer) | \
             CPU × nginx + curl | sender CPU s/GiB (digest pass) | receivers CPU s/GiB | \
             CPU s/GiB (whole processes) | CPU s/GiB (whole machine) | machine CPU × nginx + curl |"
        );
        let _ = writeln!(
            o,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let mut rows: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.scenario != Scenario::Small)
            .collect();
        rows.sort_by_key(|r| (r.scenario, r.receivers, r.system));
        for r in rows {
            let nv = self
                .find(r.scenario, System::Nvflare, r.receivers)
                .map(|b| ratio(r.mib_s / b.mib_s))
                .unwrap_or_else(|| "—".into());
            let tcp = self
                .find(r.scenario, System::Tcp, r.receivers)
                .map(|b| ratio(r.mib_s / b.mib_s))
                .unwrap_or_else(|| "—".into());
            let web = self.find(r.scenario, System::Nginx, r.receivers);
            let web_x = web
                .map(|b| ratio(r.mib_s / b.mib_s))
                .unwrap_or_else(|| "—".into());
            let web_cpu = web
                .map(|b| ratio(r.cpu_per_gib() / b.cpu_per_gib()))
                .unwrap_or_else(|| "—".into());
            let web_machine = web
                .filter(|b| b.machine_cpu_s > 0.0)
                .map(|b| ratio(r.machine_cpu_per_gib() / b.machine_cpu_per_gib()))
                .unwrap_or_else(|| "—".into());
            let sys = if r.system == System::Ferry {
                format!("**{}**", r.system.name())
            } else {
                r.system.name().to_string()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
                r.scenario.label(),
                sys,
                r.receivers,
                human_size(r.size),
                r.mib_s,
                nv,
                tcp,
                web_x,
                mib(r.sender_rss_kib),
                mib(r.receiver_rss_kib_max),
                r.cpu_per_gib(),
                web_cpu,
                sender_cpu(r),
                r.receivers_cpu_per_gib(),
                r.cpu_process_per_gib(),
                r.machine_cpu_per_gib(),
                web_machine,
            );
        }
        let small: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.scenario == Scenario::Small)
            .collect();
        if !small.is_empty() {
            let _ = writeln!(
                o,
                "\n| 4 KiB object, one receiver | fetches | median ms | p90 ms | min ms |\n|---|---|---|---|---|"
            );
            for r in small {
                let l = &r.latencies_ms;
                let _ = writeln!(
                    o,
                    "| {} | {} | {:.3} | {:.3} | {:.3} |",
                    r.system.name(),
                    l.len(),
                    median(l).unwrap_or(f64::NAN),
                    percentile(l, 0.9).unwrap_or(f64::NAN),
                    l.iter().copied().fold(f64::INFINITY, f64::min),
                );
            }
        }
        let reported: Option<u64> = self.runs.iter().map(|r| r.reported_kib).sum();
        if let Some(k) = reported {
            let _ = writeln!(
                o,
                "\nFreed memory the VM handed back to its host during the measurements: {} MiB \
                 (the next writes into the page cache fault it in again, which moves CPU figures \
                 from round to round; `--hold-freed-memory` holds it back for a run).",
                k / 1024
            );
        }
        let _ = writeln!(o, "\nTargets (ferry, from this run):\n");
        for t in self.targets() {
            let _ = writeln!(o, "- {t}");
        }
        if !self.failures.is_empty() {
            let _ = writeln!(o, "\nFailed measurements:\n");
            for f in &self.failures {
                let _ = writeln!(o, "- {f}");
            }
        }
        let _ = writeln!(
            o,
            "\nHow it is measured: aggregate = size × receivers / (last receiver done − start signal). \
             Peak RSS is the kernel's `ru_maxrss` from `wait4` when the orchestrator reaps each \
             process (the orchestrator's own high-water mark, {} MiB, is the floor of every child's \
             figure). CPU (transfer) sums `getrusage` user+sys that each process spent in the \
             transfer (receivers from the start signal to done; senders from building the \
             downloadable to the end of the transaction) per GiB delivered, and per role: the \
             sender (ferry's includes the BLAKE3 pass over the file that the ticket's digest \
             needs before any receiver can start, shown in parentheses) and all receivers summed; \
             CPU (whole processes) is `wait4`'s total, Python start-up and imports included. \
             CPU (whole machine) is what `/proc/stat` counts busy (user, nice, system, irq, \
             softirq) over all CPUs from the start signal to the last receiver's done: it does \
             not depend on whose context the kernel did work in (loopback delivery is charged \
             to whichever process transmits; writeback and `ksoftirqd` to no process of the \
             run), but it counts whatever else the machine ran, and not ferry's digest pass. \
             Receivers hash with BLAKE3 (ferry, TCP) or sha256 (NVFlare, in Python); NVFlare's \
             file receiver is `download_file` followed by an fsync, its hashing receiver \
             `download_object` with a consumer shaped like its file consumer, its tensor receiver \
             `download_arrays` (numpy arrays of 4 MiB). Plain TCP: 1 MiB reads and writes (file \
             receivers write each 1 MiB in 16 KiB writes), one connection per receiver. nginx → curl: Debian's nginx (`worker_processes auto`, \
             `sendfile on`) from a temporary prefix on a free loopback port, one `curl -o FILE` \
             per receiver followed by an fsync of FILE; nginx's CPU is read from `/proc` for its \
             master and workers (from when it is ready to its last logged response), each \
             receiver's is its own plus curl's, its sender RSS is the sum of its processes' \
             high-water marks. Every receiver's bytes are verified after it reports done. \
             Before each measurement the source is read once (page cache warm for every system) \
             and `sync` flushes the writeback of earlier runs. {} round(s): each round measures \
             every case once, systems interleaved, in reverse order in even rounds (so no system always \
             runs first); figures are the median over the rounds (peak \
             RSS the largest).",
            mib(self.orchestrator_hwm_kib),
            self.rounds
        );
        o
    }

    pub(crate) fn targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mark = |ok: bool| if ok { "met" } else { "**missed**" };
        // Hash / memory receivers vs NVFlare and TCP.
        for sc in [Scenario::FileHash, Scenario::Tensors] {
            for r in self
                .runs
                .iter()
                .filter(|r| r.scenario == sc && r.system == System::Ferry)
            {
                let nv = self.find(sc, System::Nvflare, r.receivers);
                let tcp = self.find(sc, System::Tcp, r.receivers);
                let mut parts = Vec::new();
                let mut ok = true;
                if let Some(nv) = nv {
                    let x = r.mib_s / nv.mib_s;
                    ok &= x >= 8.0;
                    parts.push(format!("{} NVFlare (≥ 8×)", ratio(x)));
                    if let Some(t) = tcp {
                        parts.push(format!(
                            "(plain TCP itself: {} NVFlare)",
                            ratio(t.mib_s / nv.mib_s)
                        ));
                    }
                }
                if let Some(t) = tcp {
                    let x = r.mib_s / t.mib_s;
                    if sc == Scenario::FileHash {
                        ok &= x >= 0.8;
                        parts.push(format!("{} plain TCP (≥ 0.8×)", ratio(x)));
                    } else {
                        parts.push(format!("{} plain TCP", ratio(x)));
                    }
                }
                if !parts.is_empty() {
                    out.push(format!(
                        "{}, {} receiver(s): {} — {}",
                        sc.label(),
                        r.receivers,
                        parts.join(", "),
                        mark(ok)
                    ));
                }
            }
        }
        for r in self
            .runs
            .iter()
            .filter(|r| r.scenario == Scenario::FileDisk && r.system == System::Ferry)
        {
            if let Some(t) = self.find(Scenario::FileDisk, System::Tcp, r.receivers) {
                let x = r.mib_s / t.mib_s;
                out.push(format!(
                    "{}, {} receiver(s): {} plain TCP writing the same files (≥ 0.9×) — {}",
                    Scenario::FileDisk.label(),
                    r.receivers,
                    ratio(x),
                    mark(x >= 0.9)
                ));
            }
            if let Some(w) = self.find(Scenario::FileDisk, System::Nginx, r.receivers) {
                let x = r.mib_s / w.mib_s;
                let c = r.cpu_per_gib() / w.cpu_per_gib();
                out.push(format!(
                    "{}, {} receiver(s): {} nginx → curl (≥ 0.95×), CPU per GiB {} nginx + curl's \
                     ({:.2} vs {:.2} s/GiB, ≤ 1×; sender {:.2} of which digest pass {:.2} vs nginx \
                     {:.2}, receivers {:.2} vs curl {:.2}; whole machine {:.2} vs {:.2}, {}) — {}",
                    Scenario::FileDisk.label(),
                    r.receivers,
                    ratio(x),
                    ratio(c),
                    r.cpu_per_gib(),
                    w.cpu_per_gib(),
                    r.sender_cpu_per_gib(),
                    r.sender_prep_cpu_per_gib(),
                    w.sender_cpu_per_gib(),
                    r.receivers_cpu_per_gib(),
                    w.receivers_cpu_per_gib(),
                    r.machine_cpu_per_gib(),
                    w.machine_cpu_per_gib(),
                    ratio(r.machine_cpu_per_gib() / w.machine_cpu_per_gib()),
                    mark(x >= 0.95 && c <= 1.0)
                ));
                if let Some(spread) = round_spread(r, w) {
                    out.push(format!(
                        "{}, {} receiver(s), CPU × nginx + curl round by round: {spread}",
                        Scenario::FileDisk.label(),
                        r.receivers,
                    ));
                }
            }
        }
        let ferry: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.system == System::Ferry && r.scenario != Scenario::Small)
            .collect();
        if let Some(worst) = ferry
            .iter()
            .max_by(|a, b| a.cpu_per_gib().total_cmp(&b.cpu_per_gib()))
        {
            out.push(format!(
                "CPU per GiB delivered ≤ 1 s: worst {:.2} s/GiB ({} × {}) — {}",
                worst.cpu_per_gib(),
                worst.scenario.key(),
                worst.receivers,
                mark(worst.cpu_per_gib() <= 1.0)
            ));
        }
        if let Some(r) = self.find(Scenario::Small, System::Ferry, 1) {
            if let Some(m) = median(&r.latencies_ms) {
                out.push(format!(
                    "4 KiB object fetched in ≤ 1 ms: median {m:.3} ms — {}",
                    mark(m <= 1.0)
                ));
            }
        }
        let max_n = self
            .runs
            .iter()
            .filter(|r| r.scenario == Scenario::FileHash || r.scenario == Scenario::FileDisk)
            .map(|r| r.receivers)
            .max();
        let mut base = None;
        if let Some(n) = max_n {
            for sc in [Scenario::FileHash, Scenario::FileDisk] {
                if let Some(r) = self.find(sc, System::Ferry, n) {
                    let m = r.sender_rss_kib as f64 / 1024.0;
                    base = Some(base.map_or(m, |b: f64| b.max(m)));
                    out.push(format!(
                        "sender peak RSS ≤ 64 MiB, {} to {} receivers ({}): {:.0} MiB — {}",
                        human_size(r.size),
                        n,
                        sc.key(),
                        m,
                        mark(m <= 64.0)
                    ));
                }
            }
        }
        if let (Some(b), Some(r)) = (base, self.find(Scenario::Big, System::Ferry, 1)) {
            let m = r.sender_rss_kib as f64 / 1024.0;
            out.push(format!(
                "sender peak RSS for {} to one receiver within 10% of the above ({:.0} MiB): {:.0} MiB — {}",
                human_size(r.size),
                b,
                m,
                mark(m <= b * 1.1)
            ));
        }
        if let Some(worst) = self
            .runs
            .iter()
            .filter(|r| {
                r.system == System::Ferry
                    && matches!(
                        r.scenario,
                        Scenario::FileHash | Scenario::FileDisk | Scenario::Big
                    )
            })
            .max_by_key(|r| r.receiver_rss_kib_max)
        {
            let m = worst.receiver_rss_kib_max as f64 / 1024.0;
            out.push(format!(
                "receiver peak RSS ≤ 32 MiB for a file download: worst {:.0} MiB ({} × {}) — {}",
                m,
                worst.scenario.key(),
                human_size(worst.size),
                mark(m <= 32.0)
            ));
        }
        out
    }
}

/// The command as a user types it (the example is run by `cargo xtask bench download`).
pub(crate) fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut s = "cargo xtask bench download".to_string();
    for a in args.iter().filter(|a| a.as_str() != "orchestrate") {
        s.push(' ');
        s.push_str(a);
    }
    s
}

pub(crate) fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {mem_gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// Now as `YYYY-MM-DD HH:MM UTC` (civil-from-days, no date crate needed).
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Replace the text between the download markers of docs/benchmarks.md.
pub(crate) fn write_docs(path: &Path, body: &str) -> Result<()> {
    const BEGIN: &str = "<!-- bench:download:begin -->";
    const END: &str = "<!-- bench:download:end -->";
    let doc = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("{} lacks the {BEGIN} / {END} markers", path.display());
    };
    if e < b {
        bail!("{}: the download markers are out of order", path.display());
    }
    let mut out = String::with_capacity(doc.len() + body.len());
    out.push_str(&doc[..b + BEGIN.len()]);
    out.push('\n');
    out.push_str(body.trim_end());
    out.push('\n');
    out.push_str(&doc[e..]);
    fs::write(path, out)?;
    Ok(())
}
