//! How `ferry serve` ends: it waits for the transaction's outcome while reporting its events
//! (progress, receivers done or failed), deletes the transaction on Ctrl-C, and turns the
//! outcome into the exit status and its last words.

use std::sync::Arc;
use std::time::Instant;

use ferry::peers::PeerCoordinator;
use ferry::ObjectDownloader;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::register::Registered;
use super::tickets::audience;
use crate::args::ServeArgs;
use crate::exit::{CmdResult, Failure};
use crate::stats;
use crate::throttle::RateLimiter;
use crate::ui;
use crate::units::fmt_bytes;
use crate::watch::{outcome_json, Watch};

/// Wait for the outcome of `tx` (serving `reg`) and report it, with who fed whom when `peers`
/// schedules receivers. Ctrl-C deletes the transaction and stops `limiter`'s waits.
pub(super) async fn wait_and_report(
    tx: &ObjectDownloader,
    args: &ServeArgs,
    reg: &Registered,
    limiter: Option<&Arc<RateLimiter>>,
    cancel: &CancellationToken,
    peers: Option<&PeerCoordinator>,
    json: bool,
) -> CmdResult {
    let service = tx.service();
    let started = Instant::now();
    let waiter = tx.waiter();
    let wait = waiter.wait();
    tokio::pin!(wait);
    let mut events = service.events();
    let mut watch = Watch::new(reg.total_bytes, json, args.reconnect_timeout);
    let mut interrupted = false;
    let outcome = loop {
        tokio::select! {
            o = &mut wait => break o,
            _ = cancel.cancelled(), if !interrupted => {
                interrupted = true;
                if !json {
                    ui::info_line(if args.keep_serving {
                        "stopping: deleting the transaction (receivers in progress will fail)"
                    } else {
                        "interrupted: deleting the transaction (receivers in progress will fail)"
                    });
                }
                if let Err(e) = tx.delete_transaction() {
                    tracing::debug!(error = %e, "delete after interrupt");
                }
                // Pulls waiting for their turn under --limit-rate end now, not at their turn.
                if let Some(l) = limiter {
                    l.stop();
                }
            }
            ev = events.recv() => match ev {
                Ok(ev) => watch.event(&ev, &reg.names),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => {}
            },
        }
    };
    // Events of the settling batch (the last receivers' DownloadedToOne) may still be queued:
    // the waiter resolves while they are dispatched.
    watch.drain(&mut events, &reg.names);
    watch.finish();
    let elapsed = started.elapsed();
    let Some(outcome) = outcome else {
        return Err(Failure::transfer(
            "the transfer ended without an outcome (the download service stopped)",
        ));
    };
    // What each receiver was sent, and who fed whom in peer-assisted mode.
    let scheduled = crate::peers::scheduled_sources(peers, &reg.tickets, &outcome);
    let sent = stats::receivers(&watch, &outcome, &scheduled);
    let peer_stats = stats::peers(&scheduled);
    if json {
        let mut v = outcome_json(&outcome, &reg.names, elapsed.as_secs_f64());
        stats::put_json(&mut v, &sent, &peer_stats, reg.payload);
        ui::json_line(&v);
    } else if !sent.is_empty() {
        for line in stats::lines(&sent, &peer_stats, reg.payload) {
            ui::info_line(&line);
        }
    }
    if args.keep_serving {
        // Ctrl-C is how a keep-serving run ends: not a failure. Each receiver's fate is its
        // own (it may retry while a sender serves).
        if !json {
            ui::info_line(&watch.summary(&outcome));
        }
        return Ok(());
    }
    if interrupted && !outcome.completed() {
        return Err(Failure::Interrupted(
            "interrupted: the transfer was cancelled and the transaction deleted".into(),
        ));
    }
    if outcome.completed() {
        if !json {
            ui::info_line(&format!(
                "done: {} got every object ({} each) in {:.1}s",
                audience(args),
                fmt_bytes(reg.payload),
                elapsed.as_secs_f64()
            ));
        }
        return Ok(());
    }
    Err(Failure::transfer(watch.explain(
        &outcome,
        args.timeout,
        &reg.names,
    )))
}
