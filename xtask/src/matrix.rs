//! The named test matrix: every case is one command with a name, so CI output and `--case NAME`
//! speak the same language (in the spirit of IronRDP's xtask).
//!
//! Every crate under `crates/` ([`CRATES`], bottom layer first; a crate missing from that list
//! fails the matrix) is built and tested on its own (`-p`) with no default features and with all
//! features, which are read from `cargo metadata` (crates that declare no features get one case,
//! since every build is the same). Then come formatting,
//! clippy, doc tests and rustdoc, the layering check, and the workspace-level end-to-end and
//! interop tests (which need the Python virtualenv, prepared by the `interop-setup` case).
//!
//! `crates/ferry-py` ([`PYTHON_CRATES`]) is a PyO3 extension module: `cargo test` has nothing to
//! run there. Its case builds the wheel with maturin, installs it into the interop virtualenv
//! and runs its pytest suite ([`python_suite`]).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::time::Instant;

use crate::{fuzz, interop};

/// Crates whose dependency tree must not contain the listed packages (the arrows of DESIGN.md).
const LAYERING: &[(&str, &[&str])] = &[
    (
        "ferry-core",
        &[
            "tokio",
            "dashmap",
            "mio",
            "socket2",
            "rustls",
            "tokio-rustls",
            "hyper",
            "ferry-cellnet",
            "ferry-objects",
            "ferry",
        ],
    ),
    ("ferry-objects", &["tokio", "mio", "ferry-cellnet", "ferry"]),
    ("ferry-cellnet", &["ferry-core", "ferry-objects", "ferry"]),
    // The library knows nothing of Python; the bindings and the CLI know nothing of each other.
    ("ferry", &["pyo3", "ferry-py", "ferry-cli"]),
    ("ferry-cli", &["pyo3", "ferry-py"]),
    ("ferry-py", &["ferry-cli"]),
];

/// The library and binary crates under `crates/` that the matrix tests one by one.
const CRATES: &[&str] = &[
    "ferry-core",
    "ferry-cellnet",
    "ferry-objects",
    "ferry",
    "ferry-cli",
];

/// Crates under `crates/` that are Python extension modules, tested by [`python_suite`].
const PYTHON_CRATES: &[&str] = &["ferry-py"];

/// Cargo profile of the test wheel: `dev` reuses the build of the other cases (dependencies are
/// at opt-level 1 in this workspace), where a release build would cost minutes on a 2-core
/// machine. Benchmarks build their own release wheel.
const TEST_WHEEL_PROFILE: &str = "dev";

/// Build the `ferry` wheel, install it into the interop virtualenv and run its pytest suite
/// there, with `FERRY_BIN` pointing at the `ferry` command the suite drives.
fn python_suite() -> Result<()> {
    let py = interop::setup()?;
    let root = interop::workspace_root();
    let wheels = root.join("target").join("ferry-py-wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    cargo(&["build", "-p", "ferry-cli"])?;
    let bin_dir = py
        .parent()
        .context("venv python has a directory")?
        .to_path_buf();
    let status = std::process::Command::new(bin_dir.join("maturin"))
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            TEST_WHEEL_PROFILE,
            "-m",
            "crates/ferry-py/Cargo.toml",
            "-i",
        ])
        .arg(&py)
        .arg("--out")
        .arg(&wheels)
        .env(
            "CARGO",
            std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        )
        .status()
        .context("spawning maturin (from the interop venv)")?;
    if !status.success() {
        bail!("maturin build failed with {status}");
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
    let ferry = root.join("target").join("debug").join("ferry");
    let mut pytest = std::process::Command::new(&py);
    pytest
        .current_dir(root.join("crates").join("ferry-py").join("tests"))
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        // A test still running after this many seconds prints every thread's traceback (it
        // goes on; the budget below ends the run).
        .args(["-o", &format!("faulthandler_timeout={PYTEST_TEST_SECS}")])
        .env("FERRY_BIN", ferry);
    let status = run_bounded(&mut pytest, PYTEST_BUDGET).context("running pytest")?;
    if !status.success() {
        bail!("the ferry-py pytest suite failed with {status}");
    }
    Ok(())
}

/// Seconds after which pytest dumps the tracebacks of a test that is still running: twice the
/// suite's own longest wait (its `LONG`, 120 s).
const PYTEST_TEST_SECS: u64 = 240;

/// Wall-clock budget of the whole pytest run: the suite takes about 30 s on an idle 2-core
/// machine and about a minute on a busy one; a run past this is hung, and is killed with every
/// process it started.
const PYTEST_BUDGET: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Run `cmd` in a process group of its own; past `budget`, kill the group (the command and
/// every process it started) and fail.
fn run_bounded(
    cmd: &mut std::process::Command,
    budget: std::time::Duration,
) -> Result<std::process::ExitStatus> {
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if started.elapsed() > budget {
            let group = format!("-{}", child.id());
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &group])
                .status();
            let _ = child.wait();
            bail!(
                "still running after {}s: killed with every process it started (a hung test; the tracebacks above show where)",
                budget.as_secs()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Seconds each fuzz target runs in the `fuzz-smoke` case (the campaign's figures are in
/// docs/security.md).
const FUZZ_SMOKE_SECS: u64 = 30;

/// One named command.
struct Case {
    name: String,
    what: String,
    run: Box<dyn Fn() -> Result<()>>,
}

fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

fn cargo_env(args: &[&str], env: &[(&str, String)]) -> Result<()> {
    let mut cmd = interop::cargo_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("spawning cargo {args:?}"))?;
    if !status.success() {
        bail!("cargo {} failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Features each crate under `crates/` declares (besides `default`), read from `cargo metadata`.
fn crate_features() -> Result<BTreeMap<String, Vec<String>>> {
    let out = interop::cargo_command()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut map = BTreeMap::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let manifest = pkg["manifest_path"].as_str().unwrap_or_default();
        if !manifest.contains("/crates/") {
            continue;
        }
        let name = pkg["name"].as_str().unwrap_or_default().to_string();
        let feats = pkg["features"]
            .as_object()
            .map(|m| m.keys().filter(|k| *k != "default").cloned().collect())
            .unwrap_or_default();
        map.insert(name, feats);
    }
    Ok(map)
}

/// The forbidden packages in `tree`, the output of `cargo tree -p KRATE --prefix none --format
/// {p}` (one `name vX.Y.Z ...` per line; the first line is `krate` itself).
fn violations(krate: &str, forbidden: &[&str], tree: &str) -> Vec<String> {
    tree.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| forbidden.contains(name))
        .map(|name| format!("{krate} depends on {name} (forbidden by the layering)"))
        .collect()
}

fn layering_check() -> Result<()> {
    let mut bad = Vec::new();
    for (krate, forbidden) in LAYERING {
        let out = interop::cargo_command()
            .args([
                "tree",
                "-p",
                krate,
                "-e",
                "normal",
                "--all-features",
                "--prefix",
                "none",
                "--format",
                "{p}",
            ])
            .output()
            .context("cargo tree")?;
        if !out.status.success() {
            bail!(
                "cargo tree -p {krate} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        bad.extend(violations(
            krate,
            forbidden,
            &String::from_utf8_lossy(&out.stdout),
        ));
    }
    bad.sort();
    bad.dedup();
    if !bad.is_empty() {
        bail!("layering violated:\n  {}", bad.join("\n  "));
    }
    eprintln!("layering ok: ferry-core has no async runtime, map or network crate; ferry-objects and ferry-cellnet stay on their side");
    Ok(())
}

fn cases() -> Result<Vec<Case>> {
    let features = crate_features()?;
    if let Some(missing) = features
        .keys()
        .find(|k| !CRATES.contains(&k.as_str()) && !PYTHON_CRATES.contains(&k.as_str()))
    {
        bail!("crate {missing} is not in the test matrix: add it to CRATES in xtask/src/matrix.rs");
    }
    let mut v: Vec<Case> = Vec::new();
    v.push(Case {
        name: "fmt".into(),
        what: "cargo fmt --all --check".into(),
        run: Box::new(|| cargo(&["fmt", "--all", "--check"])),
    });
    v.push(Case {
        name: "layering".into(),
        what: "cargo tree: ferry-core knows no tokio/dashmap/network crate; objects and cellnet don't know each other".into(),
        run: Box::new(layering_check),
    });
    v.push(Case {
        name: "interop-setup".into(),
        what: format!(
            "python venv at target/interop-venv with {}",
            interop::PY_PACKAGES.join(", ")
        ),
        run: Box::new(|| interop::setup().map(|_| ())),
    });
    v.push(Case {
        name: "clippy".into(),
        what: "cargo clippy --workspace --all-targets --all-features -- -D warnings".into(),
        run: Box::new(|| {
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ])
        }),
    });
    v.push(Case {
        name: "clippy-fuzz".into(),
        what: "cargo clippy of the fuzz harness (its own workspace, fuzz/) with warnings denied"
            .into(),
        run: Box::new(|| {
            cargo(&[
                "clippy",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
        }),
    });
    for krate in CRATES {
        let krate: &'static str = krate;
        let feats = features.get(krate).cloned().unwrap_or_default();
        if feats.is_empty() {
            v.push(Case {
                name: format!("test-{krate}"),
                what: format!("cargo test -p {krate} (declares no features: default = none = all)"),
                run: Box::new(move || cargo(&["test", "-p", krate])),
            });
        } else {
            v.push(Case {
                name: format!("test-{krate}-no-default"),
                what: format!("cargo test -p {krate} --no-default-features"),
                run: Box::new(move || cargo(&["test", "-p", krate, "--no-default-features"])),
            });
            v.push(Case {
                name: format!("test-{krate}-all-features"),
                what: format!("cargo test -p {krate} --all-features"),
                run: Box::new(move || cargo(&["test", "-p", krate, "--all-features"])),
            });
        }
    }
    v.push(Case {
        name: "test-ferry-py".into(),
        what: format!(
            "maturin build --profile {TEST_WHEEL_PROFILE} of crates/ferry-py, pip install into the interop venv, pytest crates/ferry-py/tests"
        ),
        run: Box::new(python_suite),
    });
    v.push(Case {
        name: "test-xtask".into(),
        what: "cargo test -p xtask (the layering check's parser finds a forbidden crate)".into(),
        run: Box::new(|| cargo(&["test", "-p", "xtask"])),
    });
    v.push(Case {
        name: "doc".into(),
        what: "cargo doc --workspace --no-deps with rustdoc warnings denied (doc tests run in the test cases)".into(),
        run: Box::new(|| {
            cargo_env(
                &["doc", "--workspace", "--no-deps", "--all-features", "--exclude", "xtask"],
                &[("RUSTDOCFLAGS", "-D warnings".into())],
            )
        }),
    });
    v.push(Case {
        name: "fuzz-smoke".into(),
        what: format!(
            "cargo xtask fuzz --seconds {FUZZ_SMOKE_SECS}: the reproducers of fixed findings, then every fuzz target for {FUZZ_SMOKE_SECS}s from its seeds (cargo-fuzz installed if missing)"
        ),
        run: Box::new(|| {
            fuzz::run(&fuzz::Options {
                seconds: FUZZ_SMOKE_SECS,
                runs: None,
                only: Vec::new(),
            })
            .map(|_| ())
        }),
    });
    v.push(Case {
        name: "e2e-interop".into(),
        what: "cargo test -p ferry-tests: real TCP/TLS end to end, real NVFlare 2.9 cells".into(),
        run: Box::new(|| {
            let py = interop::setup()?;
            cargo_env(
                &["test", "-p", "ferry-tests", "--", "--test-threads", "2"],
                &[("FERRY_INTEROP_PYTHON", py.display().to_string())],
            )
        }),
    });
    Ok(v)
}

/// What `cargo xtask test-matrix` was asked to do.
pub struct Run {
    /// Print the cases and exit.
    pub list: bool,
    /// Only these cases (all when empty).
    pub only: Vec<String>,
    /// Go on after a failing case.
    pub keep_going: bool,
    /// Run beside busy loops ([`crate::load`]).
    pub under_load: bool,
    /// Rounds in a row; stop at the first failing one.
    pub repeat: u32,
}

/// Run the matrix (or list it), `repeat` times, under load if asked.
pub fn run(req: &Run) -> Result<()> {
    let all = cases()?;
    if req.list {
        for c in &all {
            println!("{:<32} {}", c.name, c.what);
        }
        return Ok(());
    }
    for name in &req.only {
        if !all.iter().any(|c| &c.name == name) {
            bail!("no case named {name:?}; `cargo xtask test-matrix --list` shows them");
        }
    }
    let selected: Vec<&Case> = all
        .iter()
        .filter(|c| req.only.is_empty() || req.only.contains(&c.name))
        .collect();
    let _load = if req.under_load {
        Some(crate::load::Load::start()?)
    } else {
        None
    };
    let started = Instant::now();
    let rounds = req.repeat.max(1);
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!("\n##### round {round} of {rounds}");
        }
        let r = run_round(&selected, req.keep_going);
        if let Err(e) = r {
            if rounds > 1 {
                eprintln!(
                    "test-matrix: round {round} of {rounds} failed after {:.1}s in all",
                    started.elapsed().as_secs_f64()
                );
            }
            return Err(e);
        }
    }
    eprintln!(
        "test-matrix: {rounds} round{} passed in a row{}, {:.1}s in all",
        if rounds == 1 { "" } else { "s" },
        if req.under_load {
            format!(" beside {} busy loops", crate::load::LOADS)
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Run the selected cases once and print the summary.
fn run_round(selected: &[&Case], keep_going: bool) -> Result<()> {
    let mut results = Vec::new();
    for c in selected {
        eprintln!("\n=== case {}: {}", c.name, c.what);
        let t = Instant::now();
        let r = (c.run)();
        let secs = t.elapsed().as_secs_f64();
        match &r {
            Ok(()) => eprintln!("=== case {} passed in {secs:.1}s", c.name),
            Err(e) => eprintln!("=== case {} FAILED in {secs:.1}s: {e:#}", c.name),
        }
        let failed = r.is_err();
        results.push((c.name.clone(), r, secs));
        if failed && !keep_going {
            break;
        }
    }
    eprintln!("\n=== test matrix summary");
    let mut failed = 0;
    for (name, r, secs) in &results {
        let verdict = if r.is_ok() { "ok" } else { "FAILED" };
        if r.is_err() {
            failed += 1;
        }
        eprintln!("  {name:<32} {verdict:<7} {secs:>7.1}s");
    }
    let skipped = selected.len() - results.len();
    println!(
        "matrix: {} passed, {failed} failed, {skipped} not run",
        results.len() - failed
    );
    if failed > 0 || skipped > 0 {
        bail!("{failed} case(s) failed, {skipped} not run");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command past its budget is killed with the processes it started; one within it
    /// gives its status.
    #[test]
    fn a_bounded_run_kills_the_whole_group_past_its_budget() {
        let d = std::env::temp_dir().join(format!("xtask-bounded-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let pid_file = d.join("pid");
        let script = format!("sleep 600 & echo $! > {}; wait", pid_file.display());
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", &script]);
        // ten times what starting the shell and its child takes on a busy machine
        let err = run_bounded(&mut cmd, std::time::Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("killed"), "{err}");
        let pid = std::fs::read_to_string(&pid_file).expect("the shell started its child");
        // gone, or a zombie waiting for whoever adopted it; SIGKILL is delivered when the
        // process next runs, which on a busy machine may be a moment after `kill` returns
        let stat = || std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
        let dead = |s: &std::io::Result<String>| s.as_deref().map_or(true, |s| s.contains(") Z "));
        let until = Instant::now() + std::time::Duration::from_secs(30);
        while !dead(&stat()) && Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let stat = stat();
        assert!(dead(&stat), "the grandchild survived: {stat:?}");
        let _ = std::fs::remove_dir_all(&d);
        let ok = run_bounded(
            std::process::Command::new("true").arg("x"),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        assert!(ok.success());
    }

    #[test]
    fn layering_violations_are_found_below_the_root() {
        let tree = "ferry-core v0.1.0 (/w/crates/ferry-core)\n\
                    thiserror v2.0.0\n\
                    tokio v1.54.1\n\
                    tokio v1.54.1 (*)\n\
                    tokio-util v0.7.20\n";
        assert_eq!(
            violations("ferry-core", &["tokio", "ferry-core"], tree),
            [
                "ferry-core depends on tokio (forbidden by the layering)",
                "ferry-core depends on tokio (forbidden by the layering)"
            ]
        );
        assert!(violations("ferry-core", &["dashmap"], tree).is_empty());
    }
}
