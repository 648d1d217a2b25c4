//! [`PinnedFile`]: the file consumer of `ferry get`, holding the producer to the digest in the
//! ticket.
//!
//! The file consumer already checks size and BLAKE3 against the plan the producer advertises.
//! That plan travels with the data, so on plain TCP whoever can change the data can change the
//! plan too; the ticket travels another way (copy-paste, a chat, a job spec). Checking the plan's
//! digest against the ticket's makes the ticket pin the content: wrong bytes can no longer pass.

use std::path::Path;

use ferry::core::{ChunkData, ConsumeError, Consumer, State, TransferPlan};
use ferry::objects::FileConsumer;

/// A [`FileConsumer`] that refuses a producer whose advertised digest differs from `expected`.
#[derive(Debug)]
pub struct PinnedFile {
    inner: FileConsumer,
    /// Lowercase hex BLAKE3 from the ticket; `None` = accept whatever the producer advertises.
    expected: Option<String>,
}

impl PinnedFile {
    /// Wrap `inner`.
    pub fn new(inner: FileConsumer, expected: Option<String>) -> Self {
        Self { inner, expected }
    }

    /// Where the file lands.
    pub fn final_path(&self) -> &Path {
        self.inner.final_path()
    }
}

impl Consumer for PinnedFile {
    fn consume(
        &mut self,
        ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError> {
        self.inner.consume(ref_id, state, data)
    }

    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        if let Some(want) = &self.expected {
            match &plan.blake3 {
                Some(got) if got.eq_ignore_ascii_case(want) => {}
                Some(got) => {
                    return Err(ConsumeError::Integrity(format!(
                        "the sender offers content with BLAKE3 {got}, the ticket pins {want}"
                    )))
                }
                None => {
                    return Err(ConsumeError::Integrity(
                        "the ticket pins a BLAKE3 digest but the sender advertises none".into(),
                    ))
                }
            }
        }
        self.inner.plan_received(plan)
    }

    fn needs_order(&self) -> bool {
        self.inner.needs_order()
    }

    fn blocks(&self) -> bool {
        self.inner.blocks()
    }

    fn completed(&mut self, ref_id: &str) -> Result<(), ConsumeError> {
        self.inner.completed(ref_id)
    }

    fn failed(&mut self, ref_id: &str, reason: &str) {
        self.inner.failed(ref_id, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry::core::PlanLayout;

    fn plan(b3: Option<&str>) -> TransferPlan {
        TransferPlan {
            layout: PlanLayout::Bytes { total: 4, chunk: 4 },
            total_bytes: Some(4),
            blake3: b3.map(str::to_string),
        }
    }

    #[test]
    fn refuses_another_digest() {
        let dir = tempfile::tempdir().unwrap();
        let digest = blake3_hex(b"abcd");
        let open = || FileConsumer::create(dir.path(), "x").unwrap();
        let mut ok = PinnedFile::new(open(), Some(digest.to_uppercase()));
        assert!(ok.plan_received(&plan(Some(&digest))).is_ok());
        ok.failed("R", "test over");
        let mut other = PinnedFile::new(open(), Some(digest.clone()));
        let err = other
            .plan_received(&plan(Some(&"0".repeat(64))))
            .unwrap_err();
        assert!(err.to_string().contains("pins"), "{err}");
        other.failed("R", "refused");
        let mut none = PinnedFile::new(open(), Some(digest));
        assert!(none.plan_received(&plan(None)).is_err());
        none.failed("R", "refused");
        let mut unpinned = PinnedFile::new(open(), None);
        assert!(unpinned.plan_received(&plan(None)).is_ok());
        unpinned.failed("R", "test over");
        assert!(!dir.path().join("x").exists());
    }

    /// The digest of a tiny buffer, computed the way a sender does (a one-chunk FileObject).
    fn blake3_hex(data: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src");
        std::fs::write(&p, data).unwrap();
        let obj = ferry::objects::FileObject::builder(&p)
            .digest(true)
            .open()
            .unwrap();
        obj.digest().unwrap().to_string()
    }
}
