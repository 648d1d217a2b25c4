//! A [`FileConsumer`](crate::FileConsumer)'s `NAME.part` and its resume record
//! `NAME.part.ferry`: opened fresh or resumed from a kept part, made durable at checkpoints,
//! and at the end published to the final path, kept for resume, or removed.

use super::content::ContentCheck;
use super::record::PartRecord;
use super::resume::{cut_and_rehash, examine, Kept};
use crate::names::publish;
use crate::verify::Pin;
use crate::ObjectsError;
use ferry_core::ConsumeError;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// How to open a part file.
#[derive(Debug)]
pub(super) struct PartOptions<'a> {
    /// The destination directory.
    pub dir: &'a Path,
    /// The destination file name.
    pub name: &'a str,
    /// Keep the part for resume (and resume from a kept one).
    pub keep: bool,
    /// Discard a kept part of other content instead of refusing it.
    pub discard_other: bool,
    /// Written in the record, for messages.
    pub origin: String,
    /// Checkpoint each time the contiguous prefix grew by this many bytes.
    pub sync_every: u64,
}

/// An open part file.
#[derive(Debug)]
pub(super) struct PartFile {
    path: PathBuf,
    /// `NAME.part.ferry`: the resume record.
    record_path: PathBuf,
    keep: bool,
    origin: String,
    sync_every: u64,
    /// `None` once finished (closed).
    file: Option<File>,
    /// Prefix length last made durable and recorded.
    synced: u64,
}

/// How a part file was opened.
#[derive(Debug)]
pub(super) struct Opened {
    /// The part.
    pub part: PartFile,
    /// Bytes taken from a kept part (verified prefix), 0 when starting from zero.
    pub resumed_from: u64,
    /// Why an existing part was discarded, when one was.
    pub discarded: Option<String>,
}

impl PartFile {
    /// Open `NAME.part`: with `keep`, continue from a kept part whose record is usable and
    /// names the content `check` holds the bytes to (cut to the recorded prefix, which is read
    /// back once into `check`'s digest); otherwise remove what is there and create it fresh.
    pub(super) fn open(
        opts: PartOptions<'_>,
        check: &mut ContentCheck,
    ) -> Result<Opened, ObjectsError> {
        let PartOptions {
            dir,
            name,
            keep,
            discard_other,
            origin,
            sync_every,
        } = opts;
        // Left by ferry versions that trusted the whole part: never used.
        remove_if_exists(&dir.join(format!("{name}.part.plan")))?;
        let mut part = PartFile {
            path: dir.join(format!("{name}.part")),
            record_path: dir.join(format!("{name}.part.ferry")),
            keep,
            origin,
            sync_every,
            file: None,
            synced: 0,
        };
        let kept = if keep {
            examine(
                &part.path,
                &part.record_path,
                check.pin(),
                check.max_size(),
                discard_other,
            )?
        } else {
            Kept::StartOver(None)
        };
        let discarded = match kept {
            Kept::Resume(file, record) => {
                let resumed_from = part.resume_from(file, record, check)?;
                return Ok(Opened {
                    part,
                    resumed_from,
                    discarded: None,
                });
            }
            Kept::StartOver(why) => why,
        };
        remove_if_exists(&part.record_path)?;
        if let Some(why) = &discarded {
            tracing::warn!(%why, "starting over");
        }
        // Whatever sits at `NAME.part` goes (never following a symlink placed there).
        remove_if_exists(&part.path)?;
        part.file = Some(create_part(&part.path)?);
        if let Err(e) = part.write_record(check.content(), 0) {
            part.cleanup(false, None, 0);
            return Err(ObjectsError::io(
                format!("writing {}", part.record_path.display()),
                e,
            ));
        }
        Ok(Opened {
            part,
            resumed_from: 0,
            discarded,
        })
    }

    /// Continue from a kept part: cut it to the recorded prefix, hash that prefix once.
    fn resume_from(
        &mut self,
        file: File,
        record: PartRecord,
        check: &mut ContentCheck,
    ) -> Result<u64, ObjectsError> {
        let content = record.content;
        let prefix = cut_and_rehash(&file, &self.path, &record, check.resume(content))?;
        self.synced = prefix;
        self.file = Some(file);
        self.write_record(check.content(), prefix)
            .map_err(|e| ObjectsError::io(format!("writing {}", self.record_path.display()), e))?;
        tracing::info!(part = %self.path.display(), prefix, size = content.size, "resuming from kept part file");
        Ok(prefix)
    }

    /// The part file path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The resume record path.
    pub(super) fn record_path(&self) -> &Path {
        &self.record_path
    }

    /// Test hook: write through another handle.
    #[cfg(test)]
    pub(super) fn replace_file_for_test(&mut self, file: File) {
        self.file = Some(file);
    }

    /// The open file.
    pub(super) fn file(&self) -> Result<&File, ConsumeError> {
        self.file
            .as_ref()
            .ok_or_else(|| ConsumeError::Other("file consumer already finished".into()))
    }

    /// An OS error on the part file, naming it.
    pub(super) fn io(&self, what: &str, source: std::io::Error) -> ConsumeError {
        ConsumeError::Io {
            context: format!("{what} {}", self.path.display()),
            source,
        }
    }

    /// Record that `[0, prefix)` of the part belongs to `content` and is durable (only when
    /// keeping parts and the content is known: a part not tied to content is never resumed
    /// from).
    fn write_record(&self, content: Option<Pin>, prefix: u64) -> std::io::Result<()> {
        let (true, Some(content)) = (self.keep, content) else {
            return Ok(());
        };
        PartRecord {
            content,
            prefix,
            origin: self.origin.clone(),
        }
        .write(&self.record_path)
    }

    /// Name the content in the record, once the sender's plan advertised it (`prefix`: the
    /// contiguous prefix stored so far).
    pub(super) fn record_content(&self, content: Pin, prefix: u64) -> Result<(), ConsumeError> {
        self.write_record(Some(content), prefix)
            .map_err(|e| ConsumeError::Io {
                context: format!("writing {}", self.record_path.display()),
                source: e,
            })
    }

    /// Make the contiguous `prefix` durable and record it, when it grew by `sync_every`.
    pub(super) fn checkpoint(
        &mut self,
        content: Option<Pin>,
        prefix: u64,
    ) -> Result<(), ConsumeError> {
        if !self.keep || content.is_none() {
            return Ok(());
        }
        if prefix == self.synced || prefix - self.synced < self.sync_every {
            return Ok(());
        }
        // Every byte of [0, prefix) was written before this sync: after it they are on disk.
        self.file()?
            .sync_data()
            .map_err(|e| self.io("fdatasync", e))?;
        self.write_record(content, prefix)
            .map_err(|e| ConsumeError::Io {
                context: format!("writing {}", self.record_path.display()),
                source: e,
            })?;
        self.synced = prefix;
        Ok(())
    }

    /// fsync the part, rename it to `final_path` atomically, drop its record.
    pub(super) fn publish(
        &mut self,
        final_path: &Path,
        overwrite: bool,
    ) -> Result<(), ConsumeError> {
        let file = self.file()?;
        file.sync_all().map_err(|e| self.io("fsync", e))?;
        publish(&self.path, final_path, overwrite)?;
        self.file = None;
        if let Err(e) = remove_if_exists(&self.record_path) {
            tracing::warn!(error = %e, "could not remove the resume record");
        }
        Ok(())
    }

    /// Remove the part file and its record, or (`keep`, when keeping parts and `content` is
    /// known) keep the durable `prefix` of the part for resume.
    pub(super) fn cleanup(&mut self, keep: bool, content: Option<Pin>, prefix: u64) {
        if keep && self.keep && content.is_some() {
            let kept = self.file().ok().map(|f| {
                f.sync_data()
                    .and_then(|()| f.set_len(prefix))
                    .and_then(|()| f.sync_data())
            });
            match kept.map(|r| r.and_then(|()| self.write_record(content, prefix))) {
                Some(Ok(())) => {
                    self.file = None;
                    tracing::info!(part = %self.path.display(), prefix, "kept part file for resume");
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(part = %self.path.display(), error = %e, "could not keep part file; removing it");
                }
                None => {}
            }
        }
        self.file = None;
        // The record first: a part without one is never trusted.
        if let Err(e) = remove_if_exists(&self.record_path) {
            tracing::warn!(error = %e, "could not remove the resume record");
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(part = %self.path.display(), error = %e, "could not remove part file");
            }
        }
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
