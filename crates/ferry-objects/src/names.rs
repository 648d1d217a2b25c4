//! Destinations of the file consumers: a name that is a single path component and cannot
//! escape its directory, and the final move of a finished part file onto it.

use crate::ObjectsError;
use ferry_core::ConsumeError;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

/// Check `name` and the directory `dir` for a new download and return `dir/name`; an existing
/// destination is refused unless `overwrite`.
pub(crate) fn destination_path(
    dir: &Path,
    name: &str,
    overwrite: bool,
) -> Result<PathBuf, ObjectsError> {
    check_destination_name(name)?;
    let meta = std::fs::metadata(dir)
        .map_err(|e| ObjectsError::io(format!("target directory {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(ObjectsError::InvalidOption(format!(
            "target {} is not a directory",
            dir.display()
        )));
    }
    let final_path = dir.join(name);
    if !overwrite && final_path.symlink_metadata().is_ok() {
        return Err(ObjectsError::DestinationExists(final_path));
    }
    Ok(final_path)
}

/// Rename the finished, fsynced `part` to `final_path` and fsync the directory so the rename
/// is durable (a failure of that fsync is logged: the file is in place). A destination that
/// appeared during the download is refused unless `overwrite`.
pub(crate) fn publish(part: &Path, final_path: &Path, overwrite: bool) -> Result<(), ConsumeError> {
    if !overwrite && final_path.symlink_metadata().is_ok() {
        return Err(ConsumeError::Other(format!(
            "destination {} appeared during the download and overwrite is off",
            final_path.display()
        )));
    }
    std::fs::rename(part, final_path).map_err(|e| ConsumeError::Io {
        context: format!("renaming {} to {}", part.display(), final_path.display()),
        source: e,
    })?;
    if let Some(dir) = final_path.parent() {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "fsync of the directory failed");
        }
    }
    Ok(())
}

/// Check that `name` is one normal path component (no separator, not `.`/`..`, not empty, no
/// NUL), so that `dir.join(name)` stays inside `dir`.
pub(crate) fn check_destination_name(name: &str) -> Result<(), ObjectsError> {
    let refuse = |why| {
        Err(ObjectsError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return refuse("empty");
    }
    if name.contains('\0') {
        return refuse("contains a NUL byte");
    }
    if name.contains('/') || name.contains('\\') {
        return refuse("contains a path separator");
    }
    let mut comps = Path::new(name).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(_)), None) => Ok(()),
        _ => refuse("is not a plain file name (\".\", \"..\" or a root)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_names_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "x\0y"] {
            assert!(check_destination_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["model.safetensors", "a..b", ".hidden", "x y"] {
            assert!(check_destination_name(ok).is_ok(), "{ok:?}");
        }
    }
}
