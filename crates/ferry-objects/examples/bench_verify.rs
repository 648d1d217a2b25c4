//! `cargo xtask bench verify [--quick]`: the CPU cost of verifying while receiving.
//!
//! One core hashes the same chunks of a pseudo-random buffer:
//! - `Hasher, in order`: one `blake3::Hasher` fed the chunks in order — what the file consumer
//!   did before the stream verifier, when chunks arrived in order (the baseline);
//! - `Hasher + pread back`: the same plus reading every chunk back from the page cache — what
//!   it did for chunks that arrived ahead of a gap (it re-read them when the gap filled);
//! - `StreamVerifier, in order` and `StreamVerifier, window of 8 reversed`: BLAKE3 subtrees of
//!   each chunk as it lands (`ferry_objects::verify`), in order and in the worst order a
//!   window of 8 allows;
//! - the same with 1,000,000-byte chunks (not a power of two: partial 1 KiB leaves at every
//!   chunk edge);
//! - `resume: re-hash a kept prefix`: reading a kept part back once (page cache warm) into a
//!   verifier, what a resume costs per GiB before the first new byte.
//!
//! Each figure is the best of 3 runs; ratios are against the baseline of the same run.

use ferry_objects::verify::StreamVerifier;
use std::os::unix::fs::FileExt;
use std::time::Instant;

const MIB: usize = 1 << 20;

fn data(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Chunk ranges in the worst order a window of `w` allows: each group of `w` reversed.
fn window_reversed(len: usize, chunk: usize, w: usize) -> Vec<(usize, usize)> {
    let all: Vec<(usize, usize)> = (0..len.div_ceil(chunk))
        .map(|i| (i * chunk, ((i + 1) * chunk).min(len)))
        .collect();
    all.chunks(w)
        .flat_map(|g| g.iter().rev().copied())
        .collect()
}

fn in_order(len: usize, chunk: usize) -> Vec<(usize, usize)> {
    window_reversed(len, chunk, 1)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let len = if quick { 128 * MIB } else { 512 * MIB };
    let runs = 3;
    let buf = data(len);
    let want = blake3::hash(&buf);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("part");
    std::fs::write(&path, &buf).expect("write");
    let file = std::fs::File::open(&path).expect("open");

    let stream = |order: &[(usize, usize)]| {
        let mut v = StreamVerifier::new(len as u64);
        for &(s, e) in order {
            v.update(s as u64, &buf[s..e]).expect("update");
        }
        assert_eq!(v.finalize().expect("complete"), want);
    };
    let mut rows: Vec<(&str, f64)> = Vec::new();
    let base = best_of(runs, || {
        let mut h = blake3::Hasher::new();
        for (s, e) in in_order(len, MIB) {
            h.update(&buf[s..e]);
        }
        assert_eq!(h.finalize(), want);
    });
    rows.push(("Hasher, in order (baseline)", base));
    let mut scratch = vec![0u8; MIB];
    rows.push((
        "Hasher + pread back (old, chunks ahead of a gap)",
        best_of(runs, || {
            let mut h = blake3::Hasher::new();
            for (s, e) in in_order(len, MIB) {
                file.read_exact_at(&mut scratch[..e - s], s as u64)
                    .expect("pread");
                h.update(&scratch[..e - s]);
            }
            assert_eq!(h.finalize(), want);
        }),
    ));
    let order = in_order(len, MIB);
    rows.push((
        "StreamVerifier, 1 MiB chunks in order",
        best_of(runs, || stream(&order)),
    ));
    let order = window_reversed(len, MIB, 8);
    rows.push((
        "StreamVerifier, 1 MiB chunks, window of 8 reversed",
        best_of(runs, || stream(&order)),
    ));
    let order = in_order(len, 1_000_000);
    rows.push((
        "StreamVerifier, 1,000,000 B chunks in order",
        best_of(runs, || stream(&order)),
    ));
    let order = window_reversed(len, 1_000_000, 8);
    rows.push((
        "StreamVerifier, 1,000,000 B chunks, window of 8 reversed",
        best_of(runs, || stream(&order)),
    ));
    rows.push((
        "resume: re-hash a kept prefix (pread 1 MiB + StreamVerifier)",
        best_of(runs, || {
            let mut v = StreamVerifier::new(len as u64);
            for (s, e) in in_order(len, MIB) {
                file.read_exact_at(&mut scratch[..e - s], s as u64)
                    .expect("pread");
                v.update(s as u64, &scratch[..e - s]).expect("update");
            }
            assert_eq!(v.finalize().expect("complete"), want);
        }),
    ));
    println!(
        "BLAKE3 while receiving, {} MiB on one core (best of {runs}; `cargo xtask bench verify`)",
        len / MIB
    );
    println!("| case | GiB/s | time vs baseline |");
    println!("|---|---:|---:|");
    for (name, secs) in rows {
        println!(
            "| {name} | {:.2} | {:.2}× |",
            len as f64 / (1u64 << 30) as f64 / secs,
            secs / base
        );
    }
}
