//! What `ferry serve` serves: the PATH arguments expanded to files (directories walked),
//! each named as receivers will write it, and served as a file or a tensor dict.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ferry::ticket::{check_relative_name, Kind};

use crate::exit::{io_reason, CmdResult, Failure};

/// One thing to serve, found on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where it is on disk.
    pub path: PathBuf,
    /// Where receivers write it, relative to their output directory.
    pub name: String,
    /// File or tensor dict.
    pub kind: Kind,
}

/// Expand the PATH arguments: files as themselves, directories as every regular file below
/// them (named `DIR/REL/PATH`). Missing paths, empty directories, names that are not plain
/// relative paths and two objects with the same name are usage errors.
pub fn collect(paths: &[PathBuf], tensors: bool) -> CmdResult<Vec<Entry>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| {
            Failure::usage(format!(
                "{}: {}; check the path (files and directories can be served)",
                p.display(),
                io_reason(&e)
            ))
        })?;
        let base = p
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .or_else(|| {
                // `.` or `..`: name the tree after the directory it stands for
                std::fs::canonicalize(p)
                    .ok()
                    .and_then(|c| c.file_name().and_then(|n| n.to_str()).map(str::to_string))
            })
            .ok_or_else(|| {
                Failure::usage(format!(
                    "{}: cannot name it in a ticket (not UTF-8?); rename or serve its files",
                    p.display()
                ))
            })?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &base, &mut found)?;
            if found.is_empty() {
                return Err(Failure::usage(format!(
                    "{}: no regular files below this directory; nothing to serve",
                    p.display()
                )));
            }
            found.sort();
            out.extend(
                found
                    .into_iter()
                    .map(|(name, path)| entry(path, name, tensors)),
            );
        } else if meta.is_file() {
            out.push(entry(p.clone(), base, tensors));
        } else {
            return Err(Failure::usage(format!(
                "{}: not a regular file or directory",
                p.display()
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for e in &out {
        check_relative_name(&e.name)
            .map_err(|why| Failure::usage(format!("{}: {why}; rename it", e.path.display())))?;
        if !seen.insert(e.name.as_str()) {
            return Err(Failure::usage(format!(
                "two objects would be named {:?} on the receivers; serve them in separate runs or rename one",
                e.name
            )));
        }
    }
    Ok(out)
}

fn entry(path: PathBuf, name: String, tensors: bool) -> Entry {
    let is_st = path
        .extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("safetensors"));
    let kind = if tensors && is_st {
        Kind::Tensors
    } else {
        Kind::File
    };
    Entry { path, name, kind }
}

/// Regular files below `dir` (symlinked directories are not followed, so no loops).
fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> CmdResult {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Failure::usage(format!("{}: {}", dir.display(), io_reason(&e))))?;
    for item in rd {
        let item =
            item.map_err(|e| Failure::usage(format!("{}: {}", dir.display(), io_reason(&e))))?;
        let path = item.path();
        let Some(fname) = item.file_name().to_str().map(str::to_string) else {
            return Err(Failure::usage(format!(
                "{}: file name is not UTF-8; rename it",
                path.display()
            )));
        };
        let name = format!("{prefix}/{fname}");
        let ft = item
            .file_type()
            .map_err(|e| Failure::usage(format!("{}: {}", path.display(), io_reason(&e))))?;
        if ft.is_dir() {
            walk(&path, &name, out)?;
        } else if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push((name, path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_files_and_trees() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ckpt");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.bin"), b"a").unwrap();
        std::fs::write(root.join("sub/b.safetensors"), b"b").unwrap();
        std::fs::write(d.path().join("c.bin"), b"c").unwrap();
        let got = collect(&[root.clone(), d.path().join("c.bin")], true).unwrap();
        let names: Vec<(&str, Kind)> = got.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            names,
            [
                ("ckpt/a.bin", Kind::File),
                ("ckpt/sub/b.safetensors", Kind::Tensors),
                ("c.bin", Kind::File)
            ]
        );
        let missing = collect(&[d.path().join("nope")], false).unwrap_err();
        assert_eq!(missing.code(), 2);
        assert!(missing.to_string().contains("no such file"), "{missing}");
        let dup = collect(&[d.path().join("c.bin"), d.path().join("c.bin")], false).unwrap_err();
        assert!(dup.to_string().contains("two objects"), "{dup}");
        std::fs::create_dir(d.path().join("empty")).unwrap();
        assert_eq!(
            collect(&[d.path().join("empty")], false)
                .unwrap_err()
                .code(),
            2
        );
    }
}
