//! How `ferry serve` registers what it serves in its transaction: each entry loaded (files
//! hashed, tensor dicts read) into a downloadable, rate-capped if asked, with its ticket; and
//! for a set, the manifest that one set ticket pins.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use ferry::core::Downloadable;
use ferry::manifest::Manifest;
use ferry::objects::tensors::tensor_dict_pin;
use ferry::objects::{CacheOptions, ExpectedReceivers, FileObject, TensorDict, TensorDictObject};
use ferry::ticket::{Kind, Ticket};
use ferry::ObjectDownloader;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use super::entries::Entry;
use crate::args::ServeArgs;
use crate::exit::{CmdResult, Failure};
use crate::throttle::{RateLimiter, Throttled};
use crate::ui;

/// Chunk size of plain files when `--chunk` is not given.
pub(super) const DEFAULT_CHUNK: u64 = 1 << 20;

/// How each entry is made into a downloadable.
#[derive(Debug)]
pub(super) struct Load<'a> {
    /// The chunk size of plain files.
    pub chunk: u64,
    /// The receivers a tensor dict's chunk cache expects.
    pub expected: &'a ExpectedReceivers,
    /// `--limit-rate`, shared by every object.
    pub limiter: Option<&'a Arc<RateLimiter>>,
}

/// What was registered.
#[derive(Debug)]
pub(super) struct Registered {
    /// One ticket per object, in the order of the entries.
    pub tickets: Vec<Ticket>,
    /// The set ticket (its manifest registered too), when this serve is a set.
    pub set: Option<Ticket>,
    /// The name of each ref, for messages.
    pub names: HashMap<String, String>,
    /// The bytes every receiver pulls (the objects and a set's manifest).
    pub total_bytes: u64,
    /// The objects' bytes (the manifest's total size).
    pub payload: u64,
}

/// Register every entry in `tx` (listening on `bound`), and a set's manifest when this serve
/// is a set. Ctrl-C before the last entry deletes the transaction.
pub(super) async fn register(
    tx: &ObjectDownloader,
    args: &ServeArgs,
    entries: &[Entry],
    bound: &str,
    how: &Load<'_>,
    cancel: &CancellationToken,
) -> CmdResult<Registered> {
    let addr = ferry::ticket::advertised_addr(bound, args.advertise.as_deref());
    let tls = bound.starts_with("stcp://");
    let mut tickets = Vec::new();
    let mut names = HashMap::new();
    let mut total_bytes = 0u64;
    let mut manifest = Manifest::new();
    for e in entries {
        if cancel.is_cancelled() {
            tx.delete_transaction().ok();
            return Err(Failure::Interrupted("interrupted before serving".into()));
        }
        // plain TCP sends file chunks straight from the file; TLS reads them into buffers
        let (obj, size, blake3) = load(e, how.chunk, how.expected, !tls).await?;
        let obj: Arc<dyn Downloadable> = match how.limiter {
            Some(l) => Arc::new(Throttled::new(obj, Arc::clone(l))),
            None => obj,
        };
        let rid = tx
            .add_object(obj)
            .map_err(|err| Failure::usage(format!("{}: {err}", e.path.display())))?;
        total_bytes += size;
        names.insert(rid.to_string(), e.name.clone());
        let t = Ticket {
            tls,
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
    let set = if is_set(args) {
        let t = serve_manifest(tx, &manifest, set_label(entries), &tickets[0])?;
        names.insert(t.ref_id.clone(), format!("{} (set manifest)", t.name));
        total_bytes += t.size;
        Some(t)
    } else {
        None
    };
    Ok(Registered {
        tickets,
        set,
        names,
        total_bytes,
        payload: manifest.total_size(),
    })
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
    file_chunks: bool,
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
                    .file_chunks(file_chunks)
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
}
