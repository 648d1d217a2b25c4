//! `cargo xtask bench NAME [ARGS...]`: every benchmark is an example binary of the crate it
//! measures, built in release mode; this table maps the names to them. Benchmarks print their
//! table and write it into their section of `docs/benchmarks.md`. `python` is the exception: its
//! roles are Python processes importing the `ferry` wheel, so [`python`] builds a release wheel,
//! installs it into the interop venv and runs the orchestrator `crates/ferry-py/bench/bench_python.py`
//! (which also drives `bench_download`'s Rust roles and NVFlare's, for the baselines).

use anyhow::{bail, Context, Result};

use crate::interop;

/// name, package, example, what it measures
const BENCHES: &[(&str, &str, &str, &str)] = &[
    (
        "core",
        "ferry-core",
        "bench_core",
        "producer engine bookkeeping with 1..10,000 live transactions: poll_timeout, handle_timeout, a pull",
    ),
    (
        "cellnet",
        "ferry-cellnet",
        "bench_cellnet",
        "request/reply round trips and 1/8 MiB bulk throughput vs a plain tokio TCP echo",
    ),
    (
        "objects",
        "ferry-objects",
        "bench_objects",
        "file-chunk and tensor-item producer throughput vs pread/memcpy; producer peak heap",
    ),
    (
        "verify",
        "ferry-objects",
        "bench_verify",
        "BLAKE3 while receiving: stream verifier in and out of order vs one Hasher; resume re-hash",
    ),
    (
        "download",
        "ferry",
        "bench_download",
        "1 GiB file / 512 MiB tensors to 1..8 receiver processes: ferry vs NVFlare 2.9 vs plain TCP",
    ),
    (
        "scale",
        "ferry",
        "bench_scale",
        "64 receivers x 256 MiB from one sender (sender peak RSS <= 64 MiB); 1,000 transactions created, completed and expired (RSS flat)",
    ),
];

/// What `cargo xtask bench fanout` measures (listed with the others).
const FANOUT_BENCH: &str = "256 MiB to 1/4/16 receivers on a shaped network (netns, tbf, as root): direct, relay tree, peer-assisted, a source killed, nginx+curl";

/// What `cargo xtask bench python` measures (listed with the others).
const PYTHON_BENCH: &str = "512 MiB tensor dict to 4 Python receivers (download_tensors): vs NVFlare's numpy downloader and the Rust receivers; peak RSS";

/// Run benchmark `name` with extra arguments.
pub fn run(name: Option<&str>, args: &[String]) -> Result<()> {
    let Some(name) = name else {
        for (n, _, _, what) in BENCHES {
            println!("{n:<10} {what}");
        }
        println!("{:<10} {PYTHON_BENCH}", "python");
        println!("{:<10} {FANOUT_BENCH}", "fanout");
        return Ok(());
    };
    if name == "python" {
        return python(args);
    }
    if name == "fanout" {
        return fanout(args);
    }
    let Some((_, pkg, example, _)) = BENCHES.iter().find(|b| b.0 == name) else {
        bail!("no benchmark named {name:?}; `cargo xtask bench` lists them");
    };
    let py = interop::venv_python();
    let status = interop::cargo_command()
        .args(["run", "--release", "-p", pkg, "--example", example, "--"])
        .args(args)
        .env("FERRY_INTEROP_PYTHON", py)
        .env("FERRY_WORKSPACE", interop::workspace_root())
        .status()
        .context("spawning cargo run")?;
    if !status.success() {
        bail!("benchmark {name} failed with {status}");
    }
    Ok(())
}

/// `cargo xtask bench python [--write-docs] [--repeat N] [...]`: release wheel into the interop
/// venv, release `bench_download` for the Rust and NVFlare roles, then the orchestrator.
fn python(args: &[String]) -> Result<()> {
    let py = interop::setup()?;
    let root = interop::workspace_root();
    let wheels = root.join("target").join("ferry-py-wheels-release");
    let _ = std::fs::remove_dir_all(&wheels);
    let bin_dir = py
        .parent()
        .context("venv python has a directory")?
        .to_path_buf();
    let status = std::process::Command::new(bin_dir.join("maturin"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-m",
            "crates/ferry-py/Cargo.toml",
            "-i",
        ])
        .arg(&py)
        .arg("--out")
        .arg(&wheels)
        .status()
        .context("spawning maturin (from the interop venv)")?;
    if !status.success() {
        bail!("maturin build --release failed with {status}");
    }
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("maturin wrote no wheel")?;
    let status = std::process::Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--force-reinstall",
            "--no-deps",
        ])
        .arg(&wheel)
        .status()
        .context("pip install of the wheel")?;
    if !status.success() {
        bail!("pip install {} failed with {status}", wheel.display());
    }
    let status = interop::cargo_command()
        .args([
            "build",
            "--release",
            "-p",
            "ferry",
            "--example",
            "bench_download",
        ])
        .status()
        .context("building bench_download")?;
    if !status.success() {
        bail!("building bench_download failed with {status}");
    }
    let mut cmd = std::process::Command::new(&py);
    cmd.current_dir(&root)
        .arg(root.join("crates/ferry-py/bench/bench_python.py"))
        .arg("--rust-bin")
        .arg(root.join("target/release/examples/bench_download"))
        .arg("--nv-dir")
        .arg(root.join("crates/ferry/examples/bench_py"))
        .arg("--work")
        .arg(root.join("target/bench-python"))
        .arg("--command")
        .arg(format!("cargo xtask bench python {}", args.join(" ")).trim_end());
    let mut rest = Vec::new();
    for a in args {
        if a == "--write-docs" {
            rest.push("--write-docs".to_string());
            rest.push(root.join("docs/benchmarks.md").display().to_string());
        } else {
            rest.push(a.clone());
        }
    }
    let status = cmd
        .args(rest)
        .status()
        .context("spawning bench_python.py")?;
    if !status.success() {
        bail!("bench python failed with {status}");
    }
    Ok(())
}

/// `cargo xtask bench fanout [...]`: release `ferry`, then the shaped-network bench.
fn fanout(args: &[String]) -> Result<()> {
    let status = interop::cargo_command()
        .args(["build", "--release", "-p", "ferry-cli"])
        .status()
        .context("spawning cargo build")?;
    if !status.success() {
        bail!("building ferry failed with {status}");
    }
    let root = interop::workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    crate::fanout::run(args, &target.join("release/ferry"), &root)
}
