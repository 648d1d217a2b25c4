//! Reads that never wait for the disk (`preadv2` with `RWF_NOWAIT`): what serves chunks from
//! the page cache on an async thread, leaving the rest to a thread that may block. The file
//! object's producer and the `ferry` relay's spill both read this way.

use std::fs::File;

/// What a non-blocking read came to.
#[derive(Debug)]
pub enum NoWait {
    /// Read completely, or failed with a real error.
    Done(std::io::Result<()>),
    /// Some of the range is not in the page cache.
    WouldBlock,
    /// This kernel or file system does not do `RWF_NOWAIT`.
    Unsupported,
}

/// `read_exact_at` that never waits for the disk: fills `buf` from `offset` only with what
/// the page cache holds.
#[cfg(target_os = "linux")]
pub fn read_exact_at_nowait(file: &File, buf: &mut [u8], offset: u64) -> NoWait {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    let mut done = 0usize;
    while done < buf.len() {
        let mut slices = [std::io::IoSliceMut::new(&mut buf[done..])];
        match preadv2(
            file,
            &mut slices,
            offset + done as u64,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => return NoWait::Done(Err(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return NoWait::WouldBlock,
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => return NoWait::Unsupported,
            Err(e) => return NoWait::Done(Err(e.into())),
        }
    }
    NoWait::Done(Ok(()))
}

/// Without `RWF_NOWAIT` every read may block.
#[cfg(not(target_os = "linux"))]
pub fn read_exact_at_nowait(_file: &File, _buf: &mut [u8], _offset: u64) -> NoWait {
    NoWait::Unsupported
}
