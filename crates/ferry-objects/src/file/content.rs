//! What a [`FileConsumer`](crate::FileConsumer) holds the received bytes to: the ticket's pin
//! (authoritative) or else the size and digest the sender advertised, the grid of the sender's
//! plan, the size limit, and the BLAKE3 of the bytes as they arrive.

use crate::byte_state::check_byte_chunk;
use crate::ranges::RangeSet;
use crate::verify::{Pin, StreamVerifier, Verified};
use ferry_core::{ChunkData, ConsumeError, PlanLayout, State, TransferPlan};
use std::path::Path;

/// The checks on one file download's content.
#[derive(Debug)]
pub(super) struct ContentCheck {
    max_size: u64,
    /// The ticket's pin, if any: authoritative.
    pin: Option<Pin>,
    /// The content being checked against, and whether it is pinned (`true`) or only
    /// advertised by the sender (`false`). `None`: nothing to check but an advertised size.
    content: Option<(Pin, bool)>,
    /// The plan's chunk size and total, once a plan was accepted: every chunk must sit on its
    /// grid.
    plan_chunk: Option<(u64, u64)>,
    /// Hashes bytes as they arrive; `None` when there is no digest to check.
    verifier: Option<StreamVerifier>,
}

impl ContentCheck {
    /// Checks for a download held to `pin` (if any) and at most `max_size` bytes.
    pub(super) fn new(pin: Option<Pin>, max_size: u64) -> Self {
        Self {
            max_size,
            pin,
            content: pin.map(|p| (p, true)),
            plan_chunk: None,
            verifier: pin.map(|p| StreamVerifier::new(p.size)),
        }
    }

    /// The size limit.
    pub(super) fn max_size(&self) -> u64 {
        self.max_size
    }

    /// The ticket's pin, if any.
    pub(super) fn pin(&self) -> Option<Pin> {
        self.pin
    }

    /// The content the bytes are checked against (pinned or advertised), once known: what a
    /// resume record names.
    pub(super) fn content(&self) -> Option<Pin> {
        self.content.map(|(pin, _)| pin)
    }

    /// The size the object is held to (the pin's, else the sender's plan's), once known.
    pub(super) fn expected_size(&self) -> Option<u64> {
        self.pin.map(|p| p.size).or(self.plan_chunk.map(|(_, t)| t))
    }

    /// What the file was checked against.
    pub(super) fn verified(&self) -> Verified {
        match self.content {
            Some((pin, true)) => Verified::Pinned(pin),
            Some((pin, false)) => Verified::SenderAdvertised(pin),
            None => Verified::Unverified,
        }
    }

    /// A kept part is resumed: without a pin, hold the bytes to the content its record names
    /// (what the sender advertised before). Returns the verifier the kept prefix is fed to.
    pub(super) fn resume(&mut self, recorded: Pin) -> Option<&mut StreamVerifier> {
        if self.content.is_none() {
            self.content = Some((recorded, false));
            self.verifier = Some(StreamVerifier::new(recorded.size));
        }
        self.verifier.as_mut()
    }

    /// Check the sender's plan against the pin (or, resuming unpinned, against the content
    /// kept before) and adopt its grid. `resumed_from` bytes are kept in `part`. Returns
    /// whether the plan's advertised content was adopted (then the resume record must name
    /// it).
    pub(super) fn plan(
        &mut self,
        plan: &TransferPlan,
        resumed_from: u64,
        part: &Path,
    ) -> Result<bool, ConsumeError> {
        let PlanLayout::Bytes { total, chunk } = plan.layout else {
            return Err(ConsumeError::BadChunk(
                "a file consumer needs a byte-stream object, the plan announces items".into(),
            ));
        };
        if chunk == 0 {
            return Err(ConsumeError::BadChunk(
                "the sender's plan has 0-byte chunks".into(),
            ));
        }
        let advertised = match &plan.blake3 {
            Some(d) => Some(
                Pin::from_hex(total, d)
                    .map_err(|e| ConsumeError::BadChunk(format!("the sender's plan: {e}")))?,
            ),
            None => None,
        };
        let mut adopted = false;
        if let Some(pin) = self.pin {
            if total != pin.size {
                return Err(ConsumeError::Integrity(format!(
                    "the sender offers {total} bytes, the ticket pins {}",
                    pin.size
                )));
            }
            if let Some(adv) = advertised.filter(|a| a.blake3 != pin.blake3) {
                return Err(ConsumeError::Integrity(format!(
                    "the sender offers content with BLAKE3 {}, the ticket pins {}",
                    adv.hex(),
                    pin.hex()
                )));
            }
        } else if let Some((kept, _)) = self.content {
            // Unpinned resume: the record holds what the sender advertised last time.
            if advertised != Some(kept) {
                return Err(ConsumeError::Integrity(format!(
                    "the object changed since {} was kept ({kept} then, {} bytes with BLAKE3 {} now)",
                    part.display(),
                    total,
                    plan.blake3.as_deref().unwrap_or("none")
                )));
            }
        } else {
            if total > self.max_size {
                return Err(ConsumeError::Other(format!(
                    "object of {total} bytes exceeds the limit of {} bytes",
                    self.max_size
                )));
            }
            if let Some(adv) = advertised {
                self.content = Some((adv, false));
                self.verifier = Some(StreamVerifier::new(total));
                adopted = true;
            }
        }
        if resumed_from > total {
            return Err(ConsumeError::Integrity(format!(
                "kept {} has {resumed_from} bytes but the object has {total}",
                part.display(),
            )));
        }
        self.plan_chunk = Some((chunk, total));
        Ok(adopted)
    }

    /// Check a chunk against the pin and the plan (`ranges`: what is stored already); returns
    /// where it starts and its bytes.
    pub(super) fn chunk(
        &self,
        state: &State,
        data: ChunkData,
        ranges: &RangeSet,
    ) -> Result<(u64, bytes::Bytes), ConsumeError> {
        let planned_total = self.plan_chunk.map(|(_, total)| total);
        let (start, chunk) = check_byte_chunk(state, data, planned_total, self.max_size, ranges)?;
        let end = start + chunk.len() as u64;
        if let Some(pin) = self.pin {
            if end > pin.size {
                return Err(ConsumeError::Integrity(format!(
                    "the sender sent bytes [{start}, {end}) but the ticket pins {} bytes",
                    pin.size
                )));
            }
        }
        if let Some((c, total)) = self.plan_chunk {
            if start % c != 0 || end != (start + c).min(total) {
                return Err(ConsumeError::BadChunk(format!(
                    "chunk [{start}, {end}) is not where the sender's plan of {c}-byte chunks puts it"
                )));
            }
        }
        Ok((start, chunk))
    }

    /// Hash a stored chunk (the verifier skips what it already has, as the writes do).
    pub(super) fn hash(&mut self, start: u64, chunk: &[u8]) -> Result<(), ConsumeError> {
        match self.verifier.as_mut() {
            Some(v) => v.update(start, chunk),
            None => Ok(()),
        }
    }

    /// At completion: the digest of the bytes received against the content (`dest` names
    /// the file in the message).
    pub(super) fn check_digest(&self, dest: &Path) -> Result<(), ConsumeError> {
        let (Some(v), Some((content, pinned))) = (&self.verifier, self.content) else {
            return Ok(());
        };
        v.check(&content.blake3).map_err(|e| {
            let whose = if pinned {
                "the ticket's"
            } else {
                "the sender's advertised"
            };
            ConsumeError::Integrity(format!(
                "{} does not match {whose} digest: {}",
                dest.display(),
                e.to_string().trim_start_matches("integrity check failed: ")
            ))
        })
    }
}
