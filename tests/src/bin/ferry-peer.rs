//! `ferry-peer`: an out-of-process Ferry cell for the end-to-end tests, driven over the same
//! line protocol as the Python peers (`READY <json>` once, then `RESULT <json>` lines on stdout;
//! logs on stderr; `--exit-on-stdin-eof` ends the process when the test closes stdin or dies).
//!
//! ```text
//! ferry-peer send    --listen tcp://127.0.0.1:0 [--fqcn server] [--file F] [--chunk-size N]
//!                    [--tensors N --tensor-bytes B] [--num-receivers N] [--tx-timeout S]
//!                    [--gate-after-chunks K]
//! ferry-peer receive --url URL --fqcn site-1 [--source server] [--file-ref R --out-dir D]
//!                    [--tensors-ref R] [--per-request-timeout S] [--max-retries N]
//!                    [--stall-after-chunks K] [--freeze-after-chunks K]
//! ```
//!
//! `send` READY: `{"fqcn", "url", "tx_id", "file_ref", "file_blake3", "file_size",
//! "tensors_ref", "tensors_digest"}`; RESULTs `{"event": "gate_reached"}` (with
//! `--gate-after-chunks`: every produce after the K-th is held forever) and `{"event":
//! "outcome", ...}` (see `ferry_tests::e2e::outcome_json`).
//!
//! `receive` READY: `{"fqcn", "peer"}`; RESULTs `{"event": "progress", "ref_id", "bytes"}`
//! (first chunk of each ref), `{"event": "file", "ok", "error", "path", "size", "blake3"}`,
//! `{"event": "tensors", "ok", "error", "count", "digest"}`, `{"event": "done", "all_ok"}`.
//! `--stall-after-chunks K`: the file consumer stops after K chunks and prints
//! `RESULT {"event": "stalled"}` (the process is meant to be killed then).
//! `--freeze-after-chunks K`: once K chunks are consumed the process stops itself (SIGSTOP),
//! so a test's frozen receiver still has most of its window outstanding however slowly the
//! test gets round to looking at it. K ≥ 2 for a windowed download: chunk 0 brings the plan,
//! and the window's pulls go out on the loop's next turn (a stop at chunk 0 can land before
//! they are sent); chunk 1's reply proves they were.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry::objects::FileConsumer;
use ferry::prelude::*;
use ferry_tests::e2e::{
    blake3_file, make_tensors, outcome_json, tensor_digest, GatedObject, StallingConsumer,
};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Out-of-process Ferry peer for the e2e tests")]
struct Cli {
    #[command(subcommand)]
    role: Role,
    /// Exit (code 4) when stdin closes.
    #[arg(long, global = true)]
    exit_on_stdin_eof: bool,
    /// Overall deadline in seconds; on expiry print `RESULT {"error": "timeout"}`, exit 3.
    #[arg(long, global = true, default_value_t = 300.0)]
    timeout: f64,
}

#[derive(Subcommand)]
enum Role {
    /// Serve a file and/or a tensor dict in one transaction.
    Send(SendArgs),
    /// Download refs from a source and verify them.
    Receive(ReceiveArgs),
}

#[derive(Args)]
struct SendArgs {
    #[arg(long, default_value = "tcp://127.0.0.1:0")]
    listen: String,
    #[arg(long, default_value = "server")]
    fqcn: String,
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long, default_value_t = 1 << 20)]
    chunk_size: u64,
    #[arg(long, default_value_t = 0)]
    tensors: usize,
    #[arg(long, default_value_t = 1 << 20)]
    tensor_bytes: usize,
    #[arg(long, default_value_t = 1)]
    num_receivers: usize,
    #[arg(long, default_value_t = 60.0)]
    tx_timeout: f64,
    /// Hold every file produce after the K-th (forever).
    #[arg(long)]
    gate_after_chunks: Option<u64>,
}

#[derive(Args)]
struct ReceiveArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    fqcn: String,
    #[arg(long, default_value = "server")]
    source: String,
    #[arg(long)]
    file_ref: Option<String>,
    #[arg(long)]
    out_dir: Option<PathBuf>,
    #[arg(long)]
    tensors_ref: Option<String>,
    #[arg(long, default_value_t = 60.0)]
    per_request_timeout: f64,
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// The file consumer stops after K chunks.
    #[arg(long)]
    stall_after_chunks: Option<u64>,
    /// Stop this process (SIGSTOP) once K chunks are consumed.
    #[arg(long)]
    freeze_after_chunks: Option<u64>,
}

/// Protocol output; one line at a time under the stdout lock.
fn emit(kind: &str, v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{kind} {v}");
    let _ = out.flush();
}

/// Stops this whole process with SIGSTOP, by a kill(2) on itself. The syscall returns only
/// once the stop is pending for every thread, so no other chunk is read after it: an earlier
/// version ran kill(1), and on a loaded machine (or one without procps) the download went on
/// draining its window while that process started, or never stopped at all.
fn freeze_self() {
    use rustix::process::{getpid, kill_process, Signal};
    if let Err(e) = kill_process(getpid(), Signal::STOP) {
        eprintln!("ferry-peer: could not stop itself with SIGSTOP: {e}");
        std::process::exit(3);
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if cli.exit_on_stdin_eof {
        std::thread::spawn(|| {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                if line.is_err() {
                    break;
                }
            }
            std::process::exit(4);
        });
    }
    let timeout = Duration::from_secs_f64(cli.timeout);
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        emit("RESULT", &json!({"error": "timeout"}));
        std::process::exit(3);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.role {
            Role::Send(a) => send(a).await,
            Role::Receive(a) => receive(a).await,
        }
    })?;
    // Do not wait for blocking threads (a held produce would keep the process alive).
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

async fn send(a: SendArgs) -> Result<()> {
    let cell = Cell::new(&a.fqcn)?;
    let url = cell.listen(&a.listen).await?;
    let service = DownloadService::new(&cell, ServiceOptions::default());
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs_f64(a.tx_timeout)).with_num_receivers(a.num_receivers),
    )?;
    let mut ready = json!({"fqcn": a.fqcn, "url": url, "tx_id": tx.tx_id().to_string()});
    if let Some(path) = &a.file {
        let obj = ferry::objects::FileObject::builder(path)
            .chunk_size(a.chunk_size)
            .digest(true)
            .open()
            .with_context(|| format!("opening {}", path.display()))?;
        let size = obj.size();
        let rid = match a.gate_after_chunks {
            Some(k) => {
                let gated = GatedObject::new(obj, k);
                let gate = gated.gate();
                tokio::spawn(async move {
                    if gate.wait_reached(Duration::from_secs(3600)).await.is_ok() {
                        emit("RESULT", &json!({"event": "gate_reached"}));
                    }
                });
                tx.add_object(Arc::new(gated))?
            }
            None => tx.add_object(Arc::new(obj))?,
        };
        ready["file_ref"] = json!(rid.to_string());
        ready["file_size"] = json!(size);
        ready["file_blake3"] = json!(blake3_file(path)?);
    }
    if a.tensors > 0 {
        let dict = make_tensors(7, a.tensors, a.tensor_bytes);
        ready["tensors_digest"] = json!(tensor_digest(&dict));
        ready["tensors_ref"] = json!(tx.add_tensors(dict)?.to_string());
    }
    emit("READY", &ready);
    let outcome = tx.waiter().wait().await;
    match outcome {
        Some(o) => {
            let mut v = outcome_json(&o);
            v["event"] = json!("outcome");
            emit("RESULT", &v);
        }
        None => emit("RESULT", &json!({"event": "outcome", "status": null})),
    }
    service.shutdown().await;
    cell.shutdown().await;
    Ok(())
}

async fn receive(a: ReceiveArgs) -> Result<()> {
    let cell = Cell::new(&a.fqcn)?;
    let peer = cell.connect(&a.url).await?;
    let service = DownloadService::new(&cell, ServiceOptions::default());
    emit(
        "READY",
        &json!({"fqcn": a.fqcn, "peer": peer.as_str().to_string()}),
    );
    let freeze_after = a.freeze_after_chunks;
    let opts = |rid: &str| {
        let rid = rid.to_string();
        let first = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let mut o = DownloadOptions {
            per_request_timeout: Duration::from_secs_f64(a.per_request_timeout),
            max_retries: a.max_retries,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            window: a.window,
            progress_interval: Duration::ZERO,
            ..DownloadOptions::default()
        };
        o = o.with_progress(move |p| {
            if p.bytes_done > 0 && !first.swap(true, Ordering::SeqCst) {
                emit(
                    "RESULT",
                    &json!({"event": "progress", "ref_id": rid, "bytes": p.bytes_done}),
                );
            }
            if freeze_after.is_some_and(|k| p.chunks_done >= k)
                && !frozen.swap(true, Ordering::SeqCst)
            {
                freeze_self();
            }
        });
        o
    };
    let mut all_ok = true;
    if let Some(rid) = &a.file_ref {
        let dir = match &a.out_dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir(),
        };
        let name = format!("{}-{rid}.bin", a.fqcn);
        let consumer = FileConsumer::create(&dir, &name)?;
        let rid_t = RefId::from(rid.as_str());
        let res = match a.stall_after_chunks {
            Some(k) => {
                let stalling = StallingConsumer::new(consumer, k);
                let gate = stalling.gate();
                tokio::spawn(async move {
                    if gate.wait_reached(Duration::from_secs(3600)).await.is_ok() {
                        emit("RESULT", &json!({"event": "stalled"}));
                    }
                });
                download_object(&service, &a.source, &rid_t, stalling, opts(rid))
                    .await
                    .map(|c| c.into_inner().final_path().to_path_buf())
            }
            None => download_object(&service, &a.source, &rid_t, consumer, opts(rid))
                .await
                .map(|c| c.final_path().to_path_buf()),
        };
        let rec = match res {
            Ok(path) => json!({
                "event": "file", "ok": true, "error": null, "path": path,
                "size": std::fs::metadata(&path)?.len(), "blake3": blake3_file(&path)?,
            }),
            Err(e) => {
                all_ok = false;
                json!({"event": "file", "ok": false, "error": e.to_string()})
            }
        };
        emit("RESULT", &rec);
    }
    if let Some(rid) = &a.tensors_ref {
        let rid_t = RefId::from(rid.as_str());
        let rec = match download_tensors(&service, &a.source, &rid_t, opts(rid)).await {
            Ok(dict) => json!({
                "event": "tensors", "ok": true, "error": null, "count": dict.len(),
                "digest": tensor_digest(&dict),
            }),
            Err(e) => {
                all_ok = false;
                json!({"event": "tensors", "ok": false, "error": e.to_string()})
            }
        };
        emit("RESULT", &rec);
    }
    emit("RESULT", &json!({"event": "done", "all_ok": all_ok}));
    // The last confirm is queued on the connection by now (the download awaited it), and
    // `Cell::shutdown` writes out what is queued before it closes a connection.
    service.shutdown().await;
    cell.shutdown().await;
    Ok(())
}
