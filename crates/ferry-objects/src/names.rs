//! Destination names: a single path component that cannot escape its directory.

use crate::ObjectsError;
use std::path::{Component, Path};

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
