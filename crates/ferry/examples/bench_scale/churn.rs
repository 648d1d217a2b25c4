//! Transactions created, completed and expired in a loop: RSS must stay flat.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use ferry::cellnet::Cell;
use ferry::core::{OutcomeStatus, TxConfig};
use ferry::{download_bytes, DownloadOptions, DownloadService, ObjectDownloader, ServiceOptions};
use serde_json::json;

use crate::{emit, opt, vm_rss_kib, Role};

/// Iterations of warm-up before the reference sample.
const WARMUP: usize = 200;
/// A sample every this many iterations.
const EVERY: usize = 50;
/// Allowed drift from the reference (issue 14: ±5 %).
const FLAT: f64 = 0.05;

/// `churn --iterations N`: the loop, in one process; emits the samples.
pub fn role(args: &[String]) -> Result<()> {
    let n: usize = opt(args, "--iterations", 1000)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cell = Cell::new("server")?;
        let url = cell.listen("tcp://127.0.0.1:0").await?;
        let mut sopts = ServiceOptions::default();
        // Receipts (outcomes, finished refs) held at most: 0 keeps the defaults.
        let receipts: usize = opt(args, "--receipts", 0)?;
        if receipts > 0 {
            sopts.engine.max_outcomes = receipts;
            sopts.engine.max_tombstones = receipts;
        }
        let service = DownloadService::new(&cell, sopts);
        let rcell = Cell::new("site-1")?;
        rcell.connect(&url).await?;
        let receiver = DownloadService::new(&rcell, ServiceOptions::default());
        let data = Bytes::from(vec![7u8; 64 * 1024]);
        let started = Instant::now();
        let mut samples = Vec::new();
        for i in 1..=n {
            // one transaction the receiver completes, one nobody pulls (it expires)
            let done = ObjectDownloader::new(
                &service,
                TxConfig::new(Duration::from_secs(60)).with_num_receivers(1),
            )?;
            let rid = done.add_bytes(data.clone())?;
            let lapse = ObjectDownloader::new(
                &service,
                TxConfig::new(Duration::from_millis(20)).with_num_receivers(1),
            )?;
            lapse.add_bytes(data.clone())?;
            let got = download_bytes(&receiver, "server", &rid, DownloadOptions::default()).await?;
            if got.len() != data.len() {
                bail!("iteration {i}: got {} bytes", got.len());
            }
            let o = done.waiter().wait().await;
            if !o.as_ref().is_some_and(|o| o.completed()) {
                bail!("iteration {i}: the pulled transaction did not complete: {o:?}");
            }
            let o = lapse.waiter().wait().await;
            if !o
                .as_ref()
                .is_some_and(|o| o.status != OutcomeStatus::Completed)
            {
                bail!("iteration {i}: the unpulled transaction did not expire: {o:?}");
            }
            drop((done, lapse));
            if i % EVERY == 0 {
                samples.push(
                    json!({"i": i, "rss_kib": vm_rss_kib(), "heap": crate::heap::live(), "live": service.transaction_count()}),
                );
            }
        }
        // what the engine keeps after the loop: nothing live, receipts up to their caps
        let kept = service.retained();
        let live = kept.transactions + kept.pull_tickets + kept.learnt_chunk_sizes + kept.parked_waiters;
        receiver.shutdown().await;
        rcell.shutdown().await;
        service.shutdown().await;
        cell.shutdown().await;
        emit(
            "RESULT",
            &json!({"samples": samples, "live": live, "kept": format!("{kept:?}"), "seconds": started.elapsed().as_secs_f64()}),
        );
        Ok(())
    })
}

/// Run the loop in a child; print the samples and the verdict.
pub fn drive(n: usize, receipts: usize) -> Result<bool> {
    let mut child = Role::spawn(&[
        "churn",
        "--iterations",
        &n.to_string(),
        "--receipts",
        &receipts.to_string(),
    ])?;
    let r = child.expect("RESULT")?;
    let (_, usage) = child.reap()?;
    let samples: Vec<(u64, f64)> = r["samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["i"].as_u64().unwrap_or(0),
                        s["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let reference = samples
        .iter()
        .find(|(i, _)| *i as usize >= WARMUP)
        .map(|s| s.1)
        .unwrap_or(0.0);
    let after: Vec<f64> = samples
        .iter()
        .filter(|(i, _)| *i as usize > WARMUP)
        .map(|s| s.1)
        .collect();
    let worst = after
        .iter()
        .map(|v| (v - reference) / reference)
        .fold(0.0f64, |a, d| if d.abs() > a.abs() { d } else { a });
    let live = r["live"].as_u64().unwrap_or(u64::MAX);
    println!(
        "churn, receipts {}: {n} x (one transaction completed + one expired), one process, in {:.1} s\n  live heap KiB every {EVERY}: {}\n  RSS MiB every {EVERY}: {}",
        if receipts == 0 { "at their defaults (30 min, 65,536 finished refs, 4,096 outcomes)".to_string() } else { format!("capped at {receipts}") },
        r["seconds"].as_f64().unwrap_or(0.0),
        r["samples"]
            .as_array()
            .map(|a| a.iter().map(|s| format!("{}", s["heap"].as_i64().unwrap_or(0) / 1024)).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        samples
            .iter()
            .map(|(_, m)| format!("{m:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  after {WARMUP} warm-up: reference {reference:.1} MiB, largest drift {:+.1} %; peak RSS {:.1} MiB; live state left: {live}; held: {}",
        worst * 100.0,
        usage.maxrss_kib as f64 / 1024.0,
        r["kept"].as_str().unwrap_or("?")
    );
    let pass = !after.is_empty() && worst.abs() <= FLAT && live == 0;
    println!(
        "  target: RSS within ±{:.0} % after warm-up, nothing left: {}",
        FLAT * 100.0,
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(pass)
}
