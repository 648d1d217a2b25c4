//! `ferry __demo-receiver`: one receiver process of `ferry demo`.
//!
//! It speaks a line protocol on stdout (JSON, one object per line) that the demo reads:
//! `{"type":"progress","bytes":N}` while downloading, then exactly one
//! `{"type":"result","ok":..,"bytes":..,"secs":..,"peak_rss":..,"error":..}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::cellnet::Cell;
use ferry::core::RefId;
use ferry::objects::{FileConsumer, Pin};
use ferry::{download_object, download_tensors_to_file, DownloadOptions};
use ferry::{DownloadService, ServiceOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::args::DemoReceiverArgs;
use crate::exit::{CmdResult, Failure};
use crate::interrupt;
use crate::sysinfo;
use crate::ui;

/// File names the demo receivers write.
pub const FILE_NAME: &str = "demo.bin";
/// Name of the tensor dict file.
pub const TENSORS_NAME: &str = "demo.safetensors";

/// Run one demo receiver; the result line is printed whatever happens.
pub async fn run(a: DemoReceiverArgs) -> CmdResult {
    let cancel = interrupt::on_signal();
    let started = Instant::now();
    let bytes = Arc::new(AtomicU64::new(0));
    let r = receive(&a, &cancel, &bytes).await;
    let secs = started.elapsed().as_secs_f64();
    ui::json_line(&json!({
        "type": "result",
        "ok": r.is_ok(),
        "bytes": bytes.load(Ordering::Relaxed),
        "secs": secs,
        "peak_rss": sysinfo::peak_rss(),
        "error": r.as_ref().err().map(ToString::to_string),
    }));
    r
}

/// Download options that report `base + bytes done` on stdout and into `done`.
fn options(cancel: &CancellationToken, base: u64, done: &Arc<AtomicU64>) -> DownloadOptions {
    let done = Arc::clone(done);
    DownloadOptions {
        cancel: Some(cancel.clone()),
        progress_interval: Duration::from_millis(100),
        // as `ferry get`
        consume_on_task: true,
        ..DownloadOptions::default()
    }
    .with_progress(move |p| {
        done.store(base + p.bytes_done, Ordering::Relaxed);
        ui::json_line(&json!({"type": "progress", "bytes": base + p.bytes_done}));
    })
}

async fn receive(
    a: &DemoReceiverArgs,
    cancel: &CancellationToken,
    bytes: &Arc<AtomicU64>,
) -> CmdResult {
    std::fs::create_dir_all(&a.dir)
        .map_err(|e| Failure::transfer(format!("creating {}: {e}", a.dir.display())))?;
    let cell = Cell::new(&a.name).map_err(|e| Failure::usage(e.to_string()))?;
    cell.connect(&a.url)
        .await
        .map_err(|e| crate::cells::connect_failure(&a.url, &e))?;
    let service = DownloadService::new(&cell, ServiceOptions::default());
    let r = async {
        // Overwrite: a second `ferry demo --keep DIR` replaces the first run's copies.
        let mut builder = FileConsumer::builder(&a.dir, FILE_NAME).overwrite(true);
        if let (Some(b3), Some(size)) = (&a.file_b3, a.file_size) {
            builder =
                builder.pin(Pin::from_hex(size, b3).map_err(|e| Failure::usage(e.to_string()))?);
        }
        let consumer = builder
            .open()
            .map_err(|e| Failure::transfer(e.to_string()))?;
        let got = download_object(
            &service,
            &a.source,
            &RefId::new(a.file_ref.clone()),
            consumer,
            options(cancel, 0, bytes),
        )
        .await
        .map_err(|e| Failure::transfer(e.to_string()))?;
        let file_bytes = file_len(got.final_path());
        bytes.store(file_bytes, Ordering::Relaxed);
        if let Some(tref) = &a.tensors_ref {
            download_tensors_to_file(
                &service,
                &a.source,
                &RefId::new(tref.clone()),
                &a.dir,
                TENSORS_NAME,
                true,
                options(cancel, file_bytes, bytes),
            )
            .await
            .map_err(|e| Failure::transfer(e.to_string()))?;
        }
        Ok(())
    }
    .await;
    service.shutdown().await;
    cell.shutdown().await;
    r
}

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
