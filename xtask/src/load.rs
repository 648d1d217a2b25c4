//! `cargo xtask test-matrix --under-load`: two busy-looping processes beside the matrix, so a
//! test that depends on being scheduled promptly fails here and not only on a shared CI box.
//!
//! Each load is this xtask binary re-run as `xtask __busy-loop --parent PID`, at normal priority. It spins
//! until its parent goes away: [`Load`] kills and reaps both when dropped (the matrix ended,
//! passed or failed), and a load whose parent died without dropping it (killed) notices that
//! it was re-parented and exits by itself, so no loop is ever left spinning.

use anyhow::{Context, Result};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How many busy loops `--under-load` starts.
pub const LOADS: usize = 2;

/// Busy-looping child processes, killed when dropped.
pub struct Load {
    children: Vec<Child>,
}

impl Load {
    /// Start [`LOADS`] busy loops.
    pub fn start() -> Result<Load> {
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let mut children = Vec::new();
        for _ in 0..LOADS {
            let child = Command::new(&exe)
                .args(["__busy-loop", "--parent", &std::process::id().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("starting a busy loop")?;
            children.push(child);
        }
        eprintln!(
            "under load: {LOADS} busy-looping processes (pids {}) share the CPU with the matrix",
            children
                .iter()
                .map(|c| c.id().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Load { children })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spin one core while `parent` is this process's parent (it exits, and this process is
/// re-parented), checking about every 100 ms.
pub fn spin_while_parent_is(parent: u32) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut last_check = Instant::now();
    loop {
        // Work the optimizer cannot drop.
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
        if last_check.elapsed() >= Duration::from_millis(100) {
            if std::os::unix::process::parent_id() != parent {
                return;
            }
            last_check = Instant::now();
        }
    }
}
