//! Sizes and names every part of the benchmark shares, and their formatting.

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: f64 = (1u64 << 30) as f64;
/// Read/write unit of the plain-TCP blast.
pub(crate) const BLAST_BUF: usize = 1 << 20;
/// Size of one tensor of the tensor dict (and of one NVFlare numpy array).
pub(crate) const TENSOR_BYTES: u64 = 4 * MIB;
/// Size of the object of the latency test.
pub(crate) const SMALL_BYTES: u64 = 4096;
/// FQCN of every sender cell (NVFlare's server root cell).
pub(crate) const SENDER_FQCN: &str = "server";

pub(crate) fn human_size(b: u64) -> String {
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

pub(crate) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

pub(crate) fn median(v: &[f64]) -> Option<f64> {
    percentile(v, 0.5)
}

pub(crate) fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    Some(s[i])
}
