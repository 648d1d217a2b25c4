//! The demo's payloads: a pseudo-random file (compression or sparse files cannot flatter the
//! figures) and a tensor dict of float32 weights.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use bytes::Bytes;
use ferry::objects::tensors::Dtype;
use ferry::objects::{Tensor, TensorDict};

/// xorshift64*: fast, deterministic, good enough to defeat compression; not cryptographic.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// A generator from `seed` (0 is mapped to a non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fill `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// Write `size` pseudo-random bytes to `path`, 1 MiB at a time.
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Prng::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Bytes per tensor of the demo dict (1 Mi float32 = a 1024×1024 layer).
const TENSOR_BYTES: u64 = 4 << 20;

/// A dict of about `bytes` bytes of float32 weights in [-1, 1), named `layers.N.weight`,
/// each at most 4 MiB; at least one float.
pub fn random_tensors(bytes: u64, seed: u64) -> Result<TensorDict, String> {
    let mut rng = Prng::new(seed);
    let mut dict = TensorDict::new();
    let mut left = (bytes / 4).max(1) * 4;
    let mut i = 0;
    while left > 0 {
        let n = left.min(TENSOR_BYTES);
        let floats = (n / 4) as usize;
        let mut data = Vec::with_capacity(floats * 4);
        for _ in 0..floats {
            // 24 random mantissa bits -> [0, 1) -> [-1, 1)
            let unit = (rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32;
            data.extend_from_slice(&(unit * 2.0 - 1.0).to_le_bytes());
        }
        let shape = if floats % 1024 == 0 {
            vec![floats / 1024, 1024]
        } else {
            vec![floats]
        };
        let t = Tensor::new(Dtype::F32, shape, Bytes::from(data)).map_err(|e| e.to_string())?;
        dict.insert(format!("layers.{i}.weight"), t)
            .map_err(|e| e.to_string())?;
        left -= n;
        i += 1;
    }
    Ok(dict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_is_random_and_sized() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_random_file(&p, (1 << 20) + 13, 7).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), (1 << 20) + 13);
        let zeros = data.iter().filter(|b| **b == 0).count();
        assert!(zeros < data.len() / 100, "{zeros} zero bytes: not random");
        // deterministic per seed
        let p2 = d.path().join("g");
        write_random_file(&p2, 100, 7).unwrap();
        assert_eq!(std::fs::read(&p2).unwrap()[..], data[..100]);
    }

    #[test]
    fn tensors_add_up() {
        let dict = random_tensors(9 << 20, 1).unwrap();
        assert_eq!(dict.total_bytes(), 9 << 20);
        assert_eq!(dict.len(), 3);
        assert_eq!(dict.get("layers.0.weight").unwrap().shape(), &[1024, 1024]);
        let tiny = random_tensors(0, 1).unwrap();
        assert_eq!(tiny.total_bytes(), 4);
    }
}
