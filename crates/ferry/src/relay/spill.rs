//! The relay's copy of the object: a spill file in a directory the relay owns, which bytes of
//! it arrived, the verifier they went through, and where the upstream download stands.
//!
//! The upstream consumer writes here; every downstream pull reads here, waiting (on a condvar,
//! on the blocking pool) for bytes that have not arrived yet. Memory does not grow with the
//! object: the bytes live in the file (the page cache holds what is hot), the bookkeeping is a
//! list of ranges and the verifier's few KiB.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use ferry_objects::verify::{Pin, StreamVerifier};
use ferry_objects::RangeSet;

use super::outboard::Outboard;
use super::phase::{Board, Phase, Watched};
use super::spill_file::SpillFile;

/// What the waiters look at, under one lock (with the phase: a [`Watched`]).
#[derive(Debug)]
struct Shared {
    received: RangeSet,
    /// The groups checked against the outboard (empty without one).
    verified: RangeSet,
}

/// The relay's copy of the object (see the module docs).
#[derive(Debug)]
pub(crate) struct Spill {
    /// The object's bytes at their offsets; holes until they arrive.
    file: SpillFile,
    pin: Pin,
    /// Which bytes arrived and where the download stands; signalled whenever bytes arrive or
    /// the phase changes.
    shared: Watched<Shared>,
    /// Hashes the bytes as they arrive (the first copy of each byte counts, as in the file).
    /// Only the upstream consumer uses it, so hashing does not hold up the readers.
    verifier: Mutex<StreamVerifier>,
    /// The chaining values of the object's groups, once a source gave ones that match the
    /// pin: from then on only checked groups are served.
    outboard: Arc<OnceLock<Arc<Outboard>>>,
}

impl Spill {
    /// Make the spill directory under `parent` and an empty file of the pinned size in it.
    pub(crate) fn create(parent: &Path, pin: Pin) -> std::io::Result<Self> {
        let file = SpillFile::create(parent, "object")?;
        // A sparse file: no space is taken before the bytes arrive, and reads past the end
        // cannot happen by accident.
        file.set_len(pin.size)?;
        Ok(Self {
            file,
            pin,
            shared: Watched::new(Shared {
                received: RangeSet::new(),
                verified: RangeSet::new(),
            }),
            verifier: Mutex::new(StreamVerifier::new(pin.size)),
            outboard: Arc::new(OnceLock::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Board<Shared>> {
        self.shared.lock()
    }

    /// The pinned size and digest.
    pub(crate) fn pin(&self) -> Pin {
        self.pin
    }

    /// The spill file.
    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Where the upstream download stands.
    pub(crate) fn phase(&self) -> Phase {
        self.shared.phase()
    }

    /// Bytes that arrived, and the contiguous prefix of them.
    pub(crate) fn progress(&self) -> (u64, u64) {
        let s = self.lock();
        (s.received.covered(), s.received.prefix_len())
    }

    /// Store a chunk that starts at `start`: the bytes that had not arrived are written, the
    /// whole chunk goes through the verifier (which counts only first copies), and then the
    /// bytes are announced to the waiters. Called by one upstream consumer at a time.
    pub(crate) fn store(&self, start: u64, data: &[u8]) -> Result<(), ferry_core::ConsumeError> {
        let end = start + data.len() as u64;
        let gaps = self.lock().received.gaps(start, end);
        for (s, e) in &gaps {
            let from = (s - start) as usize;
            let to = (e - start) as usize;
            self.file.write_at(&data[from..to], *s)?;
        }
        // With an outboard every group is checked on its own (and the groups give the pinned
        // root), so the whole-stream hash would only hash every byte a second time.
        if !self.has_outboard() {
            self.verifier
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .update(start, data)?;
        }
        let mut s = self.lock();
        for (a, b) in gaps {
            s.received.insert(a, b);
        }
        drop(s);
        let checked = self.check_groups(start, end, Some((start, data)));
        self.shared.notify();
        checked
    }

    /// The outboard slot (shared with an [`OutboardIndex`](super::outboard::OutboardIndex)).
    pub(crate) fn outboard_slot(&self) -> Arc<OnceLock<Arc<Outboard>>> {
        Arc::clone(&self.outboard)
    }

    /// Whether groups are checked one by one.
    pub(crate) fn has_outboard(&self) -> bool {
        self.outboard.get().is_some()
    }

    /// Take an outboard (already checked against the pin) and check the groups that arrived
    /// before it. A group that does not match fails the relay.
    pub(crate) fn set_outboard(&self, o: Outboard, source: &str) -> Result<(), String> {
        if self.outboard.set(Arc::new(o)).is_err() {
            return Ok(());
        }
        let r = self
            .check_groups(0, self.pin.size, None)
            .map_err(|e| e.to_string());
        self.shared.notify();
        r.map_err(|e| format!("{e} (outboard from {source})"))
    }

    /// Check every group of `[start, end)` that arrived whole and was not checked yet; `data`
    /// is a chunk in hand (its start and bytes) that saves reading a group back.
    fn check_groups(
        &self,
        start: u64,
        end: u64,
        data: Option<(u64, &[u8])>,
    ) -> Result<(), ferry_core::ConsumeError> {
        let Some(o) = self.outboard.get() else {
            return Ok(());
        };
        for g in o.groups_of(start, end) {
            let (gs, ge) = o.range(g);
            {
                let s = self.lock();
                if !s.received.covers(gs, ge) || s.verified.covers(gs, ge) {
                    continue;
                }
            }
            let bytes: Vec<u8>;
            let group: &[u8] = match data {
                Some((ds, d)) if ds <= gs && ge <= ds + d.len() as u64 => {
                    &d[(gs - ds) as usize..(ge - ds) as usize]
                }
                _ => {
                    bytes = self.read(gs, (ge - gs) as usize).map_err(|e| {
                        ferry_core::ConsumeError::Io {
                            context: format!(
                                "reading back the relay's copy {}",
                                self.path().display()
                            ),
                            source: e,
                        }
                    })?;
                    &bytes
                }
            };
            if !o.check(g, group) {
                let why = format!(
                    "bytes [{gs}, {ge}) from upstream do not match the ticket's digest (checked against the outboard of BLAKE3 {}): a corrupted or hostile upstream; nothing of them was served",
                    self.pin.hex()
                );
                self.set_phase(Phase::Failed(why.clone()));
                return Err(ferry_core::ConsumeError::Integrity(why));
            }
            self.lock().verified.insert(gs, ge);
        }
        Ok(())
    }

    /// Every byte arrived: check the digest against the pin and move to `Verified`, or to
    /// `Failed` (returned as the error).
    pub(crate) fn finish(&self, source: &str) -> Result<(), String> {
        if self.has_outboard() {
            // Every group matched its chaining value, and the chaining values give the pinned
            // digest (checked when the outboard was taken): the object is the pinned one.
            let done = self.lock().verified.covers(0, self.pin.size);
            let result = if done {
                Ok(())
            } else {
                Err(format!(
                    "the download from {source} ended before every byte was checked"
                ))
            };
            match &result {
                Ok(()) => self.set_phase(Phase::Verified),
                Err(why) => self.set_phase(Phase::Failed(why.clone())),
            }
            return result;
        }
        let got = self
            .verifier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finalize();
        let result = match got {
            Ok(h) if h == self.pin.blake3 => Ok(()),
            Ok(h) => Err(format!(
                "the content {source} sent does not match the ticket: BLAKE3 {} instead of the pinned {} (a corrupted or hostile upstream); nothing was kept",
                h.to_hex(),
                self.pin.hex()
            )),
            Err(e) => Err(format!("the download from {source} ended early: {e}")),
        };
        match &result {
            Ok(()) => self.set_phase(Phase::Verified),
            Err(why) => self.set_phase(Phase::Failed(why.clone())),
        }
        result
    }

    /// Move to `phase` (a failure is final: a later phase does not replace it) and wake every
    /// waiter.
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.shared.set_phase(phase);
    }

    /// Wait until `[start, end)` arrived, or the relay failed, or `limit` passed. `Ok(())`
    /// when the bytes are there; the failure or a timeout text otherwise.
    pub(crate) fn wait_for(&self, start: u64, end: u64, limit: Duration) -> Result<(), String> {
        self.shared
            .wait(limit, &format!("bytes [{start}, {end})"), |s| {
                self.servable(s, start, end).then_some(())
            })
    }

    /// Wait until every byte arrived and matched the pin; the failure or a timeout text
    /// otherwise.
    pub(crate) fn wait_verified(&self, limit: Duration) -> Result<(), String> {
        self.shared.wait_verified(limit, "the end of the object")
    }

    /// Whether `[start, end)` may be served: checked against the outboard when there is one,
    /// else arrived (the whole-object digest is then the only check, before EOF).
    fn servable(&self, s: &Shared, start: u64, end: u64) -> bool {
        if self.outboard.get().is_some() {
            s.verified.covers(start, end)
        } else {
            s.received.covers(start, end)
        }
    }

    /// Read `[start, start + len)`, which must have arrived.
    pub(crate) fn read(&self, start: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.file.read(start, len)
    }

    /// `[start, start + len)` if it arrived and can be read without waiting for the disk
    /// (it is in the page cache, as bytes just written are); `None` means "wait for it, or
    /// read it, on a thread that may block".
    pub(crate) fn read_now(&self, start: u64, len: usize) -> Option<std::io::Result<Vec<u8>>> {
        let s = self.lock();
        if s.phase != Phase::Filling && s.phase != Phase::Verified
            || !self.servable(&s, start, start + len as u64)
        {
            return None;
        }
        drop(s);
        self.file.read_nowait(start, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_see_bytes_and_failures() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let spill = std::sync::Arc::new(
            Spill::create(dir.path(), Pin::new(5000, blake3::hash(&data))).unwrap(),
        );
        let s2 = std::sync::Arc::clone(&spill);
        let waiter = std::thread::spawn(move || s2.wait_for(1000, 3000, Duration::from_secs(600)));
        spill.store(0, &data[..2000]).unwrap();
        spill.store(2000, &data[2000..]).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(spill.read(1000, 2000).unwrap(), &data[1000..3000]);
        assert_eq!(spill.finish("up"), Ok(()));
        assert_eq!(spill.phase(), Phase::Verified);

        let spill = Spill::create(dir.path(), Pin::new(5000, blake3::hash(b"other"))).unwrap();
        spill.store(0, &data).unwrap();
        let why = spill.finish("up").unwrap_err();
        assert!(why.contains("does not match the ticket"), "{why}");
        assert_eq!(
            spill.wait_for(0, 10, Duration::from_secs(600)),
            Err(why),
            "a failed relay serves nothing, even bytes it has"
        );
    }
}
