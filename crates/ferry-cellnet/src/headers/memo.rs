//! A connection's memo of the last header blocks it decoded, so that decoding the next one
//! checks only the values that changed.
//!
//! The requests (or replies) one connection carries differ from one to the next only in a
//! few values (`cn__req_id`, `cn__send_time`, the times in `cn__route`, ...); their keys,
//! their order and the byte length of the block mostly stay the same. A full scan
//! ([`super::scan`]) reads every key and checks every value; with the memo, a block of the
//! same length as one kept is compared with it, only the values whose bytes differ are
//! checked again, and the entries are those of the kept block.
//!
//! The result is always exactly what a full scan of the block gives (the same entries, value
//! ranges and slots, the same error): the memo is used only when that follows from the bytes
//! alone (see `Kept::reuse`), and anything else falls back to the full scan.

use bytes::Bytes;

use super::known_keys::Key;
use super::slots::Slots;
use super::{scan, value, Entry, Headers};
use crate::error::CellnetError;

/// Blocks longer than this are decoded without the memo and not kept: a connection keeps at
/// most [`WAYS`] times this much (a CellNet request's block is a few hundred bytes).
const MAX_MEMO_BLOCK: usize = 4096;

/// Blocks with more entries than this are not kept: a peer sending a block of thousands of
/// one-byte keys must not make each connection keep a table of thousands of entries
/// (CellNet messages have about twenty).
const MAX_MEMO_ENTRIES: usize = 64;

/// How many blocks a connection keeps: one connection often carries two kinds of message
/// (requests one way and the replies to its own requests, or requests on two topics), whose
/// blocks would otherwise replace each other at every message. (Two: the choice of which to
/// use or replace is `DecodeMemo::decode_noting_use`'s.)
const WAYS: usize = 2;

/// The last good header blocks a connection decoded, of different lengths (each of at most
/// [`MAX_MEMO_BLOCK`] bytes and [`MAX_MEMO_ENTRIES`] entries), with what scanning them gave.
/// One per connection, owned by its read loop.
#[derive(Default)]
pub(crate) struct DecodeMemo {
    kept: [Kept; WAYS],
    /// Which of `kept` (0 or 1) was used or replaced last: a new block replaces the other one.
    last: usize,
}

/// One block a [`DecodeMemo`] keeps.
#[derive(Default)]
struct Kept {
    /// The block, byte for byte (empty: nothing kept). Its own copy, not a [`Bytes`] of the
    /// frame, so that the memo pins no frame buffer; values that changed in a block decoded
    /// through it are copied in, so it is always the last block of its length decoded.
    block: Vec<u8>,
    /// Its entries: each key and where its value lies. The values' ranges ascend; what lies
    /// outside them is the map's header and the keys.
    entries: Vec<(Key, (u32, u32))>,
    /// Where its [`super::Slot`] keys are.
    slots: Slots,
}

impl DecodeMemo {
    /// Decode a header block as [`Headers::decode_bytes`] does (the same map, the same
    /// error), with the memo when the block is like one kept, and keep it.
    pub fn decode(&mut self, block: Bytes) -> Result<Headers, CellnetError> {
        self.decode_noting_use(block).0
    }

    /// [`DecodeMemo::decode`], and whether the memo was used (for the tests).
    fn decode_noting_use(&mut self, block: Bytes) -> (Result<Headers, CellnetError>, bool) {
        // the kept block of this length (kept blocks' lengths differ), else the one to replace:
        // of two, if the last one used is not of this length the other one is either
        let mut way = self.last;
        if self.kept[way].block.len() != block.len() {
            way = 1 - way;
        }
        let kept = &mut self.kept[way];
        if kept.reuse(&block) {
            self.last = way;
            let entries = kept
                .entries
                .iter()
                .map(|(k, (a, b))| (k.clone(), Entry::received(*a as usize, *b as usize)))
                .collect();
            let slots = kept.slots;
            return (
                Ok(Headers {
                    entries,
                    block,
                    slots,
                }),
                true,
            );
        }
        let (entries, slots) = match scan(&block) {
            Ok(scanned) => scanned,
            Err(e) => return (Err(e), false),
        };
        if !block.is_empty() && block.len() <= MAX_MEMO_BLOCK && entries.len() <= MAX_MEMO_ENTRIES {
            self.last = way;
            kept.block.clear();
            kept.block.extend_from_slice(&block);
            kept.entries.clear();
            kept.entries
                .extend(entries.iter().map(|(k, e)| (k.clone(), e.raw)));
            kept.slots = slots;
        }
        let h = Headers {
            entries,
            block,
            slots,
        };
        (Ok(h), false)
    }
}

impl Kept {
    /// True if a full scan of `new` would give the kept entries and slots; the kept block
    /// is then `new`. False if that does not follow from the bytes (what is kept is still a
    /// good block and what scanning it gives, possibly with some of `new`'s values copied in).
    ///
    /// Why it is exact: the kept block scanned without error, and `new` has its length.
    /// If `new` differs only inside values, a scan of `new` reads the same map header and the
    /// same keys at the same places (the same known-key lookups, the same UTF-8 check of the
    /// others, the same slots), and every value whose bytes are the same is skipped as before
    /// (a skip reads only the bytes of its value). A value whose bytes differ is skipped again
    /// here, within its old range: if that succeeds and ends exactly at the old end, the scan
    /// of `new` reads it the same way (it would read the same bytes, and no further) and goes
    /// on at the same place. No trailing bytes, as the lengths are equal. A difference in the
    /// map header or a key, or a value that fails or ends elsewhere, is left to the full scan.
    fn reuse(&mut self, new: &[u8]) -> bool {
        if self.block.is_empty() || new.len() != self.block.len() {
            return false;
        }
        let mut from = 0;
        let mut at = 0;
        while let Some(p) = first_diff(&self.block, new, from) {
            // the entry whose value holds byte `p`, if any: the first not ending at or before it
            while self
                .entries
                .get(at)
                .is_some_and(|(_, (_, b))| *b as usize <= p)
            {
                at += 1;
            }
            let Some(&(_, (a, b))) = self.entries.get(at) else {
                return false;
            };
            let (a, b) = (a as usize, b as usize);
            if p < a {
                // in the map header or a key
                return false;
            }
            let mut rd = &new[a..b];
            if value::skip(&mut rd).is_err() || !rd.is_empty() {
                return false;
            }
            // the kept block stays a good one: the new value fills the old one's place
            self.block[a..b].copy_from_slice(&new[a..b]);
            from = b;
            at += 1;
        }
        true
    }
}

/// The first index at or after `from` at which `a` and `b` (of equal length) differ.
///
/// Compares 32 bytes at a time (inlined vector compares, no `memcmp` call), then 8, and
/// finds the byte in the differing word by its trailing zeros.
fn first_diff(a: &[u8], b: &[u8], from: usize) -> Option<usize> {
    fn chunk<const N: usize>(s: &[u8], i: usize) -> Option<&[u8; N]> {
        s.get(i..)?.first_chunk::<N>()
    }
    let mut i = from;
    while let (Some(x), Some(y)) = (chunk::<32>(a, i), chunk::<32>(b, i)) {
        if x != y {
            break;
        }
        i += 32;
    }
    while let (Some(x), Some(y)) = (chunk::<8>(a, i), chunk::<8>(b, i)) {
        let d = u64::from_le_bytes(*x) ^ u64::from_le_bytes(*y);
        if d != 0 {
            return Some(i + d.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    let (a, b) = (a.get(i..)?, b.get(i..)?);
    a.iter().zip(b).position(|(x, y)| x != y).map(|p| i + p)
}

#[cfg(test)]
mod tests;
