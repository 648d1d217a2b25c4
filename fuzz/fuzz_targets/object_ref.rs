//! A pass-through ref (`ferry::passthrough::ObjectRef`) as an intermediate or final cell reads
//! it out of an application message: the payload as the cell receives it (`Message::value`),
//! then `ObjectRef::from_value`, which checks every field.
//!
//! Input: a selector byte (bit 0: the payload's encoding), then the payload.
//!
//! Beyond "no crash": an accepted ref is forwarded unchanged — written into a message, sent
//! and read again at the next hop, it is the same ref — and the ref it names is within the
//! documented limits (a valid FQCN, a ref id of 1 to 256 bytes).
#![no_main]

use bytes::Bytes;
use ferry::passthrough::ObjectRef;
use ferry_cellnet::{Headers, Message, Payload};
use ferry_fuzz::{within, Limit, DECODER_FIXED, VALUE_TREE_PER_BYTE};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // the payload's value tree; the ref's strings, and the forwarded copy's encoding and tree
    per_byte: VALUE_TREE_PER_BYTE + 8,
    fixed: DECODER_FIXED,
};

/// A message carrying `v` as the next cell receives it.
fn sent(v: ferry_cellnet::rmpv::Value) -> Message {
    let payload = Payload::Value(v);
    let encoding = payload.encoding();
    let bytes: Vec<u8> = ferry_cellnet::fobs::concat(&payload.into_segments()).to_vec();
    Message {
        headers: Headers::new(),
        payload: Payload::from_wire(Some(encoding), Bytes::from(bytes)).expect("own payload"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let encoding = if sel & 1 == 0 { "fobs" } else { "bytes" };
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
        let Ok(r) = ObjectRef::from_value(&v) else {
            return;
        };
        assert!(
            ferry_core::validate_fqcn(&r.source).is_ok(),
            "{:?}",
            r.source
        );
        let rid = r.ref_id.as_str();
        assert!(
            !rid.is_empty() && rid.len() <= 256,
            "ref id of {}",
            rid.len()
        );
        let forwarded = sent(r.to_value()).value().expect("a forwarded ref decodes");
        let again = ObjectRef::from_value(&forwarded).expect("a forwarded ref reads back");
        assert_eq!(again, r, "a forwarded ref changed");
    });
});
