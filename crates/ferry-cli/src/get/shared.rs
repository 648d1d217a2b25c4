//! `ferry get --share` of one file ticket: peer-assisted download (the sender says which
//! source to pull from), a progress bar, and the seeding that follows.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use ferry::peers::{fetch_with_peers, Seeding, ShareOptions};
use ferry::ticket::Ticket;
use ferry::{DownloadError, DownloadService};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::explain::{explain, unwritable};
use super::fetch::{fetch_options, progress_options, Got};
use crate::args::GetArgs;
use crate::exit::CmdResult;
use crate::ui;
use crate::units::fmt_bytes;

/// Download `t` in peer-assisted mode, offering `offer_url` to other receivers; the seeding
/// that follows is pushed to `seeds`.
pub(super) async fn fetch_shared(
    service: &DownloadService,
    args: &GetArgs,
    t: &Ticket,
    cancel: &CancellationToken,
    json: bool,
    offer_url: &str,
    seeds: &Mutex<Vec<Seeding>>,
) -> CmdResult<Got> {
    let dest = args.output.join(&t.name);
    let part = dest.with_file_name(format!(
        "{}.part",
        dest.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    ));
    let fopts = fetch_options(args);
    let bar = ui::byte_bar(&t.name, Some(t.size));
    let opts = progress_options(args, cancel, t, &bar, None, json);
    let share = ShareOptions {
        offer_url: Some(offer_url.to_string()),
        ..ShareOptions::default()
    };
    let started = Instant::now();
    let result = fetch_with_peers(service, t, &args.output, fopts, opts, share).await;
    bar.finish_and_clear();
    let (fetched, report, seeding) = result.map_err(|e| match e {
        DownloadError::Objects(e) => unwritable(&e, &dest),
        other => explain(other, t, &dest, Some(Path::new(&part))),
    })?;
    for liar in &report.lying_sources {
        ui::err_line(&format!(
            "ferry: warning: the peer {liar} sent data that does not match the ticket's digest; it was discarded and reported to the sender, and {} was fetched again",
            t.name
        ));
    }
    let peers: Vec<&str> = report
        .sources
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if json {
        ui::json_line(&json!({
            "event": "peers",
            "name": t.name,
            "scheduled": report.scheduled,
            "sources": report.sources,
            "lying_sources": report.lying_sources,
        }));
    } else if !peers.is_empty() {
        ui::info_line(&format!(
            "{}: pulled from peers {}",
            t.name,
            peers.join(", ")
        ));
    }
    seeds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(seeding);
    Ok(Got {
        fetched,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Keep serving other receivers until the sender releases this one (or stops answering and
/// nobody pulls), or Ctrl-C.
pub(super) async fn linger(seeds: Vec<Seeding>, cancel: &CancellationToken, json: bool) {
    if seeds.is_empty() {
        return;
    }
    if !json {
        ui::info_line(
            "sharing with other receivers until the sender releases this one (Ctrl-C stops)",
        );
    }
    let served: u64 =
        futures::future::join_all(seeds.into_iter().map(|s| s.serve_until_released(cancel)))
            .await
            .into_iter()
            .sum();
    if json {
        ui::json_line(&json!({"event": "shared", "bytes_served": served}));
    } else {
        ui::info_line(&format!("served {} to other receivers", fmt_bytes(served)));
    }
}
