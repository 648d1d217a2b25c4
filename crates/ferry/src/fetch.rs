//! Download what a [`Ticket`] names, holding the sender to the ticket's pin.
//!
//! This is what `ferry get` does for each ticket, as a library any front end uses (the CLI, the
//! Python bindings): [`Fetch::open`] checks and opens the destination (and, when resuming,
//! verifies what a kept `.part` holds), [`Fetch::run`] downloads. Whatever the sender sends or
//! advertises — a ferry plan, none (NVFlare), a wrong one, more bytes — the ticket's size is
//! enforced as bytes arrive and its digest is checked on what arrived (hashed as it arrives);
//! a mismatch fails the download with nothing at the destination. [`Fetched::verified`] says
//! exactly what was checked.
//!
//! ```no_run
//! # async fn f(service: &ferry::DownloadService, ticket: &ferry::ticket::Ticket) -> Result<(), ferry::DownloadError> {
//! use ferry::fetch::{Fetch, FetchOptions};
//! let fetch = Fetch::open(ticket, "downloads".as_ref(), FetchOptions::default()).await?;
//! let got = fetch.run(service, ferry::DownloadOptions::default()).await?;
//! println!("{} ({})", got.path.display(), got.verified.describe());
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use ferry_core::RefId;
use ferry_objects::verify::{Pin, Verified};
use ferry_objects::{FileConsumer, ObjectsError, SafetensorsFileConsumer, DEFAULT_SYNC_EVERY};

use crate::client::{download_object, DownloadOptions};
use crate::error::DownloadError;
use crate::service::DownloadService;
use crate::ticket::{Kind, Ticket};

/// How [`Fetch`] treats the destination.
#[derive(Clone, Copy, Debug)]
pub struct FetchOptions {
    /// Replace an existing file at the destination (default: refuse).
    pub overwrite: bool,
    /// Files: keep `NAME.part` (and its record `NAME.part.ferry`) on failure and continue
    /// from it next time, if it holds the ticket's content. Tensor dicts always start over.
    pub resume: bool,
    /// With `resume`: make the received prefix durable every this many bytes.
    pub sync_every: u64,
    /// With `resume`: discard a kept part of other content instead of refusing it.
    pub discard_other_part: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            overwrite: false,
            resume: false,
            sync_every: DEFAULT_SYNC_EVERY,
            discard_other_part: false,
        }
    }
}

/// The consumer a ticket needs.
#[derive(Debug)]
enum Target {
    File(FileConsumer),
    Tensors(SafetensorsFileConsumer),
}

/// A ticket's download, destination opened, ready to [`run`](Fetch::run).
#[derive(Debug)]
pub struct Fetch {
    ticket: Ticket,
    target: Target,
}

/// A finished download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Where the object is.
    pub path: PathBuf,
    /// What it was checked against (a ticket's download is always [`Verified::Pinned`]).
    pub verified: Verified,
    /// Bytes taken from a kept part (0 unless resumed).
    pub resumed_from: u64,
    /// Bytes transferred by this download (the object's size minus `resumed_from`).
    pub transferred: u64,
}

impl Fetch {
    /// Check the destination `dir/ticket.name` (creating the directories of a nested name),
    /// and open it; with [`resume`](FetchOptions::resume) reopen and verify a kept part (this
    /// reads it once, on a blocking thread). Nothing is requested from the sender yet. Errors
    /// are [`DownloadError::Objects`]: the destination exists, a kept part holds other content
    /// ([`ObjectsError::OtherContent`]), the directory cannot be written, ...
    pub async fn open(
        ticket: &Ticket,
        dir: &Path,
        opts: FetchOptions,
    ) -> Result<Self, DownloadError> {
        let ticket = ticket.clone();
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(ticket, &dir, opts))
            .await
            .map_err(|e| DownloadError::Local(format!("opening the destination: {e}")))?
    }

    /// [`open`](Self::open), on the calling thread.
    pub fn open_blocking(
        ticket: Ticket,
        dir: &Path,
        opts: FetchOptions,
    ) -> Result<Self, DownloadError> {
        let (parent, base) = destination(&ticket, dir)?;
        let pin = ticket.pin();
        let target = match ticket.kind {
            Kind::Set => {
                return Err(DownloadError::Local(format!(
                    "{} is a set of objects: fetch it with ferry::fetch_set::FetchSet",
                    ticket.name
                )))
            }
            Kind::File => Target::File(
                FileConsumer::builder(&parent, &base)
                    .overwrite(opts.overwrite)
                    .pin(pin)
                    .keep_part_for_resume(opts.resume)
                    .sync_every(opts.sync_every)
                    .discard_other_part(opts.discard_other_part)
                    .origin(format!("{}/{}", ticket.source, ticket.ref_id))
                    .open()?,
            ),
            Kind::Tensors => Target::Tensors(
                SafetensorsFileConsumer::builder(&parent, &base)
                    .overwrite(opts.overwrite)
                    .pin(pin)
                    .open()?,
            ),
        };
        Ok(Self { ticket, target })
    }

    /// The ticket.
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// The content the sender is held to.
    pub fn pin(&self) -> Pin {
        self.ticket.pin()
    }

    /// Where the object lands.
    pub fn final_path(&self) -> &Path {
        match &self.target {
            Target::File(c) => c.final_path(),
            Target::Tensors(c) => c.final_path(),
        }
    }

    /// Verified bytes taken from a kept part (the download starts there).
    pub fn resumed_from(&self) -> u64 {
        match &self.target {
            Target::File(c) => c.resumed_from(),
            Target::Tensors(_) => 0,
        }
    }

    /// Why an existing part was discarded instead of resumed from, if one was.
    pub fn discarded_part(&self) -> Option<&str> {
        match &self.target {
            Target::File(c) => c.discarded_part(),
            Target::Tensors(_) => None,
        }
    }

    /// The part file a failed file download leaves for resume (`None` for tensor dicts).
    pub fn part_path(&self) -> Option<&Path> {
        match &self.target {
            Target::File(c) => Some(c.part_path()),
            Target::Tensors(_) => None,
        }
    }

    /// Download. `opts.resume_state` is set from the kept part; the rest of `opts` is used
    /// as given. On failure nothing is at the destination (a file's verified prefix stays in
    /// its part when resuming).
    pub async fn run(
        self,
        service: &DownloadService,
        mut opts: DownloadOptions,
    ) -> Result<Fetched, DownloadError> {
        let rid = RefId::new(self.ticket.ref_id.clone());
        let source = self.ticket.source.clone();
        let resumed_from = self.resumed_from();
        let size = self.ticket.size;
        let (path, verified) = match self.target {
            Target::File(c) => {
                opts.resume_state = c.resume_state();
                let c = download_object(service, &source, &rid, c, opts).await?;
                (c.final_path().to_path_buf(), c.verified())
            }
            Target::Tensors(c) => {
                opts.resume_state = None;
                let c = download_object(service, &source, &rid, c, opts).await?;
                (c.final_path().to_path_buf(), c.verified())
            }
        };
        Ok(Fetched {
            path,
            verified,
            resumed_from,
            transferred: size.saturating_sub(resumed_from),
        })
    }
}

/// Where a ticket's file goes under `dir`: its directory (created if missing) and its file name.
pub(crate) fn destination(ticket: &Ticket, dir: &Path) -> Result<(PathBuf, String), DownloadError> {
    let dest = dir.join(&ticket.name);
    let parent = dest.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ObjectsError::InvalidOption(format!("{}: not a file name", dest.display())))?
        .to_string();
    std::fs::create_dir_all(&parent).map_err(|e| ObjectsError::Io {
        context: format!("creating {}", parent.display()),
        source: e,
    })?;
    Ok((parent, base))
}
