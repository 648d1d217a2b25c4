//! Building the cell a command runs on: its name, and mutual TLS from `--tls-*` files.

use std::path::Path;

use ferry::cellnet::{Cell, CellnetError, Forwarding, TlsConfig, TlsFile};

use crate::args::TlsArgs;
use crate::exit::{CmdResult, Failure};

/// What to tell the user to do about TLS files, appended to every TLS error.
const TLS_HINT: &str = "pass PEM files: --tls-cert (this cell's certificate), --tls-key (its private key), --tls-ca (the root CA that signed both sides)";

/// Load the TLS configuration, if `--tls-*` was given. Missing, unreadable or non-PEM files
/// are usage errors.
pub fn tls_config(tls: &TlsArgs) -> CmdResult<Option<TlsConfig>> {
    let (Some(cert), Some(key), Some(ca)) = (&tls.tls_cert, &tls.tls_key, &tls.tls_ca) else {
        return Ok(None);
    };
    for (what, path) in [("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)] {
        if !path.is_file() {
            return Err(Failure::usage(format!(
                "{what} {}: no such file; {TLS_HINT}",
                path.display()
            )));
        }
    }
    TlsConfig::from_pem_files(ca, cert, key)
        .map(Some)
        .map_err(|e| match e {
            CellnetError::Certificate {
                file,
                path,
                problem,
            } => Failure::usage(format!("{} {path}: {problem}", tls_option(file))),
            other => Failure::usage(format!("TLS files unusable ({other}); {TLS_HINT}")),
        })
}

/// The command-line option a TLS file comes from.
fn tls_option(file: TlsFile) -> &'static str {
    match file {
        TlsFile::Ca => "--tls-ca",
        TlsFile::Cert => "--tls-cert",
        TlsFile::Key => "--tls-key",
    }
}

/// The common name of the first certificate in a PEM file (the FQCN root a TLS peer accepts).
pub fn cert_common_name(path: &Path) -> CmdResult<String> {
    let pem = std::fs::read(path)
        .map_err(|e| Failure::usage(format!("--tls-cert {}: {e}; {TLS_HINT}", path.display())))?;
    let cert = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| {
            Failure::usage(format!(
                "--tls-cert {}: no PEM certificate in it; {TLS_HINT}",
                path.display()
            ))
        })?;
    ferry::cellnet::common_name(&cert).ok_or_else(|| {
        Failure::usage(format!(
            "--tls-cert {}: the certificate has no common name; pass --name explicitly",
            path.display()
        ))
    })
}

/// Check an FQCN given on the command line.
pub fn check_name(flag: &str, name: &str) -> CmdResult {
    ferry::core::validate_fqcn(name).map_err(|e| {
        Failure::usage(format!(
            "{flag} {name:?}: {e}; a cell name is dot-separated segments of letters, digits, _ ~ -"
        ))
    })
}

/// Check that a sender's `--name` fits in the tickets it prints (see
/// [`ferry::ticket::check_sender_name`]).
pub fn check_sender_name(name: &str) -> CmdResult {
    ferry::ticket::check_sender_name(name).map_err(|e| {
        Failure::usage(format!(
            "--name is {e}: the receivers could not read this sender's tickets; choose a shorter cell name"
        ))
    })
}

/// Build a cell named `name`, with TLS when configured. `ferry serve` and `ferry get` are
/// endpoints: their cells never relay messages between other cells.
pub fn build_cell(name: &str, tls: Option<TlsConfig>) -> CmdResult<Cell> {
    check_name("--name", name)?;
    if let Some(cn) = tls.as_ref().and_then(TlsConfig::common_name) {
        let root = name.split('.').next().unwrap_or(name);
        if cn != root {
            return Err(own_identity(&cn, name));
        }
    }
    let builder = Cell::builder(name)
        .map_err(|e| Failure::usage(format!("--name {name:?}: {e}")))?
        .forwarding(Forwarding::Off);
    Ok(match tls {
        Some(t) => builder.tls(t).build(),
        None => builder.build(),
    })
}

/// `--tls-cert` is for another cell than `--name` (exit 2, naming both).
pub fn own_identity(cn: &str, name: &str) -> Failure {
    let root = name.split('.').next().unwrap_or(name);
    Failure::usage(format!(
        "--tls-cert is a certificate for {cn:?} but --name is {name:?}: peers accept a cell only under the name its certificate CN gives as the first segment; use the certificate issued for {root:?} (`ferry certs issue {root}`) or --name {cn}"
    ))
}

/// Check that the cell `peer` we reached at `url` is, or routes for, the sender a ticket names
/// (`source` itself, or one of its FQCN ancestors, as NVFlare's `server` for `server.j1`).
/// Under TLS `peer` has been proven by the listener's certificate. Exit 2, naming both.
pub fn check_sender(url: &str, peer: &str, source: &str, tls: bool) -> CmdResult {
    let routes_for = source.len() > peer.len()
        && source.starts_with(peer)
        && source.as_bytes()[peer.len()] == b'.';
    if peer == source || routes_for {
        return Ok(());
    }
    let proven = if tls {
        let root = peer.split('.').next().unwrap_or(peer);
        format!(" (its TLS certificate is for {root:?})")
    } else {
        String::new()
    };
    Err(Failure::usage(format!(
        "the listener at {url} is the cell {peer:?}{proven}, but the ticket names the sender {source:?}; this ticket does not belong to that address, or another program listens there: ask the sender for a fresh ticket"
    )))
}

/// Explain a failed `connect` to a sender: TLS and identity trouble is an input error (exit
/// 2), anything else means the sender is not there or refused us (exit 1).
pub fn connect_failure(url: &str, e: &CellnetError) -> Failure {
    match e {
        CellnetError::PeerIdentity { certificate, claimed } => Failure::usage(format!(
            "the listener at {url} presented a certificate for {certificate:?} but calls itself {claimed:?}; it cannot prove to be the sender: check the address in the ticket, and that the sender runs with its own certificate"
        )),
        CellnetError::OwnIdentity { certificate, fqcn, .. } => own_identity(certificate, fqcn),
        CellnetError::Refused(why) => {
            let hint = if why.contains("authenticated as") {
                "the CN of --tls-cert must be the first segment of --name"
            } else {
                "another receiver is connected under this name: pass another --name, or stop the other one first"
            };
            Failure::usage(format!(
                "the sender at {url} refused this receiver ({why}); {hint}"
            ))
        }
        // The sender's TLS alert after the handshake: it does not trust our certificate.
        CellnetError::Tls(why) if why.contains("refused our TLS certificate") => {
            Failure::usage(format!(
                "the sender at {url} refused our TLS certificate ({why}); --tls-cert must be signed by the CA the sender trusts, with a CN equal to the first segment of --name"
            ))
        }
        CellnetError::Tls(why) => Failure::usage(format!(
            "TLS with the sender at {url} failed ({why}); check that --tls-ca is the CA that signed the sender's certificate and that --tls-cert/--tls-key belong together"
        )),
        CellnetError::Busy(why) => Failure::transfer(format!(
            "sender busy: the sender at {url} refused the connection ({}); try again later",
            why.strip_prefix("busy: ").unwrap_or(why)
        )),
        CellnetError::Handshake(why) | CellnetError::ConnectionClosed(why)
            if url.starts_with("stcp://") =>
        {
            Failure::transfer(format!(
                "the sender at {url} closed the connection during the handshake ({why}); with TLS, the CN of --tls-cert must be the first segment of --name and be signed by the sender's CA"
            ))
        }
        CellnetError::Handshake(why) | CellnetError::ConnectionClosed(why) => Failure::transfer(format!(
            "the sender at {url} closed the connection during the handshake ({why}); it may be overloaded or shutting down, or another program listens there: try again, and check the address in the ticket"
        )),
        CellnetError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            Failure::transfer(format!(
                "nothing listens at {url} (connection refused); is `ferry serve` still running there, and is this the address it printed?"
            ))
        }
        other => Failure::transfer(format!(
            "cannot reach the sender at {url} ({other}); check the address in the ticket and that the port is open"
        )),
    }
}
