//! What `ferry serve` shows and remembers about its receivers while it serves — a bar per
//! receiver, a line per receiver and object when it is done (and why, when it failed), the
//! cells it refused and those that left — and the verdict it prints at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ferry::core::service::{FinalCause, ServiceEvent};
use ferry::core::{DownloadStatus, OutcomeStatus, Refusal, TransferOutcome};
use indicatif::ProgressBar;
use serde_json::json;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;

use crate::ui;

/// Refused cells reported by name; beyond this many only counted (a peer cannot flood the
/// terminal by trying names).
const MAX_REFUSED_NAMED: usize = 32;

/// The sender's view of its receivers.
pub struct Watch {
    /// Bytes of all objects, for the bars.
    total: u64,
    json: bool,
    /// The reconnect budget, to explain a receiver failed for being gone.
    reconnect: Duration,
    /// receiver -> (ref -> bytes served), and its bar
    seen: BTreeMap<String, (HashMap<String, u64>, ProgressBar)>,
    /// Why each receiver failed (its first failure).
    failures: BTreeMap<String, FinalCause>,
    /// Cells refused, by name (up to [`MAX_REFUSED_NAMED`]), and how many refusals beyond.
    refused: BTreeSet<String>,
    refused_more: u64,
    /// Count-mode receivers that cancelled and gave their place back (and did not finish).
    left: BTreeSet<String>,
    /// receiver -> when its first and its latest progress were reported (for its rate).
    times: BTreeMap<String, (Instant, Instant)>,
}

impl Watch {
    /// A view for objects of `total` bytes.
    pub fn new(total: u64, json: bool, reconnect: Duration) -> Self {
        Self {
            total,
            json,
            reconnect,
            seen: BTreeMap::new(),
            failures: BTreeMap::new(),
            refused: BTreeSet::new(),
            refused_more: 0,
            left: BTreeSet::new(),
            times: BTreeMap::new(),
        }
    }

    /// What each receiver that pulled something was sent: (name, payload bytes of every
    /// object, seconds from its first to its latest progress report). Bytes count each
    /// object's position once (a retried chunk is not counted twice).
    pub fn sent(&self) -> Vec<(String, u64, f64)> {
        self.seen
            .iter()
            .map(|(who, (per_ref, _))| {
                let secs = self
                    .times
                    .get(who)
                    .map_or(0.0, |(a, b)| b.duration_since(*a).as_secs_f64());
                (who.clone(), per_ref.values().sum(), secs)
            })
            .collect()
    }

    /// Payload bytes of `ref_id` sent to `receiver`.
    pub fn sent_for(&self, receiver: &str, ref_id: &str) -> u64 {
        self.seen
            .get(receiver)
            .and_then(|(per_ref, _)| per_ref.get(ref_id).copied())
            .unwrap_or(0)
    }

    fn bar(&mut self, receiver: &str) -> &mut (HashMap<String, u64>, ProgressBar) {
        let total = self.total;
        self.seen
            .entry(receiver.to_string())
            .or_insert_with(|| (HashMap::new(), ui::byte_bar(receiver, Some(total))))
    }

    /// Why a receiver failed, in words.
    fn cause(&self, cause: FinalCause) -> String {
        match cause {
            FinalCause::Disconnected => format!(
                "connection lost, not back within {}",
                humantime::format_duration(self.reconnect)
            ),
            FinalCause::Served => "the sender could not produce it".into(),
            FinalCause::Confirmed => "the receiver could not keep it".into(),
            other => other.as_str().into(),
        }
    }

    /// Take one engine event into account.
    pub fn event(&mut self, ev: &ServiceEvent, names: &HashMap<String, String>) {
        match ev {
            ServiceEvent::Progress(p) => {
                let Some(receiver) = &p.receiver else { return };
                let now = Instant::now();
                self.times
                    .entry(receiver.clone())
                    .and_modify(|t| t.1 = now)
                    .or_insert((now, now));
                let (per_ref, bar) = self.bar(receiver);
                per_ref.insert(p.ref_id.to_string(), p.bytes_done);
                bar.set_position(per_ref.values().sum());
            }
            ServiceEvent::DownloadedToOne {
                ref_id,
                receiver,
                status,
                cause,
                ..
            } => {
                let name = names.get(ref_id.as_str()).cloned().unwrap_or_default();
                let failed = *status == DownloadStatus::Failed;
                if failed {
                    self.failures.entry(receiver.clone()).or_insert(*cause);
                } else {
                    self.failures.remove(receiver);
                    self.left.remove(receiver);
                }
                if self.json {
                    ui::json_line(&json!({
                        "event": "received",
                        "receiver": receiver,
                        "name": name,
                        "ref_id": ref_id.as_str(),
                        "status": status.as_str(),
                        "cause": failed.then(|| self.cause(*cause)),
                    }));
                } else if failed {
                    ui::err_line(&format!(
                        "{receiver}: {name} failed ({})",
                        self.cause(*cause)
                    ));
                } else {
                    ui::info_line(&format!("{receiver}: {name} {}", status.as_str()));
                }
                if failed {
                    let (_, bar) = self.bar(receiver);
                    bar.set_message("failed");
                }
            }
            ServiceEvent::Refused {
                receiver, refusal, ..
            } => {
                if self.refused.contains(receiver) {
                    return;
                }
                if self.refused.len() >= MAX_REFUSED_NAMED {
                    self.refused_more += 1;
                    return;
                }
                self.refused.insert(receiver.clone());
                let why = match refusal {
                    Refusal::NotExpectedReceiver => "it is not on the --allow list",
                    _ => "every expected receiver already has its place (--receivers)",
                };
                if self.json {
                    ui::json_line(&json!({
                        "event": "refused",
                        "receiver": receiver,
                        "reason": refusal.as_str(),
                    }));
                } else {
                    ui::err_line(&format!("refused {receiver}: {why}"));
                }
            }
            ServiceEvent::ReceiverWithdrew {
                receiver,
                replaced_by,
                ..
            } => {
                if replaced_by.is_none() {
                    self.left.insert(receiver.clone());
                }
                if let Some((_, bar)) = self.seen.get(receiver) {
                    bar.set_message(if replaced_by.is_some() {
                        "replaced"
                    } else {
                        "cancelled"
                    });
                }
                if self.json {
                    ui::json_line(&json!({
                        "event": "withdrew",
                        "receiver": receiver,
                        "replaced_by": replaced_by,
                    }));
                } else if let Some(newcomer) = replaced_by {
                    ui::err_line(&format!(
                        "{receiver} lost its connection: {newcomer} takes its place"
                    ));
                } else {
                    ui::err_line(&format!(
                        "{receiver} cancelled: its place is open again (it can resume, or another receiver can take it)"
                    ));
                }
            }
            _ => {}
        }
    }

    /// Take into account the events still queued on `events` (those of the last receivers,
    /// dispatched while the transaction's waiter resolved), without waiting for more.
    pub fn drain(
        &mut self,
        events: &mut broadcast::Receiver<ServiceEvent>,
        names: &HashMap<String, String>,
    ) {
        loop {
            match events.try_recv() {
                Ok(ev) => self.event(&ev, names),
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    }

    /// Clear the bars (and say how many refusals were not named).
    pub fn finish(&mut self) {
        for (_, bar) in self.seen.values() {
            bar.finish_and_clear();
        }
        if self.refused_more > 0 && !self.json {
            ui::err_line(&format!(
                "refused {} more cells (not named)",
                self.refused_more
            ));
        }
    }

    /// Receivers that pulled something.
    pub fn receivers(&self) -> impl Iterator<Item = &str> {
        self.seen.keys().map(String::as_str)
    }

    /// Why a transfer did not complete, in one line, with what to do.
    pub fn explain(
        &self,
        o: &TransferOutcome,
        timeout: Duration,
        names: &HashMap<String, String>,
    ) -> String {
        let mut failed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut succeeded: BTreeSet<&str> = BTreeSet::new();
        for (rid, statuses) in &o.refs {
            for (who, st) in statuses {
                match st {
                    DownloadStatus::Failed => failed
                        .entry(who.as_str())
                        .or_default()
                        .push(names.get(rid.as_str()).map_or(rid.as_str(), String::as_str)),
                    DownloadStatus::Success => {
                        succeeded.insert(who.as_str());
                    }
                }
            }
        }
        let mut parts = vec![format!("transfer {} ({})", o.status.as_str(), o.reason)];
        if !failed.is_empty() {
            let list: Vec<String> = failed
                .iter()
                .map(|(who, objs)| {
                    let why = self
                        .failures
                        .get(*who)
                        .map(|c| format!(" ({})", self.cause(*c)))
                        .unwrap_or_default();
                    format!("{who} failed on {}{why}", objs.join(", "))
                })
                .collect();
            parts.push(list.join("; "));
        }
        if o.status == OutcomeStatus::Failed && o.reason == ferry::core::outcome::reason::TIMEOUT {
            let mut why = format!(
                "no receiver pulled for {}; {} of the expected receivers finished",
                humantime::format_duration(timeout),
                succeeded.len()
            );
            if !self.left.is_empty() {
                let left: Vec<&str> = self.left.iter().map(String::as_str).collect();
                why.push_str(&format!(
                    "; {} cancelled and did not come back",
                    left.join(", ")
                ));
            }
            why.push_str("; start `ferry get` sooner or raise --timeout");
            parts.push(why);
        } else if !failed.is_empty() {
            parts.push(
                "see the receivers' own errors; a receiver may resume while the others still download, otherwise run `ferry serve` again".into(),
            );
        }
        parts.join(": ")
    }

    /// The `--keep-serving` summary: who got everything, who failed, who was cut off.
    pub fn summary(&self, o: &TransferOutcome) -> String {
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        let mut cut = Vec::new();
        for who in self.receivers() {
            let statuses: Vec<Option<DownloadStatus>> =
                o.refs.iter().map(|(_, m)| m.get(who).copied()).collect();
            if statuses.contains(&Some(DownloadStatus::Failed)) {
                failed.push(who);
            } else if statuses.iter().all(|s| *s == Some(DownloadStatus::Success)) {
                ok.push(who);
            } else {
                cut.push(who);
            }
        }
        let list = |v: &[&str]| {
            if v.is_empty() {
                String::new()
            } else {
                format!(" ({})", v.join(", "))
            }
        };
        format!(
            "stopped serving: {} receiver{} got every object{}, {} failed{}, {} were cut off{}",
            ok.len(),
            if ok.len() == 1 { "" } else { "s" },
            list(&ok),
            failed.len(),
            list(&failed),
            cut.len(),
            list(&cut)
        )
    }
}

/// The `--json` outcome line.
pub fn outcome_json(
    o: &TransferOutcome,
    names: &HashMap<String, String>,
    secs: f64,
) -> serde_json::Value {
    let objects: Vec<serde_json::Value> = o
        .refs
        .iter()
        .map(|(rid, st)| {
            json!({
                "ref_id": rid.as_str(),
                "name": names.get(rid.as_str()),
                "receivers": st.iter().map(|(k, v)| (k.clone(), json!(v.as_str()))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    json!({
        "event": "outcome",
        "status": o.status.as_str(),
        "reason": o.reason,
        "done_status": o.done_status.as_str(),
        "seconds": secs,
        "objects": objects,
    })
}
