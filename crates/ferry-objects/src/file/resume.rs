//! What a resuming [`FileConsumer`](crate::FileConsumer) does with an existing `NAME.part`:
//! trust it only with a usable record of the same content, cut it to the recorded prefix, and
//! hash that prefix once.

use super::record::PartRecord;
use crate::verify::{Pin, StreamVerifier};
use crate::ObjectsError;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The verdict on an existing part.
#[derive(Debug)]
pub(super) enum Kept {
    /// Resume from this part and its record.
    Resume(File, PartRecord),
    /// Start over; why an existing part is not used, if there was one.
    StartOver(Option<String>),
}

/// Look at `part` and its record: resume from it only when the record is usable and names the
/// pinned content (any content when unpinned); refuse a part of other content
/// ([`ObjectsError::OtherContent`]) unless `discard_other`.
pub(super) fn examine(
    part: &Path,
    record_path: &Path,
    pin: Option<Pin>,
    max_size: u64,
    discard_other: bool,
) -> Result<Kept, ObjectsError> {
    let Ok(meta) = part.symlink_metadata() else {
        return Ok(Kept::StartOver(None));
    };
    let shown = part.display().to_string();
    let start_over = |why: String| Ok(Kept::StartOver(Some(why)));
    if !meta.file_type().is_file() {
        return start_over(format!("{shown} is not a regular file"));
    }
    let record = match PartRecord::read(record_path) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return start_over(format!(
                "{shown} has no resume record (left by a crash before its first checkpoint, or by an older ferry)"
            ))
        }
        Err(why) => {
            return start_over(format!(
                "{shown} has an unusable resume record {}: {why}",
                record_path.display()
            ))
        }
    };
    if let Some(pin) = pin.filter(|p| *p != record.content) {
        let from = if record.origin.is_empty() {
            "an unknown sender"
        } else {
            &record.origin
        };
        let why = format!(
            "{shown} holds part of other content ({}, from {from}) than this download pins ({pin})",
            record.content
        );
        if discard_other {
            return start_over(why);
        }
        return Err(ObjectsError::OtherContent {
            part: part.to_path_buf(),
            why,
        });
    }
    if record.content.size > max_size {
        return start_over(format!(
            "{shown} belongs to an object of {} bytes, beyond max_size {max_size}",
            record.content.size
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(part)
        .map_err(|e| ObjectsError::io(format!("reopening {shown}"), e))?;
    Ok(Kept::Resume(file, record))
}

/// Cut `file` to the prefix its record names (a crash may have left holes and stray chunks
/// beyond it) and feed that prefix, read back once, to `verifier`. Returns the prefix length.
pub(super) fn cut_and_rehash(
    file: &File,
    part: &Path,
    record: &PartRecord,
    verifier: Option<&mut StreamVerifier>,
) -> Result<u64, ObjectsError> {
    let shown = part.display();
    let len = file
        .metadata()
        .map_err(|e| ObjectsError::io(format!("reading {shown}"), e))?
        .len();
    // The record may be ahead of a part that was cut short since: trust the smaller.
    let prefix = record.prefix.min(len);
    file.set_len(prefix)
        .map_err(|e| ObjectsError::io(format!("cutting {shown} to its recorded prefix"), e))?;
    if let Some(v) = verifier {
        let mut buf = vec![0u8; (1 << 20).min(prefix.max(1) as usize)];
        let mut at = 0u64;
        while at < prefix {
            let n = (buf.len() as u64).min(prefix - at) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| ObjectsError::io(format!("re-reading {shown} to verify it"), e))?;
            v.update(at, &buf[..n])
                .map_err(|e| ObjectsError::InvalidOption(e.to_string()))?;
            at += n as u64;
        }
    }
    Ok(prefix)
}
