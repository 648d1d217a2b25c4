//! `ferry`: move large files and tensor dicts from one sender to many receivers, by pull.
//!
//! * `ferry demo` — one sender and N receiver processes on loopback, live progress, a result
//!   table (bytes, time, throughput, outcome, peak RSS).
//! * `ferry serve PATH...` — serve files, directories and `.safetensors` tensor dicts; prints
//!   one ticket per object; exits when every expected receiver has everything.
//! * `ferry get TICKET...` — download, verify, print where the files are.
//! * `ferry relay TICKET... --listen URL` — pull an object from upstream and serve it downstream
//!   while it arrives; prints the downstream ticket.
//! * `ferry certs init|issue` — a project CA and cell certificates for mutual TLS.
//! * `ferry completions SHELL`, `ferry man [COMMAND]` — completion scripts and manual pages,
//!   generated from the same definitions as the parser.
//!
//! Exit codes (see [`exit`]): 0 ok, 1 transfer failed, 2 usage or input error, 130
//! interrupted. `--json` switches stdout to JSON lines; `-q` prints only errors and results;
//! `-v`/`-vv` or `RUST_LOG` set the log filter (stderr). Common options also come from
//! `FERRY_*` environment variables (see [`args`]).

mod args;
mod cells;
mod certs;
mod demo;
mod downstream;
mod exit;
mod get;
mod interrupt;
mod manual;
mod peers;
mod relay;
mod retry;
mod serve;
mod stats;
mod sysinfo;
mod throttle;
mod ui;
mod units;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::Failure;

/// The async runtime a command runs on. A receiver (`ferry get`, the demo's receivers) runs
/// on one thread: its downloads are one task, which also writes the files until a write is
/// slow, so a second worker would only pass frames between cores. Where receivers share the
/// cores (eight on two in the benchmark) those hand-offs cost CPU per GiB; one receiver alone
/// moves as fast either way (docs/benchmarks.md, "The runtime of `ferry get`"). Senders and
/// relays serve many receivers at once and keep a worker per core.
fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match command {
        Command::Get(_) | Command::DemoReceiver(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ui::init_logging(cli.verbose);
    let json = cli.json;
    if json || matches!(cli.command, Command::DemoReceiver(_)) {
        ui::hide_bars();
    }
    if cli.quiet {
        ui::set_quiet();
    }
    let runtime = match runtime_for(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            return report(
                &Failure::transfer(format!("cannot start the async runtime: {e}")),
                json,
            )
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(a) => demo::run(a, json).await,
            Command::Serve(a) => serve::run(a, json).await,
            Command::Get(a) => get::run(a, json).await,
            Command::Relay(a) => relay::run(a, json).await,
            Command::Certs(a) => certs::run(a, json),
            Command::Completions(a) => manual::completions(&a),
            Command::Man(a) => manual::man(&a),
            Command::DemoReceiver(a) => demo::receiver::run(a).await,
        }
    });
    // Blocking-pool threads (a produce or a consume still sleeping) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(&f, json),
    }
}

/// Print a failure (one line on stderr; a JSON object on stdout too with `--json`) and turn it
/// into the exit code.
fn report(f: &Failure, json: bool) -> ExitCode {
    ui::bars().clear().ok();
    if json {
        ui::json_line(&serde_json::json!({
            "event": "error",
            "kind": f.kind(),
            "exit_code": f.code(),
            "message": f.to_string(),
        }));
    }
    eprintln!("ferry: error: {f}");
    f.exit_code()
}
