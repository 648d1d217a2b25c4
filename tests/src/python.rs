//! Where the interop interpreter and the peer scripts live, plus small helpers that agree with
//! the Python side byte for byte.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Environment variable that names the Python interpreter for interop tests.
pub const PYTHON_ENV: &str = "FERRY_INTEROP_PYTHON";

/// The workspace root (the parent of the `tests/` package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives one level below the workspace root")
        .to_path_buf()
}

/// The directory holding the Python peer scripts (`tests/py`).
pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py")
}

/// Full path of a peer script, e.g. `script("nv_server_cell.py")`.
///
/// # Panics
/// If the script does not exist (a typo in a test is a bug, not an environment problem).
pub fn script(name: &str) -> PathBuf {
    let p = py_dir().join(name);
    assert!(p.is_file(), "no peer script {}", p.display());
    p
}

/// The Python interpreter with NVFlare 2.9.0, safetensors and numpy.
///
/// Taken from `$FERRY_INTEROP_PYTHON`, else `<workspace>/target/interop-venv/bin/python`.
///
/// # Panics
/// When the interpreter does not exist: interop tests must fail, never silently skip, when
/// their Python side is missing. The message says how to create it.
pub fn python() -> PathBuf {
    let (path, origin) = match std::env::var_os(PYTHON_ENV) {
        Some(p) if !p.is_empty() => (PathBuf::from(p), format!("${PYTHON_ENV}")),
        _ => (
            workspace_root()
                .join("target")
                .join("interop-venv")
                .join("bin")
                .join("python"),
            "the default venv path".to_string(),
        ),
    };
    if !path.exists() {
        panic!(
            "interop Python interpreter not found at {} (from {origin}). \
             Run `cargo xtask interop-setup` to create the venv with nvflare==2.9.0, \
             or point {PYTHON_ENV} at an interpreter that has it.",
            path.display()
        );
    }
    path
}

/// Build an argument list from mixed string-like parts:
/// `args(&[&"--file", &path, &"--chunk-size", &"1000000"])`.
pub fn args(parts: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_os_string()).collect()
}

/// What a run-to-completion script produced (see [`run_script`]).
#[derive(Debug)]
pub struct ScriptRun {
    /// Exit status of the script.
    pub status: ExitStatus,
    /// Every `RESULT` json line, in order.
    pub results: Vec<Value>,
    /// The script's stderr (logs), lossily decoded.
    pub stderr: String,
}

/// Run a one-shot script from `tests/py` (e.g. `make_safetensors.py`, `check_safetensors.py`)
/// to completion and collect its `RESULT` lines. A non-zero exit is *not* an error here (a
/// checker may exit 1 with an error RESULT); look at [`ScriptRun::status`].
pub fn run_script<I, S>(script_name: &str, script_args: I) -> Result<ScriptRun>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let path = script(script_name);
    let out = Command::new(python())
        .arg(&path)
        .args(script_args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    let mut results = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(json) = line.strip_prefix("RESULT ") {
            results.push(
                serde_json::from_str(json)
                    .with_context(|| format!("{script_name}: bad RESULT line {line:?}"))?,
            );
        }
    }
    Ok(ScriptRun {
        status: out.status,
        results,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The deterministic test bytes the Python peers use: byte `i` is `(i * 31 + seed) % 251`.
pub fn pattern_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) * 31 % 251 + usize::from(seed)) % 251)
        .map(|b| b as u8)
        .collect()
}

/// SHA-256 (lower-case hex) of `data`, computed by the interop interpreter's `hashlib`, i.e.
/// exactly the digest the Python peers report in their RESULT lines.
pub fn sha256_hex(data: &[u8]) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(python())
        .args([
            "-c",
            "import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning python for sha256")?;
    let mut stdin = child.stdin.take().context("python stdin")?;
    // Write from another thread so a large input cannot deadlock against the output pipe.
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child
        .wait_with_output()
        .context("waiting for python sha256")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("sha256 writer thread panicked"))?
        .context("writing to python sha256")?;
    if !out.status.success() {
        bail!("python sha256 failed with {}", out.status);
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// SHA-256 (lower-case hex) of a file, computed by the interop interpreter.
pub fn sha256_file_hex(path: &Path) -> Result<String> {
    let out = Command::new(python())
        .args([
            "-c",
            "import hashlib,sys\nh=hashlib.sha256()\nwith open(sys.argv[1],'rb') as f:\n  \
             [h.update(b) for b in iter(lambda: f.read(1<<20), b'')]\nprint(h.hexdigest())",
        ])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .context("running python sha256 on a file")?;
    if !out.status.success() {
        bail!(
            "python sha256 of {} failed with {}",
            path.display(),
            out.status
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_the_python_formula() {
        let b = pattern_bytes(600, 3);
        for (i, v) in b.iter().enumerate() {
            assert_eq!(usize::from(*v), (i * 31 + 3) % 251, "byte {i}");
        }
    }
}
