//! A frame's msgpack header map (`Headers::decode`, at most 65 535 bytes on the wire). What
//! decodes must encode and decode to the same map, and every value of it must be made within
//! the budget.
#![no_main]

use ferry_cellnet::headers::keys;
use ferry_cellnet::{Headers, Message};
use ferry_fuzz::{within, Limit, DECODER_FIXED, VALUE_TREE_PER_BYTE};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    per_byte: VALUE_TREE_PER_BYTE,
    fixed: DECODER_FIXED,
};

fuzz_target!(|data: &[u8]| {
    if data.len() > 65_535 {
        return; // the frame decoder refuses larger header maps before they are decoded
    }
    // the budget covers the decoding of what the peer sent, and making every value of it
    // (a decoded map checks its block and makes a value when asked: as a handler would, all
    // of them are asked for here); the round trip is ours
    let Ok(h) = within(LIMIT, data.len(), || {
        let h = Headers::decode(data)?;
        for (_, v) in h.iter() {
            std::hint::black_box(v);
        }
        Ok::<_, ferry_cellnet::CellnetError>(h)
    }) else {
        return;
    };
    // the keys a message's accessors read through their slots: what a walk by key reads
    let m = Message {
        headers: h.clone(),
        payload: Default::default(),
    };
    assert_eq!(m.origin(), h.get_str(keys::ORIGIN), "origin slot");
    assert_eq!(m.channel(), h.get_str(keys::CHANNEL), "channel slot");
    assert_eq!(m.topic(), h.get_str(keys::TOPIC), "topic slot");
    assert_eq!(m.error_text(), h.get_str(keys::ERROR), "error slot");
    let enc = h.encode();
    let again = Headers::decode(&enc).expect("an encoded header map decodes");
    // compare encodings, not values: a NaN float is not equal to itself
    assert_eq!(again.encode(), enc, "header round trip");
    assert_eq!(again.len(), h.len());
});
