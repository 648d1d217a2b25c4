//! What the test files of this crate share. Here, for the download end-to-end tests: the
//! `ferry-peer` binary, the generous "soon" bound, short request timeouts, the service's events
//! up to a transaction's end and gated file objects; [`echo`] for the cellnet interop tests.
//! Each file uses a subset, hence the allowance for dead code.
#![allow(dead_code)]

pub mod echo;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry::objects::FileObject;
use ferry::prelude::*;
use ferry_tests::e2e::{Gate, GatedObject};
use tokio::sync::broadcast;

/// The `ferry-peer` test binary (built with this package).
pub fn ferry_peer() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry-peer"))
}

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const SOON: Duration = Duration::from_secs(90);

/// The big file of the fan-out test: 256 MiB (2 GiB through loopback for 8 receivers; about
/// 6 s even in a debug build on 2 cores). `FERRY_E2E_BIG_MIB` overrides it.
pub fn big_file_len() -> u64 {
    let mib = std::env::var("FERRY_E2E_BIG_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(256);
    mib << 20
}

/// Short timeouts for tests where requests are expected to go unanswered.
pub fn short_opts() -> DownloadOptions {
    DownloadOptions {
        per_request_timeout: Duration::from_secs(2),
        max_retries: 1,
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        ..DownloadOptions::default()
    }
}

/// Every event up to and including the (first) `TransactionDone`. Waiters may resolve a
/// moment before that event is broadcast, so this waits for it (bounded).
pub async fn events_until_done(rx: &mut broadcast::Receiver<ServiceEvent>) -> Vec<ServiceEvent> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(SOON, rx.recv()).await {
            Ok(Ok(ev)) => {
                let done = matches!(ev, ServiceEvent::TransactionDone { .. });
                out.push(ev);
                if done {
                    return out;
                }
            }
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no TransactionDone event; got {out:?}"),
        }
    }
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Add a gated copy of a file object (first `free` produces pass) to `tx`.
pub fn add_gated_file(tx: &ObjectDownloader, path: &Path, free: u64) -> (RefId, Gate) {
    let obj = FileObject::builder(path)
        .chunk_size(1 << 20)
        .digest(true)
        .open()
        .unwrap();
    let gated = GatedObject::new(obj, free);
    let gate = gated.gate();
    (tx.add_object(Arc::new(gated)).unwrap(), gate)
}
