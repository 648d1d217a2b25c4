//! The file consumer.

use crate::byte_state::{check_byte_chunk, check_complete, state_after};
use crate::names::{destination_path, publish};
use crate::ranges::RangeSet;
use crate::ObjectsError;
use ferry_core::{ChunkData, ConsumeError, Consumer, PlanLayout, State, TransferPlan};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Builds a [`FileConsumer`].
#[derive(Debug, Clone)]
pub struct FileConsumerBuilder {
    dir: PathBuf,
    name: String,
    overwrite: bool,
    keep_part: bool,
    max_size: u64,
}

impl FileConsumerBuilder {
    /// Replace an existing destination file (refused by default).
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }

    /// On failure keep the verified-contiguous prefix of `NAME.part` so that a later consumer
    /// can resume from it, and, at construction, continue from an existing `NAME.part`
    /// instead of starting over. Off by default: a failure removes `NAME.part`.
    pub fn keep_part_for_resume(mut self, on: bool) -> Self {
        self.keep_part = on;
        self
    }

    /// Refuse objects larger than `max_size` bytes (default: no limit).
    pub fn max_size(mut self, max_size: u64) -> Self {
        self.max_size = max_size;
        self
    }

    /// Check the name and destination, and open (or, when resuming, reopen) `NAME.part`.
    pub fn open(self) -> Result<FileConsumer, ObjectsError> {
        let final_path = destination_path(&self.dir, &self.name, self.overwrite)?;
        let part_path = self.dir.join(format!("{}.part", self.name));
        let plan_path = self.dir.join(format!("{}.part.plan", self.name));
        let mut existing = part_path.symlink_metadata().ok();
        let mut kept_plan = None;
        if self.keep_part && existing.as_ref().is_some_and(|m| m.file_type().is_file()) {
            match KeptPlan::read(&plan_path) {
                Ok(p) => kept_plan = p,
                Err(why) => {
                    tracing::warn!(part = %part_path.display(), %why, "kept part has an unreadable plan; starting over");
                    remove_if_exists(&part_path)?;
                    existing = None;
                }
            }
        }
        if kept_plan.is_none() {
            remove_if_exists(&plan_path)?;
        }
        let (file, prefix) = match existing {
            Some(m) if self.keep_part && m.file_type().is_file() => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&part_path)
                    .map_err(|e| {
                        ObjectsError::io(format!("reopening {}", part_path.display()), e)
                    })?;
                (f, m.len())
            }
            Some(_) => {
                // A stale part (or something else under that name) from an earlier attempt:
                // start over; never follow a symlink placed there.
                std::fs::remove_file(&part_path).map_err(|e| {
                    ObjectsError::io(format!("removing stale {}", part_path.display()), e)
                })?;
                (create_part(&part_path)?, 0)
            }
            None => (create_part(&part_path)?, 0),
        };
        if kept_plan.as_ref().is_some_and(|p| prefix > p.total) {
            return Err(ObjectsError::InvalidOption(format!(
                "kept {} has {prefix} bytes, more than the object it belongs to",
                part_path.display()
            )));
        }
        if prefix > self.max_size {
            return Err(ObjectsError::InvalidOption(format!(
                "kept {} has {prefix} bytes, more than max_size {}",
                part_path.display(),
                self.max_size
            )));
        }
        let mut ranges = RangeSet::new();
        ranges.insert(0, prefix);
        if prefix > 0 {
            tracing::info!(part = %part_path.display(), prefix, "resuming from kept part file");
        }
        let mut consumer = FileConsumer {
            final_path,
            part_path,
            plan_path,
            plan: None,
            overwrite: self.overwrite,
            keep_part: self.keep_part,
            max_size: self.max_size,
            file: Some(file),
            ranges,
            resumed_from: prefix,
            expected_total: None,
            plan_chunk: None,
            verifier: None,
            phase: Phase::Writing,
        };
        if let Some(p) = kept_plan {
            consumer.adopt(p);
        }
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

/// The producer's plan, kept beside a resumable `.part` (`NAME.part.plan`, JSON) because a
/// resumed request carries a state and producers send plans only to first requests: the
/// resumed download still knows the size and digest of the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeptPlan {
    total: u64,
    chunk: u64,
    blake3: Option<String>,
}

impl KeptPlan {
    fn from_plan(plan: &TransferPlan) -> Result<Self, ConsumeError> {
        let PlanLayout::Bytes { total, chunk } = plan.layout else {
            return Err(ConsumeError::BadChunk(
                "a file consumer needs a byte-stream object, the plan announces items".into(),
            ));
        };
        if let Some(want) = &plan.blake3 {
            if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConsumeError::BadChunk(format!(
                    "plan digest {want:?} is not a BLAKE3 hex digest"
                )));
            }
        }
        Ok(Self {
            total,
            chunk,
            blake3: plan.blake3.as_ref().map(|d| d.to_ascii_lowercase()),
        })
    }

    /// `Ok(None)` when there is no sidecar; `Err` when it exists but is unusable.
    fn read(path: &Path) -> Result<Option<Self>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let total = v["total"].as_u64().ok_or("no total")?;
        let chunk = v["chunk"].as_u64().ok_or("no chunk")?;
        let blake3 = match &v["blake3"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            _ => return Err("bad blake3".into()),
        };
        let plan = TransferPlan {
            layout: PlanLayout::Bytes { total, chunk },
            total_bytes: Some(total),
            blake3,
        };
        Self::from_plan(&plan).map(Some).map_err(|e| e.to_string())
    }

    fn write(&self, path: &Path) -> std::io::Result<()> {
        let v =
            serde_json::json!({"total": self.total, "chunk": self.chunk, "blake3": self.blake3});
        let f = File::create(path)?;
        serde_json::to_writer(&f, &v).map_err(std::io::Error::other)?;
        f.sync_all()
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

/// An incremental BLAKE3 check that hashes the contiguous prefix as it grows: from the chunk in
/// memory when it lands at the cursor (the common case), from the `.part` file when a gap
/// fills after later chunks were already written.
#[derive(Debug)]
struct Verifier {
    hasher: blake3::Hasher,
    /// Bytes `[0, cursor)` are hashed.
    cursor: u64,
    want: String,
    /// Reused read buffer for catching up from disk (allocated on first use).
    scratch: Vec<u8>,
}

/// Writes a byte-stream object (a ferry [`FileObject`](crate::FileObject), a
/// [`BytesObject`](crate::BytesObject) or an NVFlare file) to `DIR/NAME`.
///
/// Chunks are written at their offsets into `DIR/NAME.part` as they arrive, in any order when
/// the producer sent a plan (`needs_order() == false`); without a plan (an NVFlare producer,
/// stop-and-wait) each chunk must continue the received prefix. A duplicate chunk never
/// rewrites accepted bytes. At completion
/// the size (and, when the plan carried one, the BLAKE3 digest) is checked, the file is
/// fsynced and renamed atomically to `DIR/NAME`, and the directory is fsynced. A failed,
/// cancelled or dropped download leaves nothing at `DIR/NAME`; `NAME.part` is removed, or,
/// with [`keep_part_for_resume`](FileConsumerBuilder::keep_part_for_resume), truncated to its
/// contiguous prefix (cut to a chunk boundary) so that a new consumer resumes from it
/// ([`resume_state`](Self::resume_state)) and still verifies the whole file: the producer's
/// plan (size, chunk, digest) is kept beside it in `NAME.part.plan`, since a resumed request
/// carries a state and gets no plan.
#[derive(Debug)]
pub struct FileConsumer {
    final_path: PathBuf,
    part_path: PathBuf,
    /// `NAME.part.plan`: the plan kept beside a resumable part.
    plan_path: PathBuf,
    /// The plan in force (from the producer or from a kept part).
    plan: Option<KeptPlan>,
    overwrite: bool,
    keep_part: bool,
    max_size: u64,
    /// `None` once finished (closed).
    file: Option<File>,
    /// Which bytes of the object are in the part file.
    ranges: RangeSet,
    resumed_from: u64,
    expected_total: Option<u64>,
    /// The plan's chunk size: a kept prefix is cut to a multiple of it so a resumed pipelined
    /// download starts on a chunk boundary.
    plan_chunk: Option<u64>,
    verifier: Option<Verifier>,
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

    /// The destination path.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The part file path.
    pub fn part_path(&self) -> &Path {
        &self.part_path
    }

    /// Bytes stored so far (including a resumed prefix).
    pub fn bytes_received(&self) -> u64 {
        self.ranges.covered()
    }

    /// Test hook: write through another handle (e.g. `/dev/full`) to provoke OS errors.
    #[cfg(test)]
    pub(crate) fn replace_file_for_test(&mut self, file: File) {
        self.file = Some(file);
    }

    /// Take `plan` as the object's size, chunk and digest.
    fn adopt(&mut self, plan: KeptPlan) {
        if let Some(want) = &plan.blake3 {
            self.verifier = Some(Verifier {
                hasher: blake3::Hasher::new(),
                cursor: 0,
                want: want.clone(),
                scratch: Vec::new(),
            });
        }
        self.expected_total = Some(plan.total);
        self.plan_chunk = (plan.chunk > 0).then_some(plan.chunk);
        self.plan = Some(plan);
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

    /// Hash what became contiguous. `fresh` is the chunk just written, if it was new in full.
    fn advance_verifier(&mut self, fresh: Option<(u64, &[u8])>) -> Result<(), ConsumeError> {
        let prefix = self.ranges.prefix_len();
        let Some(v) = self.verifier.as_mut() else {
            return Ok(());
        };
        if let Some((off, data)) = fresh {
            if off == v.cursor {
                v.hasher.update(data);
                v.cursor += data.len() as u64;
            }
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| ConsumeError::Other("file consumer already finished".into()))?;
        while v.cursor < prefix {
            if v.scratch.is_empty() {
                v.scratch = vec![0u8; 1 << 20];
            }
            let n = (v.scratch.len() as u64).min(prefix - v.cursor) as usize;
            file.read_exact_at(&mut v.scratch[..n], v.cursor)
                .map_err(|e| ConsumeError::Io {
                    context: format!("re-reading {} to verify it", self.part_path.display()),
                    source: e,
                })?;
            v.hasher.update(&v.scratch[..n]);
            v.cursor += n as u64;
        }
        Ok(())
    }

    /// Remove the part file, or keep its resumable prefix.
    fn cleanup(&mut self, keep: bool) {
        let file = self.file.take();
        if keep {
            let mut prefix = self.ranges.prefix_len();
            if let Some(chunk) = self.plan_chunk {
                prefix -= prefix % chunk;
            }
            let kept = file
                .as_ref()
                .map(|f| f.set_len(prefix).and_then(|()| f.sync_all()));
            match kept {
                Some(Ok(())) => {
                    match &self.plan {
                        Some(plan) => {
                            if let Err(e) = plan.write(&self.plan_path) {
                                tracing::warn!(path = %self.plan_path.display(), error = %e, "could not keep the plan beside the part file");
                            }
                        }
                        None => {
                            let _ = remove_if_exists(&self.plan_path);
                        }
                    }
                    tracing::info!(part = %self.part_path.display(), prefix, "kept part file for resume");
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(part = %self.part_path.display(), error = %e, "could not keep part file; removing it");
                }
                None => {}
            }
        }
        drop(file);
        if let Err(e) = remove_if_exists(&self.plan_path) {
            tracing::warn!(error = %e, "could not remove the kept plan");
        }
        if let Err(e) = std::fs::remove_file(&self.part_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(part = %self.part_path.display(), error = %e, "could not remove part file");
            }
        }
    }

    fn finish(&mut self) -> Result<(), ConsumeError> {
        let total = self.expected_total.unwrap_or_else(|| self.ranges.max_end());
        check_complete(&self.ranges, total)?;
        self.advance_verifier(None)?;
        if let Some(v) = self.verifier.take() {
            let got = v.hasher.finalize().to_hex();
            if !v.want.eq_ignore_ascii_case(got.as_str()) {
                return Err(ConsumeError::Integrity(format!(
                    "BLAKE3 digest mismatch for {}: expected {}, got {got}",
                    self.final_path.display(),
                    v.want
                )));
            }
        }
        let file = self.file()?;
        file.sync_all().map_err(|e| self.io("fsync", e))?;
        publish(&self.part_path, &self.final_path, self.overwrite)?;
        self.file = None;
        if let Err(e) = remove_if_exists(&self.plan_path) {
            tracing::warn!(error = %e, "could not remove the kept plan");
        }
        Ok(())
    }
}

impl Consumer for FileConsumer {
    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        let new = KeptPlan::from_plan(plan)?;
        if let Some(kept) = &self.plan {
            if (kept.total, &kept.blake3) != (new.total, &new.blake3) {
                return Err(ConsumeError::Integrity(format!(
                    "the object changed since {} was kept (size {} / digest {:?} now {} / {:?})",
                    self.part_path.display(),
                    kept.total,
                    kept.blake3,
                    new.total,
                    new.blake3
                )));
            }
            return Ok(());
        }
        if new.total > self.max_size {
            return Err(ConsumeError::Other(format!(
                "object of {} bytes exceeds the limit of {} bytes",
                new.total, self.max_size
            )));
        }
        if self.resumed_from > new.total {
            return Err(ConsumeError::Integrity(format!(
                "kept {} has {} bytes but the object has {}",
                self.part_path.display(),
                self.resumed_from,
                new.total
            )));
        }
        self.adopt(new);
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
        let (start, chunk) = check_byte_chunk(
            state,
            data,
            self.expected_total,
            self.max_size,
            &self.ranges,
        )?;
        let end = start + chunk.len() as u64;
        let gaps = self.ranges.gaps(start, end);
        let whole = gaps.len() == 1 && gaps[0] == (start, end);
        for &(s, e) in &gaps {
            let src = &chunk[(s - start) as usize..(e - start) as usize];
            self.file()?
                .write_all_at(src, s)
                .map_err(|err| self.io(&format!("writing {} bytes at {s} into", e - s), err))?;
        }
        self.ranges.insert(start, end);
        let fresh = whole.then_some((start, &chunk[..]));
        self.advance_verifier(fresh)?;
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
                let keep = self.keep_part && !matches!(e, ConsumeError::Integrity(_));
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
        self.cleanup(self.keep_part);
        self.phase = Phase::Failed;
    }
}

impl Drop for FileConsumer {
    fn drop(&mut self) {
        if self.phase == Phase::Writing {
            self.cleanup(self.keep_part);
            self.phase = Phase::Failed;
        }
    }
}
