//! The file consumer: its builder, and the write path (chunks written at their offsets into
//! the part file, the download's end). What the bytes are held to is [`super::content`]'s; the
//! part file and its resume record are [`super::part`]'s.

use super::content::ContentCheck;
use super::part::{Opened, PartFile, PartOptions};
use crate::byte_state::{check_complete, state_after};
use crate::names::destination_path;
use crate::ranges::RangeSet;
use crate::small_writes;
use crate::verify::{Pin, Verified};
use crate::ObjectsError;
use ferry_core::{ChunkData, ConsumeError, Consumer, State, TransferPlan};
#[cfg(test)]
use std::fs::File;
use std::path::{Path, PathBuf};

/// Default of [`FileConsumerBuilder::sync_every`]: 64 MiB.
pub const DEFAULT_SYNC_EVERY: u64 = 64 << 20;

/// The unit in which a chunk is hashed, aligned to multiples of itself in the object: each
/// slice is hashed right after it was written, while it is still in cache (one pass over the
/// bytes, no second read of the file).
const HASH_SLICE: u64 = 64 << 10;

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
        let mut check = ContentCheck::new(self.pin, self.max_size);
        let Opened {
            part,
            resumed_from,
            discarded,
        } = PartFile::open(
            PartOptions {
                dir: &self.dir,
                name: &self.name,
                keep: self.keep_part,
                discard_other: self.discard_other_part,
                origin: self.origin,
                sync_every: self.sync_every,
            },
            &mut check,
        )?;
        let mut ranges = RangeSet::new();
        ranges.insert(0, resumed_from);
        Ok(FileConsumer {
            final_path,
            overwrite: self.overwrite,
            part,
            check,
            ranges,
            resumed_from,
            discarded,
            tainted: false,
            phase: Phase::Writing,
        })
    }
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
/// arrive) and the pinned BLAKE3 (hashed as bytes arrive, with a
/// [`StreamVerifier`](crate::StreamVerifier)), whatever the sender sends; without one, the size
/// and digest the sender advertised in its plan, if it sent one. [`verified`](Self::verified) says which. At completion the file is fsynced and
/// renamed atomically to `DIR/NAME`, and the directory is fsynced. A failed, cancelled or
/// dropped download leaves nothing at `DIR/NAME`; `NAME.part` is removed, or kept for resume
/// with its record (see [`keep_part_for_resume`](FileConsumerBuilder::keep_part_for_resume)).
#[derive(Debug)]
pub struct FileConsumer {
    final_path: PathBuf,
    overwrite: bool,
    /// `NAME.part` and its resume record.
    part: PartFile,
    /// What the bytes are held to.
    check: ContentCheck,
    /// Which bytes of the object are in the part file.
    ranges: RangeSet,
    resumed_from: u64,
    /// Why a kept part was not resumed from, when one was discarded.
    discarded: Option<String>,
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
        self.part.path()
    }

    /// The resume record path (`NAME.part.ferry`).
    pub fn record_path(&self) -> &Path {
        self.part.record_path()
    }

    /// Bytes stored so far (including a resumed prefix).
    pub fn bytes_received(&self) -> u64 {
        self.ranges.covered()
    }

    /// The size the object is held to (the pin's, else the sender's plan's), once known.
    pub fn expected_size(&self) -> Option<u64> {
        self.check.expected_size()
    }

    /// What the file was checked against: meaningful once the download completed.
    pub fn verified(&self) -> Verified {
        self.check.verified()
    }

    /// Test hook: write through another handle (e.g. `/dev/full`) to provoke OS errors.
    #[cfg(test)]
    pub(crate) fn replace_file_for_test(&mut self, file: File) {
        self.part.replace_file_for_test(file);
    }

    /// Remove the part file and its record, or keep the part's durable prefix for resume.
    fn cleanup(&mut self, keep: bool) {
        let prefix = self.ranges.prefix_len();
        self.part.cleanup(keep, self.check.content(), prefix);
    }

    fn finish(&mut self) -> Result<(), ConsumeError> {
        let total = self
            .check
            .expected_size()
            .unwrap_or_else(|| self.ranges.max_end());
        check_complete(&self.ranges, total)?;
        self.check.check_digest(&self.final_path)?;
        self.part.publish(&self.final_path, self.overwrite)
    }
}

impl Consumer for FileConsumer {
    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        let adopted = self.check.plan(plan, self.resumed_from, self.part.path())?;
        match self.check.content() {
            Some(content) if adopted => self.part.record_content(content, self.ranges.prefix_len()),
            _ => Ok(()),
        }
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
        let (start, chunk) = self
            .check
            .chunk(state, data, &self.ranges)
            .inspect_err(|e| {
                self.tainted |= matches!(e, ConsumeError::Integrity(_));
            })?;
        let end = start + chunk.len() as u64;
        for (s, e) in self.ranges.gaps(start, end) {
            // One pass over the bytes, a cache-sized slice at a time: each slice is written
            // (in small writes, see `small_writes`) and then hashed while it is still in cache.
            let mut at = s;
            while at < e {
                let to = ((at / HASH_SLICE + 1) * HASH_SLICE).min(e);
                let src = &chunk[(at - start) as usize..(to - start) as usize];
                small_writes::write_all_at(self.part.file()?, src, at).map_err(|err| {
                    self.part
                        .io(&format!("writing {} bytes at {at} into", to - at), err)
                })?;
                self.check
                    .hash(at, src)
                    .inspect_err(|_| self.tainted = true)?;
                at = to;
            }
        }
        self.ranges.insert(start, end);
        self.part
            .checkpoint(self.check.content(), self.ranges.prefix_len())?;
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
