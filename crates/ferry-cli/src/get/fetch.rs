//! `ferry get` of one file or tensor-dict ticket: open its destination (resuming a kept part
//! with `--resume`), download with a progress bar, and say what went wrong.

use std::path::Path;
use std::time::Instant;

use ferry::fetch::{Fetch, FetchOptions, Fetched};
use ferry::ticket::Ticket;
use ferry::{DownloadError, DownloadOptions, DownloadService};
use indicatif::ProgressBar;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::explain::{explain, unwritable};
use crate::args::GetArgs;
use crate::exit::{CmdResult, Failure};
use crate::ui;
use crate::units::fmt_bytes;

/// One finished download.
#[derive(Debug)]
pub(super) struct Got {
    /// What was fetched, where it is, how it was verified.
    pub fetched: Fetched,
    /// How long the download took.
    pub secs: f64,
}

/// The download options every `ferry get` download starts from: the request timeout asked
/// for, cancelled with the command, and each chunk written by the thread that read it off the
/// socket (the command runs on a current-thread runtime; a slow write hands the rest of the
/// download to a writer thread: `DownloadOptions::consume_on_task`).
pub(super) fn download_options(args: &GetArgs, cancel: &CancellationToken) -> DownloadOptions {
    DownloadOptions {
        per_request_timeout: args.request_timeout,
        cancel: Some(cancel.clone()),
        consume_on_task: true,
        ..DownloadOptions::default()
    }
}

/// The [`FetchOptions`] of every `ferry get` download: `--force` overwrites a file (and
/// discards a kept part of other content), `--resume` keeps and continues parts, synced
/// every `--sync-every`.
pub(super) fn fetch_options(args: &GetArgs) -> FetchOptions {
    FetchOptions {
        overwrite: args.force,
        resume: args.resume,
        sync_every: args.sync_every,
        discard_other_part: args.force,
    }
}

/// [`download_options`] that report the progress of `t`'s download on `bar` and, with
/// `json`, as `progress` events. `resumed_from`: the bytes that were here before this run
/// (added to the bar, and named in the events), when the download resumes a kept part.
pub(super) fn progress_options(
    args: &GetArgs,
    cancel: &CancellationToken,
    t: &Ticket,
    bar: &ProgressBar,
    resumed_from: Option<u64>,
    json: bool,
) -> DownloadOptions {
    let progress_bar = bar.clone();
    let name = t.name.clone();
    let size = t.size;
    download_options(args, cancel).with_progress(move |p| {
        progress_bar.set_position(resumed_from.unwrap_or(0) + p.bytes_done);
        if json {
            // `bytes`: transferred by this run; `resumed_from + bytes` of `total` are here.
            let mut v = json!({
                "event": "progress",
                "name": name,
                "bytes": p.bytes_done,
                "total": size,
                "state": format!("{:?}", p.state).to_lowercase(),
            });
            if let Some(r) = resumed_from {
                v["resumed_from"] = r.into();
            }
            ui::json_line(&v);
        }
    })
}

/// Download the object of `t` into `args.output`.
pub(super) async fn fetch_one(
    service: &DownloadService,
    args: &GetArgs,
    t: &Ticket,
    cancel: &CancellationToken,
    json: bool,
) -> CmdResult<Got> {
    let dest = args.output.join(&t.name);
    let fetch = Fetch::open(t, &args.output, fetch_options(args))
        .await
        .map_err(|e| match e {
            DownloadError::Objects(e) => unwritable(&e, &dest),
            other => Failure::usage(format!("cannot write {}: {other}", dest.display())),
        })?;
    if let Some(why) = fetch.discarded_part() {
        ui::err_line(&format!("ferry: {why}; starting {} over", t.name));
    }
    let resumed_from = fetch.resumed_from();
    if resumed_from > 0 && !json {
        ui::info_line(&format!(
            "resuming {} at {} of {} (the kept part is checked against the ticket with the rest)",
            t.name,
            fmt_bytes(resumed_from),
            fmt_bytes(t.size)
        ));
    }
    let bar = ui::byte_bar(&t.name, Some(t.size));
    bar.set_position(resumed_from);
    let opts = progress_options(args, cancel, t, &bar, Some(resumed_from), json);
    let part = fetch.part_path().map(Path::to_path_buf);
    let started = Instant::now();
    let result = fetch.run(service, opts).await;
    bar.finish_and_clear();
    let fetched = result.map_err(|e| explain(e, t, &dest, part.as_deref()))?;
    Ok(Got {
        fetched,
        secs: started.elapsed().as_secs_f64(),
    })
}
