//! What `ferry relay` prints: whom it relays for and the downstream ticket, the upstream's
//! verdict when it comes, and at the end the sources (bytes from each, why one was left), the
//! receivers (bytes sent to each), its peak memory, and the exit status.

use std::collections::HashMap;
use std::time::Duration;

use ferry::core::TransferOutcome;
use ferry::relay::{Relay, RelayReport};
use ferry::ticket::Ticket;
use ferry::DownloadError;
use serde_json::json;

use crate::args::RelayArgs;
use crate::downstream::receivers_in_words;
use crate::exit::{CmdResult, Failure};
use crate::serve::ticket_json;
use crate::stats;
use crate::sysinfo::peak_rss;
use crate::ui;
use crate::units::{fmt_bytes, fmt_rate};
use crate::watch::{outcome_json, Watch};

/// Whom the relay serves, in words.
fn audience(args: &RelayArgs) -> String {
    receivers_in_words(args.receivers, &args.allow)
}

/// Say what is relayed from where to whom, and print the downstream ticket.
pub(super) fn announce(args: &RelayArgs, relay: &Relay, ticket: &Ticket, bound: &str, json: bool) {
    let from: Vec<String> = relay
        .sources()
        .iter()
        .map(|t| format!("{} ({})", t.source, t.url()))
        .collect();
    if json {
        let mut v = ticket_json(ticket, args.ticket_format);
        v["upstream"] = from.into();
        ui::json_line(&v);
        return;
    }
    ui::info_line(&format!(
        "relaying {} ({}) from {} as {:?} on {bound} for {}; Ctrl-C stops.\non each receiver run: ferry get TICKET",
        ticket.name,
        fmt_bytes(ticket.size),
        from.join(", then "),
        args.name,
        audience(args)
    ));
    ui::out_line(&args.ticket_format.write(ticket));
}

/// The upstream download ended (the downstream may still be pulling).
/// `tensors`: the object is a tensor dict, whose pin (a fold of item hashes) is checked
/// once every item arrived.
pub(super) fn upstream_done(
    r: &Result<RelayReport, DownloadError>,
    size: u64,
    tensors: bool,
    json: bool,
) {
    match r {
        Ok(rep) => {
            if json {
                ui::json_line(&json!({
                    "event": "upstream",
                    "status": "verified",
                    "size": size,
                    "checked_groups": rep.checked_groups,
                    "sources": sources_json(rep),
                }));
            } else {
                let last = rep.sources.last().map_or("?", |s| s.source.as_str());
                ui::info_line(&format!(
                    "upstream: {} received from {last} and verified against the ticket ({})",
                    fmt_bytes(size),
                    if rep.checked_groups {
                        "each 1 MiB group checked before it was served"
                    } else if tensors {
                        "tensor-dict digest: each item checked for shape as it arrived, the dict's digest before any receiver could finish"
                    } else {
                        "whole-object digest only: the upstream serves no outboard"
                    }
                ));
            }
        }
        Err(e) => {
            if json {
                ui::json_line(
                    &json!({"event": "upstream", "status": "failed", "error": e.to_string()}),
                );
            } else {
                ui::err_line(&format!("{e}; failing the downstream receivers"));
            }
        }
    }
}

fn sources_json(rep: &RelayReport) -> serde_json::Value {
    rep.sources
        .iter()
        .map(|s| {
            json!({
                "source": s.source,
                "url": s.url,
                "bytes": s.bytes,
                "seconds": s.elapsed.as_secs_f64(),
                "error": s.error,
            })
        })
        .collect()
}

/// Everything the last report needs.
pub(super) struct Ending<'a> {
    pub args: &'a RelayArgs,
    pub relay: &'a Relay,
    pub upstream: &'a Result<RelayReport, DownloadError>,
    pub outcome: &'a TransferOutcome,
    pub watch: &'a Watch,
    pub names: &'a HashMap<String, String>,
    pub elapsed: Duration,
    pub interrupted: bool,
}

/// Print the sources, receivers and peak memory, and turn the outcome into the exit status.
pub(super) fn finish(e: &Ending<'_>, json: bool) -> CmdResult {
    // The relay schedules no peers of its own: everything downstream came from it.
    let sent = stats::receivers(e.watch, e.outcome, &[]);
    let size = e.relay.pin().size;
    let rss = peak_rss();
    if json {
        let mut v = outcome_json(e.outcome, e.names, e.elapsed.as_secs_f64());
        stats::put_json(&mut v, &sent, &[], size);
        v["upstream"] = match e.upstream {
            Ok(rep) => sources_json(rep),
            Err(_) => serde_json::Value::Null,
        };
        v["upstream_error"] = e.upstream.as_ref().err().map(ToString::to_string).into();
        v["bytes_received"] = e.relay.received().into();
        v["peak_rss"] = rss.into();
        ui::json_line(&v);
    } else {
        if let Ok(rep) = e.upstream {
            for s in &rep.sources {
                ui::info_line(&format!(
                    "  from {:<19} {:>11} in {:>6.1}s  {:>13}  {}",
                    s.source,
                    fmt_bytes(s.bytes),
                    s.elapsed.as_secs_f64(),
                    fmt_rate(s.bytes, s.elapsed),
                    s.error.as_deref().unwrap_or("verified")
                ));
            }
        }
        if !sent.is_empty() {
            for line in stats::lines(&sent, &[], size) {
                ui::info_line(&line);
            }
        }
        if let Some(rss) = rss {
            ui::info_line(&format!("relay peak RSS {}", fmt_bytes(rss)));
        }
    }
    if e.interrupted && !e.outcome.completed() {
        return Err(Failure::Interrupted(
            "interrupted: the relay stopped and its transaction was deleted".into(),
        ));
    }
    if let Err(err) = e.upstream {
        return Err(Failure::transfer(format!(
            "{err}; the downstream receivers were failed with this message (nothing unverified reaches their final paths): run the relay again when an upstream is back, or give it more tickets of the same object"
        )));
    }
    if e.outcome.completed() {
        if !json {
            ui::info_line(&format!(
                "done: {} got {} ({}) in {:.1}s",
                audience(e.args),
                e.relay.sources()[0].name,
                fmt_bytes(e.relay.pin().size),
                e.elapsed.as_secs_f64()
            ));
        }
        return Ok(());
    }
    Err(Failure::transfer(e.watch.explain(
        e.outcome,
        e.args.timeout,
        e.names,
    )))
}
