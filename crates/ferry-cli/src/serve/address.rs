//! Where `ferry serve` listens, and the address its tickets carry.

use crate::exit::{CmdResult, Failure};
use crate::sysinfo;

/// The URL to listen on: `tcp://` becomes `stcp://` when TLS files are given; `stcp://`
/// without them is refused.
pub fn listen_url(listen: &str, tls: bool) -> CmdResult<String> {
    if let Some(rest) = listen.strip_prefix("tcp://") {
        Ok(if tls {
            format!("stcp://{rest}")
        } else {
            listen.to_string()
        })
    } else if listen.starts_with("stcp://") {
        if tls {
            Ok(listen.to_string())
        } else {
            Err(Failure::usage(format!(
                "--listen {listen} needs --tls-cert, --tls-key and --tls-ca"
            )))
        }
    } else {
        Err(Failure::usage(format!(
            "--listen {listen:?}: expected tcp://HOST:PORT (e.g. tcp://0.0.0.0:7051)"
        )))
    }
}

/// `HOST:PORT` for tickets, from the bound URL: a wildcard host is replaced by `advertise`
/// or this host's routable address.
pub fn ticket_addr(bound: &str, advertise: Option<&str>) -> String {
    let addr = bound.split_once("://").map_or(bound, |(_, a)| a);
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
    let host = match advertise {
        Some(h) => h.to_string(),
        None if matches!(host, "0.0.0.0" | "[::]" | "::" | "") => sysinfo::advertised_host(),
        None => host.to_string(),
    };
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_urls() {
        assert_eq!(
            listen_url("tcp://0.0.0.0:1", false).unwrap(),
            "tcp://0.0.0.0:1"
        );
        assert_eq!(
            listen_url("tcp://0.0.0.0:1", true).unwrap(),
            "stcp://0.0.0.0:1"
        );
        assert_eq!(listen_url("stcp://h:1", true).unwrap(), "stcp://h:1");
        assert_eq!(listen_url("stcp://h:1", false).unwrap_err().code(), 2);
        assert_eq!(listen_url("http://h:1", false).unwrap_err().code(), 2);
    }

    #[test]
    fn ticket_addresses() {
        assert_eq!(ticket_addr("tcp://127.0.0.1:5000", None), "127.0.0.1:5000");
        assert_eq!(
            ticket_addr("tcp://0.0.0.0:5000", Some("gpu-7")),
            "gpu-7:5000"
        );
        assert!(ticket_addr("tcp://0.0.0.0:5000", None).ends_with(":5000"));
        assert!(!ticket_addr("tcp://0.0.0.0:5000", None).starts_with("0.0.0.0"));
    }
}
