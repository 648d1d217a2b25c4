//! The bench's own test network: one network namespace per host, each host's `eth0` a veth
//! whose other end sits on a bridge in a namespace of its own (so nothing of the machine's
//! own network is touched), egress capped with `tbf`, addresses from 198.18.0.0/15 (the
//! benchmarking range). [`Net`] tears it all down when dropped — on success, on error, on a
//! panic, and after Ctrl-C (see [`super::interrupted`]); [`clean_stale`] removes what a
//! crashed run left.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Every namespace the bench creates starts with this.
pub const PREFIX: &str = "ferryfan-";
/// The bridge's namespace.
const CORE: &str = "ferryfan-core";

/// Run `ip ARGS...`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Namespaces left by an earlier run of this bench.
fn ours() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

/// Delete what a crashed earlier run left (its namespaces take their veths with them).
pub fn clean_stale() {
    let stale = ours();
    if !stale.is_empty() {
        eprintln!(
            "fanout: removing {} namespaces left by an earlier run",
            stale.len()
        );
    }
    for ns in stale {
        let _ = ip(&["netns", "del", &ns]);
    }
}

/// Check that namespaces can be made here (root, a kernel with netns, veth, bridge and tbf).
pub fn probe() -> Result<()> {
    let ns = format!("{PREFIX}probe");
    ip(&["netns", "add", &ns]).context(
        "cannot create network namespaces here (the bench needs root and a kernel with network namespaces)",
    )?;
    let r = ip(&[
        "-n", &ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
    ])
    .and_then(|_| ip(&["-n", &ns, "link", "add", "b0", "type", "bridge"]))
    .and_then(|_| {
        run(
            "tc",
            &[
                "-n", &ns, "qdisc", "add", "dev", "p0", "root", "tbf", "rate", "8mbit", "burst",
                "64kb", "latency", "50ms",
            ],
        )
    });
    let _ = ip(&["netns", "del", &ns]);
    r.context("veth pairs, bridges or the tbf qdisc are not available in this kernel")
}

/// One host of the test network.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub addr: String,
}

/// The test network (see the [module docs](self)); removed when dropped.
#[derive(Debug)]
pub struct Net {
    /// Host 0 is the sender, then the receivers.
    pub hosts: Vec<Host>,
}

impl Net {
    /// `n` hosts, each one's egress capped at `rate` bytes per second.
    pub fn build(n: usize, rate: u64) -> Result<Net> {
        let mut net = Net { hosts: Vec::new() };
        ip(&["netns", "add", CORE])?;
        ip(&["-n", CORE, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", CORE, "link", "set", "br0", "up"])?;
        let bits = (rate * 8).to_string();
        // a burst of 20 ms at the rate (at least 64 KiB): smooth, and enough for the timer
        let burst = (rate / 50).max(64 << 10).to_string();
        for i in 0..n {
            let ns = format!("{PREFIX}h{i}");
            // 198.18.0.0/15: 198.18.X.Y with X, Y from the index (up to 65,000 hosts)
            let addr = format!("198.18.{}.{}", (i + 1) / 250, (i + 1) % 250 + 1);
            ip(&["netns", "add", &ns])?;
            net.hosts.push(Host {
                ns: ns.clone(),
                addr: addr.clone(),
            });
            let outer = format!("v{i}");
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &outer,
            ])?;
            ip(&["-n", &ns, "link", "set", &outer, "netns", CORE])?;
            ip(&["-n", CORE, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", CORE, "link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/15"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            run(
                "tc",
                &[
                    "-n",
                    &ns,
                    "qdisc",
                    "add",
                    "dev",
                    "eth0",
                    "root",
                    "tbf",
                    "rate",
                    &format!("{bits}bit"),
                    "burst",
                    &burst,
                    "latency",
                    "100ms",
                ],
            )?;
        }
        Ok(net)
    }

    /// Bytes host `i` has sent on its link.
    pub fn tx_bytes(&self, i: usize) -> Result<u64> {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.hosts[i].ns,
                "-s",
                "-j",
                "link",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .context("ip -s link")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
        v[0]["stats64"]["tx"]["bytes"]
            .as_u64()
            .context("no tx byte counter in `ip -s -j link`")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", CORE]);
    }
}
