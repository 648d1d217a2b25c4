//! Relays: receive an object from upstream and serve it downstream while it arrives.
//!
//! A [`Relay`] is a receiver and a sender at once. [`Relay::run`] pulls the object a ticket
//! names from its source (the upstream sees one receiver), holding it to the ticket's pin like
//! `ferry get` does; [`Relay::object`] is the [`RelayObject`] to add to a transaction of the
//! relay's own, whose receivers pull each chunk as soon as it arrived from upstream. The bytes
//! go to a spill file in a directory the relay makes (under [`RelayOptions::spill_dir`]) and
//! removes when it is dropped, so memory stays bounded whatever the object's size; downstream
//! requests for bytes that have not arrived wait for them.
//!
//! Integrity: the relay hashes what arrives as it arrives ([`StreamVerifier`]) and answers
//! downstream EOF only when the whole object's digest equals the ticket's pin; downstream
//! tickets ([`Relay::ticket`]) carry the same pin, so every downstream receiver checks it too.
//! Before pulling, the relay asks each source for the object's [`outboard`] (the BLAKE3
//! chaining values of its 1 MiB groups) and checks it against the pin; it then serves a group
//! only after the group's bytes matched, so a corrupted chunk fails the relay before any byte
//! of its group is served. A source without an outboard (an NVFlare sender) leaves the
//! whole-object check: bytes are served as they arrive, and a mismatch found at the end fails
//! every downstream pull (no downstream receiver can complete: nothing reaches a final path).
//! Relays chain: a relay's ticket is a ticket like any other, and a relay answers outboard
//! requests once it has one (register an [`outboard::OutboardIndex`]).
//!
//! Sources: [`Relay::new`] takes one or more tickets of the same content (the origin, other
//! relays). When a source fails (it stopped, its connection closed, it stopped answering),
//! the relay continues from the bytes it has at the next source; when every source failed it
//! fails its downstream with [`DownloadError::Relay`], naming each source and what happened.
//! A digest mismatch is final (the bytes that did not match cannot be told apart).
//!
//! Objects: files (`kind=file`) and tensor dicts (`kind=tensors`, what `ferry serve --tensors`
//! and Python's `Sender.add_tensors` send). Sets are refused by [`Relay::new`] with a message
//! saying what to relay instead.
//!
//! A tensor dict travels as items (one safetensors blob per tensor), and its ticket pins a
//! BLAKE3 fold of the per-item hashes and the dict's metadata: no single item can be checked
//! against it. The relay checks each item as far as it can when it arrives (the chunk's item
//! indices, a well-formed one-tensor blob, names not seen before, tensor bytes within the
//! pinned size), appends the blob to its spill file with an index entry, and serves it
//! downstream from there; the whole digest is checked once every item arrived, and only then
//! is the downstream EOF answered. A dict whose digest fails fails every downstream pull, and
//! the relay confirms nothing upstream. Downstream, the relay serves the items with the
//! origin's own item object ([`CacheableObject`](ferry_objects::CacheableObject), its cache
//! left empty: the blobs are in the spill), so `ferry get`, Python's `download_tensors` and
//! NVFlare's tensor downloader pull from it as from the origin. Its plan needs the item count,
//! which arrives with the upstream's first reply: add the object after [`Relay::wait_plan`] to
//! serve receivers pipelined.
//!
//! ```no_run
//! # async fn f(service: &ferry::DownloadService, upstream: ferry::ticket::Ticket) -> Result<(), ferry::DownloadError> {
//! use ferry::relay::{Relay, RelayOptions};
//! use ferry::{DownloadOptions, ObjectDownloader};
//! use ferry::core::TxConfig;
//! use std::time::Duration;
//!
//! let relay = Relay::new(vec![upstream], RelayOptions::default())?;
//! let tx = ObjectDownloader::new(service, TxConfig::new(Duration::from_secs(600)).with_num_receivers(4))?;
//! let rid = tx.add_object(relay.object())?;
//! let ticket = relay.ticket(service.cell().fqcn().as_str(), "relay-host:7052", false, &rid);
//! println!("{}", ticket.to_compact());
//! let report = relay.run(service, DownloadOptions::default()).await?; // upstream done, verified
//! let outcome = tx.waiter().wait().await;                              // downstream done
//! # let _ = (report, outcome); Ok(()) }
//! ```
//!
//! [`StreamVerifier`]: ferry_objects::verify::StreamVerifier

mod downstream;
mod item_spill;
mod items;
pub mod outboard;
mod phase;
mod spill;
mod spill_file;
mod upstream;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ferry_cellnet::rmpv::Value;
use ferry_cellnet::{Message, ReturnCode};
use ferry_core::{RefId, State};
use ferry_objects::cacheable::{COUNT, START};
use ferry_objects::verify::Pin;
use ferry_objects::RECEIVED_BYTES;

use crate::client::{download_object, DownloadOptions};
use crate::error::DownloadError;
use crate::service::DownloadService;
use crate::ticket::{Kind, Ticket};

use downstream::ByteObject;
pub use downstream::RelayObject;
use item_spill::ItemSpill;
use items::{ItemObject, ItemSpillConsumer};
use outboard::Outboard;
use phase::Phase;
use spill::Spill;
use upstream::SpillConsumer;

/// How a [`Relay`] stores and serves.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// Where the relay makes its spill directory (default: the system's temp dir). It needs
    /// the object's size free (a tensor dict's: its tensors plus a small header per tensor).
    pub spill_dir: PathBuf,
    /// The chunk size downstream receivers are served a file in (default 1 MiB); a tensor
    /// dict is served one item (tensor) per chunk, as by its origin.
    pub chunk_size: u64,
    /// Longest a downstream request waits for bytes that have not arrived (default 10 min).
    /// A safety net: the upstream download delivers them or fails well before, and a failure
    /// is answered at once. Downstream receivers keep their own sender-silence timeout.
    pub wait: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            spill_dir: std::env::temp_dir(),
            chunk_size: ferry_objects::DEFAULT_CHUNK_SIZE,
            wait: Duration::from_secs(600),
        }
    }
}

/// One source the relay tried, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceReport {
    /// The source's cell name (FQCN).
    pub source: String,
    /// Its URL.
    pub url: String,
    /// Bytes this source delivered that had not arrived before (duplicates not counted).
    pub bytes: u64,
    /// How long the relay pulled from it.
    pub elapsed: Duration,
    /// Why the relay left this source, if it failed.
    pub error: Option<String>,
}

/// What [`Relay::run`] did: the sources in the order tried (the last one finished the
/// object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayReport {
    /// Each source tried.
    pub sources: Vec<SourceReport>,
    /// Whether each 1 MiB group was checked against an outboard before it was served (else
    /// only the whole object's digest, before EOF).
    pub checked_groups: bool,
}

/// A relay of one object (see the [module docs](self)).
#[derive(Debug)]
pub struct Relay {
    sources: Vec<Ticket>,
    store: Store,
    object: Arc<RelayObject>,
}

/// The relay's copy: a file's bytes, or a tensor dict's items.
#[derive(Debug)]
enum Store {
    Bytes(Arc<Spill>),
    Items(Arc<ItemSpill>),
}

impl Store {
    fn pin(&self) -> Pin {
        match self {
            Store::Bytes(s) => s.pin(),
            Store::Items(s) => s.pin(),
        }
    }

    fn phase(&self) -> Phase {
        match self {
            Store::Bytes(s) => s.phase(),
            Store::Items(s) => s.phase(),
        }
    }

    fn set_phase(&self, phase: Phase) {
        match self {
            Store::Bytes(s) => s.set_phase(phase),
            Store::Items(s) => s.set_phase(phase),
        }
    }

    /// Bytes that arrived (a tensor dict's: tensor data, as its pin counts them).
    fn received(&self) -> u64 {
        match self {
            Store::Bytes(s) => s.progress().0,
            Store::Items(s) => s.progress().0,
        }
    }

    /// The state another source continues from: after the contiguous prefix of bytes, or of
    /// items, that arrived (`None`: from the start).
    fn resume_state(&self) -> Option<State> {
        match self {
            Store::Bytes(s) => {
                let prefix = s.progress().1;
                (prefix > 0).then(|| State::new().with(RECEIVED_BYTES, prefix))
            }
            Store::Items(s) => {
                let prefix = s.progress().1;
                (prefix > 0).then(|| State::new().with(START, 0u64).with(COUNT, prefix))
            }
        }
    }
}

impl Relay {
    /// A relay of the object `sources` name (one or more tickets of the same content, tried in
    /// order): a file or a tensor dict. Makes the spill directory; nothing is requested yet.
    /// Refused: no ticket, tickets of different content, a set, a chunk size out of range, a
    /// spill directory that cannot be written.
    pub fn new(sources: Vec<Ticket>, opts: RelayOptions) -> Result<Self, DownloadError> {
        let first = sources
            .first()
            .ok_or_else(|| DownloadError::Relay("a relay needs at least one ticket".into()))?;
        match first.kind {
            Kind::File | Kind::Tensors => {}
            Kind::Set => {
                return Err(DownloadError::Relay(format!(
                    "{} is a set of objects, which a relay does not serve: serve it with --ticket-per-object and relay each file's ticket",
                    first.name
                )))
            }
        }
        if let Some(other) = sources
            .iter()
            .find(|t| t.kind != first.kind || t.size != first.size || t.blake3 != first.blake3)
        {
            return Err(DownloadError::Relay(format!(
                "the tickets name different content: {} ({} bytes, BLAKE3 {}) and {} ({} bytes, BLAKE3 {}); give a relay only tickets of the same object",
                first.name, first.size, first.blake3, other.name, other.size, other.blake3
            )));
        }
        ferry_objects::check_chunk_size(opts.chunk_size)?;
        let cannot = |e: std::io::Error| {
            DownloadError::Relay(format!(
                "cannot make the relay's spill file in {}: {e}",
                opts.spill_dir.display()
            ))
        };
        let (store, object) = if first.kind == Kind::Tensors {
            let spill = Arc::new(ItemSpill::create(&opts.spill_dir, first.pin()).map_err(cannot)?);
            let object =
                RelayObject::items(ItemObject::new(Arc::clone(&spill), opts.wait), first.size);
            (Store::Items(spill), object)
        } else {
            let spill = Arc::new(Spill::create(&opts.spill_dir, first.pin()).map_err(cannot)?);
            let object = RelayObject::bytes(ByteObject::new(
                Arc::clone(&spill),
                opts.chunk_size,
                opts.wait,
            ));
            (Store::Bytes(spill), object)
        };
        Ok(Self {
            sources,
            store,
            object: Arc::new(object),
        })
    }

    /// The object to add to the relay's transaction(s).
    pub fn object(&self) -> Arc<RelayObject> {
        Arc::clone(&self.object)
    }

    /// The content every source is held to.
    pub fn pin(&self) -> Pin {
        self.store.pin()
    }

    /// The upstream tickets, in the order they are tried.
    pub fn sources(&self) -> &[Ticket] {
        &self.sources
    }

    /// The ticket downstream receivers use: this relay's cell `source` at `addr` (`HOST:PORT`,
    /// over TLS if `tls`), the ref `ref_id` the object got in the relay's transaction, and the
    /// upstream ticket's name, kind, size and digest (the same pin).
    pub fn ticket(&self, source: &str, addr: &str, tls: bool, ref_id: &RefId) -> Ticket {
        Ticket {
            tls,
            addr: addr.to_string(),
            source: source.to_string(),
            ref_id: ref_id.to_string(),
            ..self.sources[0].clone()
        }
    }

    /// The spill file: a file's bytes at their offsets (holes where bytes have not arrived),
    /// or a tensor dict's item blobs in the order they arrived.
    pub fn spill_path(&self) -> &Path {
        match &self.store {
            Store::Bytes(s) => s.path(),
            Store::Items(s) => s.path(),
        }
    }

    /// Bytes that arrived from upstream so far (of a tensor dict: tensor data, as the
    /// ticket's size counts them).
    pub fn received(&self) -> u64 {
        self.store.received()
    }

    /// Whether the relay checks each 1 MiB group against an outboard before serving it (a
    /// source gave one that matches the pin), rather than only the whole object's digest.
    /// Never for a tensor dict: its pin is a fold of item hashes, checked once all arrived.
    pub fn checks_groups(&self) -> bool {
        match &self.store {
            Store::Bytes(s) => s.has_outboard(),
            Store::Items(_) => false,
        }
    }

    /// The number of items of a tensor dict, once the upstream announced it (`None` for a
    /// file, or before).
    pub fn item_count(&self) -> Option<u64> {
        match &self.store {
            Store::Bytes(_) => None,
            Store::Items(s) => s.count(),
        }
    }

    /// Wait until downstream receivers can be given a plan, at most `limit`: at once for a
    /// file; for a tensor dict, until the upstream announced its item count (with its first
    /// reply, once [`run`](Self::run) started). An [`object`](Self::object) added to a
    /// transaction after this returned `true` is served with a plan, so receivers keep
    /// several requests in flight; added before, it is served one item per request (as
    /// NVFlare does). `false`: the count did not arrive in time or the relay failed.
    pub async fn wait_plan(&self, limit: Duration) -> bool {
        let Store::Items(s) = &self.store else {
            return true;
        };
        let s = Arc::clone(s);
        tokio::task::spawn_blocking(move || s.wait_count(limit).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Where the relay keeps its outboard, for an [`OutboardIndex`](outboard::OutboardIndex)
    /// (always empty for a tensor dict).
    pub(crate) fn outboard_slot(&self) -> Arc<OnceLock<Arc<Outboard>>> {
        match &self.store {
            Store::Bytes(s) => s.outboard_slot(),
            Store::Items(_) => Arc::new(OnceLock::new()),
        }
    }

    /// Whether the whole object arrived and verified.
    pub fn is_verified(&self) -> bool {
        self.store.phase() == Phase::Verified
    }

    /// Fail every downstream pull from now on with `why` (e.g. the relay is stopping). A
    /// relay that verified keeps serving: its copy is complete.
    pub fn close(&self, why: &str) {
        if self.store.phase() != Phase::Verified {
            self.store.set_phase(Phase::Failed(why.to_string()));
        }
    }

    /// Pull the object from the sources, in order, each continuing after the bytes the relay
    /// already has, until one delivers it all and it verifies. The relay's cell (the
    /// service's) connects to each source's address when its turn comes, unless it is already
    /// connected to that cell. `opts` applies to every attempt (its `resume_state` is set by
    /// the relay). On success downstream EOF is answered; on failure every downstream pull is
    /// answered with the error, which names each source and what happened.
    pub async fn run(
        &self,
        service: &DownloadService,
        opts: DownloadOptions,
    ) -> Result<RelayReport, DownloadError> {
        let mut report = RelayReport {
            sources: Vec::new(),
            checked_groups: false,
        };
        for t in &self.sources {
            let before = self.store.received();
            let started = Instant::now();
            let result = self.pull_from(service, t, opts.clone()).await;
            let after = self.store.received();
            let error = result.err();
            report.sources.push(SourceReport {
                source: t.source.clone(),
                url: t.url(),
                bytes: after - before,
                elapsed: started.elapsed(),
                error: error.as_ref().map(ToString::to_string),
            });
            let Some(error) = error else {
                report.checked_groups = self.checks_groups();
                tracing::info!(source = %t.source, "relay: object verified");
                return Ok(report);
            };
            tracing::warn!(source = %t.source, %error, "relay: source failed");
            if let Phase::Failed(why) = self.store.phase() {
                // A digest mismatch (or a close): the bytes cannot be trusted from any source.
                return Err(DownloadError::Relay(why));
            }
            if matches!(error, DownloadError::Cancelled { .. }) {
                let why = "the relay was cancelled".to_string();
                self.store.set_phase(Phase::Failed(why.clone()));
                return Err(DownloadError::Relay(why));
            }
        }
        let why = format!(
            "the relay lost its upstream after {} of {} bytes: {}",
            self.store.received(),
            self.store.pin().size,
            report
                .sources
                .iter()
                .map(|s| format!(
                    "{} ({}): {}",
                    s.source,
                    s.url,
                    s.error.as_deref().unwrap_or("?")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        self.store.set_phase(Phase::Failed(why.clone()));
        Err(DownloadError::Relay(why))
    }

    /// Ask `t`'s sender for the object's outboard. One that does not match the pin fails this
    /// source; a sender that has none (an NVFlare cell, an older ferry) leaves the relay with
    /// the whole-object check.
    async fn fetch_outboard(
        &self,
        service: &DownloadService,
        t: &Ticket,
        timeout: Duration,
    ) -> Result<(), DownloadError> {
        let Store::Bytes(spill) = &self.store else {
            return Ok(()); // a tensor dict's pin is checked item by item, then folded
        };
        let req = Message::from_value(Value::Map(vec![(
            Value::from("ref_id"),
            Value::from(t.ref_id.as_str()),
        )]));
        let reply = service
            .cell()
            .send_request(outboard::CHANNEL, outboard::TOPIC, &t.source, req, timeout)
            .await;
        if reply.return_code() != ReturnCode::Ok {
            tracing::info!(source = %t.source, rc = %reply.return_code().as_str(), error = ?reply.error_text(), "no outboard: the relay checks the whole object's digest only");
            return Ok(());
        }
        let pin = spill.pin();
        let o = reply
            .value()
            .map_err(|e| e.to_string())
            .and_then(|v| Outboard::verified(&v, pin.size, &pin.blake3))
            .map_err(|why| {
                DownloadError::Relay(format!("{} sent an unusable outboard: {why}", t.source))
            })?;
        spill
            .set_outboard(o, &t.source)
            .map_err(DownloadError::Relay)
    }

    /// Before [`run`](Self::run): connect to the first source and ask it for the outboard, so
    /// that the relay can answer its own downstream relays' outboard requests from the start.
    /// Returns whether groups will be checked one by one. An error (the source cannot be
    /// reached, its outboard does not match the pin) is the first source's: `run` still tries
    /// every source.
    pub async fn prepare(
        &self,
        service: &DownloadService,
        timeout: Duration,
    ) -> Result<bool, DownloadError> {
        let t = &self.sources[0];
        self.connect(service, t).await?;
        self.fetch_outboard(service, t, timeout).await?;
        Ok(self.checks_groups())
    }

    /// Connect the service's cell to `t`'s sender unless it is connected to that cell.
    async fn connect(&self, service: &DownloadService, t: &Ticket) -> Result<(), DownloadError> {
        let cell = service.cell();
        if cell.is_connected(&t.source) {
            return Ok(());
        }
        let url = t.url();
        let peer = cell.connect(&url).await.map_err(|e| {
            DownloadError::Relay(format!("cannot reach {} at {url}: {e}", t.source))
        })?;
        if !t.is_served_by(peer.as_str()) {
            return Err(DownloadError::Relay(format!(
                "the listener at {url} is the cell {peer}, not the sender {} the ticket names",
                t.source
            )));
        }
        Ok(())
    }

    /// One attempt: connect to `t`'s sender if needed and download what has not arrived.
    async fn pull_from(
        &self,
        service: &DownloadService,
        t: &Ticket,
        mut opts: DownloadOptions,
    ) -> Result<(), DownloadError> {
        self.connect(service, t).await?;
        if !self.checks_groups() {
            self.fetch_outboard(service, t, opts.per_request_timeout)
                .await?;
        }
        opts.resume_state = self.store.resume_state();
        let rid = RefId::new(t.ref_id.clone());
        let source = t.source.clone();
        match &self.store {
            Store::Bytes(spill) => {
                let consumer = SpillConsumer::new(Arc::clone(spill), source.clone());
                download_object(service, &source, &rid, consumer, opts)
                    .await
                    .map(|_| ())
            }
            Store::Items(spill) => {
                let consumer = ItemSpillConsumer::new(Arc::clone(spill), source.clone());
                download_object(service, &source, &rid, consumer, opts)
                    .await
                    .map(|_| ())
            }
        }
    }
}
