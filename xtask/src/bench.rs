//! `cargo xtask bench NAME [ARGS...]`: every benchmark is an example binary of the crate it
//! measures, built in release mode; this table maps the names to them. Benchmarks print their
//! table and write it into their section of `docs/benchmarks.md`.

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
];

/// Run benchmark `name` with extra arguments.
pub fn run(name: Option<&str>, args: &[String]) -> Result<()> {
    let Some(name) = name else {
        for (n, _, _, what) in BENCHES {
            println!("{n:<10} {what}");
        }
        return Ok(());
    };
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
