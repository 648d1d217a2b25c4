//! What a sender (`ferry serve`, `ferry relay`) sent, per receiver, at the end: bytes, time,
//! rate and status, as text lines and as the `receivers` and `bytes_sent` fields of the
//! `--json` outcome.

use std::time::Duration;

use ferry::core::{DownloadStatus, TransferOutcome};
use serde_json::json;

use crate::units::{fmt_bytes, fmt_rate};
use crate::watch::Watch;

/// One receiver's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverStat {
    /// Its cell name.
    pub name: String,
    /// Payload bytes sent to it (each object's position: retries are not counted twice).
    pub bytes: u64,
    /// From its first to its latest progress report.
    pub secs: f64,
    /// `success` (every object), `failed` (one failed), or `incomplete`.
    pub status: &'static str,
}

/// Each receiver the sender served, with its status in `o`.
pub fn receivers(watch: &Watch, o: &TransferOutcome) -> Vec<ReceiverStat> {
    watch
        .sent()
        .into_iter()
        .map(|(name, bytes, secs)| {
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
            ReceiverStat {
                name,
                bytes,
                secs,
                status,
            }
        })
        .collect()
}

/// Total payload bytes sent.
pub fn bytes_sent(stats: &[ReceiverStat]) -> u64 {
    stats.iter().map(|s| s.bytes).sum()
}

/// Text: one line per receiver, then the total.
pub fn lines(stats: &[ReceiverStat]) -> Vec<String> {
    let mut out: Vec<String> = stats
        .iter()
        .map(|s| {
            format!(
                "  {:<24} {:>11} in {:>6.1}s  {:>13}  {}",
                s.name,
                fmt_bytes(s.bytes),
                s.secs,
                fmt_rate(s.bytes, Duration::from_secs_f64(s.secs)),
                s.status
            )
        })
        .collect();
    out.push(format!(
        "sent {} to {} receiver{}",
        fmt_bytes(bytes_sent(stats)),
        stats.len(),
        if stats.len() == 1 { "" } else { "s" }
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
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_json_carry_every_receiver_and_the_total() {
        let stats = vec![
            ReceiverStat {
                name: "site-1".into(),
                bytes: 3 << 20,
                secs: 1.5,
                status: "success",
            },
            ReceiverStat {
                name: "site-2".into(),
                bytes: 1 << 20,
                secs: 0.5,
                status: "failed",
            },
        ];
        let l = lines(&stats);
        assert_eq!(l.len(), 3);
        assert!(l[0].contains("site-1") && l[0].contains("3.00 MiB") && l[0].contains("success"));
        assert!(l[1].contains("failed"));
        assert_eq!(l[2], "sent 4.00 MiB to 2 receivers");
        let j = json(&stats);
        assert_eq!(j[1]["name"], "site-2");
        assert_eq!(j[0]["bytes"], 3 << 20);
        assert_eq!(bytes_sent(&stats), 4 << 20);
    }
}
