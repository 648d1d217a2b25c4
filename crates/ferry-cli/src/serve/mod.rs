//! `ferry serve`: register files (and tensor dicts) in one transaction, print a ticket per
//! object, and exit when every expected receiver has them all (0), or when the transfer fails or
//! times out (1), or on Ctrl-C (130, after deleting the transaction). With `--keep-serving` it
//! serves anyone with the ticket until Ctrl-C, then exits 0 with a summary.
//!
//! This module starts the cell, the service and the transaction; below it, top down:
//! `entries` (what the PATH arguments name), `register` (objects and a set's manifest in the
//! transaction), `tickets` (what is printed before waiting), `wait` (the wait for the outcome
//! and its report), and `address` (where it listens, what tickets carry).

mod address;
mod entries;
mod register;
mod tickets;
mod wait;

use std::time::Duration;

use ferry::cellnet::Cell;
use ferry::core::{ServiceConfig, TxConfig};
use ferry::ticket::Kind;
use ferry::{DownloadService, ObjectDownloader, ServiceOptions};

use crate::args::ServeArgs;
use crate::cells;
use crate::downstream;
use crate::exit::{CmdResult, Failure};
use crate::interrupt;
use crate::throttle::RateLimiter;
use address::listen_url;
use entries::{collect, Entry};
use register::{paced_chunk, register, Load, DEFAULT_CHUNK};
use tickets::announce;
use wait::wait_and_report;

// What `ferry relay` shares with serve: where it listens, how it paces, how tickets print.
pub(crate) use address::listen_url as relay_listen_url;
pub(crate) use register::paced_chunk as relay_paced_chunk;
pub(crate) use tickets::ticket_json;

/// Start the download service. With `--allow` the transaction declares its receivers
/// (`receiver_ids`), and the engine answers pulls from any other cell with `invalid_request`
/// and the typed reason `NOT_EXPECTED_RECEIVER`, which `ferry get` turns into its message.
/// NVFlare's identity mode would serve such a cell and only not count it; Ferry's engine
/// refuses by default, and this keeps it explicit. In count mode (`--receivers N`) the first N
/// cells to pull hold the places and others are refused (`RECEIVER_LIMIT_REACHED`); a
/// receiver that cancels gives its place back, and one that failed may come back under its
/// name while the transfer is live. An outsider's confirm or cancel changes nothing: it never
/// pulled, so the engine has no slot for it.
pub(crate) fn start_service(cell: &Cell) -> DownloadService {
    DownloadService::new(
        cell,
        ServiceOptions {
            engine: ServiceConfig {
                refuse_undeclared: true,
                count_slots: true,
                reopen_failed: true,
                ..ServiceConfig::default()
            },
            ..ServiceOptions::default()
        },
    )
}

/// Run `ferry serve`.
pub async fn run(args: ServeArgs, json: bool) -> CmdResult {
    let entries = collect(&args.paths, args.tensors)?;
    if let (Some(_), Some(t)) = (args.chunk, entries.iter().find(|e| e.kind == Kind::Tensors)) {
        return Err(Failure::usage(format!(
            "--chunk sets the chunk size of plain files, but {} is served as a tensor dict (--tensors), which travels one whole tensor per chunk; drop --chunk, or drop --tensors to serve it as a plain file",
            t.path.display()
        )));
    }
    for a in &args.allow {
        cells::check_name("--allow", a)?;
    }
    let tls = cells::tls_config(&args.tls)?;
    let url = listen_url(&args.listen, tls.is_some())?;
    downstream::warn_allow_without_tls(&args.allow, tls.is_some(), &args.listen, "serve");
    cells::check_sender_name(&args.name)?;
    let (cell, bound) = downstream::listen(&args.name, tls, &url).await?;
    let service = start_service(&cell);
    let result = serve(&service, &args, &entries, &bound, json).await;
    service.shutdown().await;
    cell.shutdown().await;
    result
}

/// Answer relays' outboard requests for the plain files served (each computed at its first
/// request, with one read of the file), so that a relay checks each group before serving it
/// (see `ferry::relay::outboard`).
fn serve_outboards(service: &DownloadService, entries: &[Entry], reg: &register::Registered) {
    let index = ferry::relay::outboard::OutboardIndex::new();
    for (e, t) in entries.iter().zip(&reg.tickets) {
        if t.kind == Kind::File {
            index.add_file(&t.ref_id, e.path.clone(), t.size);
        }
    }
    index.serve_on(service.cell());
}

/// Open the transaction, register the entries, print the tickets, and wait for the outcome.
async fn serve(
    service: &DownloadService,
    args: &ServeArgs,
    entries: &[Entry],
    bound: &str,
    json: bool,
) -> CmdResult {
    let cfg = if args.keep_serving {
        // Unknown count: never finishes by itself, serves any number of receivers, no
        // inactivity timeout; Ctrl-C ends it.
        TxConfig::new(Duration::MAX)
    } else if args.allow.is_empty() {
        TxConfig::new(args.timeout).with_num_receivers(args.receivers as usize)
    } else {
        TxConfig::new(args.timeout).with_receiver_ids(args.allow.clone())
    };
    // What the objects learn is what the engine will enforce: one translation, the engine's.
    let expected = cfg
        .expected_receivers()
        .map_err(|e| Failure::usage(format!("cannot start the transfer: {e}")))?;
    let cfg = cfg
        .with_progress(Duration::from_millis(250))
        .with_reconnect_timeout(args.reconnect_timeout);
    let tx = ObjectDownloader::new(service, cfg)
        .map_err(|e| Failure::usage(format!("cannot start the transfer: {e}")))?;
    let limiter = args.limit_rate.map(RateLimiter::new);
    let n_expected = if args.allow.is_empty() {
        args.receivers as u64
    } else {
        args.allow.len() as u64
    };
    let given_chunk = args.chunk.unwrap_or(DEFAULT_CHUNK);
    let chunk = paced_chunk(given_chunk, args.limit_rate, n_expected);
    let cancel = interrupt::on_signal();
    let load = Load {
        chunk,
        expected: &expected,
        limiter: limiter.as_ref(),
    };
    let reg = register(&tx, args, entries, bound, &load, &cancel).await?;
    serve_outboards(service, entries, &reg);
    // Peer-assisted mode (unless --no-peers): receivers that offer to serve are scheduled.
    let peers = crate::peers::start_coordinator(service.cell(), &args.peers, &reg.tickets);
    announce(args, &reg, bound, chunk, given_chunk, json);
    let result = wait_and_report(
        &tx,
        args,
        &reg,
        limiter.as_ref(),
        &cancel,
        peers.as_ref(),
        json,
    )
    .await;
    if let Some(p) = peers {
        p.close();
        p.shutdown().await;
    }
    result
}
