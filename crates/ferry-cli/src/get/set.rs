//! `ferry get` of a set ticket (one ticket for a whole serve): the verified manifest, then
//! every member ([`ferry::fetch_set`]), with one progress bar and ETA for the whole set.

use std::sync::Arc;
use std::time::Instant;

use ferry::fetch_set::{FetchSet, SetOptions, SetProgress};
use ferry::objects::ObjectsError;
use ferry::ticket::Ticket;
use ferry::{DownloadError, DownloadService};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::explain::explain;
use super::fetch::{download_options, fetch_options};
use crate::args::GetArgs;
use crate::exit::{CmdResult, Failure};
use crate::retry::resume_command;
use crate::ui;
use crate::units::{fmt_bytes, fmt_rate};

/// What `get` does for one set ticket.
pub struct SetJob<'a> {
    /// The command line.
    pub args: &'a GetArgs,
    /// Ctrl-C.
    pub cancel: &'a CancellationToken,
    /// `--json`.
    pub json: bool,
    /// Members at once.
    pub parallel: usize,
}

impl SetJob<'_> {
    /// Fetch the set `t` from `service`.
    pub async fn run(&self, service: &DownloadService, t: &Ticket) -> CmdResult {
        let args = self.args;
        let dl = download_options(args, self.cancel);
        let opts = SetOptions {
            fetch: fetch_options(args),
            parallel: self.parallel,
        };
        let set = FetchSet::open(service, t, &args.output, opts, dl.clone())
            .await
            .map_err(|e| self.open_failure(e, t))?;
        let total = set.total_size();
        let files = set.members().len();
        let kept = set.already_here();
        if !self.json {
            let here = if kept > 0 {
                format!(
                    "; {} already here ({} complete files kept)",
                    fmt_bytes(kept),
                    set.members().iter().filter(|m| m.already_here).count()
                )
            } else {
                String::new()
            };
            ui::info_line(&format!(
                "{}: {files} file{}, {}{here}",
                t.name,
                if files == 1 { "" } else { "s" },
                fmt_bytes(total)
            ));
        }
        let bar = ui::byte_bar(&t.name, Some(total));
        bar.set_position(kept);
        bar.reset_eta();
        let progress_bar = bar.clone();
        let json = self.json;
        let name = t.name.clone();
        let progress = Arc::new(move |p: &SetProgress| {
            progress_bar.set_position(p.bytes);
            progress_bar.set_message(format!("{}/{} files", p.files_done, p.files));
            if json {
                ui::json_line(&json!({
                    "event": "progress",
                    "name": name,
                    "bytes": p.bytes.saturating_sub(p.resumed_from),
                    "resumed_from": p.resumed_from,
                    "total": p.total,
                    "files_done": p.files_done,
                    "files": p.files,
                    "state": "active",
                }));
            }
        });
        let started = Instant::now();
        let outcome = set.run(service, dl, Some(progress)).await;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();

        let mut failures = Vec::new();
        let (mut moved, mut resumed) = (0u64, 0u64);
        for m in outcome.members {
            for note in &m.notes {
                if self.json {
                    ui::json_line(
                        &json!({"event": "note", "name": m.ticket.name, "message": note}),
                    );
                } else {
                    ui::err_line(&format!("ferry: note: {note}"));
                }
            }
            match m.result {
                Ok(got) => {
                    moved += got.transferred;
                    resumed += got.resumed_from;
                    if self.json {
                        ui::json_line(&json!({
                            "event": "done",
                            "set": t.name,
                            "name": m.ticket.name,
                            "path": got.path,
                            "size": m.ticket.size,
                            "bytes": got.transferred,
                            "resumed_from": got.resumed_from,
                            "blake3": got.verified.pin().map(|p| p.hex()),
                            "verified": got.verified.describe(),
                        }));
                    } else {
                        ui::out_line(&got.path.display().to_string());
                    }
                }
                Err(e) => {
                    let dest = args.output.join(&m.ticket.name);
                    failures.push(explain(e, &m.ticket, &dest, m.part.as_deref()));
                }
            }
        }
        let ok = files - failures.len();
        if self.json {
            ui::json_line(&json!({
                "event": "set",
                "name": t.name,
                "files": files,
                "files_ok": ok,
                "size": total,
                "bytes": moved,
                "resumed_from": resumed,
                "seconds": secs,
                "blake3": t.blake3,
            }));
        } else if failures.is_empty() {
            let rate = fmt_rate(moved, std::time::Duration::from_secs_f64(secs));
            let what = if resumed > 0 {
                format!(
                    "resumed at {} of {}: {} in {secs:.1}s, {rate}",
                    fmt_bytes(resumed),
                    fmt_bytes(total),
                    fmt_bytes(moved)
                )
            } else {
                format!("{} in {secs:.1}s, {rate}", fmt_bytes(total))
            };
            ui::info_line(&format!(
                "got {} ({files} file{}, {what}, verified: each file's size + BLAKE3 pinned by the ticket's manifest)",
                t.name,
                if files == 1 { "" } else { "s" }
            ));
        }
        if failures.is_empty() {
            return Ok(());
        }
        // Interrupted beats failed; report every failure but return the most telling one.
        failures.sort_by_key(|f| std::cmp::Reverse(f.code()));
        let resumable = failures[0].code() != 2;
        if resumable {
            let cmd = resume_command(args, t);
            if self.json {
                ui::json_line(&json!({"event": "resume", "name": t.name, "command": cmd}));
            } else {
                ui::err_line(&format!(
                    "ferry: {} of {files} files of {} arrived; to get the rest{}: {cmd}",
                    ok,
                    t.name,
                    if args.resume {
                        ""
                    } else {
                        " and keep partial data from now on"
                    }
                ));
            }
        }
        for f in failures.iter().skip(1) {
            ui::err_line(&format!("ferry: error: {f}"));
        }
        Err(failures.swap_remove(0))
    }

    /// Why a set could not be opened (its manifest fetched, checked, its destinations free).
    fn open_failure(&self, e: DownloadError, t: &Ticket) -> Failure {
        match e {
            DownloadError::Objects(ObjectsError::DestinationExists(p)) => Failure::usage(format!(
                "{} already exists; pass --force to overwrite it, --resume to keep the files of this set that are complete, or pick another directory with -o",
                p.display()
            )),
            DownloadError::Objects(other) => Failure::usage(format!(
                "cannot write the set {} to {}: {other}",
                t.name,
                self.args.output.display()
            )),
            DownloadError::Manifest(why) => Failure::transfer(format!(
                "refusing the set {} from {}: {why}; nothing was written (the ticket pins this manifest: ask its sender)",
                t.name, t.source
            )),
            other => explain(other, t, &self.args.output, None),
        }
    }
}
