//! [`StreamVerifier`]: BLAKE3 of a byte stream whose ranges arrive in any order.
//!
//! BLAKE3 hashes 1 KiB leaves ("chunks") into a left-balanced binary tree whose nodes are the
//! aligned power-of-two ranges of the input. A range aligned to its own power-of-two size and
//! not containing the last leaf is therefore a node, and its chaining value can be computed
//! alone (`blake3::hazmat`). The verifier keeps:
//!
//! - `stack`: the chaining values of the contiguous prefix `[0, frontier)`, merged the way
//!   BLAKE3's own incremental hasher merges them (one per set bit of `frontier / 1 KiB`);
//! - `ahead`: chaining values of subtrees that arrived beyond the frontier, 32 bytes each;
//! - `partial`: 1 KiB leaves cut by a range edge, until the rest of the leaf arrives;
//! - the last leaf (which may be short) apart: it is the right edge of every level, so it is
//!   merged last, into the root.
//!
//! Every received byte is hashed once, as it arrives; memory is a few KiB per range that is
//! not yet contiguous with the prefix, whatever the chunk size.

use crate::ranges::RangeSet;
use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use blake3::{Hasher, CHUNK_LEN};
use ferry_core::ConsumeError;
use std::collections::BTreeMap;

const LEAF: u64 = CHUNK_LEN as u64;

/// A 1 KiB leaf received in part.
#[derive(Debug)]
struct Partial {
    /// The leaf's bytes (its full length; unreceived bytes are zero until they arrive).
    buf: Vec<u8>,
    /// Bytes of `buf` received (each at most once: the verifier drops duplicates first).
    filled: usize,
}

/// Computes the BLAKE3 digest of an object of known size from ranges received in any order.
///
/// ```
/// use ferry_objects::verify::StreamVerifier;
/// let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
/// let mut v = StreamVerifier::new(data.len() as u64);
/// v.update(3000, &data[3000..]).unwrap();
/// v.update(0, &data[..3000]).unwrap();
/// assert_eq!(v.finalize().unwrap(), blake3::hash(&data));
/// ```
#[derive(Debug)]
pub struct StreamVerifier {
    size: u64,
    /// Start of the last leaf (0 for objects of at most one leaf).
    last_start: u64,
    /// Which bytes arrived: duplicates are ignored, completeness is checked against it.
    received: RangeSet,
    /// `[0, frontier)` is folded into `stack`; a multiple of the leaf size, at most
    /// `last_start`.
    frontier: u64,
    stack: Vec<ChainingValue>,
    /// Subtrees beyond the frontier: start -> (length, chaining value).
    ahead: BTreeMap<u64, (u64, ChainingValue)>,
    /// Leaves received in part, by start.
    partial: BTreeMap<u64, Partial>,
    /// The last leaf, once whole: its chaining value, or (an object of one leaf) its bytes,
    /// which are hashed as the root.
    last: Option<LastLeaf>,
}

#[derive(Debug)]
enum LastLeaf {
    Cv(ChainingValue),
    Root(blake3::Hash),
}

impl StreamVerifier {
    /// A verifier for an object of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            last_start: size.saturating_sub(1) / LEAF * LEAF,
            received: RangeSet::new(),
            frontier: 0,
            stack: Vec::new(),
            ahead: BTreeMap::new(),
            partial: BTreeMap::new(),
            last: None,
        }
    }

    /// The object's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes received so far (each counted once).
    pub fn received(&self) -> u64 {
        self.received.covered()
    }

    /// Length of the contiguous prefix received.
    pub fn prefix_len(&self) -> u64 {
        self.received.prefix_len()
    }

    /// Bytes the verifier holds for ranges not yet contiguous with the prefix (partial leaves
    /// and 32-byte chaining values): its memory beyond a fixed few hundred bytes.
    pub fn held_bytes(&self) -> usize {
        self.partial.values().map(|p| p.buf.len()).sum::<usize>()
            + self.ahead.len() * std::mem::size_of::<(u64, u64, ChainingValue)>()
    }

    /// Hash `data`, which starts at `offset`. Bytes that already arrived are ignored (the first
    /// copy counts, as in the file the consumers write). A byte at or beyond [`size`](Self::size)
    /// is an [`Integrity`](ConsumeError::Integrity) error and nothing of `data` is taken.
    pub fn update(&mut self, offset: u64, data: &[u8]) -> Result<(), ConsumeError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                ConsumeError::Integrity(format!(
                    "the sender sent bytes [{offset}, {}) of an object pinned at {} bytes",
                    offset.saturating_add(data.len() as u64),
                    self.size
                ))
            })?;
        for (s, e) in self.received.gaps(offset, end) {
            let piece = &data[(s - offset) as usize..(e - offset) as usize];
            self.absorb(s, piece);
        }
        self.received.insert(offset, end);
        self.advance();
        Ok(())
    }

    /// The digest, once every byte arrived; an [`Integrity`](ConsumeError::Integrity) error
    /// naming what is missing otherwise.
    pub fn finalize(&self) -> Result<blake3::Hash, ConsumeError> {
        if !self.received.is_exactly(self.size) {
            return Err(ConsumeError::Integrity(format!(
                "received {} of the {} bytes pinned (missing ranges {:?})",
                self.received.covered(),
                self.size,
                self.received.gaps(0, self.size)
            )));
        }
        if self.size == 0 {
            return Ok(blake3::hash(b""));
        }
        let inconsistent = || ConsumeError::Other("stream verifier state is inconsistent".into());
        match &self.last {
            Some(LastLeaf::Root(h)) => Ok(*h),
            Some(LastLeaf::Cv(last)) if self.frontier == self.last_start => {
                let mut acc = *last;
                for i in (1..self.stack.len()).rev() {
                    acc = merge_subtrees_non_root(&self.stack[i], &acc, Mode::Hash);
                }
                let first = self.stack.first().ok_or_else(inconsistent)?;
                Ok(merge_subtrees_root(first, &acc, Mode::Hash))
            }
            _ => Err(inconsistent()),
        }
    }

    /// Check the digest against `want`: an [`Integrity`](ConsumeError::Integrity) error naming
    /// both digests when they differ.
    pub fn check(&self, want: &blake3::Hash) -> Result<(), ConsumeError> {
        let got = self.finalize()?;
        if got != *want {
            return Err(ConsumeError::Integrity(format!(
                "BLAKE3 digest mismatch: expected {}, the {} bytes received hash to {}",
                want.to_hex(),
                self.size,
                got.to_hex()
            )));
        }
        Ok(())
    }

    /// Hash new bytes `[s, s + data.len())`.
    fn absorb(&mut self, s: u64, data: &[u8]) {
        let e = s + data.len() as u64;
        // The last leaf is kept apart.
        let body_end = e.min(self.last_start);
        if s < body_end {
            self.absorb_body(s, &data[..(body_end - s) as usize]);
        }
        if e > self.last_start {
            let from = s.max(self.last_start);
            let last = self.last_start;
            self.fill_leaf(last, from, &data[(from - s) as usize..]);
        }
    }

    /// Hash new bytes that lie before the last leaf.
    fn absorb_body(&mut self, s: u64, data: &[u8]) {
        let e = s + data.len() as u64;
        let a = s.next_multiple_of(LEAF).min(e);
        let b = (e / LEAF * LEAF).max(a);
        if s < a {
            self.fill_leaf(s / LEAF * LEAF, s, &data[..(a - s) as usize]);
        }
        let mut p = a;
        while p < b {
            let len = subtree_len(p, b - p);
            let off = (p - s) as usize;
            let cv = Hasher::new()
                .set_input_offset(p)
                .update(&data[off..off + len as usize])
                .finalize_non_root();
            self.ahead.insert(p, (len, cv));
            p += len;
        }
        if b < e && a < e {
            self.fill_leaf(b, b, &data[(b - s) as usize..]);
        }
    }

    /// Put `data` (at `at`) into the leaf starting at `leaf`; hash the leaf once it is whole.
    fn fill_leaf(&mut self, leaf: u64, at: u64, data: &[u8]) {
        let leaf_len = (self.size - leaf).min(LEAF) as usize;
        let p = self.partial.entry(leaf).or_insert_with(|| Partial {
            buf: vec![0; leaf_len],
            filled: 0,
        });
        let off = (at - leaf) as usize;
        p.buf[off..off + data.len()].copy_from_slice(data);
        p.filled += data.len();
        if p.filled < leaf_len {
            return;
        }
        let Some(p) = self.partial.remove(&leaf) else {
            return;
        };
        if leaf == self.last_start {
            self.last = Some(if leaf == 0 {
                LastLeaf::Root(blake3::hash(&p.buf))
            } else {
                LastLeaf::Cv(
                    Hasher::new()
                        .set_input_offset(leaf)
                        .update(&p.buf)
                        .finalize_non_root(),
                )
            });
        } else {
            let cv = Hasher::new()
                .set_input_offset(leaf)
                .update(&p.buf)
                .finalize_non_root();
            self.ahead.insert(leaf, (LEAF, cv));
        }
    }

    /// Fold the subtrees that continue the prefix into the stack.
    fn advance(&mut self) {
        while let Some((len, cv)) = self.ahead.remove(&self.frontier) {
            self.stack.push(cv);
            self.frontier += len;
            // More input always follows (the last leaf is never pushed), so completed subtrees
            // can be merged now, as BLAKE3's incremental hasher does.
            let leaves = self.frontier / LEAF;
            while self.stack.len() > leaves.count_ones() as usize {
                let (Some(right), Some(left)) = (self.stack.pop(), self.stack.pop()) else {
                    break;
                };
                self.stack
                    .push(merge_subtrees_non_root(&left, &right, Mode::Hash));
            }
        }
    }
}

/// The largest subtree starting at `p` (a multiple of the leaf size) that fits in `room`
/// bytes (at least one leaf): a power of two number of leaves that divides `p / LEAF`.
fn subtree_len(p: u64, room: u64) -> u64 {
    let fit = 1u64 << (63 - room.leading_zeros());
    let align = if p == 0 {
        u64::MAX
    } else {
        1u64 << p.trailing_zeros()
    };
    fit.min(align)
}
