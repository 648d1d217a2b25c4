//! Writing received bytes to the page cache in small writes.
//!
//! One `write` of 1 MiB costs far more than its bytes: the kernel fills the page cache with
//! folios as large as the write, and copying into freshly allocated large folios
//! (`copy_folio_from_iter_atomic`) was 71% of each receiver's CPU in the profile of four
//! `ferry get` to files (the plain-TCP receiver writing 1 MiB buffers: 78%; curl, writing
//! small buffers: a few percent). Four parallel `dd` writers of 1 GiB each on the benchmark
//! machine spent 0.3 s of system time each with 16 KiB writes, 1.2–1.5 s with 32 KiB and
//! 1.0–1.4 s with 64 KiB. Every consumer that writes received bytes to a file goes through
//! here.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// The size of one write.
pub(crate) const WRITE_SLICE: usize = 16 << 10;

/// `write_all_at` in writes of at most [`WRITE_SLICE`] bytes, aligned to multiples of it in
/// the file.
pub(crate) fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < data.len() {
        let at = offset + done as u64;
        let room = WRITE_SLICE - (at % WRITE_SLICE as u64) as usize;
        let n = room.min(data.len() - done);
        file.write_all_at(&data[done..done + n], at)?;
        done += n;
    }
    Ok(())
}

/// `write_all` in writes of at most [`WRITE_SLICE`] bytes.
pub(crate) fn write_all(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    for piece in data.chunks(WRITE_SLICE) {
        w.write_all(piece)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn unaligned_writes_land_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        write_all_at(&f, &data[5_000..], 5_000).unwrap();
        write_all_at(&f, &data[..5_000], 0).unwrap();
        let mut back = Vec::new();
        File::open(&p).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);

        let mut v = Vec::new();
        write_all(&mut v, &data).unwrap();
        assert_eq!(v, data);
    }
}
