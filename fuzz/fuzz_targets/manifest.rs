//! A set manifest as a sender serves it (`Manifest::decode`): the msgpack list of a set's
//! members that a receiver of a `kind=set` ticket fetches, verifies against the ticket and then
//! writes below its output directory. What decodes must encode and decode to itself, every
//! member must give a ticket that both written forms carry unchanged, and every member's path
//! must stay below the output directory.
#![no_main]

use std::path::{Component, Path};

use ferry::manifest::Manifest;
use ferry::ticket::{Kind, Ticket};
use ferry_fuzz::{within, Limit, DECODER_FIXED};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // the entries' strings (one copy of the input) in `Entry` structs of about 150 bytes, one
    // per few input bytes, in a `Vec` that may have doubled its capacity, and the check's set
    // of names
    per_byte: 128,
    fixed: DECODER_FIXED,
};

fuzz_target!(|data: &[u8]| {
    // the budget covers the decoding and checking of what the sender served; the rest is ours
    let Ok(m) = within(LIMIT, data.len(), || Manifest::decode(data)) else {
        return;
    };
    let again = Manifest::decode(&m.encode()).expect("an encoded manifest decodes");
    assert_eq!(again, m, "manifest round trip");

    let set = Ticket {
        tls: true,
        addr: "sender.example:7051".into(),
        source: "server".into(),
        ref_id: "Rset".into(),
        kind: Kind::Set,
        name: "set".into(),
        size: data.len() as u64,
        blake3: blake3::hash(data).to_hex().to_string(),
    };
    let out = Path::new("/out");
    for (i, e) in m.entries.iter().enumerate() {
        let t = m
            .member_ticket(&set, i)
            .unwrap_or_else(|| panic!("entry {i} ({:?}) was accepted but has no ticket", e.name));
        assert_ne!(t.kind, Kind::Set, "a set does not nest");
        for written in [t.to_compact(), t.to_url()] {
            let back: Ticket = written.parse().unwrap_or_else(|err| {
                panic!("member ticket {written:?} of an accepted manifest does not parse: {err}")
            });
            assert_eq!(back, t, "member ticket round trip");
        }
        let dest = out.join(&t.name);
        assert!(
            dest.starts_with(out)
                && dest
                    .components()
                    .skip(2)
                    .all(|c| matches!(c, Component::Normal(_))),
            "member {:?} escapes the output directory",
            t.name
        );
        let _ = e.modified();
    }
});
