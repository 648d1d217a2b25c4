//! Faulting in a large frame's buffer in one system call as it grows, instead of one page
//! fault per 4 KiB as the socket's bytes are copied into it.
//!
//! A receiver that keeps what it receives (a tensor dict whose arrays are views of the
//! frames) writes every byte into memory the process never touched before. Profiles of
//! `cargo xtask bench python` had the kernel's page-fault path (the fault entry, a lock, a
//! memory-cgroup charge per page) at 10–15 % of a receiver's samples besides the zeroing of
//! the pages. `MADV_POPULATE_WRITE` (Linux 5.14) faults a whole range in with one call: the
//! pages are still zeroed, the per-page trip through the fault handler is gone. Elsewhere,
//! or on an older kernel, this does nothing and the pages fault in as they are written.

/// Make the whole pages of `buf`'s spare capacity resident and writable, without changing
/// any byte. Best effort: errors are ignored (the pages then fault in when written).
pub(crate) fn spare_capacity(buf: &mut Vec<u8>) {
    let spare = buf.spare_capacity_mut();
    #[cfg(any(target_os = "linux", target_os = "android"))]
    linux::populate_write(spare.as_mut_ptr() as usize, spare.len());
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = spare;
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux {
    use rustix::mm::{madvise, Advice};

    /// Populate the whole pages inside `[start, start + len)`.
    pub(super) fn populate_write(start: usize, len: usize) {
        let page = rustix::param::page_size();
        let Some(end) = start.checked_add(len) else {
            return;
        };
        let first = start.div_ceil(page) * page;
        let last = end / page * page;
        if last <= first {
            return;
        }
        // SAFETY: `[first, last)` lies inside the spare capacity of a `Vec` the caller holds
        // by `&mut`: memory this process allocated, mapped, and that nothing else uses.
        // MADV_POPULATE_WRITE only faults the pages in (as a write would, without writing):
        // no byte changes, no mapping is added or removed, so no reference to the memory
        // (there is none but the caller's) is invalidated.
        #[allow(unsafe_code)]
        let r = unsafe { madvise(first as *mut _, last - first, Advice::LinuxPopulateWrite) };
        // EINVAL before Linux 5.14, ENOMEM/EFAULT under memory pressure: the write faults
        // the pages in instead (and fails there as it would have anyway).
        let _ = r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populating_keeps_every_byte_and_tolerates_any_capacity() {
        for (len, cap) in [
            (0, 0),
            (3, 5),
            (0, 1 << 20),
            (100_000, 3 << 20),
            (4096, 8192),
        ] {
            let mut v: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            v.reserve_exact(cap - len);
            let before = v.clone();
            let ptr = v.as_ptr();
            spare_capacity(&mut v);
            assert_eq!(v, before, "len {len}, capacity {cap}");
            assert_eq!(v.as_ptr(), ptr, "the buffer did not move");
            v.resize(v.capacity(), 7);
            assert!(v[len..].iter().all(|&b| b == 7));
        }
    }
}
