//! Project automation for the ferry workspace.
//!
//! `cargo xtask test-matrix` runs the named table of checks that CI runs (see [`matrix`]);
//! `--under-load` runs it beside two busy loops (see [`load`]) and `--repeat N` N times in a row;
//! `cargo xtask interop-setup` prepares the Python virtualenv with NVFlare 2.9.0 that the
//! interop tests talk to; `cargo xtask bench NAME` runs a benchmark; `cargo xtask fuzz` builds
//! and runs the fuzz harness (see [`fuzz`]).

mod bench;
mod fanout;
mod fuzz;
mod interop;
mod load;
mod matrix;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "ferry project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the named test matrix (what CI runs).
    TestMatrix {
        /// Print the cases and exit.
        #[arg(long)]
        list: bool,
        /// Run only the named case(s).
        #[arg(long = "case")]
        cases: Vec<String>,
        /// Keep going after a failing case and report all failures at the end.
        #[arg(long)]
        keep_going: bool,
        /// Run beside two busy-looping processes (started and stopped by xtask, at normal
        /// priority), the way a shared CI machine is loaded.
        #[arg(long)]
        under_load: bool,
        /// Run the matrix this many times in a row; stops at the first failing round.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
        repeat: u32,
    },
    /// Internal: spin one core until the parent xtask goes away (`test-matrix --under-load`).
    #[command(name = "__busy-loop", hide = true)]
    BusyLoop {
        /// The xtask that started this loop: the loop ends when it is no longer the parent.
        #[arg(long)]
        parent: u32,
    },
    /// Run a benchmark (no name: list them). Extra arguments go to the benchmark.
    Bench {
        /// Benchmark name.
        name: Option<String>,
        /// Arguments passed through.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the fuzz harness (fuzz/, cargo fuzz on stable, installed if missing) and run every
    /// target (or the named ones) under the limits of docs/security.md, section Fuzzing.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Stop each target after this many executions (the campaign uses 10000000).
        #[arg(long)]
        runs: Option<u64>,
        /// Only replay the reproducers of fixed findings (fuzz/regressions/; every run does first).
        #[arg(long)]
        replay: bool,
        /// Only these targets.
        targets: Vec<String>,
    },
    /// Create (or reuse) the Python virtualenv with nvflare==2.9.0 for interop tests and benchmarks.
    InteropSetup,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::TestMatrix {
            list,
            cases,
            keep_going,
            under_load,
            repeat,
        } => matrix::run(&matrix::Run {
            list,
            only: cases,
            keep_going,
            under_load,
            repeat,
        }),
        Cmd::BusyLoop { parent } => {
            load::spin_while_parent_is(parent);
            Ok(())
        }
        Cmd::Bench { name, args } => bench::run(name.as_deref(), &args),
        Cmd::Fuzz {
            seconds,
            runs,
            replay,
            targets,
        } => {
            if replay {
                fuzz::replay()
            } else {
                fuzz::run(&fuzz::Options {
                    seconds,
                    runs,
                    only: targets,
                })
                .map(|_| ())
            }
        }
        Cmd::InteropSetup => interop::setup().map(|py| {
            eprintln!("interop python: {}", py.display());
        }),
    }
}
