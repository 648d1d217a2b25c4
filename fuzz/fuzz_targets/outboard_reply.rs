//! What a relay receives from its upstream before it serves anything: the outboard reply (the
//! BLAKE3 chaining values of the object's 1 MiB groups, `{"size", "group", "cvs"}`), as the
//! relay reads it (`Message::value`, then `Outboard::verified` against the ticket's size and
//! root), and the per-group checks it then runs on the bytes that arrive.
//!
//! Input: a selector byte — bits 0–2: the object (one of eight real objects of 0 bytes to a
//! little over 3 MiB, whose root the ticket pins); bit 3: pin another root (every outboard must
//! then be refused); bit 4: the payload's encoding; bits 5–7: the group checked — then, when
//! the selector has bits 0 and 7 set, an 8-byte size the ticket claims instead (with a root no
//! outboard gives); then 8 bytes: a group index the checks are asked about; the rest is the
//! reply payload.
//!
//! Beyond "no crash": an accepted outboard has the pinned size and root; it accepts each real
//! group and refuses the same group's length of other bytes; a group index beyond the object
//! is refused, whatever its value.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use ferry::relay::outboard::{Outboard, GROUP};
use ferry_cellnet::{Headers, Message, Payload};
use ferry_fuzz::{within, Limit, DECODER_FIXED, VALUE_TREE_PER_BYTE};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // the reply's value tree; the 32-byte chaining values kept (one per 32 input bytes)
    per_byte: VALUE_TREE_PER_BYTE + 2,
    fixed: DECODER_FIXED,
};

/// Sizes of the real objects: one group or less (its value is the root), group boundaries,
/// several groups with a short last one.
const SIZES: [u64; 8] = [
    0,
    1,
    1024,
    GROUP - 1,
    GROUP,
    GROUP + 1,
    2 * GROUP,
    3 * GROUP + 5,
];

/// The largest object's bytes plus one (a shifted window of it is "other bytes" of the same
/// length), and each object's root.
struct Objects {
    data: Vec<u8>,
    roots: Vec<blake3::Hash>,
}

fn objects() -> &'static Objects {
    static O: OnceLock<Objects> = OnceLock::new();
    O.get_or_init(|| {
        let n = SIZES[SIZES.len() - 1] as usize + 1;
        let data: Vec<u8> = (0..n).map(|i| (i * 13 + i / 4099) as u8).collect();
        let roots = SIZES
            .iter()
            .map(|&s| blake3::hash(&data[..s as usize]))
            .collect();
        Objects { data, roots }
    })
}

fn u64_of(b: &[u8]) -> (u64, &[u8]) {
    let n = b.len().min(8);
    let mut a = [0u8; 8];
    a[..n].copy_from_slice(&b[..n]);
    (u64::from_be_bytes(a), &b[n..])
}

fuzz_target!(|data: &[u8]| {
    let objs = objects();
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // `real`: the pin is a real object's, whose bytes the checks below can use
    let (size, root, real, rest) = if sel & 0x81 == 0x81 {
        let (size, rest) = u64_of(rest);
        (size, blake3::hash(&size.to_be_bytes()), false, rest)
    } else {
        let i = usize::from(sel & 7);
        if sel & 8 == 0 {
            (SIZES[i], objs.roots[i], true, rest)
        } else {
            (SIZES[i], blake3::hash(b"another object"), false, rest)
        }
    };
    let (probe, body) = u64_of(rest);
    let encoding = if sel & 0x10 == 0 { "fobs" } else { "bytes" };
    within(LIMIT, data.len(), || {
        let Ok(payload) = Payload::from_wire(Some(encoding), Bytes::copy_from_slice(body)) else {
            return;
        };
        let msg = Message {
            headers: Headers::new(),
            payload,
        };
        let Ok(v) = msg.value() else {
            return;
        };
        let Ok(o) = Outboard::verified(&v, size, &root) else {
            return;
        };
        assert_eq!((o.size(), o.root()), (size, root), "accepted as pinned");
        if !real {
            // a preimage of a root no object has: nothing to check it against
            return;
        }
        let groups = size.div_ceil(GROUP).max(1);
        let g = u64::from(sel >> 5) % groups;
        let (s, e) = o.range(g);
        let (s, e) = (s as usize, e as usize);
        assert!(o.check(g, &objs.data[s..e]), "group {g} of {size} refused");
        if e > s {
            assert!(
                !o.check(g, &objs.data[s + 1..e + 1]),
                "group {g} of {size} accepts other bytes"
            );
        }
        let (ps, pe) = (probe.min(size), probe.saturating_add(GROUP).min(size));
        let _ = o.groups_of(ps, pe);
        if probe >= groups {
            assert!(!o.check(probe, &objs.data[s..e]), "group {probe} is beyond");
        }
        let _ = o.range(probe);
    });
});
