//! `ferry demo`: one sender (this process) and N receivers (child processes of this same binary,
//! `ferry __demo-receiver`) on loopback. A generated pseudo-random file, and with `--tensors` a
//! float32 tensor dict, go to every receiver; each receiver writes them to its own directory
//! and verifies them. Live progress per receiver on stderr, then a result table: bytes, time,
//! throughput, outcome and peak RSS of every process.
//!
//! Receivers are separate processes so that their memory and CPU are their own: peak RSS is
//! each process's `VmHWM` (Linux `/proc/self/status`), reported by the process itself at the end.

mod data;
pub mod receiver;
mod table;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::cellnet::Cell;
use ferry::core::{DownloadStatus, TransferOutcome, TxConfig};
use ferry::objects::FileObject;
use ferry::{DownloadService, ObjectDownloader, ServiceOptions};
use indicatif::ProgressBar;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::args::DemoArgs;
use crate::exit::{CmdResult, Failure};
use crate::interrupt;
use crate::sysinfo;
use crate::ui;
use crate::units::fmt_bytes;

pub use table::{ReceiverRow, Report};

/// FQCN of the demo's sender cell.
const SENDER: &str = "demo-sender";
/// How long the sender's transaction waits without any pull before it gives up.
const TX_TIMEOUT: Duration = Duration::from_secs(120);

/// What a receiver process said on stdout.
#[derive(Debug)]
enum Line {
    Progress(u64),
    Result(ChildResult),
    /// stdout closed (the process ended or crashed).
    Closed,
}

/// The last line of a receiver process.
#[derive(Debug, Clone, Default)]
struct ChildResult {
    ok: bool,
    bytes: u64,
    secs: f64,
    peak_rss: Option<u64>,
    error: Option<String>,
}

/// Run `ferry demo`.
pub async fn run(args: DemoArgs, json: bool) -> CmdResult {
    let cancel = interrupt::on_signal();
    // Keep the temp dir alive (and removed at the end) unless --keep names a directory.
    let (tmp, dir) = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| Failure::usage(format!("--keep {}: {e}", d.display())))?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("ferry-demo-")
                .tempdir()
                .map_err(|e| Failure::transfer(format!("cannot create a temp dir: {e}")))?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let r = demo(&args, &dir, &cancel, json).await;
    drop(tmp);
    r
}

async fn demo(
    args: &DemoArgs,
    dir: &std::path::Path,
    cancel: &tokio_util::sync::CancellationToken,
    json: bool,
) -> CmdResult {
    // 1. The payloads.
    let src = dir.join("sender");
    std::fs::create_dir_all(&src)
        .map_err(|e| Failure::transfer(format!("creating {}: {e}", src.display())))?;
    let file = src.join(receiver::FILE_NAME);
    let spinner = ui::bars().add(ProgressBar::new_spinner());
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message(format!(
        "generating {} of pseudo-random data",
        fmt_bytes(args.size)
    ));
    let (size, chunk, tensors) = (args.size, args.chunk, args.tensors);
    let file2 = file.clone();
    let prepared = tokio::task::spawn_blocking(move || -> Result<_, String> {
        data::write_random_file(&file2, size, 0x5eed)
            .map_err(|e| format!("writing {}: {e}", file2.display()))?;
        let obj = FileObject::builder(&file2)
            .chunk_size(chunk)
            .digest(true)
            .open()
            .map_err(|e| e.to_string())?;
        let dict = if tensors {
            Some(data::random_tensors(size / 4, 0x7e45)?)
        } else {
            None
        };
        Ok((obj, dict))
    })
    .await
    .map_err(|e| Failure::transfer(format!("generating the demo data failed: {e}")))?
    .map_err(Failure::transfer)?;
    spinner.finish_and_clear();
    let (file_obj, dict) = prepared;
    let b3 = file_obj.digest().map(str::to_string);
    let tensor_bytes = dict.as_ref().map_or(0, |d| d.total_bytes());

    // 2. The sender.
    let cell = Cell::new(SENDER).map_err(|e| Failure::transfer(e.to_string()))?;
    let url = cell
        .listen("tcp://127.0.0.1:0")
        .await
        .map_err(|e| Failure::transfer(format!("cannot listen on loopback: {e}")))?;
    let service = DownloadService::new(&cell, ServiceOptions::default());
    let r = async {
        let n = args.receivers as usize;
        let tx = ObjectDownloader::new(&service, TxConfig::new(TX_TIMEOUT).with_num_receivers(n))
            .map_err(|e| Failure::transfer(e.to_string()))?;
        let file_ref = tx
            .add_object(Arc::new(file_obj))
            .map_err(|e| Failure::transfer(e.to_string()))?;
        let tensors_ref = match dict {
            Some(d) => Some(
                tx.add_tensors(d)
                    .map_err(|e| Failure::transfer(e.to_string()))?,
            ),
            None => None,
        };
        if !json {
            ui::info_line(&format!(
                "ferry demo: {}{} to {n} receiver processes over {url} ({} chunks)",
                fmt_bytes(args.size),
                if tensor_bytes > 0 {
                    format!(" file + {} tensor dict", fmt_bytes(tensor_bytes))
                } else {
                    " file".into()
                },
                fmt_bytes(args.chunk)
            ));
        }

        // 3. The receivers.
        let exe = std::env::current_exe()
            .map_err(|e| Failure::transfer(format!("cannot find my own executable: {e}")))?;
        let per_receiver = args.size + tensor_bytes;
        let (lines_tx, mut lines_rx) = mpsc::channel::<(usize, Line)>(1024);
        let mut children: Vec<Child> = Vec::new();
        let mut bars = Vec::new();
        let names: Vec<String> = (1..=n).map(|i| format!("demo-site-{i}")).collect();
        let started = Instant::now();
        for (i, name) in names.iter().enumerate() {
            let mut cmd = Command::new(&exe);
            cmd.arg("__demo-receiver")
                .arg("--url")
                .arg(&url)
                .arg("--source")
                .arg(SENDER)
                .arg("--name")
                .arg(name)
                .arg("--dir")
                .arg(dir.join(name))
                .arg("--file-ref")
                .arg(file_ref.as_str());
            if let Some(b3) = &b3 {
                cmd.arg("--file-b3")
                    .arg(b3)
                    .arg("--file-size")
                    .arg(size.to_string());
            }
            if let Some(t) = &tensors_ref {
                cmd.arg("--tensors-ref").arg(t.as_str());
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .map_err(|e| Failure::transfer(format!("cannot start receiver {name}: {e}")))?;
            let stdout = child.stdout.take();
            children.push(child);
            bars.push(ui::byte_bar(name, Some(per_receiver)));
            let lines_tx = lines_tx.clone();
            tokio::spawn(async move {
                if let Some(out) = stdout {
                    let mut lines = BufReader::new(out).lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        if let Some(line) = parse_line(&l) {
                            if lines_tx.send((i, line)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = lines_tx.send((i, Line::Closed)).await;
            });
        }
        drop(lines_tx);

        // 4. Watch them.
        let mut results: HashMap<usize, ChildResult> = HashMap::new();
        let mut finished_at: HashMap<usize, Duration> = HashMap::new();
        let mut open = n;
        let mut interrupted = false;
        while open > 0 {
            tokio::select! {
                msg = lines_rx.recv() => match msg {
                    Some((i, Line::Progress(b))) => bars[i].set_position(b),
                    Some((i, Line::Result(r))) => {
                        finished_at.insert(i, started.elapsed());
                        bars[i].set_position(r.bytes);
                        bars[i].finish_with_message(if r.ok { "done" } else { "failed" });
                        results.insert(i, r);
                    }
                    Some((_, Line::Closed)) => open -= 1,
                    None => break,
                },
                _ = cancel.cancelled(), if !interrupted => {
                    interrupted = true;
                    tx.delete_transaction().ok();
                    for c in &mut children {
                        c.start_kill().ok();
                    }
                }
            }
        }
        for c in &mut children {
            let _ = c.wait().await;
        }
        for b in &bars {
            b.finish_and_clear();
        }
        if interrupted {
            return Err(Failure::Interrupted(
                "interrupted: demo cancelled, transaction deleted, receivers stopped".into(),
            ));
        }
        let wall = finished_at
            .values()
            .max()
            .copied()
            .unwrap_or_else(|| started.elapsed());
        let outcome = match tx.waiter().wait_timeout(Duration::from_secs(30)).await {
            Some(o) => Some(o),
            None => {
                tx.delete_transaction().ok();
                tx.waiter().wait_timeout(Duration::from_secs(10)).await
            }
        };
        let report = build_report(args, &names, &results, outcome.as_ref(), tensor_bytes, wall);
        if json {
            ui::json_line(&report.to_json());
        } else {
            ui::out_line(&report.to_text());
        }
        if report.all_ok() {
            Ok(())
        } else {
            Err(Failure::transfer(format!(
                "demo transfer did not complete: {}",
                report.failure_summary()
            )))
        }
    }
    .await;
    service.shutdown().await;
    cell.shutdown().await;
    r
}

fn parse_line(l: &str) -> Option<Line> {
    let v: serde_json::Value = serde_json::from_str(l).ok()?;
    match v.get("type")?.as_str()? {
        "progress" => Some(Line::Progress(v.get("bytes")?.as_u64()?)),
        "result" => Some(Line::Result(ChildResult {
            ok: v.get("ok")?.as_bool()?,
            bytes: v.get("bytes").and_then(|b| b.as_u64()).unwrap_or(0),
            secs: v.get("secs").and_then(|b| b.as_f64()).unwrap_or(0.0),
            peak_rss: v.get("peak_rss").and_then(|b| b.as_u64()),
            error: v.get("error").and_then(|e| e.as_str()).map(str::to_string),
        })),
        _ => None,
    }
}

fn build_report(
    args: &DemoArgs,
    names: &[String],
    results: &HashMap<usize, ChildResult>,
    outcome: Option<&TransferOutcome>,
    tensor_bytes: u64,
    wall: Duration,
) -> Report {
    let receivers = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let r = results.get(&i).cloned().unwrap_or(ChildResult {
                error: Some("receiver process ended without a result".into()),
                ..ChildResult::default()
            });
            // The sender's verdict when it has one (it is what the transaction counts).
            let sender_view = outcome.map(|o| {
                o.refs
                    .iter()
                    .all(|(_, m)| m.get(name) == Some(&DownloadStatus::Success))
            });
            let outcome = match (r.ok, sender_view) {
                (true, Some(true) | None) => "success".to_string(),
                (true, Some(false)) => "not confirmed".to_string(),
                (false, _) => format!("failed: {}", r.error.as_deref().unwrap_or("unknown")),
            };
            ReceiverRow {
                name: name.clone(),
                bytes: r.bytes,
                secs: r.secs,
                outcome,
                peak_rss: r.peak_rss,
            }
        })
        .collect();
    Report {
        size: args.size,
        tensor_bytes,
        chunk: args.chunk,
        receivers,
        sender_peak_rss: sysinfo::peak_rss(),
        wall,
        status: outcome.map(|o| (o.status.as_str().to_string(), o.reason.to_string())),
    }
}
