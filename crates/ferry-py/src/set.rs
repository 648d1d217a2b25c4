//! `ferry.get` of a set ticket (one ticket for a whole `ferry serve` of a directory or several
//! paths): the manifest, verified against the ticket before it is read, then every member
//! pinned by its entry ([`ferry::fetch_set`]), with one progress report for the whole set.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry::fetch::FetchOptions;
use ferry::fetch_set::{FetchSet, SetOptions, SetOutcome, SetProgress, SetProgressFn};
use pyo3::prelude::*;

use crate::call::{Call, Progress};
use crate::errors;
use crate::receive::warn;

/// Members downloaded at once (as `ferry get`).
const PARALLEL: usize = 4;

/// Fetch the set of `call`'s ticket into `out_dir`; returns the directory holding it: the
/// members' common top directory below `out_dir` when they share one (a served directory),
/// else `out_dir`.
pub fn get(py: Python<'_>, call: Call, out_dir: PathBuf, fopts: FetchOptions) -> PyResult<PathBuf> {
    let latest = call.wants_progress().then(|| Arc::clone(&call.latest));
    let set_ticket = call.ticket.clone();
    let dir = out_dir.clone();
    let (root, outcome) = call.run(py, move |service, ticket, opts| async move {
        let sopts = SetOptions {
            fetch: fopts,
            parallel: PARALLEL,
        };
        let set = FetchSet::open(&service, &ticket, &dir, sopts, opts.clone()).await?;
        let root = common_root(set.members().iter().map(|m| m.ticket.name.as_str()));
        // The newest report of the set; the last one is handed over with the final state.
        let last: Arc<Mutex<Option<SetProgress>>> = Arc::default();
        let progress = latest.as_ref().map(|latest| {
            let (latest, last) = (Arc::clone(latest), Arc::clone(&last));
            Arc::new(move |p: &SetProgress| {
                if let Ok(mut l) = last.lock() {
                    *l = Some(p.clone());
                }
                if let Ok(mut slot) = latest.lock() {
                    *slot = Some(Progress::of_set(p, "active"));
                }
            }) as SetProgressFn
        });
        let outcome = set.run(&service, opts, progress).await;
        if let (Some(latest), Ok(last)) = (latest, last.lock()) {
            if let (Some(p), Ok(mut slot)) = (last.as_ref(), latest.lock()) {
                *slot = Some(Progress::of_set(p, final_state(&outcome)));
            }
        }
        Ok((root, outcome))
    })?;
    let files = outcome.members.len();
    let mut failures = Vec::new();
    for m in outcome.members {
        for note in &m.notes {
            warn(py, note)?;
        }
        if let Err(e) = m.result {
            failures.push(errors::download_failed(
                py,
                e,
                &m.ticket,
                m.part.as_deref().filter(|_| fopts.resume),
            ));
        }
    }
    if failures.is_empty() {
        return Ok(root.map_or(out_dir.clone(), |r| out_dir.join(r)));
    }
    Err(errors::set_failed(
        py,
        &set_ticket.name,
        files,
        failures,
        fopts.resume,
    ))
}

/// `completed` when every member arrived, `aborted` when they stopped for a cancel, else
/// `failed`.
fn final_state(outcome: &SetOutcome) -> &'static str {
    if outcome.is_complete() {
        "completed"
    } else if outcome
        .members
        .iter()
        .any(|m| matches!(m.result, Err(ferry::DownloadError::Cancelled { .. })))
    {
        "aborted"
    } else {
        "failed"
    }
}

/// The first component all `names` share, if every name is below it (`ckpt` for
/// `ckpt/a.bin`, `ckpt/b/c.bin`); `None` when they differ or one is a top-level file.
fn common_root<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut root: Option<&str> = None;
    for n in names {
        let (top, _) = n.split_once('/')?;
        match root {
            None => root = Some(top),
            Some(r) if r == top => {}
            Some(_) => return None,
        }
    }
    root.map(str::to_string)
}
