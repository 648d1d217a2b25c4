//! `ferry relay TICKET... --listen URL`: pull an object from upstream (`ferry serve` or another
//! relay) and serve it to downstream receivers while it arrives ([`ferry::relay::Relay`]). It
//! prints the downstream ticket (same name, size and digest, this relay's address), exits 0
//! when the upstream copy verified and every expected downstream receiver has it, 1 when the
//! upstream is lost (every source failed), the content does not match the ticket, or the
//! downstream transfer fails or times out, 130 on Ctrl-C.
//!
//! This module starts the cell, the service, the relay and the transaction; `report` says
//! what happened (upstream sources, downstream receivers), as text or `--json`.

mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::core::{Downloadable, TxConfig};
use ferry::relay::outboard::OutboardIndex;
use ferry::relay::{Relay, RelayOptions};
use ferry::ticket::{Kind, Ticket};
use ferry::{DownloadOptions, DownloadService, ObjectDownloader};
use tokio::sync::broadcast::error::RecvError;

use crate::args::RelayArgs;
use crate::cells;
use crate::downstream;
use crate::exit::{CmdResult, Failure};
use crate::interrupt;
use crate::serve::{relay_listen_url, relay_paced_chunk, start_service};
use crate::throttle::{RateLimiter, Throttled};
use crate::ui;
use crate::watch::Watch;

/// Run `ferry relay`.
pub async fn run(args: RelayArgs, json: bool) -> CmdResult {
    let tickets = parse(&args.tickets)?;
    cells::check_sender_name(&args.name)?;
    for a in &args.allow {
        cells::check_name("--allow", a)?;
    }
    let tls = cells::tls_config(&args.tls)?;
    if let (Some(t), None) = (tickets.iter().find(|t| t.tls), &tls) {
        return Err(Failure::usage(format!(
            "the ticket of {} is for a TLS sender ({}): give --tls-cert, --tls-key and --tls-ca",
            t.name,
            t.url()
        )));
    }
    let url = relay_listen_url(&args.listen, tls.is_some())?;
    downstream::warn_allow_without_tls(&args.allow, tls.is_some(), &args.listen, "relay");
    let n_expected = if args.allow.is_empty() {
        u64::from(args.receivers)
    } else {
        args.allow.len() as u64
    };
    let chunk = relay_paced_chunk(
        args.chunk.unwrap_or(ferry::objects::DEFAULT_CHUNK_SIZE),
        args.limit_rate,
        n_expected,
    );
    let relay = Relay::new(
        tickets,
        RelayOptions {
            spill_dir: args.spill_dir.clone().unwrap_or_else(std::env::temp_dir),
            chunk_size: chunk,
            ..RelayOptions::default()
        },
    )
    .map_err(|e| Failure::usage(format!("cannot relay: {e}")))?;
    let (cell, bound) = downstream::listen(&args.name, tls, &url).await?;
    let service = start_service(&cell);
    let result = relay_and_wait(&service, &args, &relay, &bound, json).await;
    service.shutdown().await;
    cell.shutdown().await;
    result
}

/// Wait until no pull is being served (each waiting one now answers with the relay's error,
/// which is what its receiver prints), for at most a few seconds.
async fn let_pulls_answer(service: &DownloadService) {
    const GRACE: Duration = Duration::from_secs(10);
    let deadline = Instant::now() + GRACE;
    while service.pulls_in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tickets, parsed (several are sources of one object, checked by `Relay::new`).
fn parse(raw: &[String]) -> CmdResult<Vec<Ticket>> {
    raw.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<Ticket>().map_err(|e| {
                let which = if raw.len() > 1 {
                    format!("ticket {}: ", i + 1)
                } else {
                    String::new()
                };
                Failure::usage(format!("{which}{e}"))
            })
        })
        .collect()
}

/// The upstream download ended: report it; on failure, end the downstream transaction.
async fn upstream_ended(
    r: &Result<ferry::relay::RelayReport, ferry::DownloadError>,
    service: &DownloadService,
    tx: &ObjectDownloader,
    limiter: Option<&RateLimiter>,
    bar: &indicatif::ProgressBar,
    relay: &Relay,
    json: bool,
) {
    bar.finish_and_clear();
    if let Err(e) = r {
        // Every downstream pull is answered with the error from now on: the pulls waiting for
        // bytes answer first, then the transaction goes.
        tracing::debug!(error = %e, "upstream failed");
        let_pulls_answer(service).await;
        tx.delete_transaction().ok();
        if let Some(l) = limiter {
            l.stop();
        }
    }
    let tensors = relay.sources()[0].kind == Kind::Tensors;
    report::upstream_done(r, relay.pin().size, tensors, json);
}

/// Register the relay's object, print the downstream ticket, and run the upstream download
/// and the downstream transaction until both are over.
async fn relay_and_wait(
    service: &DownloadService,
    args: &RelayArgs,
    relay: &Relay,
    bound: &str,
    json: bool,
) -> CmdResult {
    let cfg = if args.allow.is_empty() {
        TxConfig::new(args.timeout).with_num_receivers(args.receivers as usize)
    } else {
        TxConfig::new(args.timeout).with_receiver_ids(args.allow.clone())
    }
    .with_progress(Duration::from_millis(250))
    .with_reconnect_timeout(args.reconnect_timeout);
    let tx = ObjectDownloader::new(service, cfg)
        .map_err(|e| Failure::usage(format!("cannot start the transfer: {e}")))?;
    let limiter = args.limit_rate.map(RateLimiter::new);

    let cancel = interrupt::on_signal();
    let size = relay.pin().size;
    let bar = ui::byte_bar(&format!("from {}", relay.sources()[0].source), Some(size));
    let progress_bar = bar.clone();
    let opts = DownloadOptions {
        per_request_timeout: args.request_timeout,
        cancel: Some(cancel.clone()),
        ..DownloadOptions::default()
    }
    .with_progress(move |p| progress_bar.set_position(p.bytes_done));
    let started = Instant::now();
    let upstream = relay.run(service, opts);
    tokio::pin!(upstream);
    // A tensor dict's downstream plan needs its item count, which comes with the upstream's
    // first reply: wait for it (or for the upstream to end) so that receivers pull pipelined.
    let mut early = None;
    let tensors = relay.sources()[0].kind == Kind::Tensors;
    if tensors {
        tokio::select! {
            r = &mut upstream => early = Some(r),
            _ = relay.wait_plan(args.request_timeout) => {}
        }
    }
    let obj: Arc<dyn Downloadable> = relay.object();
    let obj = match &limiter {
        Some(l) => Arc::new(Throttled::new(obj, Arc::clone(l))),
        None => obj,
    };
    let rid = tx
        .add_object(obj)
        .map_err(|e| Failure::usage(format!("cannot serve the relayed object: {e}")))?;
    let addr = ferry::ticket::advertised_addr(bound, args.advertise.as_deref());
    let ticket = relay.ticket(&args.name, &addr, bound.starts_with("stcp://"), &rid);
    // Downstream relays check each group against the outboard this relay holds.
    let outboards = OutboardIndex::new();
    outboards.add_relay(rid.as_str(), relay);
    outboards.serve_on(service.cell());
    // The outboard first, so that a relay started from our ticket finds it; a first source
    // that fails here is tried again (then the others) by the run.
    if let Err(e) = relay.prepare(service, args.request_timeout).await {
        tracing::info!(error = %e, "preparing the first source");
    }
    report::announce(args, relay, &ticket, bound, json);

    let waiter = tx.waiter();
    let wait = waiter.wait();
    tokio::pin!(wait);
    let mut events = service.events();
    let mut watch = Watch::new(size, json, args.reconnect_timeout);
    let names = [(rid.to_string(), ticket.name.clone())]
        .into_iter()
        .collect();
    let mut up = None;
    if let Some(r) = early {
        upstream_ended(&r, service, &tx, limiter.as_deref(), &bar, relay, json).await;
        up = Some(r);
    }
    let mut interrupted = false;
    let outcome = loop {
        tokio::select! {
            r = &mut upstream, if up.is_none() => {
                upstream_ended(&r, service, &tx, limiter.as_deref(), &bar, relay, json).await;
                up = Some(r);
            }
            o = &mut wait => break o,
            _ = cancel.cancelled(), if !interrupted => {
                interrupted = true;
                if !json {
                    ui::info_line("interrupted: deleting the transaction (receivers in progress will fail)");
                }
                relay.close("the relay was interrupted (Ctrl-C)");
                tx.delete_transaction().ok();
                if let Some(l) = &limiter {
                    l.stop();
                }
            }
            ev = events.recv() => match ev {
                Ok(ev) => watch.event(&ev, &names),
                Err(RecvError::Lagged(_) | RecvError::Closed) => {}
            },
        }
    };
    // The downstream may finish while the upstream download still confirms its last chunk.
    let up = match up {
        Some(r) => r,
        None => {
            let r = upstream.await;
            bar.finish_and_clear();
            report::upstream_done(&r, size, tensors, json);
            r
        }
    };
    watch.drain(&mut events, &names);
    watch.finish();
    let elapsed = started.elapsed();
    let Some(outcome) = outcome else {
        return Err(Failure::transfer(
            "the relay's transfer ended without an outcome (the download service stopped)",
        ));
    };
    report::finish(
        &report::Ending {
            args,
            relay,
            upstream: &up,
            outcome: &outcome,
            watch: &watch,
            names: &names,
            elapsed,
            interrupted,
        },
        json,
    )
}
