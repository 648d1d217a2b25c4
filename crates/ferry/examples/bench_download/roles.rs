//! The child roles this binary plays: ferry sender and receiver, plain-TCP sender and receiver.

use crate::args::*;
use crate::child::*;
use crate::common::*;
use crate::os;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use ferry::core::{ChunkData, ConsumeError, Consumer, RefId, State};
use ferry::objects::tensors::Dtype;
use ferry::prelude::{
    download_file, download_object, download_tensors, Cell, DownloadOptions, DownloadService,
    FileOptions, ObjectDownloader, ServiceOptions, Tensor, TensorDict, TxConfig,
};

/// The runtime of a Rust role, as `ferry` runs them: a receiver writing a file on a
/// current-thread runtime (as `ferry get`), every other role on a multi-thread one (as
/// `ferry serve`, and as the API's examples). `FERRY_BENCH_RUNTIME` (`current_thread` or
/// `multi_thread`) sets every role's, and `FERRY_BENCH_RECEIVER_RUNTIME` then the receivers'
/// (see the crate docs).
fn runtime(receiver: bool, like_ferry_get: bool) -> Result<tokio::runtime::Runtime> {
    let var = |name: &str| std::env::var(name).ok();
    let choice = receiver
        .then(|| var("FERRY_BENCH_RECEIVER_RUNTIME"))
        .flatten()
        .or_else(|| var("FERRY_BENCH_RUNTIME"));
    let current = match choice.as_deref() {
        None => like_ferry_get,
        Some("current_thread") => true,
        Some("multi_thread") => false,
        Some(other) => bail!("unknown runtime {other:?}: use current_thread or multi_thread"),
    };
    let mut builder = if current {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    Ok(builder.enable_all().build()?)
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
            ChunkData::ItemParts(items) => {
                for b in items.iter().flatten() {
                    self.hasher.update(b);
                    self.bytes += b.len() as u64;
                }
            }
            ChunkData::File(_) => {
                return Err(ConsumeError::BadChunk(
                    "a received chunk is never a sender's file region".into(),
                ))
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
    let rt = runtime(false, false)?;
    rt.block_on(async {
        watch_stdin_eof();
        let tensors = match a.kind.as_str() {
            "tensors" => Some(tensor_dict(&a.file, a.len)?),
            _ => None,
        };
        // BLAKE3 of the dict's bytes in name order (= insertion order), what every memory
        // receiver reports: lets a driver other than this binary verify them.
        let dict_blake3 = tensors.as_ref().map(|d| {
            let mut h = blake3::Hasher::new();
            for (_, t) in d.iter() {
                h.update(t.data());
            }
            h.finalize().to_hex().to_string()
        });
        // The pin a ticket of the dict carries (tensor data size, tensor-dict digest): lets a
        // driver write a ticket for this sender.
        let pin = tensors.as_ref().map(|d| {
            let p = ferry::objects::tensors::tensor_dict_pin(d);
            json!({"size": p.size, "b3": p.hex()})
        });
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
            "file" if a.read_chunks => {
                let obj = ferry::objects::FileObject::builder(&a.file)
                    .chunk_size(chunk)
                    .digest(true)
                    .file_chunks(false)
                    .open()?;
                refs.push(tx.add_object(std::sync::Arc::new(obj))?)
            }
            "file" => refs.push(tx.add_file(&a.file, chunk)?),
            "small" => {
                for _ in 0..a.count {
                    refs.push(tx.add_file(&a.file, chunk)?);
                }
            }
            "tensors" => refs.push(tx.add_tensors(tensors.expect("built above"))?),
            k => bail!("unknown sender kind {k:?}"),
        }
        // What the sender spent before it could serve: for a file, the BLAKE3 pass over it
        // (the ticket carries the digest, so it cannot wait for the first request).
        let prep_cpu = cpu_now() - cpu0;
        let refs: Vec<&str> = refs.iter().map(RefId::as_str).collect();
        emit(
            "READY",
            &json!({"url": url, "fqcn": SENDER_FQCN, "refs": refs, "blake3": dict_blake3, "pin": pin}),
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
        let mut r = json!({"status": status, "cpu_s": cpu, "prep_cpu_s": prep_cpu,
            "maxrss_kib": os::self_usage().maxrss_kib});
        if !ok {
            r["error"] = json!(format!("transaction outcome: {status}"));
        }
        emit("RESULT", &r);
        Ok(())
    })
}

pub fn ferry_receiver(a: &ReceiverArgs) -> Result<()> {
    let rt = runtime(true, a.mode == "file")?;
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
        // A file receiver writes its chunks on the download task, as `ferry get` does (see
        // `DownloadOptions::consume_on_task`); `FERRY_BENCH_CONSUME_ON_TASK=0` gives it a
        // writer thread instead, to compare both with one binary.
        opts.consume_on_task = a.mode == "file"
            && std::env::var("FERRY_BENCH_CONSUME_ON_TASK").map_or(true, |v| v != "0");
        let cpu0 = cpu_now();
        let mut res = json!({});
        let bytes;
        let mut verify: Option<PathBuf> = None;
        match a.mode.as_str() {
            "hash" => {
                let c = download_object(&service, &source, &first, HashConsumer::default(), opts)
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
            "memory" | "memory-pinned" => {
                let dict = if a.mode == "memory" {
                    download_tensors(&service, &source, &first, opts).await?
                } else {
                    // As ferry-py's download_tensors: every item hashed as it arrives and the
                    // dict held to the ticket's pin (BLAKE3 tensor-dict digest).
                    let ticket: ferry::ticket::Ticket = go["ticket"]
                        .as_str()
                        .ok_or_else(|| {
                            anyhow!("GO without a ticket (needed by --mode memory-pinned)")
                        })?
                        .parse()?;
                    let consumer = ferry::objects::TensorDictConsumer::new().pin(ticket.pin());
                    let mut c = download_object(&service, &source, &first, consumer, opts).await?;
                    c.take()
                        .ok_or_else(|| anyhow!("download completed without tensors"))?
                };
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
    // What the receivers must end up with, hashed before the clock starts (the Python bench
    // checks the plain-TCP receivers against it).
    let digest = blake3_file(&a.file, Some(a.len))?;
    let cpu0 = cpu_now();
    emit(
        "READY",
        &json!({"url": format!("tcp://127.0.0.1:{port}"), "fqcn": SENDER_FQCN, "refs": [], "blake3": digest}),
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
            // For experiments on the receive path's cache use: how much is read before it is
            // written (default 1 MiB, ferry's chunk), and whether each written piece is hashed
            // right after its write (as ferry's file consumer does).
            let read = match std::env::var("FERRY_BENCH_TCP_READ_KIB") {
                Ok(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|k| (4..=BLAST_BUF >> 10).contains(k))
                    .map(|k| k << 10)
                    .ok_or_else(|| {
                        anyhow!("FERRY_BENCH_TCP_READ_KIB={v:?}: give KiB from 4 to 1024")
                    })?,
                Err(_) => BLAST_BUF,
            };
            let mut hasher = (std::env::var("FERRY_BENCH_TCP_FILE_HASH").as_deref() == Ok("1"))
                .then(blake3::Hasher::new);
            let mut buf = vec![0u8; read];
            loop {
                let k = fill(&mut conn, &mut buf)?;
                if k == 0 {
                    break;
                }
                // 16 KiB writes: one write of 1 MiB costs several times more in the page
                // cache (large fresh folios; see ferry-objects' small_writes).
                for piece in buf[..k].chunks(16 << 10) {
                    f.write_all(piece)?;
                    if let Some(h) = hasher.as_mut() {
                        h.update(piece);
                    }
                }
                n += k as u64;
            }
            if let Some(h) = hasher {
                res["streamed_blake3"] = json!(h.finalize().to_hex().to_string());
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
