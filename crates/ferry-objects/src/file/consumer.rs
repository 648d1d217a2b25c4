//! The file consumer.

use super::record::PartRecord;
use super::resume::{cut_and_rehash, examine, Kept};
use crate::byte_state::{check_byte_chunk, check_complete, state_after};
use crate::names::{destination_path, publish};
use crate::ranges::RangeSet;
use crate::verify::{Pin, StreamVerifier, Verified};
use crate::ObjectsError;
use ferry_core::{ChunkData, ConsumeError, Consumer, PlanLayout, State, TransferPlan};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Default of [`FileConsumerBuilder::sync_every`]: 64 MiB.
pub const DEFAULT_SYNC_EVERY: u64 = 64 << 20;

/// Builds a [`FileConsumer`].
#[derive(Debug, Clone)]
pub struct FileConsumerBuilder {
    dir: PathBuf,
    name: String,
    overwrite: bool,
    keep_part: bool,
    max_size: u64,
    pin: Option<Pin>,
    sync_every: u64,
    discard_other_part: bool,
    origin: String,
}

impl FileConsumerBuilder {
    /// Replace an existing destination file (refused by default).
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }

    /// Hold the sender to `pin` (a ticket's size and digest) whatever it sends or advertises:
    /// a byte beyond `pin.size` fails the download at once, a plan announcing another size or
    /// digest is refused before any byte, and the download completes only when the BLAKE3 of
    /// the bytes received equals `pin.blake3` (hashed as they arrive).
    pub fn pin(mut self, pin: Pin) -> Self {
        self.pin = Some(pin);
        self
    }

    /// Keep `NAME.part` on failure so that a later consumer can resume from it, and at
    /// construction continue from an existing `NAME.part` instead of starting over. Off by
    /// default: a failure removes `NAME.part`.
    ///
    /// What is known-good is recorded beside the part in `NAME.part.ferry` (see
    /// [`sync_every`](Self::sync_every)), with the content it belongs to (the pin, else the
    /// digest the sender advertised: without either nothing is kept). At construction a part
    /// without a usable record is discarded, the part is cut to the recorded prefix (a crash
    /// may leave holes beyond it), a part of other content is refused
    /// ([`ObjectsError::OtherContent`]) or, with
    /// [`discard_other_part`](Self::discard_other_part), discarded, and the kept prefix is
    /// read back and hashed once, so a resumed file is verified like any other.
    pub fn keep_part_for_resume(mut self, on: bool) -> Self {
        self.keep_part = on;
        self
    }

    /// With [`keep_part_for_resume`](Self::keep_part_for_resume): make the contiguous prefix
    /// durable (`fdatasync`, then the record) each time it grew by this many bytes (default
    /// [`DEFAULT_SYNC_EVERY`]). A crash loses at most this much; smaller costs more syncs.
    pub fn sync_every(mut self, bytes: u64) -> Self {
        self.sync_every = bytes.max(1);
        self
    }

    /// With [`keep_part_for_resume`](Self::keep_part_for_resume): discard a kept part of other
    /// content (and start over) instead of refusing it.
    pub fn discard_other_part(mut self, on: bool) -> Self {
        self.discard_other_part = on;
        self
    }

    /// Where the content comes from (e.g. `SENDER/REF`), written in the resume record for
    /// messages.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// Refuse objects larger than `max_size` bytes (default: no limit).
    pub fn max_size(mut self, max_size: u64) -> Self {
        self.max_size = max_size;
        self
    }

    /// Check the name and destination, and open (or, when resuming, reopen and verify)
    /// `NAME.part`. Resuming reads the kept prefix once, so this blocks on disk I/O.
    pub fn open(self) -> Result<FileConsumer, ObjectsError> {
        if let Some(pin) = &self.pin {
            if pin.size > self.max_size {
                return Err(ObjectsError::InvalidOption(format!(
                    "the pinned size {} is beyond max_size {}",
                    pin.size, self.max_size
                )));
            }
        }
        let final_path = destination_path(&self.dir, &self.name, self.overwrite)?;
        let part_path = self.dir.join(format!("{}.part", self.name));
        let record_path = self.dir.join(format!("{}.part.ferry", self.name));
        // Left by ferry versions that trusted the whole part: never used.
        remove_if_exists(&self.dir.join(format!("{}.part.plan", self.name)))?;
        let mut consumer = FileConsumer {
            final_path,
            part_path,
            record_path,
            overwrite: self.overwrite,
            keep_part: self.keep_part,
            max_size: self.max_size,
            pin: self.pin,
            origin: self.origin,
            sync_every: self.sync_every,
            content: self.pin.map(|p| (p, true)),
            plan_chunk: None,
            file: None,
            ranges: RangeSet::new(),
            resumed_from: 0,
            synced: 0,
            discarded: None,
            verifier: self.pin.map(|p| StreamVerifier::new(p.size)),
            tainted: false,
            // Inert until the part is ready: an error below must not remove a kept part.
            phase: Phase::Failed,
        };
        let kept = if self.keep_part {
            consumer.examine_kept_part(self.discard_other_part)?
        } else {
            None
        };
        match kept {
            Some((file, record)) => consumer.resume_from(file, record)?,
            None => {
                remove_if_exists(&consumer.record_path)?;
                consumer.remove_stale_part()?;
                consumer.file = Some(create_part(&consumer.part_path)?);
                if let Err(e) = consumer.write_record(0) {
                    consumer.cleanup(false);
                    return Err(ObjectsError::io(
                        format!("writing {}", consumer.record_path.display()),
                        e,
                    ));
                }
            }
        }
        consumer.phase = Phase::Writing;
        Ok(consumer)
    }
}

fn remove_if_exists(path: &Path) -> Result<(), ObjectsError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ObjectsError::io(
            format!("removing stale {}", path.display()),
            e,
        )),
    }
}

fn create_part(path: &Path) -> Result<File, ObjectsError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| ObjectsError::io(format!("creating {}", path.display()), e))
}

/// Where the consumer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Writing,
    Completed,
    Failed,
}

/// Writes a byte-stream object (a ferry [`FileObject`](crate::FileObject), a
/// [`BytesObject`](crate::BytesObject) or an NVFlare file) to `DIR/NAME`.
///
/// Chunks are written at their offsets into `DIR/NAME.part` as they arrive, in any order when
/// the producer sent a plan (`needs_order() == false`; each chunk must then sit exactly where
/// the plan puts it); without a plan (an NVFlare producer, stop-and-wait) each chunk must
/// continue the received prefix. A duplicate chunk never rewrites accepted bytes.
///
/// What is checked: with a [`pin`](FileConsumerBuilder::pin), the pinned size (as bytes
/// arrive) and the pinned BLAKE3 (hashed as bytes arrive, with a [`StreamVerifier`]), whatever
/// the sender sends; without one, the size and digest the sender advertised in its plan, if it
/// sent one. [`verified`](Self::verified) says which. At completion the file is fsynced and
/// renamed atomically to `DIR/NAME`, and the directory is fsynced. A failed, cancelled or
/// dropped download leaves nothing at `DIR/NAME`; `NAME.part` is removed, or kept for resume
/// with its record (see [`keep_part_for_resume`](FileConsumerBuilder::keep_part_for_resume)).
#[derive(Debug)]
pub struct FileConsumer {
    final_path: PathBuf,
    part_path: PathBuf,
    /// `NAME.part.ferry`: the resume record.
    record_path: PathBuf,
    overwrite: bool,
    keep_part: bool,
    max_size: u64,
    /// The ticket's pin, if any: authoritative.
    pin: Option<Pin>,
    origin: String,
    sync_every: u64,
    /// The content being checked against, and whether it is pinned (`true`) or only
    /// advertised by the sender (`false`). `None`: nothing to check but an advertised size.
    content: Option<(Pin, bool)>,
    /// The plan's chunk size, once a plan was accepted: every chunk must sit on its grid.
    plan_chunk: Option<(u64, u64)>,
    /// `None` once finished (closed).
    file: Option<File>,
    /// Which bytes of the object are in the part file.
    ranges: RangeSet,
    resumed_from: u64,
    /// Prefix length last made durable and recorded.
    synced: u64,
    /// Why a kept part was not resumed from, when one was discarded.
    discarded: Option<String>,
    /// Hashes bytes as they arrive; `None` when there is no digest to check.
    verifier: Option<StreamVerifier>,
    /// The sender sent bad data: never keep this part for resume.
    tainted: bool,
    phase: Phase,
}

impl FileConsumer {
    /// A builder writing `dir/name` (`name` must be a plain file name).
    pub fn builder(dir: impl AsRef<Path>, name: &str) -> FileConsumerBuilder {
        FileConsumerBuilder {
            dir: dir.as_ref().to_path_buf(),
            name: name.to_string(),
            overwrite: false,
            keep_part: false,
            max_size: u64::MAX,
            pin: None,
            sync_every: DEFAULT_SYNC_EVERY,
            discard_other_part: false,
            origin: String::new(),
        }
    }

    /// Open a consumer for `dir/name` with default options.
    pub fn create(dir: impl AsRef<Path>, name: &str) -> Result<Self, ObjectsError> {
        Self::builder(dir, name).open()
    }

    /// The state for the first request when a kept `.part` is resumed
    /// (`{"received_bytes": k}`), `None` when starting from zero.
    pub fn resume_state(&self) -> Option<State> {
        (self.resumed_from > 0).then(|| state_after(self.resumed_from))
    }

    /// Bytes taken from a kept part (verified prefix), 0 when starting from zero.
    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
    }

    /// Why an existing `NAME.part` was discarded at construction (no usable record, other
    /// content with [`discard_other_part`](FileConsumerBuilder::discard_other_part)), if one was.
    pub fn discarded_part(&self) -> Option<&str> {
        self.discarded.as_deref()
    }

    /// The destination path.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The part file path.
    pub fn part_path(&self) -> &Path {
        &self.part_path
    }

    /// The resume record path (`NAME.part.ferry`).
    pub fn record_path(&self) -> &Path {
        &self.record_path
    }

    /// Bytes stored so far (including a resumed prefix).
    pub fn bytes_received(&self) -> u64 {
        self.ranges.covered()
    }

    /// The size the object is held to (the pin's, else the sender's plan's), once known.
    pub fn expected_size(&self) -> Option<u64> {
        self.pin.map(|p| p.size).or(self.plan_chunk.map(|(_, t)| t))
    }

    /// What the file was checked against: meaningful once the download completed.
    pub fn verified(&self) -> Verified {
        match self.content {
            Some((pin, true)) => Verified::Pinned(pin),
            Some((pin, false)) => Verified::SenderAdvertised(pin),
            None => Verified::Unverified,
        }
    }

    /// Test hook: write through another handle (e.g. `/dev/full`) to provoke OS errors.
    #[cfg(test)]
    pub(crate) fn replace_file_for_test(&mut self, file: File) {
        self.file = Some(file);
    }

    /// Decide what to do with an existing `NAME.part` (see [`super::resume::examine`]).
    fn examine_kept_part(
        &mut self,
        discard_other: bool,
    ) -> Result<Option<(File, PartRecord)>, ObjectsError> {
        match examine(
            &self.part_path,
            &self.record_path,
            self.pin,
            self.max_size,
            discard_other,
        )? {
            Kept::Resume(file, record) => Ok(Some((file, record))),
            Kept::StartOver(why) => {
                self.discarded = why;
                Ok(None)
            }
        }
    }

    /// Continue from a kept part: cut it to the recorded prefix, hash that prefix once.
    fn resume_from(&mut self, file: File, record: PartRecord) -> Result<(), ObjectsError> {
        let content = record.content;
        if self.content.is_none() {
            // Unpinned: the record holds what the sender advertised before.
            self.content = Some((content, false));
            self.verifier = Some(StreamVerifier::new(content.size));
        }
        let prefix = cut_and_rehash(&file, &self.part_path, &record, self.verifier.as_mut())?;
        self.ranges.insert(0, prefix);
        self.resumed_from = prefix;
        self.synced = prefix;
        self.file = Some(file);
        self.write_record(prefix)
            .map_err(|e| ObjectsError::io(format!("writing {}", self.record_path.display()), e))?;
        tracing::info!(part = %self.part_path.display(), prefix, size = content.size, "resuming from kept part file");
        Ok(())
    }

    /// Remove whatever sits at `NAME.part` (never following a symlink placed there).
    fn remove_stale_part(&self) -> Result<(), ObjectsError> {
        if let Some(why) = &self.discarded {
            tracing::warn!(%why, "starting over");
        }
        remove_if_exists(&self.part_path)
    }

    /// Write the resume record with `prefix` (only when keeping parts and the content is
    /// known: a part not tied to content is never resumed from).
    fn write_record(&self, prefix: u64) -> std::io::Result<()> {
        let (true, Some((content, _))) = (self.keep_part, self.content) else {
            return Ok(());
        };
        PartRecord {
            content,
            prefix,
            origin: self.origin.clone(),
        }
        .write(&self.record_path)
    }

    /// Make the contiguous prefix durable and record it, when it grew by `sync_every`.
    fn checkpoint(&mut self, force: bool) -> Result<(), ConsumeError> {
        if !self.keep_part || self.content.is_none() {
            return Ok(());
        }
        let prefix = self.ranges.prefix_len();
        if prefix == self.synced || (!force && prefix - self.synced < self.sync_every) {
            return Ok(());
        }
        // Every byte of [0, prefix) was written before this sync: after it they are on disk.
        self.file()?
            .sync_data()
            .map_err(|e| self.io("fdatasync", e))?;
        self.write_record(prefix).map_err(|e| ConsumeError::Io {
            context: format!("writing {}", self.record_path.display()),
            source: e,
        })?;
        self.synced = prefix;
        Ok(())
    }

    fn file(&self) -> Result<&File, ConsumeError> {
        self.file
            .as_ref()
            .ok_or_else(|| ConsumeError::Other("file consumer already finished".into()))
    }

    fn io(&self, what: &str, source: std::io::Error) -> ConsumeError {
        ConsumeError::Io {
            context: format!("{what} {}", self.part_path.display()),
            source,
        }
    }

    /// Remove the part file and its record, or keep the part's durable prefix for resume.
    fn cleanup(&mut self, keep: bool) {
        if keep && self.keep_part && self.content.is_some() {
            let prefix = self.ranges.prefix_len();
            let kept = self.file().ok().map(|f| {
                f.sync_data()
                    .and_then(|()| f.set_len(prefix))
                    .and_then(|()| f.sync_data())
            });
            match kept.map(|r| r.and_then(|()| self.write_record(prefix))) {
                Some(Ok(())) => {
                    self.file = None;
                    tracing::info!(part = %self.part_path.display(), prefix, "kept part file for resume");
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(part = %self.part_path.display(), error = %e, "could not keep part file; removing it");
                }
                None => {}
            }
        }
        self.file = None;
        // The record first: a part without one is never trusted.
        if let Err(e) = remove_if_exists(&self.record_path) {
            tracing::warn!(error = %e, "could not remove the resume record");
        }
        if let Err(e) = std::fs::remove_file(&self.part_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(part = %self.part_path.display(), error = %e, "could not remove part file");
            }
        }
    }

    fn finish(&mut self) -> Result<(), ConsumeError> {
        let total = self
            .expected_size()
            .unwrap_or_else(|| self.ranges.max_end());
        check_complete(&self.ranges, total)?;
        if let (Some(v), Some((content, pinned))) = (&self.verifier, self.content) {
            v.check(&content.blake3).map_err(|e| {
                let whose = if pinned {
                    "the ticket's"
                } else {
                    "the sender's advertised"
                };
                ConsumeError::Integrity(format!(
                    "{} does not match {whose} digest: {}",
                    self.final_path.display(),
                    e.to_string().trim_start_matches("integrity check failed: ")
                ))
            })?;
        }
        let file = self.file()?;
        file.sync_all().map_err(|e| self.io("fsync", e))?;
        publish(&self.part_path, &self.final_path, self.overwrite)?;
        self.file = None;
        if let Err(e) = remove_if_exists(&self.record_path) {
            tracing::warn!(error = %e, "could not remove the resume record");
        }
        Ok(())
    }

    /// Check a chunk against the pin and the plan; returns where it starts and its bytes.
    fn check_chunk(
        &self,
        state: &State,
        data: ChunkData,
    ) -> Result<(u64, bytes::Bytes), ConsumeError> {
        let planned_total = self.plan_chunk.map(|(_, total)| total);
        let (start, chunk) =
            check_byte_chunk(state, data, planned_total, self.max_size, &self.ranges)?;
        let end = start + chunk.len() as u64;
        if let Some(pin) = self.pin {
            if end > pin.size {
                return Err(ConsumeError::Integrity(format!(
                    "the sender sent bytes [{start}, {end}) but the ticket pins {} bytes",
                    pin.size
                )));
            }
        }
        if let Some((c, total)) = self.plan_chunk {
            if start % c != 0 || end != (start + c).min(total) {
                return Err(ConsumeError::BadChunk(format!(
                    "chunk [{start}, {end}) is not where the sender's plan of {c}-byte chunks puts it"
                )));
            }
        }
        Ok((start, chunk))
    }
}

impl Consumer for FileConsumer {
    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        let PlanLayout::Bytes { total, chunk } = plan.layout else {
            return Err(ConsumeError::BadChunk(
                "a file consumer needs a byte-stream object, the plan announces items".into(),
            ));
        };
        if chunk == 0 {
            return Err(ConsumeError::BadChunk(
                "the sender's plan has 0-byte chunks".into(),
            ));
        }
        let advertised = match &plan.blake3 {
            Some(d) => Some(
                Pin::from_hex(total, d)
                    .map_err(|e| ConsumeError::BadChunk(format!("the sender's plan: {e}")))?,
            ),
            None => None,
        };
        if let Some(pin) = self.pin {
            if total != pin.size {
                return Err(ConsumeError::Integrity(format!(
                    "the sender offers {total} bytes, the ticket pins {}",
                    pin.size
                )));
            }
            if let Some(adv) = advertised.filter(|a| a.blake3 != pin.blake3) {
                return Err(ConsumeError::Integrity(format!(
                    "the sender offers content with BLAKE3 {}, the ticket pins {}",
                    adv.hex(),
                    pin.hex()
                )));
            }
        } else if let Some((kept, _)) = self.content {
            // Unpinned resume: the record holds what the sender advertised last time.
            if advertised != Some(kept) {
                return Err(ConsumeError::Integrity(format!(
                    "the object changed since {} was kept ({kept} then, {} bytes with BLAKE3 {} now)",
                    self.part_path.display(),
                    total,
                    plan.blake3.as_deref().unwrap_or("none")
                )));
            }
        } else {
            if total > self.max_size {
                return Err(ConsumeError::Other(format!(
                    "object of {total} bytes exceeds the limit of {} bytes",
                    self.max_size
                )));
            }
            if let Some(adv) = advertised {
                self.content = Some((adv, false));
                self.verifier = Some(StreamVerifier::new(total));
                self.write_record(self.ranges.prefix_len())
                    .map_err(|e| ConsumeError::Io {
                        context: format!("writing {}", self.record_path.display()),
                        source: e,
                    })?;
            }
        }
        if self.resumed_from > total {
            return Err(ConsumeError::Integrity(format!(
                "kept {} has {} bytes but the object has {total}",
                self.part_path.display(),
                self.resumed_from
            )));
        }
        self.plan_chunk = Some((chunk, total));
        Ok(())
    }

    fn needs_order(&self) -> bool {
        false
    }

    fn consume(
        &mut self,
        _ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError> {
        if self.phase != Phase::Writing {
            return Err(ConsumeError::Other(
                "chunk after the download finished".into(),
            ));
        }
        let (start, chunk) = self.check_chunk(state, data).inspect_err(|e| {
            self.tainted |= matches!(e, ConsumeError::Integrity(_));
        })?;
        let end = start + chunk.len() as u64;
        for (s, e) in self.ranges.gaps(start, end) {
            let src = &chunk[(s - start) as usize..(e - start) as usize];
            self.file()?
                .write_all_at(src, s)
                .map_err(|err| self.io(&format!("writing {} bytes at {s} into", e - s), err))?;
        }
        if let Some(v) = self.verifier.as_mut() {
            // The verifier skips what it already has, as the writes above did.
            v.update(start, &chunk)
                .inspect_err(|_| self.tainted = true)?;
        }
        self.ranges.insert(start, end);
        self.checkpoint(false)?;
        Ok(state.clone())
    }

    fn completed(&mut self, ref_id: &str) -> Result<(), ConsumeError> {
        if self.phase != Phase::Writing {
            return Err(ConsumeError::Other(
                "completed called after the download finished".into(),
            ));
        }
        match self.finish() {
            Ok(()) => {
                self.phase = Phase::Completed;
                tracing::info!(ref_id, path = %self.final_path.display(), bytes = self.ranges.covered(), "file received");
                Ok(())
            }
            Err(e) => {
                // Bad content is never worth resuming from; an OS error may be.
                let keep = !self.tainted && !matches!(e, ConsumeError::Integrity(_));
                self.cleanup(keep);
                self.phase = Phase::Failed;
                tracing::warn!(ref_id, path = %self.final_path.display(), error = %e, "file download failed at completion");
                Err(e)
            }
        }
    }

    fn failed(&mut self, ref_id: &str, reason: &str) {
        if self.phase != Phase::Writing {
            return;
        }
        tracing::warn!(ref_id, path = %self.final_path.display(), reason, "file download failed");
        self.cleanup(!self.tainted);
        self.phase = Phase::Failed;
    }
}

impl Drop for FileConsumer {
    fn drop(&mut self) {
        if self.phase == Phase::Writing {
            self.cleanup(!self.tainted);
            self.phase = Phase::Failed;
        }
    }
}
