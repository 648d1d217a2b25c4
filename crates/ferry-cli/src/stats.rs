//! What a sender (`ferry serve`, `ferry relay`) sent, per receiver, at the end — and, in
//! peer-assisted mode, who fed whom — as text lines and as the `receivers`, `peers`,
//! `bytes_sent`, `object_bytes` and `egress_ratio` fields of the `--json` outcome.
//!
//! Two kinds of figures, from two places: `bytes` (and `bytes_sent`) are what this sender
//! measured putting on the wire; the `from_*` credits and the `peers` list are the peer
//! scheduler's, built from the positions receivers report (the sender never sees bytes move
//! between peers; see `ferry::core::peers::SourceReport`), and `reported_served` is each
//! peer's own word. A receiver the scheduler does not track (no `--share`, NVFlare, or
//! `--no-peers`) is credited with what the sender measured.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferry::core::{DownloadStatus, TransferOutcome};
use ferry::peers::SourceReport;
use serde_json::json;

use crate::units::{fmt_bytes, fmt_rate};
use crate::watch::Watch;

/// One ref's peer schedule at the end: the scheduler's credits.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// The ref.
    pub ref_id: String,
    /// Who fed whom.
    pub sources: SourceReport,
}

/// Where one receiver's bytes came from (summed over the objects).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources {
    /// From this sender.
    pub sender: u64,
    /// From each peer.
    pub peers: BTreeMap<String, u64>,
    /// From peers beyond the ones named (a receiver moved among very many).
    pub other_peers: u64,
    /// Already there when it started (a resumed part).
    pub resumed: u64,
    /// Thrown away after a peer's data failed verification.
    pub discarded: u64,
}

/// One receiver's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverStat {
    /// Its cell name.
    pub name: String,
    /// Payload bytes this sender sent to it, as measured here.
    pub bytes: u64,
    /// From its first to its latest progress report.
    pub secs: f64,
    /// `success` (every object), `failed` (one failed), or `incomplete`.
    pub status: &'static str,
    /// Where its bytes came from.
    pub from: Sources,
}

/// What one peer did as a source (summed over the objects).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerStat {
    /// Its cell name.
    pub name: String,
    /// Receivers credited with bytes from it.
    pub receivers: usize,
    /// Bytes credited to it.
    pub bytes: u64,
    /// What it says it served (`None`: it never said).
    pub reported_served: Option<u64>,
    /// Banned for serving data that failed verification.
    pub banned: bool,
}

/// Each receiver the sender served or scheduled, with its status in `o` and its sources.
pub fn receivers(watch: &Watch, o: &TransferOutcome, scheduled: &[Scheduled]) -> Vec<ReceiverStat> {
    let mut measured: BTreeMap<String, (u64, f64)> = watch
        .sent()
        .into_iter()
        .map(|(name, bytes, secs)| (name, (bytes, secs)))
        .collect();
    let names: BTreeSet<String> = measured
        .keys()
        .cloned()
        .chain(
            scheduled
                .iter()
                .flat_map(|s| s.sources.receivers.iter().map(|r| r.receiver.clone())),
        )
        .collect();
    names
        .into_iter()
        .map(|name| {
            let (bytes, secs) = measured.remove(&name).unwrap_or_default();
            let statuses: Vec<Option<DownloadStatus>> =
                o.refs.iter().map(|(_, m)| m.get(&name).copied()).collect();
            let status = if statuses.contains(&Some(DownloadStatus::Failed)) {
                "failed"
            } else if !statuses.is_empty()
                && statuses.iter().all(|s| *s == Some(DownloadStatus::Success))
            {
                "success"
            } else {
                "incomplete"
            };
            let mut from = Sources::default();
            for (rid, _) in &o.refs {
                let credits = scheduled
                    .iter()
                    .find(|s| s.ref_id == rid.as_str())
                    .and_then(|s| s.sources.receiver(&name));
                match credits {
                    Some(c) => {
                        from.sender += c.from_origin;
                        for (p, b) in &c.from_peers {
                            *from.peers.entry(p.clone()).or_default() += b;
                        }
                        from.other_peers += c.from_other_peers;
                        from.resumed += c.before_join;
                        from.discarded += c.discarded;
                    }
                    None => from.sender += watch.sent_for(&name, rid.as_str()),
                }
            }
            ReceiverStat {
                name,
                bytes,
                secs,
                status,
                from,
            }
        })
        .collect()
}

/// Every peer that offered to serve, summed over the scheduled objects.
pub fn peers(scheduled: &[Scheduled]) -> Vec<PeerStat> {
    let mut out: BTreeMap<String, PeerStat> = BTreeMap::new();
    for p in scheduled.iter().flat_map(|s| &s.sources.peers) {
        let e = out.entry(p.peer.clone()).or_insert_with(|| PeerStat {
            name: p.peer.clone(),
            ..PeerStat::default()
        });
        // a peer counts once per receiver it fed, whatever the object
        e.bytes += p.bytes;
        e.banned |= p.banned;
        if let Some(r) = p.reported_served {
            e.reported_served = Some(e.reported_served.unwrap_or(0) + r);
        }
    }
    for (name, e) in out.iter_mut() {
        let fed: BTreeSet<&str> = scheduled
            .iter()
            .flat_map(|s| &s.sources.receivers)
            .filter(|r| r.from_peers.get(name).is_some_and(|b| *b > 0))
            .map(|r| r.receiver.as_str())
            .collect();
        e.receivers = fed.len();
    }
    out.into_values().collect()
}

/// Total payload bytes sent, as measured by this sender.
pub fn bytes_sent(stats: &[ReceiverStat]) -> u64 {
    stats.iter().map(|s| s.bytes).sum()
}

/// Bytes sent per byte of one copy of the objects (`object_bytes`).
pub fn egress_ratio(sent: u64, object_bytes: u64) -> f64 {
    if object_bytes == 0 {
        0.0
    } else {
        sent as f64 / object_bytes as f64
    }
}

fn from_words(f: &Sources) -> String {
    let mut parts = Vec::new();
    if f.resumed > 0 {
        parts.push(format!("resumed {}", fmt_bytes(f.resumed)));
    }
    if f.sender > 0 || f.peers.is_empty() {
        parts.push(format!("sender {}", fmt_bytes(f.sender)));
    }
    for (p, b) in &f.peers {
        parts.push(format!("{p} {}", fmt_bytes(*b)));
    }
    if f.other_peers > 0 {
        parts.push(format!("other peers {}", fmt_bytes(f.other_peers)));
    }
    let mut s = format!("from {}", parts.join(", "));
    if f.discarded > 0 {
        s.push_str(&format!(
            " ({} discarded: failed verification)",
            fmt_bytes(f.discarded)
        ));
    }
    s
}

/// Text: one line per receiver (with where its bytes came from), one per peer that served,
/// then the totals against one copy of the objects (`object_bytes`).
pub fn lines(stats: &[ReceiverStat], peers: &[PeerStat], object_bytes: u64) -> Vec<String> {
    let mut out: Vec<String> = stats
        .iter()
        .map(|s| {
            format!(
                "  {:<24} {:>11} in {:>6.1}s  {:>13}  {}  {}",
                s.name,
                fmt_bytes(s.bytes),
                s.secs,
                fmt_rate(s.bytes, Duration::from_secs_f64(s.secs)),
                s.status,
                from_words(&s.from)
            )
        })
        .collect();
    for p in peers.iter().filter(|p| p.receivers > 0 || p.banned) {
        out.push(format!(
            "  peer {:<19} fed {} receiver{} {}{}{}",
            p.name,
            p.receivers,
            if p.receivers == 1 { "" } else { "s" },
            fmt_bytes(p.bytes),
            p.reported_served
                .map(|r| format!(" (it reports serving {})", fmt_bytes(r)))
                .unwrap_or_default(),
            if p.banned {
                " — banned: its data failed verification"
            } else {
                ""
            }
        ));
    }
    let sent = bytes_sent(stats);
    let by_peers: u64 = peers.iter().map(|p| p.bytes).sum();
    out.push(format!(
        "sent {} to {} receiver{}: {:.2}× the objects' {}{}",
        fmt_bytes(sent),
        stats.len(),
        if stats.len() == 1 { "" } else { "s" },
        egress_ratio(sent, object_bytes),
        fmt_bytes(object_bytes),
        if by_peers > 0 {
            format!("; peers served {}", fmt_bytes(by_peers))
        } else {
            String::new()
        }
    ));
    out
}

/// JSON: the `receivers` list.
pub fn json(stats: &[ReceiverStat]) -> serde_json::Value {
    stats
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "bytes": s.bytes,
                "seconds": s.secs,
                "status": s.status,
                "from_sender": s.from.sender,
                "from_peers": s.from.peers,
                "from_other_peers": s.from.other_peers,
                "resumed": s.from.resumed,
                "discarded": s.from.discarded,
            })
        })
        .collect()
}

/// JSON: the `peers` list.
pub fn peers_json(peers: &[PeerStat]) -> serde_json::Value {
    peers
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "receivers": p.receivers,
                "bytes": p.bytes,
                "reported_served": p.reported_served,
                "banned": p.banned,
            })
        })
        .collect()
}

/// Set the totals and lists on a `--json` outcome: `bytes_sent`, `object_bytes`,
/// `egress_ratio`, `receivers`, `peers`.
pub fn put_json(
    v: &mut serde_json::Value,
    stats: &[ReceiverStat],
    peers: &[PeerStat],
    object_bytes: u64,
) {
    let sent = bytes_sent(stats);
    v["bytes_sent"] = sent.into();
    v["object_bytes"] = object_bytes.into();
    v["egress_ratio"] = egress_ratio(sent, object_bytes).into();
    v["receivers"] = json(stats);
    v["peers"] = peers_json(peers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(name: &str, bytes: u64, status: &'static str, from: Sources) -> ReceiverStat {
        ReceiverStat {
            name: name.into(),
            bytes,
            secs: 1.5,
            status,
            from,
        }
    }

    #[test]
    fn lines_and_json_carry_every_receiver_its_sources_and_the_totals() {
        let stats = vec![
            stat(
                "site-1",
                3 << 20,
                "success",
                Sources {
                    sender: 3 << 20,
                    ..Sources::default()
                },
            ),
            stat(
                "site-2",
                0,
                "success",
                Sources {
                    peers: [("site-1".to_string(), 3 << 20)].into_iter().collect(),
                    ..Sources::default()
                },
            ),
            stat("site-3", 1 << 20, "failed", Sources::default()),
        ];
        let peers = vec![PeerStat {
            name: "site-1".into(),
            receivers: 1,
            bytes: 3 << 20,
            reported_served: Some(3 << 20),
            banned: false,
        }];
        let l = lines(&stats, &peers, 3 << 20);
        assert_eq!(l.len(), 5, "{l:#?}");
        assert!(l[0].contains("site-1") && l[0].contains("3.00 MiB") && l[0].contains("success"));
        assert!(l[0].ends_with("from sender 3.00 MiB"), "{}", l[0]);
        assert!(l[1].ends_with("from site-1 3.00 MiB"), "{}", l[1]);
        assert!(l[2].contains("failed"));
        assert!(
            l[3].contains("peer site-1") && l[3].contains("fed 1 receiver 3.00 MiB"),
            "{}",
            l[3]
        );
        assert_eq!(
            l[4],
            "sent 4.00 MiB to 3 receivers: 1.33× the objects' 3.00 MiB; peers served 3.00 MiB"
        );
        let mut v = serde_json::json!({});
        put_json(&mut v, &stats, &peers, 3 << 20);
        assert_eq!(v["receivers"][1]["name"], "site-2");
        assert_eq!(v["receivers"][1]["from_peers"]["site-1"], 3 << 20);
        assert_eq!(v["receivers"][0]["from_sender"], 3 << 20);
        assert_eq!(v["peers"][0]["reported_served"], 3 << 20);
        assert_eq!(v["bytes_sent"], 4 << 20);
        assert_eq!(v["object_bytes"], 3 << 20);
        assert!((v["egress_ratio"].as_f64().unwrap() - 4.0 / 3.0).abs() < 1e-9);
        assert_eq!(egress_ratio(1, 0), 0.0);
    }
}
