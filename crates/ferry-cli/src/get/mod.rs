//! `ferry get`: download the objects of one or more tickets, verify them, print where they are.
//!
//! This module connects to each sender and hands out the tickets; below it, top down:
//! `targets` (tickets parsed, destinations checked up front), `set` (a set ticket) and `fetch`
//! (one object), `report` (what is printed at the end), and `explain` (how a failure reads).

mod explain;
mod fetch;
mod report;
mod set;
mod shared;
mod targets;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ferry::ticket::{Kind, Ticket};
use ferry::{DownloadService, ServiceOptions};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::args::GetArgs;
use crate::cells;
use crate::exit::{CmdResult, Failure};
use crate::interrupt;
use fetch::fetch_one;
use report::{report_done, report_failures};
use set::SetJob;
use targets::{destinations, parse_tickets};

/// Downloads run at once (more tickets wait their turn).
const PARALLEL_DOWNLOADS: usize = 4;

/// Run `ferry get`.
pub async fn run(args: GetArgs, json: bool) -> CmdResult {
    let tickets = parse_tickets(&args.tickets)?;
    let tls = cells::tls_config(&args.tls)?;
    if tls.is_none() && tickets.iter().any(|t| t.tls) {
        return Err(Failure::usage(
            "this ticket is for a TLS sender (ferry+stcp://); pass --tls-cert, --tls-key and --tls-ca",
        ));
    }
    let name = match (&args.name, &args.tls.tls_cert) {
        (Some(n), _) => n.clone(),
        (None, Some(cert)) if tls.is_some() => cells::cert_common_name(cert)?,
        _ => format!("ferry-get-{}", std::process::id()),
    };
    destinations(&tickets, &args.output, args.force)?;
    // One cell per sender address: two senders may carry the same name (the default
    // `ferry-sender`), and one cell routes by name, so a shared cell would mix them up.
    let urls: BTreeSet<String> = tickets.iter().map(Ticket::url).collect();
    let mut cells = BTreeMap::new();
    for url in &urls {
        cells.insert(url.clone(), cells::build_cell(&name, tls.clone())?);
    }
    let cancel = interrupt::on_signal();
    let mut services = BTreeMap::new();
    let mut shares = BTreeMap::new();
    let mut result = Ok(());
    for (url, cell) in &cells {
        let connected = tokio::select! {
            r = cell.connect(url) => r.map_err(|e| cells::connect_failure(url, &e)),
            _ = cancel.cancelled() => Err(Failure::Interrupted("interrupted while connecting".into())),
        };
        // the cell that answered must be the sender each ticket names (or route for it)
        let checked = connected.and_then(|peer| {
            tickets
                .iter()
                .filter(|t| &t.url() == url)
                .try_for_each(|t| cells::check_sender(url, peer.as_str(), &t.source, t.tls))
        });
        if let Err(f) = checked {
            result = Err(f);
            break;
        }
        // --share: listen where other receivers reach this one (peer-assisted mode)
        match listen_for_peers(&args, &tickets, url, cell, tls.is_some()).await {
            Ok(Some(offer)) => {
                shares.insert(url.clone(), offer);
            }
            Ok(None) => {}
            Err(f) => {
                result = Err(f);
                break;
            }
        }
        services.insert(
            url.clone(),
            DownloadService::new(cell, ServiceOptions::default()),
        );
    }
    if result.is_ok() {
        result = fetch_all(&services, &shares, &args, &tickets, &cancel, json).await;
    }
    for service in services.values() {
        service.shutdown().await;
    }
    for cell in cells.values() {
        cell.shutdown().await;
    }
    result
}

/// Fetch every ticket: sets one after the other, the other tickets [`PARALLEL_DOWNLOADS`] at
/// once; then report.
async fn fetch_all(
    services: &BTreeMap<String, DownloadService>,
    shares: &BTreeMap<String, String>,
    args: &GetArgs,
    tickets: &[Ticket],
    cancel: &CancellationToken,
    json: bool,
) -> CmdResult {
    let (sets, tickets): (Vec<&Ticket>, Vec<&Ticket>) =
        tickets.iter().partition(|t| t.kind == Kind::Set);
    let mut set_failures = Vec::new();
    for t in sets {
        let job = SetJob {
            args,
            cancel,
            json,
            parallel: PARALLEL_DOWNLOADS,
        };
        let r = match services.get(&t.url()) {
            Some(service) => job.run(service, t).await,
            None => Err(Failure::transfer(format!("no connection to {}", t.url()))),
        };
        if let Err(f) = r {
            set_failures.push(f);
        }
    }
    let slots = Arc::new(Semaphore::new(PARALLEL_DOWNLOADS));
    let seeds = std::sync::Mutex::new(Vec::new());
    let seeds_ref = &seeds;
    let jobs = tickets.into_iter().map(|t| {
        let slots = Arc::clone(&slots);
        async move {
            let _slot = slots.acquire().await;
            let offer = shares.get(&t.url()).filter(|_| t.kind == Kind::File);
            let r = match (services.get(&t.url()), offer) {
                (Some(service), Some(offer)) => {
                    shared::fetch_shared(service, args, t, cancel, json, offer, seeds_ref).await
                }
                (Some(service), None) => fetch_one(service, args, t, cancel, json).await,
                (None, _) => Err(Failure::transfer(format!("no connection to {}", t.url()))),
            };
            (t, r)
        }
    });
    let results = futures::future::join_all(jobs).await;
    let mut failures = Vec::new();
    for (t, r) in results {
        match r {
            Ok(got) => report_done(t, &got, json),
            Err(f) => failures.push((t, f)),
        }
    }
    let result = report_failures(args, failures, set_failures, json);
    let seeds = seeds.into_inner().unwrap_or_else(|p| p.into_inner());
    shared::linger(seeds, cancel, json).await;
    result
}

/// With `--share`: listen for other receivers on `cell` (connected to the sender at `url`)
/// and return the URL to offer them.
async fn listen_for_peers(
    args: &GetArgs,
    tickets: &[Ticket],
    url: &str,
    cell: &ferry::cellnet::Cell,
    tls: bool,
) -> CmdResult<Option<String>> {
    let Some(t) = tickets.iter().find(|t| t.url() == url) else {
        return Ok(None);
    };
    let Some(listen) = crate::peers::share_listen_url(&args.peers, t, tls)? else {
        return Ok(None);
    };
    let bound = cell.listen(&listen).await.map_err(|e| {
        Failure::usage(format!(
            "--share: cannot listen on {listen} ({e}); pick an address with --share-listen tcp://HOST:PORT"
        ))
    })?;
    crate::peers::advertised(&bound, t).map(Some)
}
