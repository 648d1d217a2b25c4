//! `ferry serve`: register files (and tensor dicts) in one transaction, print a ticket per
//! object, and exit when every expected receiver has them all (0), or when the transfer fails or
//! times out (1), or on Ctrl-C (130, after deleting the transaction). With `--keep-serving` it
//! serves anyone with the ticket until Ctrl-C, then exits 0 with a summary.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::cellnet::Cell;
use ferry::core::{Downloadable, ServiceConfig, TxConfig};
use ferry::objects::tensors::tensor_dict_pin;
use ferry::objects::{CacheOptions, ExpectedReceivers, FileObject, TensorDict, TensorDictObject};
use ferry::{DownloadService, ObjectDownloader, ServiceOptions};
use indicatif::ProgressBar;
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::args::{ServeArgs, TicketFormat};
use crate::cells;
use crate::exit::{io_reason, CmdResult, Failure};
use crate::interrupt;
use crate::sysinfo;
use crate::throttle::{RateLimiter, Throttled};
use crate::ui;
use crate::units::fmt_bytes;
use crate::watch::{outcome_json, Watch};
use ferry::manifest::Manifest;
use ferry::ticket::{check_relative_name, Kind, Ticket};
use std::os::unix::fs::PermissionsExt;

/// One thing to serve, found on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where it is on disk.
    pub path: PathBuf,
    /// Where receivers write it, relative to their output directory.
    pub name: String,
    /// File or tensor dict.
    pub kind: Kind,
}

/// Expand the PATH arguments: files as themselves, directories as every regular file below
/// them (named `DIR/REL/PATH`). Missing paths, empty directories, names that are not plain
/// relative paths and two objects with the same name are usage errors.
pub fn collect(paths: &[PathBuf], tensors: bool) -> CmdResult<Vec<Entry>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| {
            Failure::usage(format!(
                "{}: {}; check the path (files and directories can be served)",
                p.display(),
                io_reason(&e)
            ))
        })?;
        let base = p
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .or_else(|| {
                // `.` or `..`: name the tree after the directory it stands for
                std::fs::canonicalize(p)
                    .ok()
                    .and_then(|c| c.file_name().and_then(|n| n.to_str()).map(str::to_string))
            })
            .ok_or_else(|| {
                Failure::usage(format!(
                    "{}: cannot name it in a ticket (not UTF-8?); rename or serve its files",
                    p.display()
                ))
            })?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &base, &mut found)?;
            if found.is_empty() {
                return Err(Failure::usage(format!(
                    "{}: no regular files below this directory; nothing to serve",
                    p.display()
                )));
            }
            found.sort();
            out.extend(
                found
                    .into_iter()
                    .map(|(name, path)| entry(path, name, tensors)),
            );
        } else if meta.is_file() {
            out.push(entry(p.clone(), base, tensors));
        } else {
            return Err(Failure::usage(format!(
                "{}: not a regular file or directory",
                p.display()
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for e in &out {
        check_relative_name(&e.name)
            .map_err(|why| Failure::usage(format!("{}: {why}; rename it", e.path.display())))?;
        if !seen.insert(e.name.as_str()) {
            return Err(Failure::usage(format!(
                "two objects would be named {:?} on the receivers; serve them in separate runs or rename one",
                e.name
            )));
        }
    }
    Ok(out)
}

fn entry(path: PathBuf, name: String, tensors: bool) -> Entry {
    let is_st = path
        .extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("safetensors"));
    let kind = if tensors && is_st {
        Kind::Tensors
    } else {
        Kind::File
    };
    Entry { path, name, kind }
}

/// Regular files below `dir` (symlinked directories are not followed, so no loops).
fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> CmdResult {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Failure::usage(format!("{}: {}", dir.display(), io_reason(&e))))?;
    for item in rd {
        let item =
            item.map_err(|e| Failure::usage(format!("{}: {}", dir.display(), io_reason(&e))))?;
        let path = item.path();
        let Some(fname) = item.file_name().to_str().map(str::to_string) else {
            return Err(Failure::usage(format!(
                "{}: file name is not UTF-8; rename it",
                path.display()
            )));
        };
        let name = format!("{prefix}/{fname}");
        let ft = item
            .file_type()
            .map_err(|e| Failure::usage(format!("{}: {}", path.display(), io_reason(&e))))?;
        if ft.is_dir() {
            walk(&path, &name, out)?;
        } else if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push((name, path));
        }
    }
    Ok(())
}

/// The URL to listen on: `tcp://` becomes `stcp://` when TLS files are given; `stcp://`
/// without them is refused.
pub fn listen_url(listen: &str, tls: bool) -> CmdResult<String> {
    if let Some(rest) = listen.strip_prefix("tcp://") {
        Ok(if tls {
            format!("stcp://{rest}")
        } else {
            listen.to_string()
        })
    } else if listen.starts_with("stcp://") {
        if tls {
            Ok(listen.to_string())
        } else {
            Err(Failure::usage(format!(
                "--listen {listen} needs --tls-cert, --tls-key and --tls-ca"
            )))
        }
    } else {
        Err(Failure::usage(format!(
            "--listen {listen:?}: expected tcp://HOST:PORT (e.g. tcp://0.0.0.0:7051)"
        )))
    }
}

/// `HOST:PORT` for tickets, from the bound URL: a wildcard host is replaced by `advertise`
/// or this host's routable address.
pub fn ticket_addr(bound: &str, advertise: Option<&str>) -> String {
    let addr = bound.split_once("://").map_or(bound, |(_, a)| a);
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
    let host = match advertise {
        Some(h) => h.to_string(),
        None if matches!(host, "0.0.0.0" | "[::]" | "::" | "") => sysinfo::advertised_host(),
        None => host.to_string(),
    };
    format!("{host}:{port}")
}

/// Start the download service. With `--allow` the transaction declares its receivers
/// (`receiver_ids`), and the engine answers pulls from any other cell with `invalid_request`
/// and the typed reason `NOT_EXPECTED_RECEIVER`, which `ferry get` turns into its message.
/// NVFlare's identity mode would serve such a cell and only not count it; Ferry's engine
/// refuses by default, and this keeps it explicit. In count mode (`--receivers N`) the first N
/// cells to pull hold the places and others are refused (`RECEIVER_LIMIT_REACHED`); a
/// receiver that cancels gives its place back, and one that failed may come back under its
/// name while the transfer is live. An outsider's confirm or cancel changes nothing: it never
/// pulled, so the engine has no slot for it.
fn start_service(cell: &Cell) -> DownloadService {
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

/// Whether this serve is one set (one ticket): a directory or several paths, unless
/// `--ticket-per-object`. A single file keeps its own ticket (which an NVFlare receiver can use).
fn is_set(args: &ServeArgs) -> bool {
    !args.ticket_per_object && (args.paths.len() > 1 || args.paths.iter().any(|p| p.is_dir()))
}

/// The label of a set ticket: the top directory its members share, else `ferry-set`.
fn set_label(entries: &[Entry]) -> String {
    let top = |e: &Entry| e.name.split('/').next().unwrap_or_default().to_string();
    match entries.first().map(top) {
        Some(first) if entries.iter().all(|e| top(e) == first) => first,
        _ => "ferry-set".into(),
    }
}

/// Register the set's manifest and build its ticket (the members' sender and address).
fn serve_manifest(
    tx: &ObjectDownloader,
    manifest: &Manifest,
    label: String,
    member: &Ticket,
) -> CmdResult<Ticket> {
    let (bytes, pin) = manifest.encode_pinned();
    let rid = tx
        .add_bytes(bytes)
        .map_err(|e| Failure::usage(format!("cannot serve the set manifest: {e}")))?;
    Ok(Ticket {
        ref_id: rid.to_string(),
        kind: Kind::Set,
        name: label,
        size: pin.size,
        blake3: pin.hex(),
        ..member.clone()
    })
}

/// The `ticket` event of one object.
fn ticket_json(t: &Ticket, format: TicketFormat) -> serde_json::Value {
    json!({
        "event": "ticket",
        "ticket": format.write(t),
        "url": t.to_url(),
        "name": t.name,
        "kind": t.kind.as_str(),
        "size": t.size,
        "ref_id": t.ref_id,
        "source": t.source,
        "address": t.addr,
        "blake3": t.blake3,
    })
}

/// The `ticket` event of a set: the set's ticket, and each member as `ticket_json` has it
/// (the per-object tickets, for information: receivers of a set pull its manifest, so the
/// serve completes only when they use the set ticket; `--ticket-per-object` serves no manifest).
fn set_json(set: &Ticket, members: &[Ticket], format: TicketFormat) -> serde_json::Value {
    let mut v = ticket_json(set, format);
    v["objects"] = members.iter().map(|t| ticket_json(t, format)).collect();
    v["total"] = json!(members.iter().map(|t| t.size).sum::<u64>());
    v
}

/// Chunk size of plain files when `--chunk` is not given.
const DEFAULT_CHUNK: u64 = 1 << 20;

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
    if tls.is_none() && !args.allow.is_empty() {
        ui::err_line(&format!(
            "ferry: warning: --allow without TLS: {} is only a name, and anyone who can reach {} can use it (the first to connect under it holds it); to prove who a receiver is, serve with --tls-cert/--tls-key/--tls-ca (see `ferry certs`)",
            args.allow.join(", "),
            args.listen
        ));
    }
    let cell = cells::build_cell(&args.name, tls)?;
    let bound = cell.listen(&url).await.map_err(|e| {
        Failure::usage(format!(
            "cannot listen on {url} ({e}); pick another address or port with --listen tcp://HOST:PORT"
        ))
    })?;
    let service = start_service(&cell);
    let result = serve(&service, &args, &entries, &bound, json).await;
    service.shutdown().await;
    cell.shutdown().await;
    result
}

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

    let addr = ticket_addr(bound, args.advertise.as_deref());
    let mut tickets = Vec::new();
    let mut names = HashMap::new();
    let mut total_bytes = 0u64;
    let mut manifest = Manifest::new();
    for e in entries {
        if cancel.is_cancelled() {
            tx.delete_transaction().ok();
            return Err(Failure::Interrupted("interrupted before serving".into()));
        }
        let (obj, size, blake3) = load(e, chunk, &expected).await?;
        let obj: Arc<dyn Downloadable> = match &limiter {
            Some(l) => Arc::new(Throttled::new(obj, Arc::clone(l))),
            None => obj,
        };
        let rid = tx
            .add_object(obj)
            .map_err(|err| Failure::usage(format!("{}: {err}", e.path.display())))?;
        total_bytes += size;
        names.insert(rid.to_string(), e.name.clone());
        let t = Ticket {
            tls: bound.starts_with("stcp://"),
            addr: addr.clone(),
            source: args.name.clone(),
            ref_id: rid.to_string(),
            kind: e.kind,
            name: e.name.clone(),
            size,
            blake3,
        };
        let meta = std::fs::metadata(&e.path).ok();
        manifest.push(
            &t,
            meta.as_ref().map(|m| m.permissions().mode()),
            meta.as_ref().and_then(|m| m.modified().ok()),
        );
        tickets.push(t);
    }
    let objects = tickets.len();
    let set = if is_set(args) {
        let t = serve_manifest(&tx, &manifest, set_label(entries), &tickets[0])?;
        names.insert(t.ref_id.clone(), format!("{} (set manifest)", t.name));
        total_bytes += t.size;
        Some(t)
    } else {
        None
    };

    let who = if args.keep_serving {
        "anyone with the ticket until Ctrl-C".to_string()
    } else if args.allow.is_empty() {
        format!(
            "{} receiver{}",
            args.receivers,
            if args.receivers == 1 { "" } else { "s" }
        )
    } else {
        args.allow.join(", ")
    };
    if !json {
        ui::info_line(&format!(
            "serving {objects} object{} ({}) as {:?} on {bound} for {who}; Ctrl-C stops.\non each receiver run: ferry get {}",
            if objects == 1 { "" } else { "s" },
            fmt_bytes(manifest.total_size()),
            args.name,
            match (&set, objects) {
                (Some(_), _) | (None, 1) => "TICKET",
                (None, _) => "TICKET...",
            },
        ));
    }
    if let (Some(rate), false) = (args.limit_rate, json) {
        ui::info_line(&format!(
            "rate cap: {}/s for all receivers together, in turns of {} per receiver{}",
            fmt_bytes(rate),
            fmt_bytes(chunk),
            if chunk < given_chunk {
                format!(
                    " (smaller than {} {}, so that each receiver hears from this sender several times a second)",
                    if args.chunk.is_some() { "--chunk" } else { "the default chunk" },
                    fmt_bytes(given_chunk)
                )
            } else {
                String::new()
            }
        ));
    }
    match &set {
        Some(t) if json => ui::json_line(&set_json(t, &tickets, args.ticket_format)),
        Some(t) => ui::out_line(&args.ticket_format.write(t)),
        None => {
            for t in &tickets {
                if json {
                    ui::json_line(&ticket_json(t, args.ticket_format));
                } else {
                    ui::out_line(&args.ticket_format.write(t));
                }
            }
        }
    }

    let started = Instant::now();
    let waiter = tx.waiter();
    let wait = waiter.wait();
    tokio::pin!(wait);
    let mut events = service.events();
    let mut watch = Watch::new(total_bytes, json, args.reconnect_timeout);
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
                if let Some(l) = &limiter {
                    l.stop();
                }
            }
            ev = events.recv() => match ev {
                Ok(ev) => watch.event(&ev, &names),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => {}
            },
        }
    };
    // Events of the settling batch (the last receivers' DownloadedToOne) may still be queued:
    // the waiter resolves while they are dispatched.
    loop {
        match events.try_recv() {
            Ok(ev) => watch.event(&ev, &names),
            Err(TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    watch.finish();
    let elapsed = started.elapsed();
    let Some(outcome) = outcome else {
        return Err(Failure::transfer(
            "the transfer ended without an outcome (the download service stopped)",
        ));
    };
    if json {
        ui::json_line(&outcome_json(&outcome, &names, elapsed.as_secs_f64()));
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
                who,
                fmt_bytes(manifest.total_size()),
                elapsed.as_secs_f64()
            ));
        }
        return Ok(());
    }
    Err(Failure::transfer(watch.explain(
        &outcome,
        args.timeout,
        &names,
    )))
}

/// Smallest chunk a rate cap makes files use.
const MIN_PACED_CHUNK: u64 = 4 << 10;

/// How often, at least, a receiver should hear from a capped sender (the pace it keeps):
/// well inside any receiver's `--request-timeout`, even on a loaded machine.
const PACED_TURNS_PER_SEC: u64 = 4;

/// The file chunk size under `--limit-rate`: at most what the cap sends to each of the
/// `receivers` expected in a quarter second (never below [`MIN_PACED_CHUNK`], never above
/// `chunk`). The capped link serves receivers in turn, one chunk each, so a receiver hears
/// from the sender about once per `receivers × chunk / rate`; this keeps that near a quarter
/// second. Without a cap, `chunk` as given.
pub fn paced_chunk(chunk: u64, rate: Option<u64>, receivers: u64) -> u64 {
    match rate {
        Some(rate) => (rate / PACED_TURNS_PER_SEC / receivers.max(1))
            .max(MIN_PACED_CHUNK)
            .min(chunk),
        None => chunk,
    }
}

/// Build the downloadable for one entry: (object, payload bytes, BLAKE3 for files).
async fn load(
    e: &Entry,
    chunk: u64,
    expected: &ExpectedReceivers,
) -> CmdResult<(Arc<dyn Downloadable>, u64, String)> {
    let bar = ui::bars().add(ProgressBar::new_spinner());
    bar.set_message(format!(
        "{} {}",
        if e.kind == Kind::File {
            "hashing"
        } else {
            "loading"
        },
        e.name
    ));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let path = e.path.clone();
    let kind = e.kind;
    let expected = expected.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, String> {
        match kind {
            Kind::Set => Err("a set is not served from a path".into()),
            Kind::File => {
                let obj = FileObject::builder(&path)
                    .chunk_size(chunk)
                    .digest(true)
                    .open()
                    .map_err(|e| e.to_string())?;
                let size = obj.size();
                let digest = obj
                    .digest()
                    .map(str::to_string)
                    .ok_or("no digest was computed")?;
                Ok((Arc::new(obj) as Arc<dyn Downloadable>, size, digest))
            }
            Kind::Tensors => {
                let dict = TensorDict::load_safetensors(&path).map_err(|e| e.to_string())?;
                // The ticket pins the tensor-dict digest (items in the order they are served).
                let pin = tensor_dict_pin(&dict);
                let obj = TensorDictObject::from_tensors(
                    dict,
                    CacheOptions::default().with_receivers(expected),
                )
                .map_err(|e| e.to_string())?;
                Ok((Arc::new(obj) as Arc<dyn Downloadable>, pin.size, pin.hex()))
            }
        }
    })
    .await;
    bar.finish_and_clear();
    match loaded {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(why)) => Err(Failure::usage(format!(
            "cannot serve {}: {why}",
            e.path.display()
        ))),
        Err(join) => Err(Failure::transfer(format!(
            "reading {} failed: {join}",
            e.path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_urls() {
        assert_eq!(
            listen_url("tcp://0.0.0.0:1", false).unwrap(),
            "tcp://0.0.0.0:1"
        );
        assert_eq!(
            listen_url("tcp://0.0.0.0:1", true).unwrap(),
            "stcp://0.0.0.0:1"
        );
        assert_eq!(listen_url("stcp://h:1", true).unwrap(), "stcp://h:1");
        assert_eq!(listen_url("stcp://h:1", false).unwrap_err().code(), 2);
        assert_eq!(listen_url("http://h:1", false).unwrap_err().code(), 2);
    }

    #[test]
    fn a_rate_cap_sizes_file_chunks_to_a_quarter_second_per_receiver() {
        const K: u64 = 1 << 10;
        assert_eq!(paced_chunk(1 << 20, None, 4), 1 << 20);
        assert_eq!(paced_chunk(1 << 20, Some(100 * K), 1), 25 * K);
        assert_eq!(paced_chunk(1 << 20, Some(1 << 20), 4), 64 * K);
        assert_eq!(
            paced_chunk(1 << 20, Some(50 << 20), 2),
            1 << 20,
            "never above --chunk"
        );
        assert_eq!(paced_chunk(1 << 20, Some(K), 8), 4 * K, "never below 4 KiB");
        assert_eq!(
            paced_chunk(64 * K, Some(1 << 30), 10_000),
            (1 << 30) / 40_000
        );
    }

    #[test]
    fn ticket_addresses() {
        assert_eq!(ticket_addr("tcp://127.0.0.1:5000", None), "127.0.0.1:5000");
        assert_eq!(
            ticket_addr("tcp://0.0.0.0:5000", Some("gpu-7")),
            "gpu-7:5000"
        );
        assert!(ticket_addr("tcp://0.0.0.0:5000", None).ends_with(":5000"));
        assert!(!ticket_addr("tcp://0.0.0.0:5000", None).starts_with("0.0.0.0"));
    }

    #[test]
    fn collects_files_and_trees() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ckpt");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.bin"), b"a").unwrap();
        std::fs::write(root.join("sub/b.safetensors"), b"b").unwrap();
        std::fs::write(d.path().join("c.bin"), b"c").unwrap();
        let got = collect(&[root.clone(), d.path().join("c.bin")], true).unwrap();
        let names: Vec<(&str, Kind)> = got.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            names,
            [
                ("ckpt/a.bin", Kind::File),
                ("ckpt/sub/b.safetensors", Kind::Tensors),
                ("c.bin", Kind::File)
            ]
        );
        let missing = collect(&[d.path().join("nope")], false).unwrap_err();
        assert_eq!(missing.code(), 2);
        assert!(missing.to_string().contains("no such file"), "{missing}");
        let dup = collect(&[d.path().join("c.bin"), d.path().join("c.bin")], false).unwrap_err();
        assert!(dup.to_string().contains("two objects"), "{dup}");
        std::fs::create_dir(d.path().join("empty")).unwrap();
        assert_eq!(
            collect(&[d.path().join("empty")], false)
                .unwrap_err()
                .code(),
            2
        );
    }
}
