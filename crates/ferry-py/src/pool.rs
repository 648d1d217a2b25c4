//! Receiver cells shared by the calls of one process.
//!
//! A sender counts receivers by cell name, and refuses a second live connection under a name
//! it already holds. So the receiving calls of one process that use the same name (the
//! default one, `ferry-py-PID`, or a TLS certificate's CN) and overlap in time — `asyncio`
//! gathers, threads — must go through one cell: the first call builds it (with its download
//! service), later ones lease it, each connects it to its ticket's sender unless it already is,
//! and the last one to finish shuts it down. Calls that do not overlap each make their own;
//! to the sender that is the same receiver coming back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ferry::cellnet::{Cell, CellnetError, Fqcn};
use ferry::{DownloadService, ServiceOptions};
use pyo3::prelude::*;

use crate::cells::{build_cell, Tls};
use crate::runtime::runtime;

/// What makes two calls' cells interchangeable: the name, and the TLS files (cert, key, ca).
type Key = (String, Option<(PathBuf, PathBuf, PathBuf)>);

/// One shared cell.
struct Shared {
    cell: Cell,
    service: DownloadService,
    /// Per sender URL, the peer this cell connected to there (behind a lock, so that two
    /// calls to one sender connect once).
    peers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Fqcn>>>>>,
}

/// The cells in use, with the number of calls using each.
type Pool = Mutex<HashMap<Key, (Arc<Shared>, usize)>>;

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

/// One call's use of a shared cell; [`Lease::release`] ends it.
pub struct Lease {
    key: Key,
    shared: Arc<Shared>,
}

impl Lease {
    /// Use the cell named `name` (with `tls`), building it if no running call has it.
    pub fn acquire(name: &str, tls: Option<&Tls>) -> PyResult<Self> {
        let key: Key = (
            name.to_string(),
            tls.map(|t| (t.cert.clone(), t.key.clone(), t.ca.clone())),
        );
        let mut pool = pool().lock().unwrap_or_else(|e| e.into_inner());
        if let Some((shared, users)) = pool.get_mut(&key) {
            *users += 1;
            return Ok(Self {
                key,
                shared: Arc::clone(shared),
            });
        }
        let cell = build_cell(name, tls)?;
        let service = {
            let _rt = runtime().enter();
            DownloadService::new(&cell, ServiceOptions::default())
        };
        let shared = Arc::new(Shared {
            cell,
            service,
            peers: Mutex::default(),
        });
        pool.insert(key.clone(), (Arc::clone(&shared), 1));
        Ok(Self { key, shared })
    }

    /// The download service of the cell.
    pub fn service(&self) -> &DownloadService {
        &self.shared.service
    }

    /// Connect the cell to the sender at `url`, unless it already is (by another call).
    /// Returns the peer that answered there.
    pub async fn connect(&self, url: &str) -> Result<Fqcn, CellnetError> {
        let slot = {
            let mut peers = self.shared.peers.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(peers.entry(url.to_string()).or_default())
        };
        let mut peer = slot.lock().await;
        if let Some(p) = peer.as_ref() {
            if self.shared.cell.is_connected(p.as_str()) {
                return Ok(p.clone());
            }
        }
        let p = self.shared.cell.connect(url).await?;
        *peer = Some(p.clone());
        Ok(p)
    }

    /// End this call's use; the last call shuts the cell down.
    pub async fn release(self) {
        let last = {
            let mut pool = pool().lock().unwrap_or_else(|e| e.into_inner());
            match pool.get_mut(&self.key) {
                Some((shared, users)) if Arc::ptr_eq(shared, &self.shared) => {
                    *users -= 1;
                    if *users == 0 {
                        pool.remove(&self.key);
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            }
        };
        if last {
            self.shared.service.shutdown().await;
            self.shared.cell.shutdown().await;
        }
    }
}
