//! The demo's result: a table for people and a JSON object for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::units::{fmt_bytes, fmt_rate};

/// One receiver process.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverRow {
    /// Its cell name.
    pub name: String,
    /// Payload bytes it received and verified.
    pub bytes: u64,
    /// Seconds from its start (connect included) to its end.
    pub secs: f64,
    /// `success`, or what went wrong.
    pub outcome: String,
    /// Its peak resident set size, bytes.
    pub peak_rss: Option<u64>,
}

/// Everything the demo measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// File size.
    pub size: u64,
    /// Tensor dict payload (0 without `--tensors`).
    pub tensor_bytes: u64,
    /// Chunk size.
    pub chunk: u64,
    /// One row per receiver.
    pub receivers: Vec<ReceiverRow>,
    /// Peak RSS of the sender process (which also ran the demo itself).
    pub sender_peak_rss: Option<u64>,
    /// From starting the receivers to the last one finishing.
    pub wall: Duration,
    /// The transaction's (status, reason), if it settled.
    pub status: Option<(String, String)>,
}

impl Report {
    /// Bytes delivered to all receivers together.
    pub fn total_bytes(&self) -> u64 {
        self.receivers.iter().map(|r| r.bytes).sum()
    }

    /// Whether every receiver succeeded and the transaction completed.
    pub fn all_ok(&self) -> bool {
        self.receivers.iter().all(|r| r.outcome == "success")
            && self.status.as_ref().is_some_and(|(s, _)| s == "completed")
    }

    /// One line on what went wrong.
    pub fn failure_summary(&self) -> String {
        let mut parts: Vec<String> = self
            .receivers
            .iter()
            .filter(|r| r.outcome != "success")
            .map(|r| format!("{}: {}", r.name, r.outcome))
            .collect();
        match &self.status {
            Some((s, why)) if s != "completed" => parts.push(format!("transaction {s} ({why})")),
            None => parts.push("the transaction did not settle".into()),
            _ => {}
        }
        parts.join("; ")
    }

    /// The result table.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<14} {:>12} {:>8} {:>13} {:>10}  outcome",
            "process", "bytes", "time", "throughput", "peak RSS"
        );
        for r in &self.receivers {
            let _ = writeln!(
                s,
                "{:<14} {:>12} {:>7.2}s {:>13} {:>10}  {}",
                r.name,
                fmt_bytes(r.bytes),
                r.secs,
                fmt_rate(r.bytes, Duration::from_secs_f64(r.secs)),
                rss(r.peak_rss),
                r.outcome
            );
        }
        let _ = writeln!(
            s,
            "{:<14} {:>12} {:>8} {:>13} {:>10}  {}",
            "demo-sender",
            fmt_bytes(self.total_bytes()),
            "",
            "",
            rss(self.sender_peak_rss),
            match &self.status {
                Some((st, why)) => format!("{st} ({why})"),
                None => "not settled".into(),
            }
        );
        let _ = write!(
            s,
            "result: {} delivered to {} receivers in {:.2}s, aggregate {}",
            fmt_bytes(self.total_bytes()),
            self.receivers.len(),
            self.wall.as_secs_f64(),
            fmt_rate(self.total_bytes(), self.wall),
        );
        s
    }

    /// The JSON object of `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let secs = self.wall.as_secs_f64();
        json!({
            "event": "demo",
            "ok": self.all_ok(),
            "file_bytes": self.size,
            "tensor_bytes": self.tensor_bytes,
            "chunk_bytes": self.chunk,
            "receivers": self.receivers.iter().map(|r| json!({
                "name": r.name,
                "bytes": r.bytes,
                "seconds": r.secs,
                "throughput_mib_s": mib_s(r.bytes, r.secs),
                "outcome": r.outcome,
                "peak_rss_bytes": r.peak_rss,
            })).collect::<Vec<_>>(),
            "sender": { "peak_rss_bytes": self.sender_peak_rss },
            "aggregate": {
                "bytes": self.total_bytes(),
                "seconds": secs,
                "throughput_mib_s": mib_s(self.total_bytes(), secs),
            },
            "transaction": self.status.as_ref().map(|(s, why)| json!({"status": s, "reason": why})),
        })
    }
}

fn rss(b: Option<u64>) -> String {
    b.map_or_else(|| "n/a".into(), fmt_bytes)
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / secs / (1u64 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: &str, status: Option<&str>) -> Report {
        Report {
            size: 8 << 20,
            tensor_bytes: 0,
            chunk: 1 << 20,
            receivers: vec![
                ReceiverRow {
                    name: "demo-site-1".into(),
                    bytes: 8 << 20,
                    secs: 2.0,
                    outcome: "success".into(),
                    peak_rss: Some(20 << 20),
                },
                ReceiverRow {
                    name: "demo-site-2".into(),
                    bytes: 8 << 20,
                    secs: 4.0,
                    outcome: outcome.into(),
                    peak_rss: None,
                },
            ],
            sender_peak_rss: Some(30 << 20),
            wall: Duration::from_secs(4),
            status: status.map(|s| (s.into(), "why".into())),
        }
    }

    #[test]
    fn text_and_json_agree() {
        let r = report("success", Some("completed"));
        assert!(r.all_ok());
        let t = r.to_text();
        assert!(t.contains("demo-site-2"), "{t}");
        assert!(t.contains("n/a"), "{t}");
        assert!(t.ends_with("aggregate 4.0 MiB/s"), "{t}");
        let j = r.to_json();
        assert_eq!(j["aggregate"]["bytes"], 16 << 20);
        assert_eq!(j["aggregate"]["throughput_mib_s"], 4.0);
        assert_eq!(j["receivers"][0]["throughput_mib_s"], 4.0);
        assert_eq!(j["ok"], true);
    }

    #[test]
    fn failures_are_summarised() {
        let r = report("failed: boom", Some("failed"));
        assert!(!r.all_ok());
        let s = r.failure_summary();
        assert!(
            s.contains("demo-site-2: failed: boom") && s.contains("transaction failed"),
            "{s}"
        );
        assert!(!report("success", None).all_ok());
    }
}
