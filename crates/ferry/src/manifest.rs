//! Set manifests: what one ticket for a whole serve points at.
//!
//! A sender that serves several objects (a directory, several paths) registers each as usual
//! and one more object, the **manifest**: a msgpack map listing every member — its name
//! (relative to the receiver's output directory), kind, size, digest, ref id, and the file's
//! permission bits and modification time. The manifest's own size and BLAKE3 go in a
//! [`Kind::Set`] ticket, so that ticket pins the whole set: the receiver
//! ([`crate::fetch_set`]) verifies the manifest before it reads it, then fetches each member
//! pinned by its entry.
//!
//! Encoding (msgpack, maps with these keys; unknown keys are ignored):
//!
//! ```text
//! { "format": "ferry-set/1",
//!   "entries": [ { "name": "ckpt/shard-0.bin", "kind": "file" | "tensors", "size": u64,
//!                  "b3": "64 hex digits", "ref": "R...",
//!                  "mode": u32 (optional, permission bits), "mtime": i64 (optional, seconds
//!                  since the Unix epoch), "mtime_ns": u32 (optional, 0..1e9) }, ... ] }
//! ```
//!
//! [`Manifest::decode`] checks everything a hostile sender could put there: the size (at most
//! [`MAX_MANIFEST_BYTES`], checked before anything is fetched), the number of entries, every
//! name ([`check_relative_name`]: nothing escapes the output directory), names used twice or
//! used both as a file and as a directory, kinds, digests and ref ids.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ticket::{check_relative_name, Kind, Ticket};

/// The `format` of the manifests this version writes and reads.
pub const FORMAT: &str = "ferry-set/1";

/// Largest manifest a receiver fetches (a ticket announcing more is refused before the pull):
/// room for about half a million entries with long names.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// Most entries in one manifest.
pub const MAX_ENTRIES: usize = 1 << 20;

/// Why a manifest is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("set manifest: {0}")]
pub struct ManifestError(pub String);

/// One member of a set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where the receiver writes it, relative to its output directory.
    pub name: String,
    /// `file` or `tensors` (a set does not nest).
    pub kind: String,
    /// Size the member's ticket pins.
    pub size: u64,
    /// Digest the member's ticket pins (64 hex digits).
    pub b3: String,
    /// The member's ref id in the sender's transaction.
    #[serde(rename = "ref")]
    pub ref_id: String,
    /// Permission bits of the sender's file (`st_mode & 0o7777`); the receiver applies the
    /// `0o777` part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time of the sender's file, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// Nanoseconds part of `mtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<u32>,
}

impl Entry {
    /// The member's kind.
    pub fn kind(&self) -> Option<Kind> {
        Kind::parse(&self.kind).filter(|k| *k != Kind::Set)
    }

    /// The modification time, if the sender gave one (after the Unix epoch).
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        let secs = u64::try_from(self.mtime?).ok()?;
        let since = std::time::Duration::new(secs, self.mtime_ns.unwrap_or(0));
        std::time::UNIX_EPOCH.checked_add(since)
    }
}

/// The members of a set, in the order they are fetched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The members.
    // grown as entries arrive: the count a sender's list header claims reserves nothing
    #[serde(deserialize_with = "ferry_core::message::grown_vec")]
    pub entries: Vec<Entry>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            format: FORMAT.into(),
            entries: Vec::new(),
        }
    }
}

impl Manifest {
    /// An empty manifest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add the member `ticket` points at (its name, kind, size, digest and ref id), with the
    /// file's permission bits and modification time when known.
    pub fn push(
        &mut self,
        ticket: &Ticket,
        mode: Option<u32>,
        modified: Option<std::time::SystemTime>,
    ) {
        let (mtime, mtime_ns) = match modified.map(|m| m.duration_since(std::time::UNIX_EPOCH)) {
            Some(Ok(d)) => (i64::try_from(d.as_secs()).ok(), Some(d.subsec_nanos())),
            _ => (None, None),
        };
        self.entries.push(Entry {
            name: ticket.name.clone(),
            kind: ticket.kind.as_str().into(),
            size: ticket.size,
            b3: ticket.blake3.clone(),
            ref_id: ticket.ref_id.clone(),
            mode: mode.map(|m| m & 0o7777),
            mtime,
            mtime_ns: mtime.and(mtime_ns),
        });
    }

    /// Sum of the members' sizes.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |a, e| a.saturating_add(e.size))
    }

    /// The manifest's bytes, as served.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings and integers into a Vec cannot fail.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// The manifest's bytes and their pin (size and BLAKE3): what a sender serves
    /// (`ObjectDownloader::add_bytes`) and puts in the set's ticket.
    pub fn encode_pinned(&self) -> (bytes::Bytes, ferry_objects::verify::Pin) {
        let bytes = self.encode();
        let pin = ferry_objects::verify::Pin::new(bytes.len() as u64, blake3::hash(&bytes));
        (bytes.into(), pin)
    }

    /// Parse and check a manifest (see the module docs for what is refused).
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError(format!(
                "{} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have",
                bytes.len()
            )));
        }
        let m: Manifest = rmp_serde::from_slice(bytes)
            .map_err(|e| ManifestError(format!("not a ferry set manifest ({e})")))?;
        m.check()?;
        Ok(m)
    }

    /// Check the entries (what [`decode`](Self::decode) checks after parsing).
    pub fn check(&self) -> Result<(), ManifestError> {
        let bad = |what: String| Err(ManifestError(what));
        if self.format != FORMAT {
            return bad(format!(
                "format {:?}, this ferry reads {FORMAT:?}: upgrade ferry",
                self.format
            ));
        }
        if self.entries.len() > MAX_ENTRIES {
            return bad(format!(
                "{} entries, more than {MAX_ENTRIES}",
                self.entries.len()
            ));
        }
        let mut files = BTreeSet::new();
        for e in &self.entries {
            check_relative_name(&e.name).map_err(ManifestError)?;
            if e.kind().is_none() {
                return bad(format!("{}: unknown kind {:?}", e.name, e.kind));
            }
            if e.b3.len() != 64 || !e.b3.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("{}: {:?} is not a BLAKE3 digest", e.name, e.b3));
            }
            if e.ref_id.is_empty()
                || e.ref_id.len() > 256
                || !e
                    .ref_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad(format!("{}: {:?} is not a ref id", e.name, e.ref_id));
            }
            if e.mtime_ns.is_some_and(|n| n >= 1_000_000_000) {
                return bad(format!("{}: mtime_ns out of range", e.name));
            }
            if !files.insert(e.name.as_str()) {
                return bad(format!("{} is listed twice", e.name));
            }
        }
        // A name that is also a directory of another (`a` and `a/b`) cannot be created.
        for name in &files {
            let mut at = 0;
            while let Some(i) = name[at..].find('/') {
                let dir = &name[..at + i];
                if files.contains(dir) {
                    return bad(format!("{dir} is both a file and the directory of {name}"));
                }
                at += i + 1;
            }
        }
        Ok(())
    }

    /// The ticket of member `i`: the set ticket's sender, pinned by the entry.
    pub fn member_ticket(&self, set: &Ticket, i: usize) -> Option<Ticket> {
        let e = self.entries.get(i)?;
        Some(Ticket {
            tls: set.tls,
            addr: set.addr.clone(),
            source: set.source.clone(),
            ref_id: e.ref_id.clone(),
            kind: e.kind()?,
            name: e.name.clone(),
            size: e.size,
            blake3: e.b3.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(name: &str) -> Ticket {
        Ticket {
            tls: false,
            addr: "h:1".into(),
            source: "s".into(),
            ref_id: format!("R-{}", name.len()),
            kind: Kind::File,
            name: name.into(),
            size: 3,
            blake3: "ab".repeat(32),
        }
    }

    #[test]
    fn round_trip_with_mode_and_mtime() {
        let mut m = Manifest::new();
        let when = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123);
        m.push(&ticket("d/a.bin"), Some(0o100755), Some(when));
        m.push(&ticket("d/sub/b.bin"), None, None);
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.entries[0].mode, Some(0o755));
        assert_eq!(back.entries[0].modified(), Some(when));
        assert_eq!(back.total_size(), 6);
        let set = Ticket {
            kind: Kind::Set,
            name: "d".into(),
            ..ticket("d")
        };
        let t = back.member_ticket(&set, 1).unwrap();
        assert_eq!(
            (t.name.as_str(), t.kind, t.size),
            ("d/sub/b.bin", Kind::File, 3)
        );
        assert!(back.member_ticket(&set, 2).is_none());
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let base = {
            let mut m = Manifest::new();
            m.push(&ticket("a/b"), None, None);
            m
        };
        let with = |f: &dyn Fn(&mut Entry)| {
            let mut m = base.clone();
            f(&mut m.entries[0]);
            Manifest::decode(&m.encode()).unwrap_err().to_string()
        };
        assert!(with(&|e| e.name = "../x".into()).contains("not a plain relative path"));
        assert!(with(&|e| e.name = "/etc/passwd".into()).contains("not a plain"));
        assert!(with(&|e| e.kind = "set".into()).contains("unknown kind"));
        assert!(with(&|e| e.b3 = "zz".into()).contains("not a BLAKE3"));
        assert!(with(&|e| e.ref_id = "R 1".into()).contains("not a ref id"));
        assert!(with(&|e| e.mtime_ns = Some(2_000_000_000)).contains("mtime_ns"));
        let mut twice = base.clone();
        twice.entries.push(twice.entries[0].clone());
        assert!(Manifest::decode(&twice.encode())
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        let mut dir_and_file = base.clone();
        dir_and_file.push(&ticket("a"), None, None);
        assert!(Manifest::decode(&dir_and_file.encode())
            .unwrap_err()
            .to_string()
            .contains("both a file and the directory"));
        let mut newer = base.clone();
        newer.format = "ferry-set/2".into();
        assert!(Manifest::decode(&newer.encode())
            .unwrap_err()
            .to_string()
            .contains("upgrade ferry"));
        for garbage in [&b""[..], b"\xc1", b"\x81\xa6format\x01", &[0x91; 64]] {
            assert!(Manifest::decode(garbage).is_err());
        }
    }
}
