//! The orchestrator: which cases to run, in which order, and the report at the end.

use crate::args::*;
use crate::cases::*;
use crate::child::*;
use crate::common::*;
use crate::os;
use crate::report::*;
use crate::vm;
use crate::web;
use anyhow::{anyhow, bail, Result};
use std::fs::{self};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(crate) fn orchestrate(a: OrchArgs) -> Result<()> {
    let q = a.quick;
    let file_size = a.file_mib.unwrap_or(if q { 64 } else { 1024 }) * MIB;
    let tensor_size = a.tensor_mib.unwrap_or(if q { 32 } else { 512 }) * MIB;
    let big_size = a.big_mib.unwrap_or(if q { 256 } else { 8192 }) * MIB;
    let small_count = a.small_count.unwrap_or(if q { 50 } else { 200 });
    if tensor_size > file_size.max(big_size) {
        bail!("the tensor bytes are read from the file: --tensor-mib must not exceed --file-mib");
    }
    let want = |name: &str| {
        !a.skip.iter().any(|s| s == name)
            && (a.only.is_empty()
                || !["ferry", "nvflare", "tcp", "nginx"].contains(&name)
                || a.only.iter().any(|s| s == name))
    };
    let mut systems: Vec<System> = [System::Tcp, System::Ferry, System::Nvflare]
        .into_iter()
        .filter(|s| want(s.key()))
        .collect();
    // The nginx → curl baseline (file-disk only): found or installed here, once.
    let mut failures = Vec::new();
    let mut nginx = None;
    if want("nginx") && want(Scenario::FileDisk.key()) {
        match web::find_or_install_nginx() {
            Ok(_) if !web::curl_available() => {
                let why =
                    "nginx → curl baseline not run: curl is not installed (apt-get install curl)";
                eprintln!("bench_download: {why}");
                failures.push(why.to_string());
            }
            Ok(p) => {
                eprintln!("bench_download: nginx → curl baseline with {}", p.display());
                nginx = Some(p);
                systems.push(System::Nginx);
            }
            Err(why) => {
                eprintln!("bench_download: nginx → curl baseline not run: {why}");
                failures.push(format!("nginx → curl baseline not run: {why}"));
            }
        }
    }

    let exe = std::env::current_exe()?;
    // <target>/release/examples/bench_download -> <target>
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("cannot place {} in a target dir", exe.display()))?;
    let root = target.join("bench-download");
    let data = root.join("data");
    fs::create_dir_all(&data)?;
    let work = tempfile::Builder::new().prefix("run-").tempdir_in(&root)?;
    let workspace = std::env::var_os("FERRY_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let python = std::env::var_os("FERRY_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/interop-venv/bin/python"));
    if systems.contains(&System::Nvflare) && !python.exists() {
        bail!(
            "no Python for NVFlare at {} (run `cargo xtask interop-setup`, or --skip nvflare)",
            python.display()
        );
    }
    let ctx = Ctx {
        exe,
        python,
        py_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bench_py"),
        work: work.path().to_path_buf(),
        data: data.clone(),
        ferry_chunk: a.ferry_chunk_kib.unwrap_or(0) * 1024,
        ferry_read_chunks: a.ferry_read_chunks,
        ferry_budget: a.ferry_budget_kib.unwrap_or(0) * 1024,
        ferry_window: a.ferry_window.unwrap_or(0),
        perf_dir: a.perf_dir.clone(),
        nginx,
    };
    if let Some(d) = &ctx.perf_dir {
        fs::create_dir_all(d)?;
    }
    // Held until the report is written (dropped at the end of this function).
    let _hold = if a.hold_freed_memory {
        match vm::Hold::new() {
            Ok(h) => {
                eprintln!("bench_download: free-page reporting held back for the run");
                Some(h)
            }
            Err(e) => bail!("--hold-freed-memory: {e} (needs Linux page_reporting and root)"),
        }
    } else {
        None
    };

    // Sources.
    let t = Instant::now();
    let file_src = ctx.data.join(format!("source-{}MiB.bin", file_size / MIB));
    make_source(&file_src, file_size)?;
    let file_b3 = blake3_file(&file_src, None)?;
    let tensor_b3 = blake3_file(&file_src, Some(tensor_size))?;
    let small_src = ctx.data.join("small-4KiB.bin");
    make_source(&small_src, SMALL_BYTES)?;
    let small_b3 = blake3_file(&small_src, None)?;
    eprintln!(
        "bench_download: sources ready in {:.1}s under {}",
        t.elapsed().as_secs_f64(),
        data.display()
    );

    let mut cases = Vec::new();
    for sc in [Scenario::FileHash, Scenario::FileDisk] {
        if !want(sc.key()) {
            continue;
        }
        for &n in &a.receivers {
            for &sys in &systems {
                if sys == System::Nginx && sc != Scenario::FileDisk {
                    continue;
                }
                cases.push(Case {
                    scenario: sc,
                    system: sys,
                    receivers: n,
                    size: file_size,
                    source: file_src.clone(),
                    blake3: file_b3.clone(),
                    count: 1,
                });
            }
        }
    }
    if want("tensors") && tensor_size > 0 {
        for &n in &a.tensor_receivers {
            for &sys in systems.iter().filter(|s| **s != System::Nginx) {
                cases.push(Case {
                    scenario: Scenario::Tensors,
                    system: sys,
                    receivers: n,
                    size: tensor_size,
                    source: file_src.clone(),
                    blake3: tensor_b3.clone(),
                    count: 1,
                });
            }
        }
    }
    if want("small") {
        for &sys in systems
            .iter()
            .filter(|s| !matches!(s, System::Tcp | System::Nginx))
        {
            cases.push(Case {
                scenario: Scenario::Small,
                system: sys,
                receivers: 1,
                size: SMALL_BYTES,
                source: small_src.clone(),
                blake3: small_b3.clone(),
                count: small_count,
            });
        }
    }
    let mut big_src = None;
    if want("big") && big_size > 0 {
        let p = ctx.data.join(format!("source-{}MiB.bin", big_size / MIB));
        let t = Instant::now();
        make_source(&p, big_size)?;
        let b3 = blake3_file(&p, None)?;
        eprintln!(
            "bench_download: big source ({}) ready in {:.1}s",
            human_size(big_size),
            t.elapsed().as_secs_f64()
        );
        for &sys in systems
            .iter()
            .filter(|s| matches!(s, System::Ferry | System::Tcp))
        {
            cases.push(Case {
                scenario: Scenario::Big,
                system: sys,
                receivers: 1,
                size: big_size,
                source: p.clone(),
                blake3: b3.clone(),
                count: 1,
            });
        }
        big_src = Some(p);
    }

    let started = Instant::now();
    let rounds = a.rounds.max(1);
    // Rounds outside, cases inside: every round runs each system once per case, so the
    // systems compared meet the same machine load. `measured[i]` keeps case i's rounds in
    // round order whatever order a round ran the cases in.
    let mut measured: Vec<Vec<Run>> = vec![Vec::new(); cases.len()];
    let mut failed = vec![false; cases.len()];
    for round in 1..=rounds {
        // Even rounds run the cases in reverse order: no system always goes first (the first
        // run after a pause or after another system's run can cost more on a VM whose idle
        // memory the host reclaims).
        let order: Vec<usize> = if round % 2 == 0 {
            (0..cases.len()).rev().collect()
        } else {
            (0..cases.len()).collect()
        };
        for i in order {
            let case = &cases[i];
            if failed[i] {
                continue;
            }
            let t = Instant::now();
            let tag = if rounds > 1 {
                format!("[{round}/{rounds}] ")
            } else {
                String::new()
            };
            eprint!("bench_download: {tag}{:<40} ", case.title());
            match settle(case).and_then(|()| run_case(&ctx, case)) {
                Ok(r) => {
                    progress(&r, t);
                    measured[i].push(r);
                }
                Err(e) => {
                    eprintln!("FAILED");
                    eprintln!("{e:#}");
                    failed[i] = true;
                    failures.push(format!(
                        "{}: {}",
                        case.title(),
                        first_line(&format!("{e:#}"))
                    ));
                }
            }
        }
    }
    let runs: Vec<Run> = measured
        .iter()
        .zip(&failed)
        .filter(|(_, f)| !**f)
        .filter_map(|(m, _)| merge_rounds(m))
        .collect();
    let total = started.elapsed();
    let own_hwm = os::self_vmhwm_kib();

    let report = Report {
        command: command_line(),
        date: utc_now(),
        machine: machine(),
        runs,
        failures,
        orchestrator_hwm_kib: own_hwm,
        total_s: total.as_secs_f64(),
        quick: q,
        rounds,
    };
    let text = report.markdown();
    println!("{text}");
    if let Some(p) = &a.json {
        fs::write(p, serde_json::to_string_pretty(&report.runs)?)?;
    }
    if a.write_docs {
        let docs = workspace.join("docs/benchmarks.md");
        write_docs(&docs, &text)?;
        eprintln!("bench_download: wrote {}", docs.display());
    }
    if !a.keep_data {
        let _ = fs::remove_file(&file_src);
        let _ = fs::remove_file(&small_src);
        if let Some(p) = big_src {
            let _ = fs::remove_file(p);
        }
    }
    if !report.failures.is_empty() {
        let kept = work.keep();
        bail!(
            "{} measurement(s) failed; their logs are under {}",
            report.failures.len(),
            kept.display()
        );
    }
    Ok(())
}

/// One line on stderr per measurement.
fn progress(r: &Run, t: Instant) {
    if r.scenario == Scenario::Small {
        eprintln!(
            "median {:.3} ms over {} fetches  ({:.1}s)",
            median(&r.latencies_ms).unwrap_or(f64::NAN),
            r.latencies_ms.len(),
            t.elapsed().as_secs_f64()
        );
    } else {
        let reported = match r.reported_kib {
            Some(k) => format!("  to host {} MiB", k / 1024),
            None => String::new(),
        };
        let digest = match r.sender_prep_cpu_per_gib() {
            d if d > 0.0 => format!(" [digest {d:.2}]"),
            _ => String::new(),
        };
        eprintln!(
            "{:>8.1} MiB/s  RSS sender {:>4} / receivers ≤ {:>4} MiB  \
             cpu {:.2} s/GiB (sender {:.2}{digest} + receivers {:.2}; machine {:.2}){reported}  ({:.1}s)",
            r.mib_s,
            r.sender_rss_kib / 1024,
            r.receiver_rss_kib_max / 1024,
            r.cpu_per_gib(),
            r.sender_cpu_per_gib(),
            r.receivers_cpu_per_gib(),
            r.machine_cpu_per_gib(),
            t.elapsed().as_secs_f64()
        );
    }
}
