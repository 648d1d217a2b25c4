//! Mode `relay`: a tree of `ferry relay` processes on receiver hosts between the sender and
//! the `ferry get`s, of fan-out k (`--relay-fanout`).
//!
//! The shape ([`plan`]): the N receivers are cut into groups of k in order; the first host of
//! each group also runs `ferry relay` (on its own address), and every member of the group —
//! the relay's own host included, over its loopback — runs `ferry get` from that relay. The
//! relays are then a list of hosts like the receivers were: while there are more than k of
//! them they are grouped the same way one level up (the head of each group runs a second relay,
//! on the next port, feeding its group's relays); the at most k left pull from the sender. So
//! the sender sends at most k copies and each relay host at most k − 1 over its link (its own
//! `get` and its own lower relay read over loopback). With N ≤ k there is no relay: every
//! receiver pulls from the sender, as in `direct`; the table's note says so.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::net::Net;
use super::procs::Proc;
use super::{deadline, Options, Row};

/// One puller in the tree: a `ferry get` (level 0) or a `ferry relay` (level ≥ 1) on a
/// receiver host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The receiver's index (host `host + 1` of the [`Net`]).
    pub host: usize,
    /// 0: the `get`; L ≥ 1: the relay of level L, feeding level L − 1.
    pub level: usize,
    /// The host whose relay of level `level + 1` this pulls from; `None`: the sender.
    pub from: Option<usize>,
}

/// The tree for `n` receivers and fan-out `k` (≥ 2), top levels last (see the module docs).
pub fn plan(n: usize, k: usize) -> Vec<Node> {
    assert!(k >= 2, "a fan-out below 2 makes no tree");
    let mut nodes = Vec::new();
    let mut hosts: Vec<usize> = (0..n).collect();
    let mut level = 0;
    while hosts.len() > k {
        for group in hosts.chunks(k) {
            for &host in group {
                nodes.push(Node {
                    host,
                    level,
                    from: Some(group[0]),
                });
            }
        }
        hosts = hosts.chunks(k).map(|g| g[0]).collect();
        level += 1;
    }
    nodes.extend(hosts.into_iter().map(|host| Node {
        host,
        level,
        from: None,
    }));
    nodes
}

/// How many pull from the relay of `level` on `host` (`None`: from the sender).
fn downstream(nodes: &[Node], from: Option<usize>, level: usize) -> usize {
    nodes
        .iter()
        .filter(|d| d.from == from && (from.is_none() || d.level + 1 == level))
        .count()
}

fn port(level: usize) -> usize {
    7051 + level
}

/// Run the relay tree for `n` receivers; the row like the other modes'.
pub fn run(o: &Options, net: &Net, ferry: &Path, src: &Path, n: usize) -> Result<Row> {
    let bin = ferry.to_str().context("ferry path")?;
    let k = o.relay_fanout;
    let nodes = plan(n, k);
    let top = nodes.iter().map(|d| d.level).max().unwrap_or(0);
    let s = &net.hosts[0];
    let listen = format!("tcp://{}:{}", s.addr, port(0));
    let count = downstream(&nodes, None, 0).to_string();
    let src_s = src.to_str().context("path")?;
    let end = deadline(o, n);
    let mut server = Proc::spawn(
        "serve",
        &s.ns,
        bin,
        &[
            "serve",
            src_s,
            "--listen",
            &listen,
            "--receivers",
            &count,
            "--no-peers",
        ],
    )?;
    let (_, sender_ticket) = server.line_where(end, |l| l.starts_with("ferry1"))?;
    let before = net.tx_bytes(0)?;
    // The clock starts before the first relay: relays pull as soon as they run.
    let start = Instant::now();
    // tickets[level][host]: the ticket of that relay, top level first so each has its upstream
    let mut tickets = vec![std::collections::HashMap::new(); top + 1];
    let mut relays = Vec::new();
    for level in (1..=top).rev() {
        for d in nodes.iter().filter(|d| d.level == level) {
            let upstream = match d.from {
                None => sender_ticket.clone(),
                Some(h) => tickets[level + 1]
                    .get(&h)
                    .cloned()
                    .context("relay tree: upstream relay missing")?,
            };
            let h = &net.hosts[d.host + 1];
            let listen = format!("tcp://{}:{}", h.addr, port(level));
            let name = format!("relay-l{level}-site-{}", d.host);
            let spill = o.dir.join(&name);
            std::fs::create_dir_all(&spill)?;
            let spill_s = spill.to_str().context("path")?.to_string();
            let count = downstream(&nodes, Some(d.host), level).to_string();
            let mut r = Proc::spawn(
                &name,
                &h.ns,
                bin,
                &[
                    "relay",
                    &upstream,
                    "--listen",
                    &listen,
                    "--receivers",
                    &count,
                    "--name",
                    &name,
                    "--spill-dir",
                    &spill_s,
                ],
            )?;
            let (_, t) = r.line_where(end, |l| l.starts_with("ferry1"))?;
            tickets[level].insert(d.host, t);
            relays.push(r);
        }
    }
    let mut gets = Vec::new();
    for d in nodes.iter().filter(|d| d.level == 0) {
        let ticket = match d.from {
            None => sender_ticket.clone(),
            Some(h) => tickets[1]
                .get(&h)
                .cloned()
                .context("relay tree: relay missing")?,
        };
        let out = o.dir.join(format!("r{}", d.host));
        let out_s = out.to_str().context("path")?.to_string();
        let name = format!("site-{}", d.host);
        gets.push(Proc::spawn(
            &name,
            &net.hosts[d.host + 1].ns,
            bin,
            &["--json", "get", &ticket, "-o", &out_s, "--name", &name],
        )?);
    }
    let mut last = start;
    for g in gets.iter_mut() {
        let (t, line) = g.line_where(end, |l| l.contains("\"event\":\"done\""))?;
        if !line.contains("BLAKE3") {
            bail!("{}: not verified: {line}", g.name);
        }
        last = last.max(t);
    }
    let secs = last.duration_since(start).as_secs_f64();
    for r in relays.iter_mut() {
        if !r.wait(end)? {
            bail!("{} did not exit 0", r.name);
        }
    }
    if !server.wait(end)? {
        bail!("ferry serve did not exit 0");
    }
    let sender_bytes = net.tx_bytes(0)? - before;
    let note = if top == 0 {
        format!("N ≤ k={k}: no relay, every receiver pulls from the sender")
    } else {
        let first: Vec<String> = nodes
            .iter()
            .filter(|d| d.level == 1)
            .map(|d| d.host.to_string())
            .collect();
        format!(
            "k={k}: {} relays on site-{}, {top} level{}",
            first.len(),
            first.join(","),
            if top == 1 { "" } else { "s" }
        )
    };
    Ok(Row {
        mode: "ferry relay tree".into(),
        n,
        secs,
        sender_bytes,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn froms(nodes: &[Node], level: usize) -> Vec<Option<usize>> {
        nodes
            .iter()
            .filter(|d| d.level == level)
            .map(|d| d.from)
            .collect()
    }

    #[test]
    fn up_to_k_receivers_pull_from_the_sender() {
        for n in 1..=4 {
            let p = plan(n, 4);
            assert_eq!(p.len(), n);
            assert!(p.iter().all(|d| d.level == 0 && d.from.is_none()), "{p:?}");
        }
    }

    #[test]
    fn sixteen_receivers_make_four_relays_of_four() {
        let p = plan(16, 4);
        let gets = froms(&p, 0);
        assert_eq!(gets.len(), 16);
        for (i, f) in gets.iter().enumerate() {
            assert_eq!(*f, Some(i / 4 * 4), "site-{i}");
        }
        assert_eq!(froms(&p, 1), vec![None; 4]);
        assert_eq!(
            p.iter()
                .filter(|d| d.level == 1)
                .map(|d| d.host)
                .collect::<Vec<_>>(),
            [0, 4, 8, 12]
        );
        assert_eq!(downstream(&p, None, 0), 4);
        assert_eq!(downstream(&p, Some(4), 1), 4);
        assert_eq!(p.iter().map(|d| d.level).max(), Some(1));
    }

    #[test]
    fn uneven_groups_and_deeper_trees_keep_every_fan_out_at_most_k() {
        // 5 with k=4: groups [0..4) and [4]; site-4 relays for itself alone
        let p = plan(5, 4);
        assert_eq!(froms(&p, 0), [Some(0), Some(0), Some(0), Some(0), Some(4)]);
        assert_eq!(froms(&p, 1), [None, None]);
        assert_eq!(downstream(&p, Some(4), 1), 1);
        for (n, k, levels) in [(17, 4, 2), (64, 4, 2), (65, 4, 3), (200, 2, 7), (9, 3, 1)] {
            let p = plan(n, k);
            let top = p.iter().map(|d| d.level).max().unwrap();
            assert_eq!(top, levels, "n={n} k={k}");
            assert_eq!(p.iter().filter(|d| d.level == 0).count(), n);
            assert!(downstream(&p, None, 0) <= k);
            for d in p.iter().filter(|d| d.level > 0) {
                let c = downstream(&p, Some(d.host), d.level);
                assert!((1..=k).contains(&c), "n={n} k={k} {d:?}: {c}");
                // a relay is fed from a relay one level up, or from the sender at the top
                match d.from {
                    Some(h) => assert!(p.iter().any(|u| u.host == h && u.level == d.level + 1)),
                    None => assert_eq!(d.level, top),
                }
            }
            // every get has a relay of level 1 on the host it names (or the sender)
            for d in p.iter().filter(|d| d.level == 0) {
                if let Some(h) = d.from {
                    assert!(p.iter().any(|u| u.host == h && u.level == 1));
                }
            }
        }
    }
}
