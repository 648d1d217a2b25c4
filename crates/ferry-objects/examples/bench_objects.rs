//! `cargo xtask bench objects [--write-docs] [--quick]`: producer throughput of file chunks and
//! tensor items (one core) against a plain `pread` loop / `memcpy` measured in the same run,
//! and the producer's peak heap while a 1 GiB file is pulled by 8 receivers with a window of 8
//! requests each (counted by a global allocator; OS peak RSS reported too).
//!
//! With `--write-docs` the table replaces the `objects` section of `docs/benchmarks.md`.

// The counting allocator below is the only unsafe code: it forwards to the system allocator.
#![allow(unsafe_code)]

use bytes::Bytes;
use ferry_core::{ChunkData, Downloadable, Produced, State};
use ferry_objects::tensors::Dtype;
use ferry_objects::{
    CacheOptions, ExpectedReceivers, FileObject, Tensor, TensorDict, TensorDictObject,
    DEFAULT_CHUNK_SIZE,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn note_alloc(size: usize) {
    let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's own arguments, so the
// `GlobalAlloc` contract (layout, pointer provenance) is exactly System's; the counters are
// plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl comment).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            note_alloc(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

fn gibs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / GIB / secs
}

/// Best of `runs` timings of `f` (seconds).
fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn make_file(path: &Path, size: u64) {
    let mut f = std::fs::File::create(path).expect("create bench file");
    let block: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&block[..n]).expect("write bench file");
        left -= n as u64;
    }
    f.sync_all().expect("sync bench file");
}

/// Pull every chunk of `obj` (one receiver) and drop it; returns bytes.
fn drain(obj: &dyn Downloadable) -> u64 {
    let mut state: Option<State> = None;
    let mut total = 0;
    while let Produced::Data { data, state: s } = obj.produce(state.as_ref(), "r").expect("produce")
    {
        total += data.byte_len();
        state = Some(s);
    }
    total
}

/// Plain pread loop into one reused buffer.
fn pread_loop(path: &Path, chunk: usize) -> u64 {
    let f = std::fs::File::open(path).expect("open");
    let size = f.metadata().expect("stat").len();
    let mut buf = vec![0u8; chunk];
    let mut off = 0;
    while off < size {
        let n = chunk.min((size - off) as usize);
        f.read_exact_at(&mut buf[..n], off).expect("pread");
        off += n as u64;
    }
    std::hint::black_box(&buf);
    size
}

/// pread loop into a fresh zeroed buffer per chunk (what a producer handing chunks off must do).
fn pread_fresh(path: &Path, chunk: usize) -> u64 {
    let f = std::fs::File::open(path).expect("open");
    let size = f.metadata().expect("stat").len();
    let mut off = 0;
    while off < size {
        let n = chunk.min((size - off) as usize);
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, off).expect("pread");
        std::hint::black_box(buf);
        off += n as u64;
    }
    size
}

/// 8 receivers, each with up to `window` replies alive (in flight or being sent), pulling
/// round-robin; returns the peak heap growth during the transfer.
fn peak_heap_many_receivers(obj: &dyn Downloadable, receivers: usize, window: usize) -> u64 {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let names: Vec<String> = (0..receivers).map(|i| format!("site-{i}")).collect();
    let mut states: Vec<Option<State>> = vec![None; receivers];
    let mut inflight: Vec<VecDeque<ChunkData>> = (0..receivers)
        .map(|_| VecDeque::with_capacity(window))
        .collect();
    let mut done = vec![false; receivers];
    while done.iter().any(|d| !d) {
        for r in 0..receivers {
            if done[r] {
                continue;
            }
            if inflight[r].len() == window {
                inflight[r].pop_front(); // the oldest reply reached the receiver
            }
            match obj.produce(states[r].as_ref(), &names[r]).expect("produce") {
                Produced::Data { data, state } => {
                    inflight[r].push_back(data);
                    states[r] = Some(state);
                }
                _ => {
                    done[r] = true;
                    inflight[r].clear();
                }
            }
        }
    }
    (PEAK.load(Ordering::Relaxed) - base) as u64
}

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn tensor_dict(count: usize, bytes_each: usize) -> TensorDict {
    let mut d = TensorDict::new();
    for i in 0..count {
        let data: Vec<u8> = (0..bytes_each).map(|j| ((i * 7 + j) % 253) as u8).collect();
        let t = Tensor::new(Dtype::F32, vec![bytes_each / 4], Bytes::from(data)).expect("tensor");
        d.insert(format!("layer.{i}.weight"), t).expect("insert");
    }
    d
}

fn workspace() -> PathBuf {
    std::env::var_os("FERRY_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

fn write_docs(table: &str) -> std::io::Result<()> {
    let path = workspace().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path)?;
    let (begin, end) = ("<!-- bench:objects:begin -->", "<!-- bench:objects:end -->");
    let (Some(b), Some(e)) = (doc.find(begin), doc.find(end)) else {
        return Err(std::io::Error::other(
            "objects markers not found in docs/benchmarks.md",
        ));
    };
    let new = format!("{}{begin}\n{table}{}", &doc[..b], &doc[e..]);
    std::fs::write(&path, new)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let docs = args.iter().any(|a| a == "--write-docs");
    let dir = tempfile::tempdir_in(workspace().join("target")).expect("temp dir");
    let runs = if quick { 1 } else { 3 };
    let chunk = DEFAULT_CHUNK_SIZE;

    // 1. file chunks vs a plain pread loop (file in the page cache after the first pass)
    let tput_size = if quick { 64 * MIB } else { 512 * MIB };
    let tput_path = dir.path().join("tput.bin");
    make_file(&tput_path, tput_size);
    let obj = FileObject::builder(&tput_path)
        .chunk_size(chunk)
        .open()
        .expect("open");
    drain(&obj);
    let t_pread = best_of(runs, || {
        std::hint::black_box(pread_loop(&tput_path, chunk as usize));
    });
    let t_fresh = best_of(runs, || {
        std::hint::black_box(pread_fresh(&tput_path, chunk as usize));
    });
    let t_file = best_of(runs, || {
        std::hint::black_box(drain(&obj));
    });
    drop(obj);
    let t_digest = best_of(1, || {
        let o = FileObject::builder(&tput_path)
            .digest(true)
            .open()
            .expect("open");
        std::hint::black_box(o.digest());
    });
    std::fs::remove_file(&tput_path).ok();

    // 2. tensor items vs memcpy of the same bytes
    let (n_tensors, each) = if quick { (16, 4 << 20) } else { (128, 4 << 20) };
    let dict = tensor_dict(n_tensors, each);
    let total_tensor = (n_tensors * each) as u64;
    let t_memcpy = best_of(runs, || {
        for (_, t) in dict.iter() {
            std::hint::black_box(t.data().to_vec());
        }
    });
    let t_items = best_of(runs, || {
        let o = TensorDictObject::from_tensors(
            dict.clone(),
            CacheOptions::default().with_receivers(ExpectedReceivers::Count(1)),
        )
        .expect("object");
        std::hint::black_box(drain(&o));
    });
    drop(dict);

    // 3. producer peak heap: 1 GiB (and 256 MiB) file to 8 receivers, window 8
    let (receivers, window) = (8usize, 8usize);
    let mut heap_rows = Vec::new();
    // Reset the kernel's peak-RSS mark so VmHWM covers this phase only (Linux >= 4.0).
    let rss_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let sizes: &[u64] = if quick {
        &[64 * MIB, 256 * MIB]
    } else {
        &[256 * MIB, 1024 * MIB]
    };
    for &size in sizes {
        let p = dir.path().join(format!("heap{size}.bin"));
        make_file(&p, size);
        let obj = FileObject::builder(&p)
            .chunk_size(chunk)
            .digest(true)
            .open()
            .expect("open");
        let peak = peak_heap_many_receivers(&obj, receivers, window);
        heap_rows.push((size, peak));
        drop(obj);
        std::fs::remove_file(&p).ok();
    }
    let target = chunk * window as u64 * receivers as u64 + 16 * MIB;
    let hwm = vm_hwm_kib();

    let mut table = String::new();
    table.push_str(&format!(
        "`cargo xtask bench objects` — release build, one core, files in the page cache, best of {runs}.\n\n"
    ));
    table.push_str(
        "| measurement | ferry-objects | baseline (same run) | ratio |\n|---|---|---|---|\n",
    );
    table.push_str(&format!(
        "| `FileObject::produce`, {} MiB chunks, {} MiB file | {:.2} GiB/s | `pread` loop into one reused buffer: {:.2} GiB/s | {:.2} |\n",
        chunk / MIB,
        tput_size / MIB,
        gibs(tput_size, t_file),
        gibs(tput_size, t_pread),
        t_pread / t_file
    ));
    table.push_str(&format!(
        "| same | | `pread` into a fresh zeroed buffer per chunk: {:.2} GiB/s | {:.2} |\n",
        gibs(tput_size, t_fresh),
        t_fresh / t_file
    ));
    table.push_str(&format!(
        "| tensor items (`TensorDictObject`), {n_tensors} × {} MiB F32 | {:.2} GiB/s | `memcpy` of the same bytes: {:.2} GiB/s | {:.2} |\n",
        each >> 20,
        gibs(total_tensor, t_items),
        gibs(total_tensor, t_memcpy),
        t_memcpy / t_items
    ));
    table.push_str(&format!(
        "| BLAKE3 digest at `FileObject` construction, {} MiB | {:.2} GiB/s | — | — |\n",
        tput_size / MIB,
        gibs(tput_size, t_digest)
    ));
    for (size, peak) in &heap_rows {
        table.push_str(&format!(
            "| producer peak heap, {} MiB file → {receivers} receivers × window {window} | {:.1} MiB | target ≤ chunk × window × receivers + 16 MiB = {} MiB | {} |\n",
            size / MIB,
            *peak as f64 / MIB as f64,
            target / MIB,
            if *peak <= target { "within" } else { "OVER" }
        ));
    }
    if let Some(kib) = hwm {
        table.push_str(&format!(
            "| process peak RSS (VmHWM) {} | {:.0} MiB | — | — |\n",
            if rss_reset {
                "during the 8-receiver file runs"
            } else {
                "whole run, incl. the tensor dict"
            },
            kib as f64 / 1024.0
        ));
    }
    table.push_str(
        "\nA chunk is handed off to the network, so every produce needs a fresh buffer; the gap to \
         the reused-buffer `pread` loop is that buffer's zeroing and page faults (safe Rust cannot \
         read into uninitialised memory), and matches the fresh-buffer baseline. Tensor items \
         cost one copy (the safetensors blob), like `memcpy`. Peak heap is the replies alive \
         (chunk × window × receivers) and does not grow with the file.\n",
    );
    table.push('\n');
    print!("{table}");
    if docs {
        write_docs(&table).expect("writing docs/benchmarks.md");
        eprintln!("wrote docs/benchmarks.md (objects section)");
    }
}
