//! The `HOST:PORT` a ticket carries: [`advertised_addr`] picks it from the URL a sender's cell
//! is bound to, replacing a wildcard host with one other machines can reach.

use std::net::{IpAddr, UdpSocket};

/// `HOST:PORT` for tickets, from the URL a sender's cell is bound to (`tcp://0.0.0.0:7051`): a
/// wildcard host is replaced by `advertise` when given, else by [`advertised_host`].
pub fn advertised_addr(bound: &str, advertise: Option<&str>) -> String {
    let addr = bound.split_once("://").map_or(bound, |(_, a)| a);
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
    let host = match advertise {
        Some(h) => h.to_string(),
        None if matches!(host, "0.0.0.0" | "[::]" | "::" | "") => advertised_host(),
        None => host.to_string(),
    };
    format!("{host}:{port}")
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
fn host_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_addresses() {
        assert_eq!(
            advertised_addr("tcp://127.0.0.1:5000", None),
            "127.0.0.1:5000"
        );
        assert_eq!(
            advertised_addr("tcp://0.0.0.0:5000", Some("gpu-7")),
            "gpu-7:5000"
        );
        assert!(advertised_addr("tcp://0.0.0.0:5000", None).ends_with(":5000"));
        assert!(!advertised_addr("tcp://0.0.0.0:5000", None).starts_with("0.0.0.0"));
    }

    #[test]
    fn hosts() {
        assert_eq!(host_string("10.0.0.1".parse().unwrap()), "10.0.0.1");
        assert_eq!(host_string("::1".parse().unwrap()), "[::1]");
        assert!(!advertised_host().is_empty());
    }
}
