//! A ticket pasted by a user (`Ticket::from_str`), in either written form: what parses must
//! print and parse to itself in both forms.
//!
//! Input: UTF-8 text is the ticket as pasted. An input that starts with a NUL byte (no pasted
//! ticket does) is the binary layout of a compact ticket without its checksum: the target
//! appends the checksum and writes `ferry1` + base32, so that mutations reach the field decoding
//! behind the checksum (a mutated `ferry1...` string almost never passes it).
#![no_main]

use ferry::ticket::{compact, Ticket};
use ferry_fuzz::{within, Limit, DECODER_FIXED};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // the decoded fields: a few copies of the text at most
    per_byte: 8,
    fixed: DECODER_FIXED,
};

/// The compact ticket whose checksummed payload is `payload` (the layout of
/// `ferry::ticket::compact`: the first 4 bytes of BLAKE3("ferry-ticket/1" || payload) follow it).
fn compact_of(payload: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry-ticket/1");
    h.update(payload);
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(&h.finalize().as_bytes()[..4]);
    let body = data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase();
    format!("{}{body}", compact::PREFIX)
}

fuzz_target!(|data: &[u8]| {
    let text = match data.split_first() {
        Some((0, payload)) => compact_of(payload),
        _ => match std::str::from_utf8(data) {
            Ok(s) => s.to_owned(),
            Err(_) => return,
        },
    };
    // the budget covers the parse of what the user pasted; the round trips are ours
    let Ok(t) = within(LIMIT, text.len(), || text.parse::<Ticket>()) else {
        return;
    };
    for written in [t.to_string(), t.to_compact(), t.to_url()] {
        let again: Ticket = written
            .parse()
            .unwrap_or_else(|e| panic!("printed ticket {written:?} does not parse: {e}"));
        assert_eq!(again, t, "ticket round trip through {written:?}");
    }
    assert!(t.to_string().starts_with(compact::PREFIX));
    let _ = (t.url(), t.pin());
});
