//! The resume record `NAME.part.ferry`: what is known-good in `NAME.part`, and which content
//! it belongs to.
//!
//! A [`FileConsumer`](crate::FileConsumer) that keeps its part for resume writes the record
//! before the first byte, and again after each `fdatasync` of the part (every
//! [`sync_every`](crate::FileConsumerBuilder::sync_every) bytes of contiguous progress, and when
//! the download stops). The record is replaced atomically (written to `NAME.part.ferry.tmp`,
//! fsynced, renamed, directory fsynced), so after a crash at any moment it holds the last
//! checkpoint: `prefix` bytes of the part are durable and were received in order, whatever
//! the part holds beyond them (pipelined writes leave holes). A part without a record is never
//! trusted.
//!
//! Format: one JSON object, `{"format":"ferry-part/1","size":N,"blake3":"HEX","prefix":P,
//! "origin":"SENDER/REF"}`. `size` and `blake3` name the content (a pin, or what the sender
//! advertised); `origin` is informational (a fresh ticket for the same content resumes).

use crate::verify::Pin;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// The `format` value of this version of the record.
pub(crate) const FORMAT: &str = "ferry-part/1";

/// Largest record accepted when reading (a real one is about 200 bytes).
const MAX_RECORD_LEN: u64 = 64 << 10;

/// One resume record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartRecord {
    /// The content the part belongs to.
    pub content: Pin,
    /// `[0, prefix)` of the part is durable and was received in order.
    pub prefix: u64,
    /// Where the content came from (`SENDER/REF`), for messages only.
    pub origin: String,
}

impl PartRecord {
    /// Read the record at `path`: `Ok(None)` when there is none, `Err(why)` when it exists
    /// but cannot be used (then the part is not trusted).
    pub(crate) fn read(path: &Path) -> Result<Option<Self>, String> {
        let meta = match path.symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if !meta.file_type().is_file() {
            return Err("not a regular file".into());
        }
        if meta.len() > MAX_RECORD_LEN {
            return Err(format!(
                "{} bytes, too large for a resume record",
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        Self::parse(&text).map(Some)
    }

    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v["format"].as_str() != Some(FORMAT) {
            return Err(format!("not a {FORMAT} record"));
        }
        let size = v["size"].as_u64().ok_or("no size")?;
        let prefix = v["prefix"].as_u64().ok_or("no prefix")?;
        let digest = v["blake3"].as_str().ok_or("no blake3")?;
        let content = Pin::from_hex(size, digest).map_err(|e| e.to_string())?;
        if prefix > size {
            return Err(format!("prefix {prefix} is beyond the size {size}"));
        }
        let origin = v["origin"].as_str().unwrap_or_default().to_string();
        Ok(Self {
            content,
            prefix,
            origin,
        })
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::json!({
            "format": FORMAT,
            "size": self.content.size,
            "blake3": self.content.hex(),
            "prefix": self.prefix,
            "origin": self.origin,
        })
        .to_string()
    }

    /// Replace the record at `path` atomically and durably.
    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(self.to_json().as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(prefix: u64) -> PartRecord {
        PartRecord {
            content: Pin::new(1 << 30, blake3::hash(b"content")),
            prefix,
            origin: "ferry-sender/R1".into(),
        }
    }

    #[test]
    fn written_records_read_back_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.part.ferry");
        assert_eq!(PartRecord::read(&p), Ok(None));
        record(5).write(&p).unwrap();
        record(7).write(&p).unwrap();
        assert_eq!(PartRecord::read(&p), Ok(Some(record(7))));
        assert!(!dir.path().join("x.part.ferry.tmp").exists());
    }

    #[test]
    fn unusable_records_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.part.ferry");
        let good = record(3).to_json();
        for (bad, why) in [
            ("", "EOF"),
            ("{}", "not a ferry-part/1"),
            (
                &good.replace("ferry-part/1", "ferry-part/9") as &str,
                "not a",
            ),
            (&good.replace("\"prefix\":3", "\"prefix\":-3"), "no prefix"),
            (
                &good.replace("\"prefix\":3", &format!("\"prefix\":{}", (1u64 << 30) + 1)),
                "beyond",
            ),
            (
                &good.replace("\"size\":1073741824", "\"size\":\"big\""),
                "no size",
            ),
            (
                &good.replace(&blake3::hash(b"content").to_hex().to_string(), "abc"),
                "BLAKE3",
            ),
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = PartRecord::read(&p).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        std::fs::write(&p, vec![b' '; (MAX_RECORD_LEN + 1) as usize]).unwrap();
        assert!(PartRecord::read(&p).unwrap_err().contains("too large"));
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        assert!(PartRecord::read(&p)
            .unwrap_err()
            .contains("not a regular file"));
    }

    proptest! {
        /// Any record round-trips; any truncation of one is refused, never misread.
        #[test]
        fn records_round_trip_and_truncations_are_refused(
            size in any::<u64>(),
            prefix_frac in 0.0f64..=1.0,
            digest in any::<[u8; 32]>(),
            origin in "[a-z0-9./-]{0,40}",
            cut in any::<usize>(),
        ) {
            let r = PartRecord {
                content: Pin::new(size, blake3::Hash::from_bytes(digest)),
                prefix: (size as f64 * prefix_frac) as u64 % size.saturating_add(1).max(1),
                origin,
            };
            let text = r.to_json();
            prop_assert_eq!(PartRecord::parse(&text), Ok(r));
            let cut = cut % text.len();
            prop_assert!(PartRecord::parse(&text[..cut]).is_err());
        }
    }
}
