//! `cargo xtask bench download`: the headline benchmark of the workspace.
//!
//! One run, on loopback, with every sender and every receiver its own process:
//!
//! | scenario | what moves | receivers | systems |
//! |---|---|---|---|
//! | `file-hash` | a 1 GiB file; receivers hash the bytes (BLAKE3 / sha256) | 1, 4, 8 | ferry, NVFlare 2.9, plain TCP |
//! | `file-disk` | the same file; receivers write it to disk and fsync | 1, 4, 8 | ferry, NVFlare 2.9, plain TCP |
//! | `tensors` | a 512 MiB tensor dict (128 × 4 MiB f32) into receiver memory | 1, 4 | ferry, NVFlare numpy downloader, plain TCP |
//! | `big` | an 8 GiB file to one hashing receiver (sender memory must stay flat) | 1 | ferry, plain TCP |
//! | `small` | a 4 KiB object fetched N times in a row (latency) | 1 | ferry, NVFlare 2.9 |
//!
//! The plain-TCP blast is the physical reference: the sender streams the file bytes with 1 MiB
//! reads and writes, each receiver reads 1 MiB at a time and hashes, keeps or writes them.
//!
//! This binary plays every Rust role; it re-executes itself for the children
//! (`ferry-sender`, `ferry-receiver`, `tcp-sender`, `tcp-receiver`). The NVFlare roles are
//! the Python scripts in `examples/bench_py/`, run with `$FERRY_INTEROP_PYTHON` (the venv of
//! `cargo xtask interop-setup`).
//!
//! Children speak a line protocol on stdout: `READY {json}` once up, `DONE {json}` when a
//! receiver has the whole object (the orchestrator timestamps it), `RESULT {json}` last.
//! Receivers start when they read `GO {json}` on stdin; stdin EOF ends any child.
//!
//! What is measured:
//! * aggregate throughput = size × receivers / (last receiver's DONE − GO);
//! * peak RSS of every child from the kernel: `wait4(2)`'s `ru_maxrss` when the orchestrator
//!   reaps it (the orchestrator keeps its own RSS small, because a child's `ru_maxrss` starts
//!   at its parent's high-water mark when it is spawned);
//! * CPU: each child reports `getrusage(RUSAGE_SELF)` user+sys spent in the transfer (a
//!   receiver from GO to DONE, a sender from before it builds the downloadable to the end);
//!   `wait4` gives the whole-process figure too (Python imports included).

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// Read/write unit of the plain-TCP blast.
const BLAST_BUF: usize = 1 << 20;
/// Size of one tensor of the tensor dict (and of one NVFlare numpy array).
const TENSOR_BYTES: u64 = 4 * MIB;
/// Size of the object of the latency test.
const SMALL_BYTES: u64 = 4096;
/// FQCN of every sender cell (NVFlare's server root cell).
const SENDER_FQCN: &str = "server";

// ------------------------------------------------------------------------------------------
// Command line
// ------------------------------------------------------------------------------------------

#[derive(Parser, Debug)]
#[command(
    name = "bench_download",
    about = "ferry vs NVFlare 2.9 vs plain TCP: files and tensor dicts to many receiver processes",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    orch: OrchArgs,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Run the benchmark (the default).
    Orchestrate(OrchArgs),
    /// Child: ferry DownloadService sender.
    FerrySender(SenderArgs),
    /// Child: ferry receiver.
    FerryReceiver(ReceiverArgs),
    /// Child: plain-TCP blast sender.
    TcpSender(SenderArgs),
    /// Child: plain-TCP blast receiver.
    TcpReceiver(ReceiverArgs),
}

#[derive(Args, Debug, Clone, Default)]
struct OrchArgs {
    /// Small smoke run (64 MiB file, 32 MiB tensors, 256 MiB big file, 50 fetches): about a minute.
    #[arg(long)]
    quick: bool,
    /// Systems to run (comma list of ferry, nvflare, tcp; default all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Systems or scenarios to leave out (ferry, nvflare, tcp, file-hash, file-disk, tensors, big, small).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Size of the file in MiB (default 1024; --quick 64).
    #[arg(long)]
    file_mib: Option<u64>,
    /// Size of the tensor dict in MiB (default 512; --quick 32).
    #[arg(long)]
    tensor_mib: Option<u64>,
    /// Size of the big file in MiB (default 8192; --quick 256; 0 = skip).
    #[arg(long)]
    big_mib: Option<u64>,
    /// Receiver counts of the file scenarios.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 4, 8])]
    receivers: Vec<usize>,
    /// Receiver counts of the tensor scenario.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 4])]
    tensor_receivers: Vec<usize>,
    /// Fetches of the 4 KiB object (default 200; --quick 50).
    #[arg(long)]
    small_count: Option<usize>,
    /// Chunk size of the ferry sender in KiB (default: ferry's default, 1 MiB).
    #[arg(long)]
    ferry_chunk_kib: Option<u64>,
    /// Byte budget of the ferry sender in KiB (default: ferry's default).
    #[arg(long)]
    ferry_budget_kib: Option<u64>,
    /// Requests in flight per ferry receiver (default: ferry's default).
    #[arg(long)]
    ferry_window: Option<usize>,
    /// Write the table into docs/benchmarks.md (between the bench:download markers).
    #[arg(long)]
    write_docs: bool,
    /// Keep the generated source files (under <target>/bench-download/data) for the next run.
    #[arg(long)]
    keep_data: bool,
    /// Measure every case this many times and keep the fastest (a shared machine is noisy).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Run ferry senders and receivers under `perf record -g` and keep the profiles in this
    /// directory (for finding where the time goes; the figures of such a run are not clean).
    #[arg(long)]
    perf_dir: Option<PathBuf>,
    /// Write the raw measurements as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct SenderArgs {
    /// file | tensors | small
    #[arg(long)]
    kind: String,
    /// Source file (file and small: the object; tensors and TCP: the bytes are read from it).
    #[arg(long)]
    file: PathBuf,
    /// Bytes to send (tensors: size of the dict; TCP: bytes per receiver).
    #[arg(long, default_value_t = 0)]
    len: u64,
    /// Refs to offer (small).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Expected receivers.
    #[arg(long)]
    receivers: usize,
    /// Chunk size in bytes (ferry file objects; 0 = ferry's default).
    #[arg(long, default_value_t = 0)]
    chunk: u64,
    /// Byte budget on produced-but-unsent chunks (ferry; 0 = ferry's default).
    #[arg(long, default_value_t = 0)]
    budget: u64,
    /// Deadline of the process, seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
}

#[derive(Args, Debug, Clone)]
struct ReceiverArgs {
    /// Sender URL (`tcp://127.0.0.1:PORT`).
    #[arg(long)]
    url: String,
    /// FQCN of this receiver's cell.
    #[arg(long)]
    fqcn: String,
    /// hash | file | memory | small
    #[arg(long)]
    mode: String,
    /// Directory for received files (mode file).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Expected bytes (TCP).
    #[arg(long, default_value_t = 0)]
    len: u64,
    /// Requests in flight (ferry; 0 = ferry's default).
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// Deadline of the process, seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.role {
        None => orchestrate(cli.orch),
        Some(Role::Orchestrate(a)) => orchestrate(a),
        Some(Role::FerrySender(a)) => child_main(a.timeout, || roles::ferry_sender(&a)),
        Some(Role::FerryReceiver(a)) => child_main(a.timeout, || roles::ferry_receiver(&a)),
        Some(Role::TcpSender(a)) => child_main(a.timeout, || roles::tcp_sender(&a)),
        Some(Role::TcpReceiver(a)) => child_main(a.timeout, || roles::tcp_receiver(&a)),
    }
}

// ------------------------------------------------------------------------------------------
// OS measurements (the only unsafe code: libc calls on plain-old-data out-parameters)
// ------------------------------------------------------------------------------------------

#[allow(unsafe_code)]
mod os {
    use std::io;

    /// CPU time and peak RSS of one process, as the kernel accounts them.
    #[derive(Clone, Copy, Debug, Default, serde::Serialize)]
    pub struct Usage {
        pub user_s: f64,
        pub sys_s: f64,
        /// Peak resident set size in KiB (`ru_maxrss`).
        pub maxrss_kib: u64,
    }

    impl Usage {
        pub fn cpu_s(&self) -> f64 {
            self.user_s + self.sys_s
        }
    }

    fn from_rusage(ru: &libc::rusage) -> Usage {
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Usage {
            user_s: tv(ru.ru_utime),
            sys_s: tv(ru.ru_stime),
            maxrss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
        }
    }

    /// getrusage(RUSAGE_SELF): this process, all threads.
    pub fn self_usage() -> Usage {
        // SAFETY: `rusage` is a C struct of integers, for which all-zero is a valid value;
        // getrusage only writes into the struct we own, and RUSAGE_SELF is a valid `who`.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: see above; the pointer is valid and exclusive for the call.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        if rc != 0 {
            return Usage::default();
        }
        from_rusage(&ru)
    }

    /// Reap child `pid` if it has exited (or wait for it with `block`): its exit status and its
    /// resource usage. `Ok(None)` when it is still running (only without `block`).
    pub fn wait4(pid: u32, block: bool) -> io::Result<Option<(i32, Usage)>> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        let mut status: libc::c_int = 0;
        // SAFETY: as in `self_usage`, all-zero is a valid `rusage`.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if block { 0 } else { libc::WNOHANG };
        loop {
            // SAFETY: both out-pointers are valid and exclusive for the call; `pid` is one of
            // our own children that nobody else reaps (std's `Child::wait` is never called).
            let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
            if r == pid {
                return Ok(Some((status, from_rusage(&ru))));
            }
            if r == 0 {
                return Ok(None);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// VmHWM of this process in KiB (its own RSS high-water mark), from /proc.
    pub fn self_vmhwm_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmHWM:")
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }
}

// ------------------------------------------------------------------------------------------
// Child plumbing
// ------------------------------------------------------------------------------------------

/// Print one protocol line on stdout.
fn emit(kind: &str, v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{kind} {v}");
    let _ = out.flush();
}

/// Run a child role with a deadline; stdin EOF (the orchestrator went away) ends it too,
/// unless the role reads stdin itself (receivers read GO first, then watch EOF).
fn child_main(timeout: f64, f: impl FnOnce() -> Result<()>) -> Result<()> {
    thread::spawn(move || {
        thread::sleep(Duration::from_secs_f64(timeout));
        emit(
            "RESULT",
            &json!({"error": format!("deadline of {timeout}s reached")}),
        );
        std::process::exit(3);
    });
    match f() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            emit("RESULT", &json!({"error": format!("{e:#}")}));
            std::process::exit(1);
        }
    }
}

/// Block until `GO {json}` arrives on stdin; afterwards a thread ends the process on EOF.
fn wait_go() -> Result<Value> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            std::process::exit(4);
        }
        if let Some(rest) = line.trim().strip_prefix("GO") {
            let v: Value = if rest.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(rest.trim())?
            };
            watch_stdin_eof();
            return Ok(v);
        }
    }
}

/// End the process when stdin closes (no child outlives the orchestrator).
fn watch_stdin_eof() {
    thread::spawn(|| {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut sink) {
                Ok(0) | Err(_) => std::process::exit(4),
                Ok(_) => {}
            }
        }
    });
}

fn cpu_now() -> f64 {
    os::self_usage().cpu_s()
}

/// Fill `buf` from `r` until it is full or EOF; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// BLAKE3 of the first `len` bytes of a file (or all of it with `None`).
fn blake3_file(path: &Path, len: Option<u64>) -> Result<String> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut r = f.take(len.unwrap_or(u64::MAX));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; BLAST_BUF];
    loop {
        let n = fill(&mut r, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

// ------------------------------------------------------------------------------------------
// Child roles
// ------------------------------------------------------------------------------------------

mod roles {
    use super::*;
    use ferry::core::{ChunkData, ConsumeError, Consumer, RefId, State};
    use ferry::objects::tensors::Dtype;
    use ferry::prelude::{
        download_file, download_object, download_tensors, Cell, DownloadOptions, DownloadService,
        FileOptions, ObjectDownloader, ServiceOptions, Tensor, TensorDict, TxConfig,
    };

    fn runtime() -> Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?)
    }

    /// Consumer that hashes the bytes in order and keeps nothing.
    #[derive(Default)]
    struct HashConsumer {
        hasher: blake3::Hasher,
        bytes: u64,
    }

    impl Consumer for HashConsumer {
        /// Hashing a chunk is bounded CPU work: run it on the download task.
        fn blocks(&self) -> bool {
            false
        }

        fn consume(
            &mut self,
            _ref_id: &str,
            state: &State,
            data: ChunkData,
        ) -> Result<State, ConsumeError> {
            match &data {
                ChunkData::Bytes(b) => {
                    self.hasher.update(b);
                    self.bytes += b.len() as u64;
                }
                ChunkData::Items(items) => {
                    for b in items {
                        self.hasher.update(b);
                        self.bytes += b.len() as u64;
                    }
                }
            }
            Ok(state.clone())
        }

        fn completed(&mut self, _ref_id: &str) -> Result<(), ConsumeError> {
            Ok(())
        }

        fn failed(&mut self, _ref_id: &str, _reason: &str) {}
    }

    /// The tensor dict of the benchmark: `len` bytes of `file` cut into 1-D f32 tensors of
    /// [`TENSOR_BYTES`] each, named so that name order is insertion order.
    fn tensor_dict(file: &Path, len: u64) -> Result<TensorDict> {
        let mut f = File::open(file)?;
        let mut buf = vec![0u8; usize::try_from(len)?];
        f.read_exact(&mut buf)
            .with_context(|| format!("reading {len} bytes of {}", file.display()))?;
        let all = bytes::Bytes::from(buf);
        let mut dict = TensorDict::new();
        let mut off = 0usize;
        let mut i = 0;
        while off < all.len() {
            let n = (all.len() - off).min(TENSOR_BYTES as usize) / 4 * 4;
            if n == 0 {
                break;
            }
            let t = Tensor::new(Dtype::F32, vec![n / 4], all.slice(off..off + n))?;
            dict.insert(format!("layer{i:04}.weight"), t)?;
            off += n;
            i += 1;
        }
        Ok(dict)
    }

    pub fn ferry_sender(a: &SenderArgs) -> Result<()> {
        let rt = runtime()?;
        rt.block_on(async {
            watch_stdin_eof();
            let tensors = match a.kind.as_str() {
                "tensors" => Some(tensor_dict(&a.file, a.len)?),
                _ => None,
            };
            let cell = Cell::new(SENDER_FQCN)?;
            let url = cell.listen("tcp://127.0.0.1:0").await?;
            let mut sopts = ServiceOptions::default();
            if a.budget > 0 {
                sopts.byte_budget = a.budget;
            }
            let service = DownloadService::new(&cell, sopts);
            let cpu0 = cpu_now();
            let tx = ObjectDownloader::new(
                &service,
                TxConfig::new(Duration::from_secs_f64(a.timeout)).with_num_receivers(a.receivers),
            )?;
            let chunk = if a.chunk == 0 {
                ferry::objects::DEFAULT_CHUNK_SIZE
            } else {
                a.chunk
            };
            let mut refs = Vec::new();
            match a.kind.as_str() {
                "file" => refs.push(tx.add_file(&a.file, chunk)?),
                "small" => {
                    for _ in 0..a.count {
                        refs.push(tx.add_file(&a.file, chunk)?);
                    }
                }
                "tensors" => refs.push(tx.add_tensors(tensors.expect("built above"))?),
                k => bail!("unknown sender kind {k:?}"),
            }
            let refs: Vec<&str> = refs.iter().map(RefId::as_str).collect();
            emit(
                "READY",
                &json!({"url": url, "fqcn": SENDER_FQCN, "refs": refs}),
            );
            let outcome = tx
                .waiter()
                .wait_timeout(Duration::from_secs_f64(a.timeout))
                .await;
            let cpu = cpu_now() - cpu0;
            let (status, ok) = match &outcome {
                Some(o) => (format!("{:?}", o.status), o.completed()),
                None => ("no outcome".to_string(), false),
            };
            service.shutdown().await;
            cell.shutdown().await;
            let mut r = json!({"status": status, "cpu_s": cpu,
                "maxrss_kib": os::self_usage().maxrss_kib});
            if !ok {
                r["error"] = json!(format!("transaction outcome: {status}"));
            }
            emit("RESULT", &r);
            Ok(())
        })
    }

    pub fn ferry_receiver(a: &ReceiverArgs) -> Result<()> {
        let rt = runtime()?;
        rt.block_on(async {
            let cell = Cell::new(&a.fqcn)?;
            cell.connect(&a.url).await?;
            let service = DownloadService::new(&cell, ServiceOptions::default());
            emit("READY", &json!({"fqcn": a.fqcn}));
            let go = tokio::task::spawn_blocking(wait_go).await??;
            let source = go["source"].as_str().unwrap_or(SENDER_FQCN).to_string();
            let refs: Vec<RefId> = go["refs"]
                .as_array()
                .ok_or_else(|| anyhow!("GO without refs"))?
                .iter()
                .filter_map(|v| v.as_str().map(RefId::from))
                .collect();
            let first = refs
                .first()
                .ok_or_else(|| anyhow!("GO with no ref"))?
                .clone();
            let mut opts = DownloadOptions::default();
            if a.window > 0 {
                opts.window = a.window;
            }
            let cpu0 = cpu_now();
            let mut res = json!({});
            let bytes;
            let mut verify: Option<PathBuf> = None;
            match a.mode.as_str() {
                "hash" => {
                    let c =
                        download_object(&service, &source, &first, HashConsumer::default(), opts)
                            .await?;
                    bytes = c.bytes;
                    res["blake3"] = json!(c.hasher.finalize().to_hex().to_string());
                }
                "file" => {
                    let dir = a
                        .out_dir
                        .clone()
                        .ok_or_else(|| anyhow!("--out-dir needed"))?;
                    let p = download_file(
                        &service,
                        &source,
                        &first,
                        &dir,
                        "received.bin",
                        FileOptions::default(),
                        opts,
                    )
                    .await?;
                    bytes = fs::metadata(&p)?.len();
                    verify = Some(p);
                }
                "memory" => {
                    let dict = download_tensors(&service, &source, &first, opts).await?;
                    let mut h = blake3::Hasher::new();
                    let mut n = 0;
                    // Hashing happens after DONE below; collect the digest lazily.
                    for (_, t) in dict.iter() {
                        n += t.data().len() as u64;
                    }
                    bytes = n;
                    let cpu = cpu_now() - cpu0;
                    emit("DONE", &json!({"bytes": bytes}));
                    // The received dict is in arrival order: hash in name order (the
                    // sender's names sort in its insertion order).
                    let mut names: Vec<&str> = dict.iter().map(|(n, _)| n).collect();
                    names.sort_unstable();
                    for n in names {
                        let t = dict.get(n).expect("listed");
                        h.update(t.data());
                    }
                    res["blake3"] = json!(h.finalize().to_hex().to_string());
                    res["tensors"] = json!(dict.len());
                    return finish_receiver(&service, &cell, res, bytes, cpu).await;
                }
                "small" => {
                    let mut lat = Vec::with_capacity(refs.len());
                    let mut n = 0;
                    let mut last = String::new();
                    for rid in &refs {
                        let t = Instant::now();
                        let c = download_object(
                            &service,
                            &source,
                            rid,
                            HashConsumer::default(),
                            opts.clone(),
                        )
                        .await?;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        n += c.bytes;
                        last = c.hasher.finalize().to_hex().to_string();
                    }
                    bytes = n;
                    res["latencies_ms"] = json!(lat);
                    res["blake3"] = json!(last);
                }
                m => bail!("unknown receiver mode {m:?}"),
            }
            let cpu = cpu_now() - cpu0;
            emit("DONE", &json!({"bytes": bytes}));
            if let Some(p) = verify {
                res["blake3"] = json!(blake3_file(&p, None)?);
                fs::remove_file(&p)?;
            }
            finish_receiver(&service, &cell, res, bytes, cpu).await
        })
    }

    async fn finish_receiver(
        service: &DownloadService,
        cell: &Cell,
        mut res: Value,
        bytes: u64,
        cpu: f64,
    ) -> Result<()> {
        service.shutdown().await;
        cell.shutdown().await;
        res["bytes"] = json!(bytes);
        res["cpu_s"] = json!(cpu);
        res["maxrss_kib"] = json!(os::self_usage().maxrss_kib);
        emit("RESULT", &res);
        Ok(())
    }

    pub fn tcp_sender(a: &SenderArgs) -> Result<()> {
        watch_stdin_eof();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let cpu0 = cpu_now();
        emit(
            "READY",
            &json!({"url": format!("127.0.0.1:{port}"), "fqcn": SENDER_FQCN, "refs": []}),
        );
        let mut conns = Vec::with_capacity(a.receivers);
        for _ in 0..a.receivers {
            conns.push(listener.accept()?.0);
        }
        let results: Vec<Result<()>> = thread::scope(|s| {
            let handles: Vec<_> = conns
                .into_iter()
                .map(|c| s.spawn(|| blast(c, &a.file, a.len)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("sender thread panicked")))
                })
                .collect()
        });
        for r in results {
            r?;
        }
        emit(
            "RESULT",
            &json!({"cpu_s": cpu_now() - cpu0, "maxrss_kib": os::self_usage().maxrss_kib}),
        );
        Ok(())
    }

    /// Wait for the receiver's start byte, then stream `len` bytes of `file` with 1 MiB plain
    /// reads and writes.
    fn blast(mut conn: TcpStream, file: &Path, len: u64) -> Result<()> {
        let mut go = [0u8; 1];
        conn.read_exact(&mut go)?;
        let mut f = File::open(file)?.take(len);
        let mut buf = vec![0u8; BLAST_BUF];
        loop {
            let n = fill(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n])?;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    }

    pub fn tcp_receiver(a: &ReceiverArgs) -> Result<()> {
        let addr = a.url.trim_start_matches("tcp://");
        let mut conn = TcpStream::connect(addr)?;
        emit("READY", &json!({"fqcn": a.fqcn}));
        wait_go()?;
        let cpu0 = cpu_now();
        conn.write_all(&[1])?;
        let mut res = json!({});
        let mut n: u64 = 0;
        match a.mode.as_str() {
            "hash" => {
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; BLAST_BUF];
                loop {
                    let k = fill(&mut conn, &mut buf)?;
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    n += k as u64;
                }
                let cpu = cpu_now() - cpu0;
                emit("DONE", &json!({"bytes": n}));
                res["blake3"] = json!(h.finalize().to_hex().to_string());
                res["cpu_s"] = json!(cpu);
            }
            "memory" => {
                let mut v = vec![0u8; usize::try_from(a.len)?];
                let k = fill(&mut conn, &mut v)?;
                n = k as u64;
                let cpu = cpu_now() - cpu0;
                emit("DONE", &json!({"bytes": n}));
                res["blake3"] = json!(blake3::hash(&v[..k]).to_hex().to_string());
                res["cpu_s"] = json!(cpu);
            }
            "file" => {
                let dir = a
                    .out_dir
                    .clone()
                    .ok_or_else(|| anyhow!("--out-dir needed"))?;
                let path = dir.join("received.bin");
                let mut f = File::create(&path)?;
                let mut buf = vec![0u8; BLAST_BUF];
                loop {
                    let k = fill(&mut conn, &mut buf)?;
                    if k == 0 {
                        break;
                    }
                    f.write_all(&buf[..k])?;
                    n += k as u64;
                }
                f.sync_all()?;
                drop(f);
                let cpu = cpu_now() - cpu0;
                emit("DONE", &json!({"bytes": n}));
                res["blake3"] = json!(blake3_file(&path, None)?);
                fs::remove_file(&path)?;
                res["cpu_s"] = json!(cpu);
            }
            m => bail!("unknown receiver mode {m:?}"),
        }
        res["bytes"] = json!(n);
        res["maxrss_kib"] = json!(os::self_usage().maxrss_kib);
        emit("RESULT", &res);
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Orchestrator: process groups
// ------------------------------------------------------------------------------------------

/// One child process and what it said.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    ready: Option<Value>,
    done: Option<(Instant, Value)>,
    result: Option<Value>,
    eof: bool,
    /// Exit status and kernel accounting, once reaped with wait4.
    reaped: Option<(i32, os::Usage)>,
}

/// A line (or EOF) from a child's stdout, with the time it arrived.
struct Line {
    proc: usize,
    at: Instant,
    text: Option<String>,
}

/// The processes of one measurement; all are killed and reaped when the group ends.
struct Group {
    procs: Vec<Proc>,
    tx: mpsc::Sender<Line>,
    rx: mpsc::Receiver<Line>,
    log_dir: PathBuf,
}

impl Group {
    fn new(log_dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&log_dir)?;
        let (tx, rx) = mpsc::channel();
        Ok(Self {
            procs: Vec::new(),
            tx,
            rx,
            log_dir,
        })
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<usize> {
        let log = self.log_dir.join(format!("{name}.log"));
        let err = File::create(&log)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let idx = self.procs.len();
        let out = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let tx = self.tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(text) = line else { break };
                let _ = tx.send(Line {
                    proc: idx,
                    at: Instant::now(),
                    text: Some(text),
                });
            }
            let _ = tx.send(Line {
                proc: idx,
                at: Instant::now(),
                text: None,
            });
        });
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            stdin,
            log,
            ready: None,
            done: None,
            result: None,
            eof: false,
            reaped: None,
        });
        Ok(idx)
    }

    fn log_tail(&self, idx: usize) -> String {
        let p = &self.procs[idx];
        let text = fs::read_to_string(&p.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!(
            "--- last lines of {} ({}) ---\n{}",
            p.name,
            p.log.display(),
            lines[from..].join("\n")
        )
    }

    /// Take one line from any child (until `deadline`) and record it.
    fn pump(&mut self, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match self.rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => {
                let waiting: Vec<&str> = self
                    .procs
                    .iter()
                    .filter(|p| p.result.is_none())
                    .map(|p| p.name.as_str())
                    .collect();
                bail!("deadline reached; still waiting for {waiting:?}");
            }
        };
        let i = line.proc;
        let Some(text) = line.text else {
            self.procs[i].eof = true;
            if self.procs[i].result.is_none() {
                bail!(
                    "{} ended without a RESULT line\n{}",
                    self.procs[i].name,
                    self.log_tail(i)
                );
            }
            return Ok(());
        };
        let (kind, rest) = text.split_once(' ').unwrap_or((text.as_str(), "{}"));
        let parse = |s: &str| -> Result<Value> {
            serde_json::from_str(s).with_context(|| format!("bad line from child: {text}"))
        };
        match kind {
            "READY" => self.procs[i].ready = Some(parse(rest)?),
            "DONE" => self.procs[i].done = Some((line.at, parse(rest)?)),
            "RESULT" => {
                let v = parse(rest)?;
                if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
                    bail!("{} failed: {e}\n{}", self.procs[i].name, self.log_tail(i));
                }
                self.procs[i].result = Some(v);
            }
            _ => {}
        }
        Ok(())
    }

    fn wait_ready(&mut self, idx: usize, deadline: Instant) -> Result<Value> {
        while self.procs[idx].ready.is_none() {
            self.pump(deadline)
                .with_context(|| format!("waiting for {} to be ready", self.procs[idx].name))?;
        }
        Ok(self.procs[idx].ready.clone().expect("checked"))
    }

    fn wait_results(&mut self, deadline: Instant) -> Result<()> {
        while self.procs.iter().any(|p| p.result.is_none()) {
            self.pump(deadline)?;
        }
        Ok(())
    }

    fn send(&mut self, idx: usize, line: &str) -> Result<()> {
        let p = &mut self.procs[idx];
        let stdin = p
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: stdin closed", p.name))?;
        stdin.write_all(line.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Close every stdin, give the children `grace` to exit, kill the rest; reap all with
    /// wait4 (which is where peak RSS and CPU come from).
    fn finish(&mut self, grace: Duration) -> Result<()> {
        for p in &mut self.procs {
            p.stdin = None;
        }
        let until = Instant::now() + grace;
        loop {
            let mut pending = false;
            for p in &mut self.procs {
                if p.reaped.is_none() {
                    p.reaped = os::wait4(p.child.id(), false)?;
                    pending |= p.reaped.is_none();
                }
            }
            if !pending {
                return Ok(());
            }
            if Instant::now() >= until {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        for p in &mut self.procs {
            if p.reaped.is_none() {
                let _ = p.child.kill();
                p.reaped = os::wait4(p.child.id(), true)?;
            }
        }
        Ok(())
    }

    fn usage(&self, idx: usize) -> os::Usage {
        self.procs[idx].reaped.map(|r| r.1).unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.reaped.is_none() {
                p.stdin = None;
                let _ = p.child.kill();
                p.reaped = os::wait4(p.child.id(), true).ok().flatten();
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Orchestrator: scenarios
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum System {
    Ferry,
    Nvflare,
    Tcp,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Ferry => "ferry",
            System::Nvflare => "NVFlare 2.9",
            System::Tcp => "plain TCP",
        }
    }
    fn key(self) -> &'static str {
        match self {
            System::Ferry => "ferry",
            System::Nvflare => "nvflare",
            System::Tcp => "tcp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Scenario {
    #[serde(rename = "file-hash")]
    FileHash,
    #[serde(rename = "file-disk")]
    FileDisk,
    #[serde(rename = "tensors")]
    Tensors,
    #[serde(rename = "big")]
    Big,
    #[serde(rename = "small")]
    Small,
}

impl Scenario {
    fn key(self) -> &'static str {
        match self {
            Scenario::FileHash => "file-hash",
            Scenario::FileDisk => "file-disk",
            Scenario::Tensors => "tensors",
            Scenario::Big => "big",
            Scenario::Small => "small",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Scenario::FileHash => "file → receivers hash",
            Scenario::FileDisk => "file → receivers write + fsync",
            Scenario::Tensors => "tensor dict → receiver memory",
            Scenario::Big => "big file → receiver hashes",
            Scenario::Small => "4 KiB object, sequential fetches",
        }
    }
    /// Receiver mode per system.
    fn mode(self, sys: System) -> &'static str {
        match (self, sys) {
            (Scenario::FileHash | Scenario::Big, _) => "hash",
            (Scenario::FileDisk, _) => "file",
            (Scenario::Tensors, System::Nvflare) => "arrays",
            (Scenario::Tensors, _) => "memory",
            (Scenario::Small, _) => "small",
        }
    }
}

/// One measurement: one scenario, one system, one receiver count.
#[derive(Clone, Debug, Serialize)]
struct Run {
    scenario: Scenario,
    system: System,
    receivers: usize,
    size: u64,
    wall_s: f64,
    mib_s: f64,
    sender_rss_kib: u64,
    receiver_rss_kib_max: u64,
    /// CPU the processes spent in the transfer (self-reported getrusage windows), all summed.
    cpu_transfer_s: f64,
    /// CPU of the whole processes (wait4), all summed: startup and imports included.
    cpu_process_s: f64,
    sender_cpu_s: f64,
    receivers_cpu_s: f64,
    latencies_ms: Vec<f64>,
}

impl Run {
    fn gib_delivered(&self) -> f64 {
        (self.size as f64 * self.receivers as f64) / GIB
    }
    fn cpu_per_gib(&self) -> f64 {
        self.cpu_transfer_s / self.gib_delivered()
    }
    fn cpu_process_per_gib(&self) -> f64 {
        self.cpu_process_s / self.gib_delivered()
    }
}

/// Everything a measurement needs to know about the run.
struct Ctx {
    exe: PathBuf,
    python: PathBuf,
    py_dir: PathBuf,
    work: PathBuf,
    data: PathBuf,
    ferry_chunk: u64,
    ferry_budget: u64,
    ferry_window: usize,
    perf_dir: Option<PathBuf>,
}

impl Ctx {
    /// A command running this binary as `role`, under `perf record` when profiling ferry.
    fn rust_role(&self, role: &str, name: &str, title: &str) -> Command {
        match &self.perf_dir {
            Some(dir) if role.starts_with("ferry") => {
                let mut c = Command::new("perf");
                c.args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-o"])
                    .arg(dir.join(format!(
                        "{}-{name}.perf.data",
                        title.replace([' ', '×'], "_")
                    )))
                    .arg("--")
                    .arg(&self.exe)
                    .arg(role);
                c
            }
            _ => {
                let mut c = Command::new(&self.exe);
                c.arg(role);
                c
            }
        }
    }
}

struct Case {
    scenario: Scenario,
    system: System,
    receivers: usize,
    size: u64,
    /// The file the sender offers (or reads the tensor bytes from).
    source: PathBuf,
    /// Expected BLAKE3 of what every receiver gets (Rust receivers).
    blake3: String,
    count: usize,
}

impl Case {
    fn title(&self) -> String {
        format!(
            "{} {} {} × {}",
            self.scenario.key(),
            self.system.key(),
            human_size(self.size),
            self.receivers
        )
    }
    /// Generous deadline: 60 s plus 25 MiB/s for everything delivered.
    fn deadline(&self) -> Duration {
        let bytes = (self.size * self.receivers as u64) as f64;
        Duration::from_secs_f64(60.0 + bytes / (25.0 * MIB as f64))
    }
}

fn human_size(b: u64) -> String {
    if b >= (1 << 30) && b % (1 << 30) == 0 {
        format!("{} GiB", b >> 30)
    } else if b >= MIB && b % MIB == 0 {
        format!("{} MiB", b / MIB)
    } else if b >= 1024 && b % 1024 == 0 {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}

fn run_case(ctx: &Ctx, case: &Case) -> Result<Run> {
    let title = case.title();
    let dir = ctx.work.join(title.replace([' ', '×'], "_"));
    let mut g = Group::new(dir.join("logs"))?;
    let deadline_d = case.deadline();
    let deadline = Instant::now() + deadline_d;
    let timeout = format!("{:.0}", deadline_d.as_secs_f64() + 30.0);
    let mode = case.scenario.mode(case.system);
    let n = case.receivers;

    // The sender.
    let sender_cmd = match case.system {
        System::Ferry | System::Tcp => {
            let role = if case.system == System::Ferry {
                "ferry-sender"
            } else {
                "tcp-sender"
            };
            let kind = match case.scenario {
                Scenario::Tensors => "tensors",
                Scenario::Small => "small",
                _ => "file",
            };
            let mut c = ctx.rust_role(role, "sender", &title);
            c.args(["--kind", kind, "--file"])
                .arg(&case.source)
                .args(["--len", &case.size.to_string()])
                .args(["--count", &case.count.to_string()])
                .args(["--receivers", &n.to_string()])
                .args(["--chunk", &ctx.ferry_chunk.to_string()])
                .args(["--budget", &ctx.ferry_budget.to_string()])
                .args(["--timeout", &timeout]);
            c
        }
        System::Nvflare => {
            let mut c = Command::new(&ctx.python);
            c.arg(ctx.py_dir.join("nv_sender.py")).args([
                "--num-receivers",
                &n.to_string(),
                "--timeout",
                &timeout,
            ]);
            match case.scenario {
                Scenario::Tensors => {
                    c.args(["--kind", "arrays", "--total-bytes", &case.size.to_string()])
                        .args(["--array-bytes", &TENSOR_BYTES.to_string()]);
                }
                Scenario::Small => {
                    c.args(["--kind", "small", "--count", &case.count.to_string()])
                        .arg("--file")
                        .arg(&case.source);
                }
                _ => {
                    c.args(["--kind", "file", "--file"]).arg(&case.source);
                }
            }
            c
        }
    };
    let s = g.spawn("sender", sender_cmd)?;
    let ready = g.wait_ready(s, deadline)?;
    let url = ready["url"]
        .as_str()
        .ok_or_else(|| anyhow!("sender READY without url: {ready}"))?
        .to_string();

    // The receivers.
    let mut recv = Vec::with_capacity(n);
    for i in 0..n {
        let out = dir.join(format!("recv-{i}"));
        fs::create_dir_all(&out)?;
        let fqcn = format!("site-{}", i + 1);
        let cmd = match case.system {
            System::Ferry | System::Tcp => {
                let role = if case.system == System::Ferry {
                    "ferry-receiver"
                } else {
                    "tcp-receiver"
                };
                let mut c = ctx.rust_role(role, &fqcn, &title);
                c.args(["--url", &url, "--fqcn", &fqcn, "--mode", mode, "--out-dir"])
                    .arg(&out)
                    .args(["--len", &case.size.to_string()])
                    .args(["--window", &ctx.ferry_window.to_string()])
                    .args(["--timeout", &timeout]);
                c
            }
            System::Nvflare => {
                let mut c = Command::new(&ctx.python);
                c.arg(ctx.py_dir.join("nv_receiver.py"))
                    .args(["--url", &url, "--fqcn", &fqcn, "--mode", mode, "--out-dir"])
                    .arg(&out)
                    .args(["--timeout", &timeout]);
                c
            }
        };
        recv.push(g.spawn(&fqcn, cmd)?);
    }
    for &r in &recv {
        g.wait_ready(r, deadline)?;
    }

    // Go.
    let go = format!(
        "GO {}\n",
        json!({"source": ready.get("fqcn").cloned().unwrap_or(json!(SENDER_FQCN)),
               "refs": ready.get("refs").cloned().unwrap_or(json!([]))})
    );
    let t0 = Instant::now();
    for &r in &recv {
        g.send(r, &go)?;
    }
    g.wait_results(deadline)?;
    let end = recv
        .iter()
        .map(|&r| g.procs[r].done.as_ref().map(|d| d.0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow!("a receiver sent RESULT without DONE"))?
        .into_iter()
        .max()
        .unwrap_or(t0);
    g.finish(Duration::from_secs(20))?;

    // Verify what every receiver got.
    let expected_sha = ready
        .get("sha256")
        .and_then(Value::as_str)
        .map(str::to_string);
    let expected_bytes = match case.scenario {
        Scenario::Small => case.size * case.count as u64,
        _ => case.size,
    };
    let mut latencies = Vec::new();
    for &r in &recv {
        let res = g.procs[r].result.clone().expect("waited");
        let got = res["bytes"].as_u64().unwrap_or(0);
        // NVFlare's numpy path rounds every array to whole float32s; sizes here are multiples of 4.
        if got != expected_bytes {
            bail!(
                "{title}: {} received {got} bytes, expected {expected_bytes}",
                g.procs[r].name
            );
        }
        let ok = match case.system {
            System::Nvflare => {
                let want = expected_sha.as_deref().unwrap_or("");
                res["sha256"].as_str() == Some(want)
            }
            _ => res["blake3"].as_str() == Some(case.blake3.as_str()),
        };
        if !ok {
            bail!(
                "{title}: {} received different bytes: {res}",
                g.procs[r].name
            );
        }
        if let Some(l) = res["latencies_ms"].as_array() {
            latencies.extend(l.iter().filter_map(Value::as_f64));
        }
    }

    let wall = end.duration_since(t0).as_secs_f64().max(1e-9);
    let sender_res = g.procs[s].result.clone().expect("waited");
    let sender_cpu = sender_res["cpu_s"].as_f64().unwrap_or(0.0);
    let receivers_cpu: f64 = recv
        .iter()
        .map(|&r| {
            g.procs[r].result.as_ref().expect("waited")["cpu_s"]
                .as_f64()
                .unwrap_or(0.0)
        })
        .sum();
    let cpu_process: f64 = (0..g.procs.len()).map(|i| g.usage(i).cpu_s()).sum();
    let run = Run {
        scenario: case.scenario,
        system: case.system,
        receivers: n,
        size: case.size,
        wall_s: wall,
        mib_s: (expected_bytes * n as u64) as f64 / MIB as f64 / wall,
        sender_rss_kib: g.usage(s).maxrss_kib,
        receiver_rss_kib_max: recv
            .iter()
            .map(|&r| g.usage(r).maxrss_kib)
            .max()
            .unwrap_or(0),
        cpu_transfer_s: sender_cpu + receivers_cpu,
        cpu_process_s: cpu_process,
        sender_cpu_s: sender_cpu,
        receivers_cpu_s: receivers_cpu,
        latencies_ms: latencies,
    };
    drop(g);
    let _ = fs::remove_dir_all(&dir);
    Ok(run)
}

/// Measure `case` `repeat` times; keep the run with the highest throughput (the lowest median
/// latency for the small-object case).
fn run_best(ctx: &Ctx, case: &Case, repeat: usize) -> Result<Run> {
    let mut best: Option<Run> = None;
    for _ in 0..repeat {
        settle(case)?;
        let r = run_case(ctx, case)?;
        let better = match &best {
            None => true,
            Some(b) if case.scenario == Scenario::Small => {
                median(&r.latencies_ms) < median(&b.latencies_ms)
            }
            Some(b) => r.mib_s > b.mib_s,
        };
        if better {
            best = Some(r);
        }
    }
    best.ok_or_else(|| anyhow!("no run"))
}

/// Same start for every system: the source is read once (into the page cache) and the
/// writeback of earlier runs' files is flushed (`sync`) so it does not land in this one.
fn settle(case: &Case) -> Result<()> {
    let mut f = File::open(&case.source)?;
    let mut buf = vec![0u8; BLAST_BUF];
    while fill(&mut f, &mut buf)? > 0 {}
    let _ = Command::new("sync").status();
    Ok(())
}

/// Write `size` bytes of deterministic pseudo-random data (xorshift64*) to `path`, unless a
/// file of that size from an earlier run is already there.
fn make_source(path: &Path, size: u64) -> Result<()> {
    if fs::metadata(path).map(|m| m.len() == size).unwrap_or(false) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    let mut buf = vec![0u8; BLAST_BUF];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            w.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Orchestrator: the run
// ------------------------------------------------------------------------------------------

fn orchestrate(a: OrchArgs) -> Result<()> {
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
                || !["ferry", "nvflare", "tcp"].contains(&name)
                || a.only.iter().any(|s| s == name))
    };
    let systems: Vec<System> = [System::Tcp, System::Ferry, System::Nvflare]
        .into_iter()
        .filter(|s| want(s.key()))
        .collect();

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
        ferry_budget: a.ferry_budget_kib.unwrap_or(0) * 1024,
        ferry_window: a.ferry_window.unwrap_or(0),
        perf_dir: a.perf_dir.clone(),
    };
    if let Some(d) = &ctx.perf_dir {
        fs::create_dir_all(d)?;
    }

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
            for &sys in &systems {
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
        for &sys in systems.iter().filter(|s| **s != System::Tcp) {
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
        for &sys in systems.iter().filter(|s| **s != System::Nvflare) {
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
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for case in &cases {
        let t = Instant::now();
        eprint!("bench_download: {:<40} ", case.title());
        match run_best(&ctx, case, a.repeat.max(1)) {
            Ok(r) => {
                if r.scenario == Scenario::Small {
                    eprintln!(
                        "median {:.3} ms over {} fetches  ({:.1}s)",
                        median(&r.latencies_ms).unwrap_or(f64::NAN),
                        r.latencies_ms.len(),
                        t.elapsed().as_secs_f64()
                    );
                } else {
                    let g = r.gib_delivered();
                    eprintln!(
                        "{:>8.1} MiB/s  RSS sender {:>4} / receivers ≤ {:>4} MiB  \
                         cpu {:.2} s/GiB (sender {:.2} + receivers {:.2})  ({:.1}s)",
                        r.mib_s,
                        r.sender_rss_kib / 1024,
                        r.receiver_rss_kib_max / 1024,
                        r.cpu_per_gib(),
                        r.sender_cpu_s / g,
                        r.receivers_cpu_s / g,
                        t.elapsed().as_secs_f64()
                    );
                }
                runs.push(r);
            }
            Err(e) => {
                eprintln!("FAILED");
                eprintln!("{e:#}");
                failures.push(format!(
                    "{}: {}",
                    case.title(),
                    first_line(&format!("{e:#}"))
                ));
            }
        }
    }
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
        repeat: a.repeat.max(1),
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

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

// ------------------------------------------------------------------------------------------
// Report
// ------------------------------------------------------------------------------------------

struct Report {
    command: String,
    date: String,
    machine: String,
    runs: Vec<Run>,
    failures: Vec<String>,
    orchestrator_hwm_kib: u64,
    total_s: f64,
    quick: bool,
    repeat: usize,
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}×")
    } else {
        format!("{x:.2}×")
    }
}

fn median(v: &[f64]) -> Option<f64> {
    percentile(v, 0.5)
}

fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    Some(s[i])
}

impl Report {
    fn find(&self, sc: Scenario, sys: System, n: usize) -> Option<&Run> {
        self.runs
            .iter()
            .find(|r| r.scenario == sc && r.system == sys && r.receivers == n)
    }

    fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "`{}` — {}; {}. Release build, loopback, every sender and receiver its own process; \
             the whole run took {:.0} s.\n",
            self.command, self.date, self.machine, self.total_s
        );
        if self.quick {
            let _ = writeln!(
                o,
                "**Quick smoke run (small sizes): not the reference figures.**\n"
            );
        }
        let _ = writeln!(
            o,
            "| scenario | system | receivers | size | aggregate MiB/s | × NVFlare | × plain TCP | \
             sender peak RSS MiB | receiver peak RSS MiB (max) | CPU s/GiB (transfer) | CPU s/GiB (whole processes) |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|");
        let mut rows: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.scenario != Scenario::Small)
            .collect();
        rows.sort_by_key(|r| (r.scenario, r.receivers, r.system));
        for r in rows {
            let nv = self
                .find(r.scenario, System::Nvflare, r.receivers)
                .map(|b| ratio(r.mib_s / b.mib_s))
                .unwrap_or_else(|| "—".into());
            let tcp = self
                .find(r.scenario, System::Tcp, r.receivers)
                .map(|b| ratio(r.mib_s / b.mib_s))
                .unwrap_or_else(|| "—".into());
            let sys = if r.system == System::Ferry {
                format!("**{}**", r.system.name())
            } else {
                r.system.name().to_string()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} |",
                r.scenario.label(),
                sys,
                r.receivers,
                human_size(r.size),
                r.mib_s,
                nv,
                tcp,
                mib(r.sender_rss_kib),
                mib(r.receiver_rss_kib_max),
                r.cpu_per_gib(),
                r.cpu_process_per_gib(),
            );
        }
        let small: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.scenario == Scenario::Small)
            .collect();
        if !small.is_empty() {
            let _ = writeln!(
                o,
                "\n| 4 KiB object, one receiver | fetches | median ms | p90 ms | min ms |\n|---|---|---|---|---|"
            );
            for r in small {
                let l = &r.latencies_ms;
                let _ = writeln!(
                    o,
                    "| {} | {} | {:.3} | {:.3} | {:.3} |",
                    r.system.name(),
                    l.len(),
                    median(l).unwrap_or(f64::NAN),
                    percentile(l, 0.9).unwrap_or(f64::NAN),
                    l.iter().copied().fold(f64::INFINITY, f64::min),
                );
            }
        }
        let _ = writeln!(o, "\nTargets (ferry, from this run):\n");
        for t in self.targets() {
            let _ = writeln!(o, "- {t}");
        }
        if !self.failures.is_empty() {
            let _ = writeln!(o, "\nFailed measurements:\n");
            for f in &self.failures {
                let _ = writeln!(o, "- {f}");
            }
        }
        let _ = writeln!(
            o,
            "\nHow it is measured: aggregate = size × receivers / (last receiver done − start signal). \
             Peak RSS is the kernel's `ru_maxrss` from `wait4` when the orchestrator reaps each \
             process (the orchestrator's own high-water mark, {} MiB, is the floor of every child's \
             figure). CPU (transfer) sums `getrusage` user+sys that each process spent in the \
             transfer (receivers from the start signal to done; senders from building the \
             downloadable to the end of the transaction) per GiB delivered; \
             CPU (whole processes) is `wait4`'s total, Python start-up and imports included. \
             Receivers hash with BLAKE3 (ferry, TCP) or sha256 (NVFlare, in Python); NVFlare's \
             file receiver is `download_file` followed by an fsync, its hashing receiver \
             `download_object` with a consumer shaped like its file consumer, its tensor receiver \
             `download_arrays` (numpy arrays of 4 MiB). Plain TCP: 1 MiB reads and writes, one \
             connection per receiver. Every receiver's bytes are verified after it reports done. \
             Before each measurement the source is read once (page cache warm for every system) \
             and `sync` flushes the writeback of earlier runs; each case was measured {} time(s) \
             and the fastest kept.",
            mib(self.orchestrator_hwm_kib),
            self.repeat
        );
        o
    }

    fn targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mark = |ok: bool| if ok { "met" } else { "**missed**" };
        // Hash / memory receivers vs NVFlare and TCP.
        for sc in [Scenario::FileHash, Scenario::Tensors] {
            for r in self
                .runs
                .iter()
                .filter(|r| r.scenario == sc && r.system == System::Ferry)
            {
                let nv = self.find(sc, System::Nvflare, r.receivers);
                let tcp = self.find(sc, System::Tcp, r.receivers);
                let mut parts = Vec::new();
                let mut ok = true;
                if let Some(nv) = nv {
                    let x = r.mib_s / nv.mib_s;
                    ok &= x >= 8.0;
                    parts.push(format!("{} NVFlare (≥ 8×)", ratio(x)));
                    if let Some(t) = tcp {
                        parts.push(format!(
                            "(plain TCP itself: {} NVFlare)",
                            ratio(t.mib_s / nv.mib_s)
                        ));
                    }
                }
                if let Some(t) = tcp {
                    let x = r.mib_s / t.mib_s;
                    if sc == Scenario::FileHash {
                        ok &= x >= 0.8;
                        parts.push(format!("{} plain TCP (≥ 0.8×)", ratio(x)));
                    } else {
                        parts.push(format!("{} plain TCP", ratio(x)));
                    }
                }
                if !parts.is_empty() {
                    out.push(format!(
                        "{}, {} receiver(s): {} — {}",
                        sc.label(),
                        r.receivers,
                        parts.join(", "),
                        mark(ok)
                    ));
                }
            }
        }
        for r in self
            .runs
            .iter()
            .filter(|r| r.scenario == Scenario::FileDisk && r.system == System::Ferry)
        {
            if let Some(t) = self.find(Scenario::FileDisk, System::Tcp, r.receivers) {
                let x = r.mib_s / t.mib_s;
                out.push(format!(
                    "{}, {} receiver(s): {} plain TCP writing the same files (≥ 0.9×) — {}",
                    Scenario::FileDisk.label(),
                    r.receivers,
                    ratio(x),
                    mark(x >= 0.9)
                ));
            }
        }
        let ferry: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.system == System::Ferry && r.scenario != Scenario::Small)
            .collect();
        if let Some(worst) = ferry
            .iter()
            .max_by(|a, b| a.cpu_per_gib().total_cmp(&b.cpu_per_gib()))
        {
            out.push(format!(
                "CPU per GiB delivered ≤ 1 s: worst {:.2} s/GiB ({} × {}) — {}",
                worst.cpu_per_gib(),
                worst.scenario.key(),
                worst.receivers,
                mark(worst.cpu_per_gib() <= 1.0)
            ));
        }
        if let Some(r) = self.find(Scenario::Small, System::Ferry, 1) {
            if let Some(m) = median(&r.latencies_ms) {
                out.push(format!(
                    "4 KiB object fetched in ≤ 1 ms: median {m:.3} ms — {}",
                    mark(m <= 1.0)
                ));
            }
        }
        let max_n = self
            .runs
            .iter()
            .filter(|r| r.scenario == Scenario::FileHash || r.scenario == Scenario::FileDisk)
            .map(|r| r.receivers)
            .max();
        let mut base = None;
        if let Some(n) = max_n {
            for sc in [Scenario::FileHash, Scenario::FileDisk] {
                if let Some(r) = self.find(sc, System::Ferry, n) {
                    let m = r.sender_rss_kib as f64 / 1024.0;
                    base = Some(base.map_or(m, |b: f64| b.max(m)));
                    out.push(format!(
                        "sender peak RSS ≤ 64 MiB, {} to {} receivers ({}): {:.0} MiB — {}",
                        human_size(r.size),
                        n,
                        sc.key(),
                        m,
                        mark(m <= 64.0)
                    ));
                }
            }
        }
        if let (Some(b), Some(r)) = (base, self.find(Scenario::Big, System::Ferry, 1)) {
            let m = r.sender_rss_kib as f64 / 1024.0;
            out.push(format!(
                "sender peak RSS for {} to one receiver within 10% of the above ({:.0} MiB): {:.0} MiB — {}",
                human_size(r.size),
                b,
                m,
                mark(m <= b * 1.1)
            ));
        }
        if let Some(worst) = self
            .runs
            .iter()
            .filter(|r| {
                r.system == System::Ferry
                    && matches!(
                        r.scenario,
                        Scenario::FileHash | Scenario::FileDisk | Scenario::Big
                    )
            })
            .max_by_key(|r| r.receiver_rss_kib_max)
        {
            let m = worst.receiver_rss_kib_max as f64 / 1024.0;
            out.push(format!(
                "receiver peak RSS ≤ 32 MiB for a file download: worst {:.0} MiB ({} × {}) — {}",
                m,
                worst.scenario.key(),
                human_size(worst.size),
                mark(m <= 32.0)
            ));
        }
        out
    }
}

/// The command as a user types it (the example is run by `cargo xtask bench download`).
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut s = "cargo xtask bench download".to_string();
    for a in args.iter().filter(|a| a.as_str() != "orchestrate") {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {mem_gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// Now as `YYYY-MM-DD HH:MM UTC` (civil-from-days, no date crate needed).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Replace the text between the download markers of docs/benchmarks.md.
fn write_docs(path: &Path, body: &str) -> Result<()> {
    const BEGIN: &str = "<!-- bench:download:begin -->";
    const END: &str = "<!-- bench:download:end -->";
    let doc = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("{} lacks the {BEGIN} / {END} markers", path.display());
    };
    if e < b {
        bail!("{}: the download markers are out of order", path.display());
    }
    let mut out = String::with_capacity(doc.len() + body.len());
    out.push_str(&doc[..b + BEGIN.len()]);
    out.push('\n');
    out.push_str(body.trim_end());
    out.push('\n');
    out.push_str(&doc[e..]);
    fs::write(path, out)?;
    Ok(())
}
