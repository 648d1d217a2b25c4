//! What the OS says about this process: peak resident memory, and an address to advertise.

use std::net::{IpAddr, UdpSocket};

/// Peak resident set size of this process in bytes (`VmHWM` in `/proc/self/status`), when the
/// OS exposes it (Linux).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut it = line["VmHWM:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => Some(n * 1024),
        _ => None,
    }
}

/// An address of this host that other machines can probably reach: the local address of the
/// default route (found by "connecting" a UDP socket, which sends nothing), else the host name,
/// else loopback.
pub fn advertised_host() -> String {
    let routed = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback());
    if let Some(ip) = routed {
        return host_string(ip);
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// An IP as it goes before `:PORT` (IPv6 in brackets).
pub fn host_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm() {
        let s = "Name:\tferry\nVmPeak:\t  10 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(s), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM: lots kB\n"), None);
    }

    #[test]
    fn hosts() {
        assert_eq!(host_string("10.0.0.1".parse().unwrap()), "10.0.0.1");
        assert_eq!(host_string("::1".parse().unwrap()), "[::1]");
        assert!(!advertised_host().is_empty());
    }
}
