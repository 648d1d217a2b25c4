//! What `ferry serve` prints before it waits: whom it serves and how, and the tickets (a set's
//! one, or one per object), as text or `ticket` events.

use ferry::ticket::Ticket;
use serde_json::json;

use super::register::Registered;
use crate::args::{ServeArgs, TicketFormat};
use crate::downstream::receivers_in_words;
use crate::ui;
use crate::units::fmt_bytes;

/// Whom this serve is for, in words: `N receivers`, the `--allow` names, or anyone (with
/// `--keep-serving`).
pub(super) fn audience(args: &ServeArgs) -> String {
    if args.keep_serving {
        "anyone with the ticket until Ctrl-C".to_string()
    } else {
        receivers_in_words(args.receivers, &args.allow)
    }
}

/// Say what is served on `bound`, for whom, at what pace (`chunk`: the file chunk size, below
/// `given_chunk` when a rate cap made it smaller), and print the tickets.
pub(super) fn announce(
    args: &ServeArgs,
    reg: &Registered,
    bound: &str,
    chunk: u64,
    given_chunk: u64,
    json: bool,
) {
    let objects = reg.tickets.len();
    let who = audience(args);
    if !json {
        ui::info_line(&format!(
            "serving {objects} object{} ({}) as {:?} on {bound} for {who}; Ctrl-C stops.\non each receiver run: ferry get {}",
            if objects == 1 { "" } else { "s" },
            fmt_bytes(reg.payload),
            args.name,
            match (&reg.set, objects) {
                (Some(_), _) | (None, 1) => "TICKET",
                (None, _) => "TICKET...",
            },
        ));
    }
    if let (Some(rate), false) = (args.limit_rate, json) {
        ui::info_line(&format!(
            "rate cap: {}/s for all receivers together, in turns of {} per receiver{}",
            fmt_bytes(rate),
            fmt_bytes(chunk),
            if chunk < given_chunk {
                format!(
                    " (smaller than {} {}, so that each receiver hears from this sender several times a second)",
                    if args.chunk.is_some() { "--chunk" } else { "the default chunk" },
                    fmt_bytes(given_chunk)
                )
            } else {
                String::new()
            }
        ));
    }
    match &reg.set {
        Some(t) if json => ui::json_line(&set_json(t, &reg.tickets, args.ticket_format)),
        Some(t) => ui::out_line(&args.ticket_format.write(t)),
        None => {
            for t in &reg.tickets {
                if json {
                    ui::json_line(&ticket_json(t, args.ticket_format));
                } else {
                    ui::out_line(&args.ticket_format.write(t));
                }
            }
        }
    }
}

/// The `ticket` event of one object.
pub(crate) fn ticket_json(t: &Ticket, format: TicketFormat) -> serde_json::Value {
    json!({
        "event": "ticket",
        "ticket": format.write(t),
        "url": t.to_url(),
        "name": t.name,
        "kind": t.kind.as_str(),
        "size": t.size,
        "ref_id": t.ref_id,
        "source": t.source,
        "address": t.addr,
        "blake3": t.blake3,
    })
}

/// The `ticket` event of a set: the set's ticket, and each member as `ticket_json` has it
/// (the per-object tickets, for information: receivers of a set pull its manifest, so the
/// serve completes only when they use the set ticket; `--ticket-per-object` serves no manifest).
fn set_json(set: &Ticket, members: &[Ticket], format: TicketFormat) -> serde_json::Value {
    let mut v = ticket_json(set, format);
    v["objects"] = members.iter().map(|t| ticket_json(t, format)).collect();
    v["total"] = json!(members.iter().map(|t| t.size).sum::<u64>());
    v
}
