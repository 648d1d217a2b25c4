//! Peer-assisted mode on the command line: the options of `get` (`--share`,
//! `--share-listen`) and `serve` (`--no-peers`, `--fan-out`), where a sharing receiver listens,
//! and the sender's coordinator.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

use clap::Args;
use ferry::cellnet::Cell;
use ferry::peers::{PeerCoordinator, SchedulerConfig};
use ferry::ticket::{Kind, Ticket};

use crate::exit::{CmdResult, Failure};

/// `ferry get`'s peer-assisted options.
#[derive(Args, Debug, Clone, Default)]
pub struct GetPeerArgs {
    /// Serve what this receiver has to other receivers while it downloads and afterwards,
    /// until the sender releases it (peer-assisted mode; plain-file tickets). Listens on an
    /// ephemeral port of the local address this host reaches the sender from.
    #[arg(long)]
    pub share: bool,
    /// With --share: listen for other receivers here instead (tcp://HOST:PORT; port 0 picks
    /// one; 0.0.0.0 advertises the address this host reaches the sender from). Implies --share.
    #[arg(long, value_name = "URL")]
    pub share_listen: Option<String>,
}

impl GetPeerArgs {
    /// Whether this receiver offers to serve.
    pub fn sharing(&self) -> bool {
        self.share || self.share_listen.is_some()
    }
}

/// `ferry serve`'s peer-assisted options.
#[derive(Args, Debug, Clone)]
pub struct ServePeerArgs {
    /// Never redirect receivers to other receivers: everyone pulls from this sender
    /// (receivers started with `ferry get --share` then only download).
    #[arg(long)]
    pub no_peers: bool,
    /// Receivers each source serves in peer-assisted mode, this sender included: 1 is a
    /// pipelined chain (this sender sends about one copy), K a tree (about K copies, shorter
    /// paths).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub fan_out: u32,
}

/// Start the coordinator on the sender's cell and schedule the plain-file tickets, unless
/// `--no-peers`.
pub fn start_coordinator(
    cell: &Cell,
    args: &ServePeerArgs,
    tickets: &[Ticket],
) -> Option<PeerCoordinator> {
    if args.no_peers {
        return None;
    }
    let cfg = SchedulerConfig {
        fan_out: args.fan_out as usize,
        ..SchedulerConfig::default()
    };
    let c = PeerCoordinator::new(cell, cfg);
    for t in tickets.iter().filter(|t| t.kind == Kind::File) {
        c.schedule(&ferry::core::RefId::new(t.ref_id.clone()));
    }
    Some(c)
}

/// Who fed whom, per scheduled ref, at the end of the transfer: each receiver the outcome
/// says succeeded is first marked complete (it may confirm before its last report arrives).
pub fn scheduled_sources(
    coordinator: Option<&PeerCoordinator>,
    tickets: &[Ticket],
    outcome: &ferry::core::TransferOutcome,
) -> Vec<crate::stats::Scheduled> {
    let Some(c) = coordinator else {
        return Vec::new();
    };
    tickets
        .iter()
        .filter_map(|t| {
            let rid = ferry::core::RefId::new(t.ref_id.clone());
            if let Some((_, m)) = outcome.refs.iter().find(|(r, _)| *r == rid) {
                for (who, st) in m {
                    if *st == ferry::core::DownloadStatus::Success {
                        c.confirmed(&rid, who, t.size);
                    }
                }
            }
            Some(crate::stats::Scheduled {
                ref_id: t.ref_id.clone(),
                sources: c.sources(&rid)?,
            })
        })
        .collect()
}

/// The URL a sharing receiver of `ticket` listens on (`None` when not sharing).
pub fn share_listen_url(
    args: &GetPeerArgs,
    ticket: &Ticket,
    tls: bool,
) -> CmdResult<Option<String>> {
    if !args.sharing() {
        return Ok(None);
    }
    let scheme = if tls { "stcp" } else { "tcp" };
    if let Some(given) = &args.share_listen {
        let rest = given
            .strip_prefix("tcp://")
            .or_else(|| given.strip_prefix("stcp://"))
            .ok_or_else(|| {
                Failure::usage(format!(
                    "--share-listen {given:?}: expected tcp://HOST:PORT (e.g. tcp://0.0.0.0:0)"
                ))
            })?;
        return Ok(Some(format!("{scheme}://{rest}")));
    }
    let ip = local_ip_toward(&ticket.addr)?;
    Ok(Some(format!("{scheme}://{}", host_port(ip, 0))))
}

/// What other receivers are told: the bound URL, with an unspecified host (0.0.0.0, ::)
/// replaced by the address this host reaches the sender from.
pub fn advertised(bound: &str, ticket: &Ticket) -> CmdResult<String> {
    let Some((scheme, rest)) = bound.split_once("://") else {
        return Ok(bound.to_string());
    };
    let Ok(sa) = rest.parse::<SocketAddr>() else {
        return Ok(bound.to_string());
    };
    if !sa.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    let ip = local_ip_toward(&ticket.addr)?;
    Ok(format!("{scheme}://{}", host_port(ip, sa.port())))
}

fn host_port(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// The local address the route to `addr` (`HOST:PORT`) leaves from (no packet is sent).
fn local_ip_toward(addr: &str) -> CmdResult<IpAddr> {
    let why = |e: String| {
        Failure::usage(format!(
            "--share: cannot tell which local address reaches the sender at {addr} ({e}); pass --share-listen tcp://HOST:0 with an address other receivers can reach"
        ))
    };
    let target = addr
        .to_socket_addrs()
        .map_err(|e| why(e.to_string()))?
        .next()
        .ok_or_else(|| why("no address".into()))?;
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).map_err(|e| why(e.to_string()))?;
    sock.connect(target).map_err(|e| why(e.to_string()))?;
    Ok(sock.local_addr().map_err(|e| why(e.to_string()))?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(addr: &str) -> Ticket {
        Ticket {
            tls: false,
            addr: addr.into(),
            source: "s".into(),
            ref_id: "R1".into(),
            kind: Kind::File,
            name: "f".into(),
            size: 1,
            blake3: "00".repeat(32),
        }
    }

    #[test]
    fn a_sharing_receiver_listens_where_it_reaches_the_sender() {
        let t = ticket("127.0.0.1:7051");
        let off = GetPeerArgs::default();
        assert_eq!(share_listen_url(&off, &t, false).unwrap(), None);
        let on = GetPeerArgs {
            share: true,
            share_listen: None,
        };
        assert_eq!(
            share_listen_url(&on, &t, false).unwrap().as_deref(),
            Some("tcp://127.0.0.1:0")
        );
        assert_eq!(
            share_listen_url(&on, &t, true).unwrap().as_deref(),
            Some("stcp://127.0.0.1:0")
        );
        let given = GetPeerArgs {
            share: false,
            share_listen: Some("tcp://0.0.0.0:9000".into()),
        };
        assert_eq!(
            share_listen_url(&given, &t, false).unwrap().as_deref(),
            Some("tcp://0.0.0.0:9000")
        );
        assert_eq!(
            advertised("tcp://0.0.0.0:9000", &t).unwrap(),
            "tcp://127.0.0.1:9000"
        );
        assert_eq!(
            advertised("tcp://10.1.2.3:9", &t).unwrap(),
            "tcp://10.1.2.3:9"
        );
        let bad = GetPeerArgs {
            share: false,
            share_listen: Some("http://x:1".into()),
        };
        assert_eq!(share_listen_url(&bad, &t, false).unwrap_err().code(), 2);
    }
}
