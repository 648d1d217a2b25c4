//! The scenarios, the systems and one measured case: spawning its sender and receivers, timing them and checking what they received.

use crate::child::*;
use crate::common::*;
use crate::group::*;
use crate::os;
use crate::vm;
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum System {
    Ferry,
    Nvflare,
    Tcp,
    Nginx,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Ferry => "ferry",
            System::Nvflare => "NVFlare 2.9",
            System::Tcp => "plain TCP",
            System::Nginx => "nginx → curl",
        }
    }
    pub(crate) fn key(self) -> &'static str {
        match self {
            System::Ferry => "ferry",
            System::Nvflare => "nvflare",
            System::Tcp => "tcp",
            System::Nginx => "nginx",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) enum Scenario {
    #[serde(rename = "file-hash")]
    FileHash,
    #[serde(rename = "file-disk")]
    FileDisk,
    #[serde(rename = "tensors")]
    Tensors,
    #[serde(rename = "big")]
    Big,
    #[serde(rename = "small")]
    Small,
}

impl Scenario {
    pub(crate) fn key(self) -> &'static str {
        match self {
            Scenario::FileHash => "file-hash",
            Scenario::FileDisk => "file-disk",
            Scenario::Tensors => "tensors",
            Scenario::Big => "big",
            Scenario::Small => "small",
        }
    }
    pub(crate) fn label(self) -> &'static str {
        match self {
            Scenario::FileHash => "file → receivers hash",
            Scenario::FileDisk => "file → receivers write + fsync",
            Scenario::Tensors => "tensor dict → receiver memory",
            Scenario::Big => "big file → receiver hashes",
            Scenario::Small => "4 KiB object, sequential fetches",
        }
    }
    /// Receiver mode per system.
    pub(crate) fn mode(self, sys: System) -> &'static str {
        match (self, sys) {
            (Scenario::FileHash | Scenario::Big, _) => "hash",
            (Scenario::FileDisk, _) => "file",
            (Scenario::Tensors, System::Nvflare) => "arrays",
            (Scenario::Tensors, _) => "memory",
            (Scenario::Small, _) => "small",
        }
    }
}

/// One measurement: one scenario, one system, one receiver count.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Run {
    pub(crate) scenario: Scenario,
    pub(crate) system: System,
    pub(crate) receivers: usize,
    pub(crate) size: u64,
    pub(crate) wall_s: f64,
    pub(crate) mib_s: f64,
    pub(crate) sender_rss_kib: u64,
    pub(crate) receiver_rss_kib_max: u64,
    /// CPU the processes spent in the transfer (self-reported getrusage windows), all summed.
    pub(crate) cpu_transfer_s: f64,
    /// CPU of the whole processes (wait4), all summed: startup and imports included.
    pub(crate) cpu_process_s: f64,
    pub(crate) sender_cpu_s: f64,
    /// Of `sender_cpu_s`: what the sender spent before it could serve (ferry's BLAKE3 pass
    /// over the file for the ticket's digest; 0 for the others).
    pub(crate) sender_prep_cpu_s: f64,
    pub(crate) receivers_cpu_s: f64,
    /// CPU the whole machine was busy from the start signal to the last receiver's DONE
    /// ([`os::machine_busy_s`]): who did the work does not matter, what else ran on the
    /// machine does. 0 where it cannot be read.
    pub(crate) machine_cpu_s: f64,
    /// `cpu_transfer_s` and `machine_cpu_s` of each round, in round order (one pair for a
    /// single measurement): the medians above hide how far rounds apart differ.
    pub(crate) rounds_cpu_s: Vec<(f64, f64)>,
    /// KiB of freed memory the VM handed back to its host during the case ([`vm`]), summed
    /// over the rounds; `None` where the kernel does not report it.
    pub(crate) reported_kib: Option<u64>,
    pub(crate) latencies_ms: Vec<f64>,
}

impl Run {
    pub(crate) fn gib_delivered(&self) -> f64 {
        (self.size as f64 * self.receivers as f64) / GIB
    }
    pub(crate) fn cpu_per_gib(&self) -> f64 {
        self.cpu_transfer_s / self.gib_delivered()
    }
    /// The sender's transfer CPU per GiB delivered.
    pub(crate) fn sender_cpu_per_gib(&self) -> f64 {
        self.sender_cpu_s / self.gib_delivered()
    }
    /// Of [`Run::sender_cpu_per_gib`]: the part spent before serving (ferry's digest pass).
    pub(crate) fn sender_prep_cpu_per_gib(&self) -> f64 {
        self.sender_prep_cpu_s / self.gib_delivered()
    }
    /// The receivers' transfer CPU per GiB delivered (all of them summed).
    pub(crate) fn receivers_cpu_per_gib(&self) -> f64 {
        self.receivers_cpu_s / self.gib_delivered()
    }
    /// [`Run::machine_cpu_s`] per GiB delivered.
    pub(crate) fn machine_cpu_per_gib(&self) -> f64 {
        self.machine_cpu_s / self.gib_delivered()
    }
    pub(crate) fn cpu_process_per_gib(&self) -> f64 {
        self.cpu_process_s / self.gib_delivered()
    }
}

/// Everything a measurement needs to know about the run.
pub(crate) struct Ctx {
    pub(crate) exe: PathBuf,
    pub(crate) python: PathBuf,
    pub(crate) py_dir: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) ferry_chunk: u64,
    /// `--ferry-read-chunks`: the sender reads file chunks into buffers.
    pub(crate) ferry_read_chunks: bool,
    pub(crate) ferry_budget: u64,
    pub(crate) ferry_window: usize,
    pub(crate) perf_dir: Option<PathBuf>,
    /// The nginx binary of the nginx → curl baseline, when it is run.
    pub(crate) nginx: Option<PathBuf>,
}

impl Ctx {
    /// A command running this binary as `role`, under `perf record` when profiling.
    pub(crate) fn rust_role(&self, role: &str, name: &str, title: &str) -> Command {
        match &self.perf_dir {
            Some(dir) => {
                let mut c = Command::new("perf");
                c.args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-o"])
                    .arg(dir.join(format!(
                        "{}-{name}.perf.data",
                        title.replace([' ', '×'], "_")
                    )))
                    .arg("--")
                    .arg(&self.exe)
                    .arg(role);
                c
            }
            _ => {
                let mut c = Command::new(&self.exe);
                c.arg(role);
                c
            }
        }
    }
}

pub(crate) struct Case {
    pub(crate) scenario: Scenario,
    pub(crate) system: System,
    pub(crate) receivers: usize,
    pub(crate) size: u64,
    /// The file the sender offers (or reads the tensor bytes from).
    pub(crate) source: PathBuf,
    /// Expected BLAKE3 of what every receiver gets (Rust receivers).
    pub(crate) blake3: String,
    pub(crate) count: usize,
}

impl Case {
    pub(crate) fn title(&self) -> String {
        format!(
            "{} {} {} × {}",
            self.scenario.key(),
            self.system.key(),
            human_size(self.size),
            self.receivers
        )
    }
    /// Generous deadline: 60 s plus 25 MiB/s for everything delivered.
    pub(crate) fn deadline(&self) -> Duration {
        let bytes = (self.size * self.receivers as u64) as f64;
        Duration::from_secs_f64(60.0 + bytes / (25.0 * MIB as f64))
    }
}

pub(crate) fn run_case(ctx: &Ctx, case: &Case) -> Result<Run> {
    let title = case.title();
    let dir = ctx.work.join(title.replace([' ', '×'], "_"));
    let mut g = Group::new(dir.join("logs"))?;
    let deadline_d = case.deadline();
    let deadline = Instant::now() + deadline_d;
    let timeout = format!("{:.0}", deadline_d.as_secs_f64() + 30.0);
    let mode = case.scenario.mode(case.system);
    let n = case.receivers;

    // The sender.
    let sender_cmd = match case.system {
        System::Ferry | System::Tcp => {
            let role = if case.system == System::Ferry {
                "ferry-sender"
            } else {
                "tcp-sender"
            };
            let kind = match case.scenario {
                Scenario::Tensors => "tensors",
                Scenario::Small => "small",
                _ => "file",
            };
            let mut c = ctx.rust_role(role, "sender", &title);
            c.args(["--kind", kind, "--file"])
                .arg(&case.source)
                .args(["--len", &case.size.to_string()])
                .args(["--count", &case.count.to_string()])
                .args(["--receivers", &n.to_string()])
                .args(["--chunk", &ctx.ferry_chunk.to_string()])
                .args(["--budget", &ctx.ferry_budget.to_string()])
                .args(["--timeout", &timeout]);
            if ctx.ferry_read_chunks {
                c.arg("--read-chunks");
            }
            c
        }
        System::Nvflare => {
            let mut c = Command::new(&ctx.python);
            c.arg(ctx.py_dir.join("nv_sender.py")).args([
                "--num-receivers",
                &n.to_string(),
                "--timeout",
                &timeout,
            ]);
            match case.scenario {
                Scenario::Tensors => {
                    c.args(["--kind", "arrays", "--total-bytes", &case.size.to_string()])
                        .args(["--array-bytes", &TENSOR_BYTES.to_string()]);
                }
                Scenario::Small => {
                    c.args(["--kind", "small", "--count", &case.count.to_string()])
                        .arg("--file")
                        .arg(&case.source);
                }
                _ => {
                    c.args(["--kind", "file", "--file"]).arg(&case.source);
                }
            }
            c
        }
        System::Nginx => {
            let nginx = ctx
                .nginx
                .as_ref()
                .ok_or_else(|| anyhow!("no nginx for the nginx → curl baseline"))?;
            let mut c = ctx.rust_role("nginx-sender", "sender", &title);
            c.args(["--kind", "file", "--file"])
                .arg(&case.source)
                .args(["--receivers", &n.to_string()])
                .args(["--timeout", &timeout])
                .arg("--nginx")
                .arg(nginx);
            c
        }
    };
    let s = g.spawn("sender", sender_cmd)?;
    let ready = g.wait_ready(s, deadline)?;
    let url = ready["url"]
        .as_str()
        .ok_or_else(|| anyhow!("sender READY without url: {ready}"))?
        .to_string();

    // The receivers.
    let mut recv = Vec::with_capacity(n);
    for i in 0..n {
        let out = dir.join(format!("recv-{i}"));
        fs::create_dir_all(&out)?;
        let fqcn = format!("site-{}", i + 1);
        let cmd = match case.system {
            System::Ferry | System::Tcp => {
                let role = if case.system == System::Ferry {
                    "ferry-receiver"
                } else {
                    "tcp-receiver"
                };
                let mut c = ctx.rust_role(role, &fqcn, &title);
                c.args(["--url", &url, "--fqcn", &fqcn, "--mode", mode, "--out-dir"])
                    .arg(&out)
                    .args(["--len", &case.size.to_string()])
                    .args(["--window", &ctx.ferry_window.to_string()])
                    .args(["--timeout", &timeout]);
                c
            }
            System::Nvflare => {
                let mut c = Command::new(&ctx.python);
                c.arg(ctx.py_dir.join("nv_receiver.py"))
                    .args(["--url", &url, "--fqcn", &fqcn, "--mode", mode, "--out-dir"])
                    .arg(&out)
                    .args(["--timeout", &timeout]);
                c
            }
            System::Nginx => {
                let mut c = ctx.rust_role("curl-receiver", &fqcn, &title);
                c.args(["--url", &url, "--fqcn", &fqcn, "--mode", mode, "--out-dir"])
                    .arg(&out)
                    .args(["--timeout", &timeout]);
                c
            }
        };
        recv.push(g.spawn(&fqcn, cmd)?);
    }
    for &r in &recv {
        g.wait_ready(r, deadline)?;
    }

    // Go.
    let go = format!(
        "GO {}\n",
        json!({"source": ready.get("fqcn").cloned().unwrap_or(json!(SENDER_FQCN)),
               "refs": ready.get("refs").cloned().unwrap_or(json!([]))})
    );
    let reported0 = vm::reported_kib();
    let busy0 = os::machine_busy_s();
    let t0 = Instant::now();
    for &r in &recv {
        g.send(r, &go)?;
    }
    g.wait_results(deadline)?;
    // Up to the last receiver's DONE, as the throughput: what receivers do after it (the
    // benchmark's own check of the file they wrote) is not the transfer's.
    let busy_end = recv
        .iter()
        .map(|&r| g.procs[r].done_busy_s)
        .collect::<Option<Vec<f64>>>()
        .and_then(|v| v.into_iter().reduce(f64::max));
    let machine_cpu = match (busy0, busy_end) {
        (Some(a), Some(b)) => (b - a).max(0.0),
        _ => 0.0,
    };
    let end = recv
        .iter()
        .map(|&r| g.procs[r].done.as_ref().map(|d| d.0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow!("a receiver sent RESULT without DONE"))?
        .into_iter()
        .max()
        .unwrap_or(t0);
    g.finish(Duration::from_secs(20))?;

    // Verify what every receiver got.
    let expected_sha = ready
        .get("sha256")
        .and_then(Value::as_str)
        .map(str::to_string);
    let expected_bytes = match case.scenario {
        Scenario::Small => case.size * case.count as u64,
        _ => case.size,
    };
    let mut latencies = Vec::new();
    for &r in &recv {
        let res = g.procs[r].result.clone().expect("waited");
        let got = res["bytes"].as_u64().unwrap_or(0);
        // NVFlare's numpy path rounds every array to whole float32s; sizes here are multiples of 4.
        if got != expected_bytes {
            bail!(
                "{title}: {} received {got} bytes, expected {expected_bytes}",
                g.procs[r].name
            );
        }
        let ok = match case.system {
            System::Nvflare => {
                let want = expected_sha.as_deref().unwrap_or("");
                res["sha256"].as_str() == Some(want)
            }
            _ => res["blake3"].as_str() == Some(case.blake3.as_str()),
        };
        if !ok {
            bail!(
                "{title}: {} received different bytes: {res}",
                g.procs[r].name
            );
        }
        if let Some(l) = res["latencies_ms"].as_array() {
            latencies.extend(l.iter().filter_map(Value::as_f64));
        }
    }

    let wall = end.duration_since(t0).as_secs_f64().max(1e-9);
    let sender_res = g.procs[s].result.clone().expect("waited");
    let sender_cpu = sender_res["cpu_s"].as_f64().unwrap_or(0.0);
    let sender_prep_cpu = sender_res["prep_cpu_s"].as_f64().unwrap_or(0.0);
    let receivers_cpu: f64 = recv
        .iter()
        .map(|&r| {
            g.procs[r].result.as_ref().expect("waited")["cpu_s"]
                .as_f64()
                .unwrap_or(0.0)
        })
        .sum();
    let cpu_process: f64 = (0..g.procs.len()).map(|i| g.usage(i).cpu_s()).sum();
    let run = Run {
        scenario: case.scenario,
        system: case.system,
        receivers: n,
        size: case.size,
        wall_s: wall,
        mib_s: (expected_bytes * n as u64) as f64 / MIB as f64 / wall,
        // nginx's master and workers: the sum of their high-water marks (wait4 of the role
        // would give the largest one only).
        sender_rss_kib: g
            .usage(s)
            .maxrss_kib
            .max(sender_res["procs_hwm_kib"].as_u64().unwrap_or(0)),
        receiver_rss_kib_max: recv
            .iter()
            .map(|&r| g.usage(r).maxrss_kib)
            .max()
            .unwrap_or(0),
        cpu_transfer_s: sender_cpu + receivers_cpu,
        cpu_process_s: cpu_process,
        sender_cpu_s: sender_cpu,
        sender_prep_cpu_s: sender_prep_cpu,
        receivers_cpu_s: receivers_cpu,
        machine_cpu_s: machine_cpu,
        rounds_cpu_s: vec![(sender_cpu + receivers_cpu, machine_cpu)],
        reported_kib: reported0
            .zip(vm::reported_kib())
            .map(|(a, b)| b.saturating_sub(a)),
        latencies_ms: latencies,
    };
    drop(g);
    let _ = fs::remove_dir_all(&dir);
    Ok(run)
}

/// One figure per case from its rounds: the median of each throughput and CPU figure (the
/// mean of the middle two for an even count), the largest peak RSS, every latency.
pub(crate) fn merge_rounds(runs: &[Run]) -> Option<Run> {
    let first = runs.first()?;
    let mid = |f: &dyn Fn(&Run) -> f64| -> f64 {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    Some(Run {
        wall_s: mid(&|r| r.wall_s),
        mib_s: mid(&|r| r.mib_s),
        sender_rss_kib: runs.iter().map(|r| r.sender_rss_kib).max().unwrap_or(0),
        receiver_rss_kib_max: runs
            .iter()
            .map(|r| r.receiver_rss_kib_max)
            .max()
            .unwrap_or(0),
        cpu_transfer_s: mid(&|r| r.cpu_transfer_s),
        cpu_process_s: mid(&|r| r.cpu_process_s),
        sender_cpu_s: mid(&|r| r.sender_cpu_s),
        sender_prep_cpu_s: mid(&|r| r.sender_prep_cpu_s),
        receivers_cpu_s: mid(&|r| r.receivers_cpu_s),
        machine_cpu_s: mid(&|r| r.machine_cpu_s),
        rounds_cpu_s: runs.iter().flat_map(|r| r.rounds_cpu_s.clone()).collect(),
        reported_kib: runs.iter().map(|r| r.reported_kib).sum(),
        latencies_ms: runs.iter().flat_map(|r| r.latencies_ms.clone()).collect(),
        ..first.clone()
    })
}

/// Same start for every system: the source is read once (into the page cache) and the
/// writeback of earlier runs' files is flushed (`sync`) so it does not land in this one.
pub(crate) fn settle(case: &Case) -> Result<()> {
    let mut f = File::open(&case.source)?;
    let mut buf = vec![0u8; BLAST_BUF];
    while fill(&mut f, &mut buf)? > 0 {}
    let _ = Command::new("sync").status();
    Ok(())
}

/// Write `size` bytes of deterministic pseudo-random data (xorshift64*) to `path`, unless a
/// file of that size from an earlier run is already there.
pub(crate) fn make_source(path: &Path, size: u64) -> Result<()> {
    if fs::metadata(path).map(|m| m.len() == size).unwrap_or(false) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    let mut buf = vec![0u8; BLAST_BUF];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            w.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}
