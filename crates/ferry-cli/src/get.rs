//! `ferry get`: download the objects of one or more tickets, verify them, print where they are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ferry::core::{DownloadFailure, Refusal, ReturnCode};
use ferry::fetch::{Fetch, FetchOptions, Fetched};
use ferry::objects::ObjectsError;
use ferry::{DownloadError, DownloadOptions};
use ferry::{DownloadService, ServiceOptions};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::args::GetArgs;
use crate::cells;
use crate::exit::{io_reason, CmdResult, Failure};
use crate::interrupt;
use crate::retry::resume_command;
use crate::set::SetJob;
use crate::ui;
use crate::units::{fmt_bytes, fmt_rate};
use ferry::ticket::{Kind, Ticket};

/// Downloads run at once (more tickets wait their turn).
const PARALLEL_DOWNLOADS: usize = 4;

/// One finished download.
#[derive(Debug)]
struct Got {
    fetched: Fetched,
    secs: f64,
}

/// Parse every ticket first: a typo in the third must not cost the first two downloads.
pub fn parse_tickets(raw: &[String]) -> CmdResult<Vec<Ticket>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names = BTreeSet::new();
    for (i, s) in raw.iter().enumerate() {
        let t: Ticket = s.parse().map_err(|e| {
            let which = if raw.len() > 1 {
                format!("ticket {}: ", i + 1)
            } else {
                String::new()
            };
            Failure::usage(format!("{which}{e}"))
        })?;
        // a set's name is a label; its members' names are checked when its manifest arrives
        if t.kind != Kind::Set && !names.insert(t.name.clone()) {
            return Err(Failure::usage(format!(
                "two tickets write {:?}; get them into different directories with -o",
                t.name
            )));
        }
        out.push(t);
    }
    Ok(out)
}

/// An existing destination without `--force`.
fn exists(dest: &Path) -> Failure {
    Failure::usage(format!(
        "{} already exists; pass --force to overwrite it, or pick another directory with -o",
        dest.display()
    ))
}

/// A destination that cannot be written (exit 2). [`destinations`] already refused existing
/// ones, but a file may appear there before the download opens it: same message then.
fn unwritable(e: &ObjectsError, dest: &Path) -> Failure {
    match e {
        ObjectsError::DestinationExists(_) => exists(dest),
        ObjectsError::OtherContent { why, .. } => Failure::usage(format!(
            "{why}; nothing was fetched: remove it, or pass --force to discard it and start over"
        )),
        other => Failure::usage(format!("cannot write {}: {other}", dest.display())),
    }
}

/// Where each ticket lands; existing destinations are refused unless `force`. Checked for all
/// tickets before anything is downloaded.
fn destinations(tickets: &[Ticket], out: &Path, force: bool) -> CmdResult<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| {
        Failure::usage(format!(
            "cannot create the output directory {}: {}",
            out.display(),
            io_reason(&e)
        ))
    })?;
    let mut dests = Vec::new();
    for t in tickets.iter().filter(|t| t.kind != Kind::Set) {
        let dest = out.join(&t.name);
        if let Ok(meta) = dest.symlink_metadata() {
            if meta.is_dir() {
                return Err(Failure::usage(format!(
                    "{} is a directory; remove it or pick another directory with -o",
                    dest.display()
                )));
            }
            if !force {
                return Err(exists(&dest));
            }
        }
        dests.push(dest);
    }
    Ok(dests)
}

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
        services.insert(
            url.clone(),
            DownloadService::new(cell, ServiceOptions::default()),
        );
    }
    if result.is_ok() {
        result = fetch_all(&services, &args, &tickets, &cancel, json).await;
    }
    for service in services.values() {
        service.shutdown().await;
    }
    for cell in cells.values() {
        cell.shutdown().await;
    }
    result
}

async fn fetch_all(
    services: &BTreeMap<String, DownloadService>,
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
            explain,
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
    let jobs = tickets.into_iter().map(|t| {
        let slots = Arc::clone(&slots);
        async move {
            let _slot = slots.acquire().await;
            let r = match services.get(&t.url()) {
                Some(service) => fetch_one(service, args, t, cancel, json).await,
                None => Err(Failure::transfer(format!("no connection to {}", t.url()))),
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

/// The success line (text) or `done` event (JSON) of one download.
fn report_done(t: &Ticket, got: &Got, json: bool) {
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

async fn fetch_one(
    service: &DownloadService,
    args: &GetArgs,
    t: &Ticket,
    cancel: &CancellationToken,
    json: bool,
) -> CmdResult<Got> {
    let dest = args.output.join(&t.name);
    let fopts = FetchOptions {
        overwrite: args.force,
        resume: args.resume,
        sync_every: args.sync_every,
        discard_other_part: args.force,
    };
    let fetch = Fetch::open(t, &args.output, fopts)
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
    let name = t.name.clone();
    let progress_bar = bar.clone();
    let size = t.size;
    let opts = DownloadOptions {
        per_request_timeout: args.request_timeout,
        cancel: Some(cancel.clone()),
        ..DownloadOptions::default()
    }
    .with_progress(move |p| {
        progress_bar.set_position(resumed_from + p.bytes_done);
        if json {
            // `bytes`: transferred by this run; `resumed_from + bytes` of `total` are here.
            ui::json_line(&json!({
                "event": "progress",
                "name": name,
                "bytes": p.bytes_done,
                "resumed_from": resumed_from,
                "total": size,
                "state": format!("{:?}", p.state).to_lowercase(),
            }));
        }
    });
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

/// The advice for a receiver the sender does not serve.
const ALLOW_HINT: &str =
    "it serves only the cells on its --allow list; pass one of those names with --name";

/// `" (it said: TEXT)"`, or nothing without text.
fn said(detail: Option<&str>) -> String {
    detail
        .map(|d| format!(" (it said: {d})"))
        .unwrap_or_default()
}

/// A typed refusal from a ferry sender, in one line: refused (and why), the transfer is over,
/// or the request was broken — each with what to do.
fn refused(refusal: Refusal, detail: Option<&str>, t: &Ticket, retry: &str) -> Failure {
    let (src, name) = (&t.source, &t.name);
    let said = said(detail);
    Failure::transfer(match refusal {
        Refusal::NotExpectedReceiver => format!(
            "the sender {src} refused {name}: this receiver is not on its list{said}; {ALLOW_HINT}"
        ),
        Refusal::ReceiverLimitReached => format!(
            "the sender {src} refused {name}: it already serves all the receivers it expects{said}; \
             a receiver coming back after a failure must use the --name it had; otherwise the \
             sender needs a larger --receivers, or --keep-serving"
        ),
        Refusal::TransactionFinished => format!(
            "the sender {src} no longer serves {name}: its transfer is over{said}; ask for a \
             fresh ticket; {retry}"
        ),
        Refusal::UnknownRef => format!(
            "the sender {src} does not serve {name} (ref {}){said}: the ticket is from another \
             or an older `ferry serve`; ask for a fresh ticket; {retry}",
            t.ref_id
        ),
        Refusal::InvalidRequest => format!(
            "the sender {src} refused the request for {name} as invalid{said}; if this is a \
             resumed download, its .part file may be damaged: run without --resume; {retry}"
        ),
        Refusal::ShutDown => format!(
            "the sender {src} is shutting down{said}; ask for a fresh ticket when it serves \
             again; {retry}"
        ),
    })
}

/// A failed download in one line: what happened (with the sender's own reason when it gave
/// one), and what to do.
///
/// `part` is the part file a file download keeps for resume: whether data is kept is read from
/// the disk after the failure, so the message never claims what is not there.
fn explain(e: DownloadError, t: &Ticket, dest: &Path, part: Option<&Path>) -> Failure {
    let kept = part
        .and_then(|p| Some((p, std::fs::metadata(p).ok()?.len())))
        .filter(|&(_, len)| len > 0);
    let retry = match kept {
        Some((p, len)) => format!(
            "the {} received in order so far are kept in {} for --resume",
            fmt_bytes(len),
            p.display()
        ),
        None => format!("nothing was left at {}", dest.display()),
    };
    let src = &t.source;
    match e {
        DownloadError::Cancelled { .. } => {
            Failure::Interrupted(format!("interrupted: {} cancelled; {retry}", t.name))
        }
        DownloadError::Failed { failure, .. } => match failure {
            DownloadFailure::RequestFailed {
                rc: rc @ (ReturnCode::AuthenticationError | ReturnCode::Unauthenticated),
                detail,
                ..
            } => Failure::transfer(format!(
                "the sender {src} refused this receiver ({}): {ALLOW_HINT}",
                detail.unwrap_or_else(|| rc.to_string())
            )),
            DownloadFailure::Refused {
                refusal, detail, ..
            } => refused(refusal, detail.as_deref(), t, &retry),
            DownloadFailure::RequestFailed {
                rc: ReturnCode::InvalidRequest,
                detail,
                ..
            } => Failure::transfer(format!(
                "the sender {src} no longer serves {}: its transfer was cancelled or is over{}; ask for a fresh ticket; {retry}",
                t.name,
                said(detail.as_deref())
            )),
            DownloadFailure::RequestFailed { rc, detail, .. } => Failure::transfer(format!(
                "lost the sender {src} at {} while downloading {} ({rc}{}); is `ferry serve` still running? {retry}",
                t.addr,
                t.name,
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            )),
            DownloadFailure::ProducerError { .. } => Failure::transfer(format!(
                "the sender {src} could not produce {} (ref {}): the file may have changed or become unreadable there, or the transfer is over; ask for a fresh ticket",
                t.name, t.ref_id
            )),
            DownloadFailure::RetriesExhausted { attempts, .. } => Failure::transfer(format!(
                "the sender {src} stopped answering ({attempts} attempts for one chunk); check it is alive and reachable, or raise --request-timeout; {retry}"
            )),
            DownloadFailure::PlanRefused(why)
            | DownloadFailure::ConsumeFailed(why)
            | DownloadFailure::CompletionFailed(why) => {
                match why.strip_prefix("integrity check failed: ") {
                    Some(what) => Failure::transfer(format!(
                        "{} is not what the ticket pins: {what}; {retry}; the sender {src} sends other content than the ticket names (a changed file, a wrong ticket, or tampering)",
                        t.name
                    )),
                    None => Failure::transfer(format!(
                        "{} could not be received or written ({why}); {retry}",
                        t.name
                    )),
                }
            }
            other => Failure::transfer(format!("{}: {other}; {retry}", t.name)),
        },
        DownloadError::Objects(e) => unwritable(&e, dest),
        DownloadError::Local(why) => {
            Failure::usage(format!("cannot write {}: {why}", dest.display()))
        }
        other => Failure::transfer(format!("{}: {other}; {retry}", t.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(name: &str) -> String {
        format!(
            "ferry+tcp://127.0.0.1:7001/s/R1?kind=file&name={name}&size=3&b3={}",
            "ab".repeat(32)
        )
    }

    #[test]
    fn tickets_are_all_parsed_first() {
        let ok = parse_tickets(&[ticket("a"), ticket("b")]).unwrap();
        assert_eq!(ok.len(), 2);
        let bad = parse_tickets(&[ticket("a"), "ferry+tcp://x".into()]).unwrap_err();
        assert_eq!(bad.code(), 2);
        assert!(
            bad.to_string().starts_with("ticket 2: malformed ticket"),
            "{bad}"
        );
        let dup = parse_tickets(&[ticket("a"), ticket("a")]).unwrap_err();
        assert!(dup.to_string().contains("two tickets"), "{dup}");
    }

    #[test]
    fn failures_say_what_and_what_to_do() {
        let t: Ticket = ticket("a").parse().unwrap();
        let dest = Path::new("/out/a");
        let kept_dir = tempfile::tempdir().unwrap();
        let kept = kept_dir.path().join("a.part");
        std::fs::write(&kept, b"abc").unwrap();
        let kept = Some(kept.as_path());
        let gone = Some(Path::new("/out/a.part"));
        let failed_with = |rc, detail: Option<&str>| DownloadError::Failed {
            ref_id: "R1".into(),
            source_fqcn: "s".into(),
            failure: DownloadFailure::RequestFailed {
                source_fqcn: "s".into(),
                rc,
                detail: detail.map(str::to_string),
            },
        };
        let failed = |rc| failed_with(rc, None);
        let f = explain(
            DownloadError::Cancelled {
                ref_id: "R1".into(),
            },
            &t,
            dest,
            kept,
        );
        assert_eq!(f.code(), 130);
        assert!(
            f.to_string()
                .contains("the 3 B received in order so far are kept in")
                && f.to_string().contains("a.part"),
            "{f}"
        );
        let f = explain(
            DownloadError::Cancelled {
                ref_id: "R1".into(),
            },
            &t,
            dest,
            gone,
        );
        assert!(f.to_string().contains("nothing was left at /out/a"), "{f}");
        let f = explain(failed(ReturnCode::CommError), &t, dest, None);
        assert_eq!(f.code(), 1);
        assert!(
            f.to_string().contains("lost the sender") && f.to_string().contains("nothing was left"),
            "{f}"
        );
        let f = explain(failed(ReturnCode::AuthenticationError), &t, dest, None);
        assert!(f.to_string().contains("--allow list"), "{f}");
        let f = explain(failed(ReturnCode::InvalidRequest), &t, dest, kept);
        assert!(
            f.to_string().contains("no longer serves") && f.to_string().contains("kept in"),
            "{f}"
        );
        // A ferry sender's typed refusals each get their own words and advice, whatever the
        // text says; an NVFlare sender's invalid_request gets the "fresh ticket" advice.
        let refused = |refusal, detail: &str| DownloadError::Failed {
            ref_id: "R1".into(),
            source_fqcn: "s".into(),
            failure: DownloadFailure::Refused {
                source_fqcn: "s".into(),
                refusal,
                detail: Some(detail.into()),
            },
        };
        let f = explain(
            refused(
                Refusal::NotExpectedReceiver,
                "intruder is not an expected receiver of R1",
            ),
            &t,
            dest,
            None,
        );
        assert_eq!(f.code(), 1);
        assert!(
            f.to_string()
                .contains("refused a: this receiver is not on its list")
                && f.to_string().contains("--allow list")
                && f.to_string().contains("--name"),
            "{f}"
        );
        let f = explain(
            refused(Refusal::ReceiverLimitReached, "x cannot pull R1"),
            &t,
            dest,
            None,
        );
        assert!(
            f.to_string()
                .contains("refused a: it already serves all the receivers it expects")
                && f.to_string().contains("--keep-serving")
                && !f.to_string().contains("still running"),
            "{f}"
        );
        let f = explain(
            refused(Refusal::TransactionFinished, "no ref found: R1"),
            &t,
            dest,
            kept,
        );
        assert!(
            f.to_string()
                .contains("no longer serves a: its transfer is over")
                && f.to_string().contains("kept in"),
            "{f}"
        );
        let f = explain(refused(Refusal::UnknownRef, "no ref found"), &t, dest, None);
        assert!(f.to_string().contains("does not serve a (ref R1)"), "{f}");
        let f = explain(refused(Refusal::InvalidRequest, "bad"), &t, dest, None);
        assert!(f.to_string().contains("as invalid"), "{f}");
        let f = explain(refused(Refusal::ShutDown, "bye"), &t, dest, None);
        assert!(f.to_string().contains("shutting down"), "{f}");
        let f = explain(
            failed_with(ReturnCode::InvalidRequest, Some("no ref found: R1")),
            &t,
            dest,
            None,
        );
        assert!(
            f.to_string().contains("no longer serves a")
                && f.to_string().contains("(it said: no ref found: R1)")
                && !f.to_string().contains("--allow"),
            "{f}"
        );
        let f = explain(
            failed_with(ReturnCode::CommError, Some("connection to s lost")),
            &t,
            dest,
            None,
        );
        assert!(
            f.to_string().contains("(comm_error: connection to s lost)"),
            "{f}"
        );
        let f = explain(
            failed_with(ReturnCode::AuthenticationError, Some("site-9 not allowed")),
            &t,
            dest,
            None,
        );
        assert!(
            f.to_string()
                .contains("refused this receiver (site-9 not allowed)"),
            "{f}"
        );
        // Local setup errors are usage errors; one that appeared after the up-front check
        // reads like the check's own message.
        let f = explain(
            DownloadError::Objects(ObjectsError::DestinationExists(dest.to_path_buf())),
            &t,
            dest,
            None,
        );
        assert_eq!(f.code(), 2);
        assert!(
            f.to_string()
                .contains("/out/a already exists; pass --force"),
            "{f}"
        );
        let f = explain(
            DownloadError::Objects(ObjectsError::InvalidOption(
                "target is not a directory".into(),
            )),
            &t,
            dest,
            None,
        );
        assert_eq!(f.code(), 2);
        assert!(
            f.to_string()
                .contains("cannot write /out/a: invalid option: target is not a directory"),
            "{f}"
        );
        let f = explain(DownloadError::Local("disk on fire".into()), &t, dest, None);
        assert_eq!(f.code(), 2);
        let integrity = DownloadError::Failed {
            ref_id: "R1".into(),
            source_fqcn: "s".into(),
            failure: DownloadFailure::PlanRefused("pins another digest".into()),
        };
        let f = explain(integrity, &t, dest, None);
        assert!(f.to_string().contains("could not be received"), "{f}");
        let integrity = DownloadError::Failed {
            ref_id: "R1".into(),
            source_fqcn: "s".into(),
            failure: DownloadFailure::CompletionFailed(
                "integrity check failed: BLAKE3 digest mismatch: X".into(),
            ),
        };
        let f = explain(integrity, &t, dest, gone);
        assert_eq!(f.code(), 1);
        assert!(
            f.to_string().contains(
                "a is not what the ticket pins: BLAKE3 digest mismatch: X; nothing was left at /out/a"
            ),
            "{f}"
        );
    }

    #[test]
    fn existing_destinations_need_force() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"old").unwrap();
        let t = parse_tickets(&[ticket("a"), ticket("sub%2Fb")]).unwrap();
        let e = destinations(&t, d.path(), false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        let dests = destinations(&t, d.path(), true).unwrap();
        assert_eq!(dests[1], d.path().join("sub/b"));
        std::fs::create_dir(d.path().join("b")).unwrap();
        let t = parse_tickets(&[ticket("b")]).unwrap();
        assert!(destinations(&t, d.path(), true).is_err());
    }
}
