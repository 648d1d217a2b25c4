//! `cargo xtask bench download`: the headline benchmark of the workspace.
//!
//! One run, on loopback, with every sender and every receiver its own process:
//!
//! | scenario | what moves | receivers | systems |
//! |---|---|---|---|
//! | `file-hash` | a 1 GiB file; receivers hash the bytes (BLAKE3 / sha256) | 1, 4, 8 | ferry, NVFlare 2.9, plain TCP |
//! | `file-disk` | the same file; receivers write it to disk and fsync | 1, 4, 8 | ferry, NVFlare 2.9, plain TCP, nginx → curl |
//! | `tensors` | a 512 MiB tensor dict (128 × 4 MiB f32) into receiver memory | 1, 4 | ferry, NVFlare numpy downloader, plain TCP |
//! | `big` | an 8 GiB file to one hashing receiver (sender memory must stay flat) | 1 | ferry, plain TCP |
//! | `small` | a 4 KiB object fetched N times in a row (latency) | 1 | ferry, NVFlare 2.9 |
//!
//! The plain-TCP blast is the physical reference: the sender streams the file bytes with 1 MiB
//! reads and writes, each receiver reads 1 MiB at a time and hashes, keeps or writes them
//! (writing in 16 KiB writes, which the page cache takes at a fraction of the CPU of 1 MiB
//! writes).
//! nginx → curl is what users would run without ferry: Debian's nginx serving the file with
//! sendfile, one `curl -o` per receiver followed by an fsync (see `web.rs`).
//!
//! This binary plays every Rust role; it re-executes itself for the children
//! (`ferry-sender`, `ferry-receiver`, `tcp-sender`, `tcp-receiver`, `nginx-sender`,
//! `curl-receiver`). The NVFlare roles are
//! the Python scripts in `examples/bench_py/`, run with `$FERRY_INTEROP_PYTHON` (the venv of
//! `cargo xtask interop-setup`).
//!
//! Children speak a line protocol on stdout: `READY {json}` once up, `DONE {json}` when a
//! receiver has the whole object (the orchestrator timestamps it), `RESULT {json}` last.
//! Receivers start when they read `GO {json}` on stdin; stdin EOF ends any child.
//!
//! The Rust roles run as `ferry` runs them: file receivers on a current-thread tokio runtime,
//! writing each chunk on the download task (as `ferry get`: `DownloadOptions::consume_on_task`),
//! the other roles on a multi-thread one (as `ferry serve`). `FERRY_BENCH_RUNTIME=current_thread`
//! or `multi_thread` in the environment sets every Rust role's runtime, and
//! `FERRY_BENCH_RECEIVER_RUNTIME` then the receivers' alone; `FERRY_BENCH_CONSUME_ON_TASK=0`
//! gives the file receivers a writer thread instead: to compare either in one script.
//! The plain-TCP receiver writing files (`--only tcp`, the file-disk scenario) takes two knobs:
//! `FERRY_BENCH_TCP_READ_KIB` (how much it reads before writing; default 1024, ferry's chunk,
//! 4..=1024) and `FERRY_BENCH_TCP_FILE_HASH=1` (hash each 16 KiB piece right after writing it,
//! as `ferry get`'s file consumer does; reported as `streamed_blake3`).
//!
//! What is measured:
//! * aggregate throughput = size × receivers / (last receiver's DONE − GO);
//! * peak RSS of every child from the kernel: `wait4(2)`'s `ru_maxrss` when the orchestrator
//!   reaps it (the orchestrator keeps its own RSS small, because a child's `ru_maxrss` starts
//!   at its parent's high-water mark when it is spawned);
//! * CPU: each child reports `getrusage(RUSAGE_SELF)` user+sys spent in the transfer (a
//!   receiver from GO to DONE, a sender from before it builds the downloadable to the end);
//!   `wait4` gives the whole-process figure too (Python imports included).
//! * CPU of the whole machine: `/proc/stat`'s busy time from GO to the last DONE, whoever did
//!   the work (loopback delivery, writeback, `ksoftirqd`);
//! * memory the VM handed back to its host during each case (`vm.rs`), which the next writes
//!   into the page cache fault in again; `--hold-freed-memory` holds it back for a run.

mod args;
mod cases;
mod child;
mod common;
mod group;
mod orchestrate;
mod os;
mod report;
mod roles;
mod vm;
mod web;

use anyhow::Result;
use args::{Cli, Role};
use child::child_main;
use clap::Parser;
use orchestrate::orchestrate;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.role {
        None => orchestrate(cli.orch),
        Some(Role::Orchestrate(a)) => orchestrate(a),
        Some(Role::FerrySender(a)) => child_main(a.timeout, || roles::ferry_sender(&a)),
        Some(Role::FerryReceiver(a)) => child_main(a.timeout, || roles::ferry_receiver(&a)),
        Some(Role::TcpSender(a)) => child_main(a.timeout, || roles::tcp_sender(&a)),
        Some(Role::TcpReceiver(a)) => child_main(a.timeout, || roles::tcp_receiver(&a)),
        Some(Role::NginxSender(a)) => child_main(a.timeout, || web::nginx_sender(&a)),
        Some(Role::CurlReceiver(a)) => child_main(a.timeout, || web::curl_receiver(&a)),
    }
}
