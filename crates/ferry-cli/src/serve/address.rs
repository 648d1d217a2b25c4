//! Where `ferry serve` listens (the address its tickets carry is
//! [`ferry::ticket::advertised_addr`], shared with the Python bindings).

use crate::exit::{CmdResult, Failure};

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
}
