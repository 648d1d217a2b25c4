//! What `ferry get` prints when it is done: a line (or `done` event) per object fetched, and
//! for failures every error, how to resume, and the most telling one as the exit status.

use ferry::ticket::{Kind, Ticket};
use serde_json::json;

use super::fetch::Got;
use crate::args::GetArgs;
use crate::exit::{CmdResult, Failure};
use crate::retry::resume_command;
use crate::ui;
use crate::units::{fmt_bytes, fmt_rate};

/// The success line (text) or `done` event (JSON) of one download.
pub(super) fn report_done(t: &Ticket, got: &Got, json: bool) {
    let pin = got.fetched.verified.pin();
    if json {
        ui::json_line(&json!({
            "event": "done",
            "name": t.name,
            "path": got.fetched.path,
            "size": t.size,
            "bytes": got.fetched.transferred,
            "resumed_from": got.fetched.resumed_from,
            "seconds": got.secs,
            "blake3": pin.map(|p| p.hex()),
            "verified": got.fetched.verified.describe(),
        }));
        return;
    }
    let moved = got.fetched.transferred;
    let rate = fmt_rate(moved, std::time::Duration::from_secs_f64(got.secs));
    let what = if got.fetched.resumed_from > 0 {
        format!(
            "resumed at {} of {}: {} in {:.1}s, {rate}",
            fmt_bytes(got.fetched.resumed_from),
            fmt_bytes(t.size),
            fmt_bytes(moved),
            got.secs
        )
    } else {
        format!("{} in {:.1}s, {rate}", fmt_bytes(t.size), got.secs)
    };
    ui::info_line(&format!(
        "got {} ({what}, verified: {})",
        t.name,
        got.fetched.verified.describe()
    ));
    ui::out_line(&got.fetched.path.display().to_string());
}

/// Report the failed single-object downloads (`failures`) and sets (`set_failures`, which
/// already printed their own but the one they returned), with how to resume each file, and
/// return the most telling failure (interrupted beats failed).
pub(super) fn report_failures(
    args: &GetArgs,
    mut failures: Vec<(&Ticket, Failure)>,
    mut set_failures: Vec<Failure>,
    json: bool,
) -> CmdResult {
    if failures.is_empty() {
        // a set already printed its own failures but the one it returned
        set_failures.sort_by_key(|f| std::cmp::Reverse(f.code()));
        return set_failures.into_iter().next().map_or(Ok(()), Err);
    }
    for f in &set_failures {
        ui::err_line(&format!("ferry: error: {f}"));
    }
    // Each failed file download can be taken up again: say exactly how.
    for (t, f) in &failures {
        if t.kind == Kind::File && f.code() != 2 {
            let cmd = resume_command(args, t);
            if json {
                ui::json_line(&json!({"event": "resume", "name": t.name, "command": cmd}));
            } else if args.resume {
                ui::err_line(&format!("ferry: to resume {}: {cmd}", t.name));
            } else {
                ui::err_line(&format!(
                    "ferry: to retry {} and keep partial data from now on: {cmd}",
                    t.name
                ));
            }
        }
    }
    // Interrupted beats failed; report every failure but return the most telling one.
    failures.sort_by_key(|(_, f)| std::cmp::Reverse(f.code()));
    for (t, f) in failures.iter().skip(1) {
        ui::err_line(&format!("ferry: error: {}: {f}", t.name));
    }
    Err(failures.swap_remove(0).1)
}
