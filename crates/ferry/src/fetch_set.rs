//! Download everything a [`Kind::Set`] ticket names: one ticket for a whole serve.
//!
//! [`FetchSet::open`] pulls the set's [manifest](crate::manifest) and holds it to the ticket's
//! size and BLAKE3 **before reading it**; then it checks every member's name (nothing may escape
//! the output directory) and destination. [`FetchSet::run`] fetches the members with
//! [`Fetch`] — each pinned by its manifest entry, so the same verification, `.part` handling
//! and per-file resume as a single ticket — a few at a time, reporting one overall
//! [`SetProgress`], and gives each file the sender's permission bits and modification time.
//!
//! With [`FetchOptions::resume`], a member already complete at its destination (same size and
//! BLAKE3 as its entry: it is read once to check) is kept, and the sender is told it arrived
//! (a pull that starts at its end), so a set interrupted after some files resumes with the
//! rest. Members that fail do not stop the others; [`SetOutcome`] has one result per member.
//!
//! ```no_run
//! # async fn f(service: &ferry::DownloadService, ticket: &ferry::ticket::Ticket) -> Result<(), ferry::DownloadError> {
//! use ferry::fetch_set::{FetchSet, SetOptions};
//! let set = FetchSet::open(service, ticket, "downloads".as_ref(), SetOptions::default(),
//!                          ferry::DownloadOptions::default()).await?;
//! println!("{} files, {} bytes", set.members().len(), set.total_size());
//! let outcome = set.run(service, ferry::DownloadOptions::default(), None).await;
//! for m in &outcome.members {
//!     match &m.result {
//!         Ok(got) => println!("{}", got.path.display()),
//!         Err(e) => eprintln!("{}: {e}", m.ticket.name),
//!     }
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::{ChunkData, ConsumeError, Consumer, DownloadFailure, RefId, State};
use ferry_objects::verify::{Pin, Verified};
use ferry_objects::{BytesConsumer, ObjectsError, RECEIVED_BYTES};
use futures::stream::StreamExt;

use crate::client::{download_object, DownloadOptions};
use crate::error::DownloadError;
use crate::fetch::{Fetch, FetchOptions, Fetched};
use crate::manifest::{Entry, Manifest, MAX_MANIFEST_BYTES};
use crate::service::DownloadService;
use crate::ticket::{Kind, Ticket};

/// How a set is fetched.
#[derive(Clone, Copy, Debug)]
pub struct SetOptions {
    /// How each member's destination is treated (overwrite, resume, ...).
    pub fetch: FetchOptions,
    /// Members downloaded at once (each pipelined on its own).
    pub parallel: usize,
}

impl Default for SetOptions {
    fn default() -> Self {
        Self {
            fetch: FetchOptions::default(),
            parallel: 4,
        }
    }
}

/// Progress of a whole set.
#[derive(Clone, Debug)]
pub struct SetProgress {
    /// Bytes of the members at their destination or in their part files, kept ones included.
    pub bytes: u64,
    /// Of `bytes`, what was already here when the run started (kept files and parts).
    pub resumed_from: u64,
    /// Sum of the members' sizes.
    pub total: u64,
    /// Members finished (fetched or kept) so far.
    pub files_done: usize,
    /// Members in the set.
    pub files: usize,
    /// Since the run started.
    pub elapsed: Duration,
}

/// A set-progress callback.
pub type SetProgressFn = Arc<dyn Fn(&SetProgress) + Send + Sync>;

/// One member of an opened set.
#[derive(Clone, Debug)]
pub struct Member {
    /// The member's own ticket (the set's sender, pinned by the manifest entry).
    pub ticket: Ticket,
    /// Whether it is already complete at its destination (resume) and will not be fetched.
    pub already_here: bool,
    entry: Entry,
}

/// What happened to one member.
#[derive(Debug)]
pub struct MemberOutcome {
    /// The member's ticket.
    pub ticket: Ticket,
    /// Where it is and what was checked, or why not.
    pub result: Result<Fetched, DownloadError>,
    /// The part file a failed file download keeps for resume (`None` for tensor dicts).
    pub part: Option<PathBuf>,
    /// Things worth telling that did not fail it: a discarded part, permissions or times that
    /// could not be set.
    pub notes: Vec<String>,
}

/// The result of [`FetchSet::run`]: every member, in manifest order.
#[derive(Debug)]
pub struct SetOutcome {
    /// One outcome per member.
    pub members: Vec<MemberOutcome>,
}

impl SetOutcome {
    /// Whether every member arrived.
    pub fn is_complete(&self) -> bool {
        self.members.iter().all(|m| m.result.is_ok())
    }
}

/// A set whose manifest was fetched and verified and whose destinations were checked.
#[derive(Debug)]
pub struct FetchSet {
    ticket: Ticket,
    manifest: Manifest,
    dir: PathBuf,
    opts: SetOptions,
    members: Vec<Member>,
}

/// Download a set's manifest and verify it against the ticket (size, BLAKE3) before parsing
/// it. A ticket announcing more than [`MAX_MANIFEST_BYTES`] is refused before any request.
/// `opts`' progress callback is not used (the manifest is small).
pub async fn fetch_manifest(
    service: &DownloadService,
    ticket: &Ticket,
    opts: DownloadOptions,
) -> Result<Manifest, DownloadError> {
    if ticket.kind != Kind::Set {
        return Err(DownloadError::Local(format!(
            "{} is a {}, not a set",
            ticket.name,
            ticket.kind.as_str()
        )));
    }
    if ticket.size > MAX_MANIFEST_BYTES {
        return Err(crate::manifest::ManifestError(format!(
            "the ticket announces {} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have",
            ticket.size
        ))
        .into());
    }
    let opts = DownloadOptions {
        progress: None,
        resume_state: None,
        ..opts
    };
    let rid = RefId::new(ticket.ref_id.clone());
    let consumer = BytesConsumer::with_max_size(ticket.size);
    let mut got = download_object(service, &ticket.source, &rid, consumer, opts).await?;
    let bytes = got.take().unwrap_or_default();
    let pin = ticket.pin();
    let have = Pin::new(bytes.len() as u64, blake3::hash(&bytes));
    if have != pin {
        return Err(DownloadError::Failed {
            ref_id: ticket.ref_id.clone(),
            source_fqcn: ticket.source.clone(),
            failure: DownloadFailure::CompletionFailed(format!(
                "integrity check failed: the set manifest is {} bytes hashing to {}, the ticket pins {} bytes and {}",
                have.size,
                have.hex(),
                pin.size,
                pin.hex()
            )),
        });
    }
    Ok(Manifest::decode(&bytes)?)
}

impl FetchSet {
    /// Fetch and verify the manifest ([`fetch_manifest`]), then check every member's
    /// destination below `dir`: an existing file is refused ([`ObjectsError::DestinationExists`])
    /// unless `opts.fetch.overwrite`, or, with `opts.fetch.resume`, kept when it already holds
    /// the member's content (read once to check). Nothing is written yet.
    pub async fn open(
        service: &DownloadService,
        ticket: &Ticket,
        dir: &Path,
        opts: SetOptions,
        dl: DownloadOptions,
    ) -> Result<Self, DownloadError> {
        let manifest = fetch_manifest(service, ticket, dl).await?;
        let set = ticket.clone();
        let dir_buf = dir.to_path_buf();
        let fopts = opts.fetch;
        let checked = manifest.clone();
        let members =
            tokio::task::spawn_blocking(move || check_members(&set, &checked, &dir_buf, fopts))
                .await
                .map_err(|e| DownloadError::Local(format!("checking the destinations: {e}")))??;
        Ok(Self {
            ticket: ticket.clone(),
            manifest,
            dir: dir.to_path_buf(),
            opts,
            members,
        })
    }

    /// The set's ticket.
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The members, in manifest order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Sum of the members' sizes.
    pub fn total_size(&self) -> u64 {
        self.manifest.total_size()
    }

    /// Bytes of the members already complete at their destinations.
    pub fn already_here(&self) -> u64 {
        self.members
            .iter()
            .filter(|m| m.already_here)
            .map(|m| m.ticket.size)
            .sum()
    }

    /// Fetch every member not already here, `parallel` at a time. `opts` applies to each
    /// member's download (its progress callback is replaced: pass `progress` for the set's);
    /// its cancellation token stops them all.
    pub async fn run(
        self,
        service: &DownloadService,
        opts: DownloadOptions,
        progress: Option<SetProgressFn>,
    ) -> SetOutcome {
        let files = self.members.len();
        let tally = Arc::new(Tally {
            bytes: self.members.iter().map(|_| AtomicU64::new(0)).collect(),
            files_done: AtomicUsize::new(0),
            resumed_from: AtomicU64::new(0),
            total: self.manifest.total_size(),
            files,
            started: Instant::now(),
            progress,
        });
        let dir = &self.dir;
        let fopts = self.opts.fetch;
        let jobs = self.members.into_iter().enumerate().map(|(i, m)| {
            let tally = Arc::clone(&tally);
            let opts = opts.clone();
            async move { (i, member(service, i, m, dir, fopts, opts, &tally).await) }
        });
        let mut done: Vec<(usize, MemberOutcome)> = futures::stream::iter(jobs)
            .buffer_unordered(self.opts.parallel.max(1))
            .collect()
            .await;
        done.sort_by_key(|(i, _)| *i);
        tally.report();
        SetOutcome {
            members: done.into_iter().map(|(_, m)| m).collect(),
        }
    }
}

/// Where the members land, and which are already there.
fn check_members(
    set: &Ticket,
    manifest: &Manifest,
    dir: &Path,
    opts: FetchOptions,
) -> Result<Vec<Member>, DownloadError> {
    let mut members = Vec::with_capacity(manifest.entries.len());
    for (i, entry) in manifest.entries.iter().enumerate() {
        // decode() checked every entry; a member without a ticket cannot happen
        let ticket = manifest.member_ticket(set, i).ok_or_else(|| {
            DownloadError::Local(format!("{}: not a member of the set", entry.name))
        })?;
        let dest = dir.join(&ticket.name);
        let mut already_here = false;
        if let Ok(meta) = dest.symlink_metadata() {
            if meta.is_dir() {
                return Err(ObjectsError::InvalidOption(format!(
                    "{} is a directory",
                    dest.display()
                ))
                .into());
            }
            let keep = opts.resume
                && ticket.kind == Kind::File
                && meta.is_file()
                && meta.len() == ticket.size
                && holds(&dest, ticket.pin());
            if keep {
                already_here = true;
            } else if !opts.overwrite {
                return Err(ObjectsError::DestinationExists(dest).into());
            }
        }
        members.push(Member {
            ticket,
            already_here,
            entry: entry.clone(),
        });
    }
    Ok(members)
}

/// Whether the file at `path` has `pin`'s content (read once).
fn holds(path: &Path, pin: Pin) -> bool {
    let mut h = blake3::Hasher::new();
    match std::fs::File::open(path).and_then(|f| h.update_reader(f).map(|_| ())) {
        Ok(()) => Pin::new(pin.size, h.finalize()) == pin,
        Err(_) => false,
    }
}

/// Shared progress of a run.
struct Tally {
    /// Per member: bytes at its destination or in its part.
    bytes: Vec<AtomicU64>,
    files_done: AtomicUsize,
    resumed_from: AtomicU64,
    total: u64,
    files: usize,
    started: Instant,
    progress: Option<SetProgressFn>,
}

impl Tally {
    fn report(&self) {
        if let Some(f) = &self.progress {
            f(&SetProgress {
                bytes: self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum(),
                resumed_from: self.resumed_from.load(Ordering::Relaxed),
                total: self.total,
                files_done: self.files_done.load(Ordering::Relaxed),
                files: self.files,
                elapsed: self.started.elapsed(),
            });
        }
    }
}

/// Fetch (or keep) member `i`.
async fn member(
    service: &DownloadService,
    i: usize,
    m: Member,
    dir: &Path,
    fopts: FetchOptions,
    opts: DownloadOptions,
    tally: &Arc<Tally>,
) -> MemberOutcome {
    let mut out = MemberOutcome {
        ticket: m.ticket.clone(),
        result: Err(DownloadError::Cancelled {
            ref_id: m.ticket.ref_id.clone(),
        }),
        part: None,
        notes: Vec::new(),
    };
    if opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
        return out;
    }
    if m.already_here {
        let size = m.ticket.size;
        tally.bytes[i].store(size, Ordering::Relaxed);
        tally.resumed_from.fetch_add(size, Ordering::Relaxed);
        tell_sender_it_arrived(service, &m.ticket, &opts).await;
        let path = dir.join(&m.ticket.name);
        out.notes.extend(apply_attributes(&path, &m.entry).await);
        out.result = Ok(Fetched {
            path,
            verified: Verified::Pinned(m.ticket.pin()),
            resumed_from: size,
            transferred: 0,
        });
    } else {
        let fetch = match Fetch::open(&m.ticket, dir, fopts).await {
            Ok(f) => f,
            Err(e) => {
                out.result = Err(e);
                return out;
            }
        };
        if let Some(why) = fetch.discarded_part() {
            out.notes
                .push(format!("{why}; started {} over", m.ticket.name));
        }
        out.part = fetch.part_path().map(Path::to_path_buf);
        let resumed = fetch.resumed_from();
        tally.bytes[i].store(resumed, Ordering::Relaxed);
        tally.resumed_from.fetch_add(resumed, Ordering::Relaxed);
        let progress_tally = Arc::clone(tally);
        let opts = DownloadOptions {
            progress: None,
            ..opts
        }
        .with_progress(move |p| {
            progress_tally.bytes[i].store(resumed + p.bytes_done, Ordering::Relaxed);
            progress_tally.report();
        });
        out.result = fetch.run(service, opts).await;
        if let Ok(got) = &out.result {
            out.notes
                .extend(apply_attributes(&got.path, &m.entry).await);
        }
    }
    if out.result.is_ok() {
        tally.bytes[i].store(m.ticket.size, Ordering::Relaxed);
        tally.files_done.fetch_add(1, Ordering::Relaxed);
        tally.report();
    }
    out
}

/// Tell the sender a member that was already here arrived: a pull that starts at its end gets
/// EOF at once and is confirmed, so the sender counts this receiver for it. Best effort: a
/// sender that no longer serves the ref (it was delivered before) changes nothing here.
async fn tell_sender_it_arrived(service: &DownloadService, t: &Ticket, opts: &DownloadOptions) {
    let opts = DownloadOptions {
        resume_state: Some(State::new().with(RECEIVED_BYTES, t.size)),
        progress: None,
        max_retries: 1,
        window: 1,
        ..opts.clone()
    };
    let rid = RefId::new(t.ref_id.clone());
    if let Err(e) = download_object(service, &t.source, &rid, AlreadyHere, opts).await {
        tracing::debug!(name = %t.name, error = %e, "telling the sender a kept file arrived");
    }
}

/// The consumer of a pull for a file that is already complete here: it expects EOF at once.
#[derive(Debug)]
struct AlreadyHere;

impl Consumer for AlreadyHere {
    fn blocks(&self) -> bool {
        false
    }

    fn needs_order(&self) -> bool {
        false
    }

    fn consume(&mut self, _: &str, _: &State, _: ChunkData) -> Result<State, ConsumeError> {
        Err(ConsumeError::Integrity(
            "the file is complete here, yet the sender sent more".into(),
        ))
    }

    fn completed(&mut self, _: &str) -> Result<(), ConsumeError> {
        Ok(())
    }

    fn failed(&mut self, _: &str, _: &str) {}
}

/// Give `path` the sender's modification time and permission bits (`0o777`: never setuid,
/// setgid or sticky). Returns what could not be done.
async fn apply_attributes(path: &Path, entry: &Entry) -> Vec<String> {
    let path = path.to_path_buf();
    let modified = entry.modified();
    let mode = entry.mode.map(|m| m & 0o777);
    tokio::task::spawn_blocking(move || {
        let mut notes = Vec::new();
        // the time first: a read-only mode must not stop it (futimens needs ownership only)
        if let Some(t) = modified {
            if let Err(e) = std::fs::File::open(&path).and_then(|f| f.set_modified(t)) {
                notes.push(format!("could not set the time of {}: {e}", path.display()));
            }
        }
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
                notes.push(format!(
                    "could not set the mode {mode:o} of {}: {e}",
                    path.display()
                ));
            }
        }
        notes
    })
    .await
    .unwrap_or_default()
}
