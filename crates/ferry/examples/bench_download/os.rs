//! OS measurements: the only unsafe code (libc calls on plain-old-data out-parameters).
#![allow(unsafe_code)]

use std::io;

/// CPU time and peak RSS of one process, as the kernel accounts them.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Usage {
    pub user_s: f64,
    pub sys_s: f64,
    /// Peak resident set size in KiB (`ru_maxrss`).
    pub maxrss_kib: u64,
}

impl Usage {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

fn from_rusage(ru: &libc::rusage) -> Usage {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        user_s: tv(ru.ru_utime),
        sys_s: tv(ru.ru_stime),
        maxrss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    }
}

/// getrusage(RUSAGE_SELF): this process, all threads.
pub fn self_usage() -> Usage {
    // SAFETY: `rusage` is a C struct of integers, for which all-zero is a valid value;
    // getrusage only writes into the struct we own, and RUSAGE_SELF is a valid `who`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the pointer is valid and exclusive for the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Usage::default();
    }
    from_rusage(&ru)
}

/// Reap child `pid` if it has exited (or wait for it with `block`): its exit status and its
/// resource usage. `Ok(None)` when it is still running (only without `block`).
pub fn wait4(pid: u32, block: bool) -> io::Result<Option<(i32, Usage)>> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: as in `self_usage`, all-zero is a valid `rusage`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: both out-pointers are valid and exclusive for the call; `pid` is one of
        // our own children that nobody else reaps (std's `Child::wait` is never called).
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if r == pid {
            return Ok(Some((status, from_rusage(&ru))));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// VmHWM of this process in KiB (its own RSS high-water mark), from /proc.
pub fn self_vmhwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// getrusage(RUSAGE_CHILDREN): the children this process has reaped.
pub fn children_usage() -> Usage {
    // SAFETY: as in `self_usage`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is valid and exclusive for the call; RUSAGE_CHILDREN is a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    if rc != 0 {
        return Usage::default();
    }
    from_rusage(&ru)
}

/// Clock ticks per second (the unit of `/proc/PID/stat`'s CPU times).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time the whole machine spent busy so far, in seconds summed over all CPUs: user, nice,
/// system, irq and softirq from `/proc/stat` (guest time is inside user; idle, iowait and steal
/// are not work of this machine). Unlike per-process accounting it does not depend on whose
/// context the kernel did work in: loopback delivery, writeback and `ksoftirqd` all count.
/// `None` where `/proc/stat` cannot be read.
pub fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq ...
    let busy = [0usize, 1, 2, 5, 6]
        .iter()
        .map(|&i| ticks.get(i).copied())
        .sum::<Option<u64>>()?;
    Some(busy as f64 / clock_ticks())
}

/// Send `sig` to `pid` (errors ignored: the process may be gone already).
pub fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill takes plain integers; `pid` is our own child.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}
