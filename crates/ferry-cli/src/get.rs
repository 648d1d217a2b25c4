//! `ferry get`: download the objects of one or more tickets, verify them, print where they are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ferry::core::{DownloadFailure, RefId, ReturnCode};
use ferry::objects::{FileConsumer, ObjectsError};
use ferry::{download_object, download_tensors_to_file, DownloadError, DownloadOptions};
use ferry::{DownloadService, ServiceOptions};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::args::GetArgs;
use crate::cells;
use crate::exit::{io_reason, CmdResult, Failure};
use crate::interrupt;
use crate::pinned::PinnedFile;
use crate::ui;
use crate::units::{fmt_bytes, fmt_rate};
use ferry::ticket::{Kind, Ticket};

/// Downloads run at once (more tickets wait their turn).
const PARALLEL_DOWNLOADS: usize = 4;

/// One finished download.
#[derive(Debug)]
struct Got {
    path: PathBuf,
    bytes: u64,
    secs: f64,
    verified: &'static str,
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
        if !names.insert(t.name.clone()) {
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
    for t in tickets {
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
    let dests = destinations(&tickets, &args.output, args.force)?;
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
        result = fetch_all(&services, &args, &tickets, &dests, &cancel, json).await;
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
    dests: &[PathBuf],
    cancel: &CancellationToken,
    json: bool,
) -> CmdResult {
    let slots = Arc::new(Semaphore::new(PARALLEL_DOWNLOADS));
    let jobs = tickets.iter().zip(dests).map(|(t, dest)| {
        let slots = Arc::clone(&slots);
        async move {
            let _slot = slots.acquire().await;
            let r = match services.get(&t.url()) {
                Some(service) => fetch_one(service, args, t, dest, cancel, json).await,
                None => Err(Failure::transfer(format!("no connection to {}", t.url()))),
            };
            (t, r)
        }
    });
    let results = futures::future::join_all(jobs).await;
    let mut failures = Vec::new();
    for (t, r) in results {
        match r {
            Ok(got) => {
                if json {
                    ui::json_line(&json!({
                        "event": "done",
                        "name": t.name,
                        "path": got.path,
                        "bytes": got.bytes,
                        "seconds": got.secs,
                        "verified": got.verified,
                    }));
                } else {
                    ui::err_line(&format!(
                        "got {} ({} in {:.1}s, {}, verified: {})",
                        t.name,
                        fmt_bytes(got.bytes),
                        got.secs,
                        fmt_rate(got.bytes, std::time::Duration::from_secs_f64(got.secs)),
                        got.verified
                    ));
                    ui::out_line(&got.path.display().to_string());
                }
            }
            Err(f) => failures.push((t, f)),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    // Interrupted beats failed; report every failure but return the most telling one.
    failures.sort_by_key(|(_, f)| std::cmp::Reverse(f.code()));
    for (t, f) in failures.iter().skip(1) {
        ui::err_line(&format!("ferry: error: {}: {f}", t.name));
    }
    Err(failures.swap_remove(0).1)
}

async fn fetch_one(
    service: &DownloadService,
    args: &GetArgs,
    t: &Ticket,
    dest: &Path,
    cancel: &CancellationToken,
    json: bool,
) -> CmdResult<Got> {
    let (dir, base) = split_dest(dest)?;
    std::fs::create_dir_all(&dir).map_err(|e| {
        Failure::usage(format!(
            "cannot create {}: {}",
            dir.display(),
            io_reason(&e)
        ))
    })?;
    let bar = ui::byte_bar(&t.name, t.size);
    let name = t.name.clone();
    let progress_bar = bar.clone();
    let mut opts = DownloadOptions {
        per_request_timeout: args.request_timeout,
        cancel: Some(cancel.clone()),
        ..DownloadOptions::default()
    }
    .with_progress(move |p| {
        if let Some(total) = p.total_bytes {
            progress_bar.set_length(total);
        }
        progress_bar.set_position(p.bytes_done);
        if json {
            ui::json_line(&json!({
                "event": "progress",
                "name": name,
                "bytes": p.bytes_done,
                "total": p.total_bytes,
                "state": format!("{:?}", p.state).to_lowercase(),
            }));
        }
    });
    let rid = RefId::new(t.ref_id.clone());
    let started = Instant::now();
    let result = match t.kind {
        Kind::File => {
            let consumer = FileConsumer::builder(&dir, &base)
                .overwrite(args.force)
                .keep_part_for_resume(args.resume)
                .open()
                .map_err(|e| unwritable(&e, dest))?;
            if args.resume {
                opts.resume_state = consumer.resume_state();
            }
            let verified = if t.blake3.is_some() {
                "size + BLAKE3 pinned by the ticket"
            } else {
                "size + BLAKE3 from the sender"
            };
            download_object(
                service,
                &t.source,
                &rid,
                PinnedFile::new(consumer, t.blake3.clone()),
                opts,
            )
            .await
            .map(|c| (c.final_path().to_path_buf(), verified))
        }
        Kind::Tensors => {
            download_tensors_to_file(service, &t.source, &rid, &dir, &base, args.force, opts)
                .await
                .map(|p| (p, "every tensor item; written as safetensors"))
        }
    };
    bar.finish_and_clear();
    let (path, verified) = result.map_err(|e| explain(e, t, dest, args.resume))?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(Got {
        path,
        bytes,
        secs: started.elapsed().as_secs_f64(),
        verified,
    })
}

/// (directory, file name) of a destination.
fn split_dest(dest: &Path) -> CmdResult<(PathBuf, String)> {
    let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Failure::usage(format!("{}: not a file name", dest.display())))?;
    Ok((dir, base.to_string()))
}

/// What a Ferry sender says when it refuses a pull from a cell outside its declared receivers
/// (`--allow`): "NAME is not an expected receiver of REF". Only used to pick the advice; the
/// sender's text is printed whatever it says.
const NOT_EXPECTED: &str = ferry::core::service::NOT_EXPECTED_RECEIVER;

/// The advice for a receiver the sender does not serve.
const ALLOW_HINT: &str =
    "it serves only the cells on its --allow list; pass one of those names with --name";

/// `" (it said: TEXT)"`, or nothing without text.
fn said(detail: Option<&str>) -> String {
    detail
        .map(|d| format!(" (it said: {d})"))
        .unwrap_or_default()
}

/// A failed download in one line: what happened (with the sender's own reason when it gave
/// one), and what to do.
fn explain(e: DownloadError, t: &Ticket, dest: &Path, resume: bool) -> Failure {
    let part = format!("{}.part", dest.display());
    let retry = if resume {
        format!("the data so far is kept in {part}; run the same `ferry get --resume` with a fresh ticket to continue")
    } else {
        "nothing was left at the destination; use --resume to keep partial data across attempts"
            .to_string()
    };
    let src = &t.source;
    match e {
        DownloadError::Cancelled { .. } => Failure::Interrupted(format!(
            "interrupted: {} cancelled{}",
            t.name,
            if resume {
                format!(", partial data kept in {part}")
            } else {
                ", nothing left at the destination".into()
            }
        )),
        DownloadError::Failed { failure, .. } => match failure {
            DownloadFailure::RequestFailed {
                rc: rc @ (ReturnCode::AuthenticationError | ReturnCode::Unauthenticated),
                detail,
                ..
            } => Failure::transfer(format!(
                "the sender {src} refused this receiver ({}): {ALLOW_HINT}",
                detail.unwrap_or_else(|| rc.to_string())
            )),
            DownloadFailure::RequestFailed {
                rc: ReturnCode::InvalidRequest,
                detail: Some(detail),
                ..
            } if detail.contains(NOT_EXPECTED) => Failure::transfer(format!(
                "the sender {src} refused {}: {detail}; {ALLOW_HINT}",
                t.name
            )),
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
            | DownloadFailure::CompletionFailed(why) => Failure::transfer(format!(
                "{} failed verification or could not be written ({why}); {retry}",
                t.name
            )),
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
        format!("ferry+tcp://127.0.0.1:7001/s/R1?name={name}")
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
            true,
        );
        assert_eq!(f.code(), 130);
        assert!(f.to_string().contains("/out/a.part"), "{f}");
        let f = explain(failed(ReturnCode::CommError), &t, dest, false);
        assert_eq!(f.code(), 1);
        assert!(
            f.to_string().contains("lost the sender") && f.to_string().contains("--resume"),
            "{f}"
        );
        let f = explain(failed(ReturnCode::AuthenticationError), &t, dest, false);
        assert!(f.to_string().contains("--allow list"), "{f}");
        let f = explain(failed(ReturnCode::InvalidRequest), &t, dest, true);
        assert!(
            f.to_string().contains("no longer serves") && f.to_string().contains("kept in"),
            "{f}"
        );
        // The sender's reason is printed; its refusal of an undeclared receiver gets the
        // --allow advice, any other invalid_request the "fresh ticket" advice.
        let f = explain(
            failed_with(
                ReturnCode::InvalidRequest,
                Some("intruder is not an expected receiver of R1"),
            ),
            &t,
            dest,
            false,
        );
        assert_eq!(f.code(), 1);
        assert!(
            f.to_string()
                .contains("refused a: intruder is not an expected receiver of R1")
                && f.to_string().contains("--allow list")
                && f.to_string().contains("--name"),
            "{f}"
        );
        let f = explain(
            failed_with(ReturnCode::InvalidRequest, Some("no ref found: R1")),
            &t,
            dest,
            false,
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
            false,
        );
        assert!(
            f.to_string().contains("(comm_error: connection to s lost)"),
            "{f}"
        );
        let f = explain(
            failed_with(ReturnCode::AuthenticationError, Some("site-9 not allowed")),
            &t,
            dest,
            false,
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
            false,
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
            false,
        );
        assert_eq!(f.code(), 2);
        assert!(
            f.to_string()
                .contains("cannot write /out/a: invalid option: target is not a directory"),
            "{f}"
        );
        let f = explain(DownloadError::Local("disk on fire".into()), &t, dest, false);
        assert_eq!(f.code(), 2);
        let integrity = DownloadError::Failed {
            ref_id: "R1".into(),
            source_fqcn: "s".into(),
            failure: DownloadFailure::PlanRefused("pins another digest".into()),
        };
        let f = explain(integrity, &t, dest, false);
        assert!(f.to_string().contains("failed verification"), "{f}");
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
