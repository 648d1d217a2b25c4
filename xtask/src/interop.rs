//! The Python side of the interop tests: a virtualenv holding NVFlare 2.9.0 (and the packages the
//! tests use to check tensors), created once under `target/interop-venv` and reused afterwards.
//!
//! Tests find the interpreter through the `FERRY_INTEROP_PYTHON` environment variable that the
//! test matrix sets, or at the default path.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Python packages the interop tests need (NVFlare pinned), and what builds and tests the
/// `ferry` wheel of crates/ferry-py (maturin, pytest).
pub const PY_PACKAGES: &[&str] = &[
    "nvflare==2.9.0",
    "safetensors",
    "numpy",
    "maturin>=1.9.4,<2",
    "pytest",
];

/// Workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// A `cargo` command (the one running xtask, via `$CARGO`) working in the workspace root.
pub fn cargo_command() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Where the virtualenv lives.
pub fn venv_dir() -> PathBuf {
    workspace_root().join("target").join("interop-venv")
}

/// The venv's python interpreter.
pub fn venv_python() -> PathBuf {
    venv_dir().join("bin").join("python")
}

/// Create the venv if needed and make sure every package imports. Returns the interpreter path.
pub fn setup() -> Result<PathBuf> {
    let py = venv_python();
    let marker = venv_dir().join(".ferry-ready");
    let wanted = PY_PACKAGES.join(" ");
    if marker.exists() && std::fs::read_to_string(&marker).unwrap_or_default() == wanted {
        return Ok(py);
    }
    if !py.exists() {
        let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(&base).args(["-m", "venv"]).arg(venv_dir()))
            .with_context(|| format!("creating virtualenv with {base}"))?;
    }
    run(Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PY_PACKAGES))
    .context("pip install of the interop packages")?;
    run(Command::new(&py).args([
        "-c",
        "import nvflare, safetensors, numpy, maturin, pytest; assert nvflare.__version__.startswith('2.9.0'), nvflare.__version__",
    ]))
    .context("checking the interop virtualenv")?;
    std::fs::write(&marker, wanted)?;
    Ok(py)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
