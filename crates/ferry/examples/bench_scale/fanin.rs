//! One sender, many receivers: the sender's peak RSS while it serves them all.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ferry::cellnet::Cell;
use ferry::core::{ChunkData, ConsumeError, Consumer, RefId, State, TxConfig};
use ferry::{download_object, DownloadOptions, DownloadService, ObjectDownloader, ServiceOptions};
use serde_json::json;

use crate::{emit, opt, opt_str, Role, MIB};

/// Sender peak RSS target (issue 14).
const SENDER_RSS_TARGET_MIB: f64 = 64.0;

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Hashes what arrives, keeps nothing.
#[derive(Default)]
struct HashConsumer {
    hasher: blake3::Hasher,
    bytes: u64,
}

impl Consumer for HashConsumer {
    fn blocks(&self) -> bool {
        false
    }
    fn consume(&mut self, _: &str, state: &State, data: ChunkData) -> Result<State, ConsumeError> {
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
            // a sender's form; received chunks are always `Items`
            ChunkData::ItemParts(items) => {
                for b in items.iter().flatten() {
                    self.hasher.update(b);
                    self.bytes += b.len() as u64;
                }
            }
            ChunkData::File(_) => {
                return Err(ConsumeError::BadChunk(
                    "a received chunk is bytes or a list of items".into(),
                ))
            }
        }
        Ok(state.clone())
    }
    fn completed(&mut self, _: &str) -> Result<(), ConsumeError> {
        Ok(())
    }
    fn failed(&mut self, _: &str, _: &str) {}
}

/// `sender --file F --receivers N`: serve F to N receivers, then report.
pub fn sender(args: &[String]) -> Result<()> {
    let file = opt_str(args, "--file")?;
    let n: usize = opt(args, "--receivers", 64)?;
    runtime()?.block_on(async {
        let cell = Cell::new("server")?;
        let url = cell.listen("tcp://127.0.0.1:0").await?;
        let service = DownloadService::new(&cell, ServiceOptions::default());
        let tx = ObjectDownloader::new(
            &service,
            TxConfig::new(Duration::from_secs(1800)).with_num_receivers(n),
        )?;
        let rid = tx.add_file(Path::new(&file), ferry::objects::DEFAULT_CHUNK_SIZE)?;
        emit("READY", &json!({"url": url, "ref": rid.as_str()}));
        let outcome: Option<ferry::core::TransferOutcome> = tx.waiter().wait().await;
        let status = outcome.as_ref().map(|o| format!("{:?}", o.status));
        let ok = outcome.as_ref().is_some_and(|o| o.completed());
        drop(tx);
        service.shutdown().await;
        cell.shutdown().await;
        emit("RESULT", &json!({"status": status, "completed": ok}));
        Ok::<(), anyhow::Error>(())
    })
}

/// `receivers --url U --ref R --n N --blake3 H`: N receiver cells in this process.
pub fn receivers(args: &[String]) -> Result<()> {
    let url = opt_str(args, "--url")?;
    let rid = RefId::new(opt_str(args, "--ref")?);
    let n: usize = opt(args, "--n", 64)?;
    let want = opt_str(args, "--blake3")?;
    runtime()?.block_on(async {
        let started = Instant::now();
        let want = Arc::new(want);
        let mut jobs = Vec::new();
        for i in 0..n {
            let (url, rid, want) = (url.clone(), rid.clone(), Arc::clone(&want));
            jobs.push(tokio::spawn(async move {
                let cell = Cell::new(&format!("site-{i}")).map_err(|e| e.to_string())?;
                cell.connect(&url).await.map_err(|e| e.to_string())?;
                let service = DownloadService::new(&cell, ServiceOptions::default());
                let r = download_object(
                    &service,
                    "server",
                    &rid,
                    HashConsumer::default(),
                    DownloadOptions::default(),
                )
                .await;
                service.shutdown().await;
                cell.shutdown().await;
                let c = r.map_err(|e| e.to_string())?;
                let got = c.hasher.finalize().to_hex().to_string();
                if got != *want {
                    return Err(format!("digest {got} != {want} after {} bytes", c.bytes));
                }
                Ok::<u64, String>(c.bytes)
            }));
        }
        let mut verified = 0;
        let mut errors = Vec::new();
        for j in jobs {
            match j.await {
                Ok(Ok(_)) => verified += 1,
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors.truncate(3);
        emit(
            "RESULT",
            &json!({"verified": verified, "errors": errors, "seconds": started.elapsed().as_secs_f64()}),
        );
        Ok(())
    })
}

/// Run the sender and the receivers; print the figures and the verdict.
pub fn drive(file: &Path, size: u64, digest: &str, n: usize) -> Result<bool> {
    let n_s = n.to_string();
    let mut sender = Role::spawn(&[
        "sender",
        "--file",
        file.to_str().unwrap_or(""),
        "--receivers",
        &n_s,
    ])?;
    let ready = sender.expect("READY")?;
    let url = ready["url"].as_str().unwrap_or_default().to_string();
    let rid = ready["ref"].as_str().unwrap_or_default().to_string();
    let mut recv = Role::spawn(&[
        "receivers",
        "--url",
        &url,
        "--ref",
        &rid,
        "--n",
        &n_s,
        "--blake3",
        digest,
    ])?;
    let r = recv.expect("RESULT")?;
    let s = sender.expect("RESULT")?;
    let secs = recv.started.elapsed().as_secs_f64();
    let (_, s_use) = sender.reap()?;
    let (_, r_use) = recv.reap()?;
    let verified = r["verified"].as_u64().unwrap_or(0) as usize;
    let sender_mib = s_use.maxrss_kib as f64 / 1024.0;
    let total = size as f64 * n as f64 / MIB as f64;
    println!(
        "fan-in: {n} receivers (tasks in one process) x {} MiB from one sender process: {verified}/{n} verified in {secs:.1} s ({:.0} MiB/s delivered); sender peak RSS {sender_mib:.1} MiB (CPU {:.1} s), receivers' process peak RSS {:.1} MiB",
        size / MIB,
        total / secs,
        s_use.cpu_s(),
        r_use.maxrss_kib as f64 / 1024.0
    );
    if let Some(errs) = r["errors"].as_array().filter(|e| !e.is_empty()) {
        println!("  receiver errors: {errs:?}");
    }
    if s["completed"] != true {
        println!("  the sender's transaction did not complete: {s}");
    }
    let pass = verified == n && s["completed"] == true && sender_mib <= SENDER_RSS_TARGET_MIB;
    println!(
        "  target: all verified, sender peak RSS <= {SENDER_RSS_TARGET_MIB} MiB: {}",
        if pass { "PASS" } else { "FAIL" }
    );
    if verified != n {
        bail!("only {verified} of {n} receivers verified");
    }
    Ok(pass)
}
