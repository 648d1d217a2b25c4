//! A FOBS payload: the section container (`Fobs::parse`), its main msgpack body and datum
//! sections put back where their `DatumRef`s point (`Fobs::to_value`). What decodes must
//! re-encode and decode to the same value.
#![no_main]

use bytes::Bytes;
use ferry_cellnet::{msgpack, Fobs};
use ferry_fuzz::{within, Limit, DECODER_FIXED, VALUE_TREE_PER_BYTE};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // the container (one copy of the input), the value tree, each datum copied into it once
    per_byte: VALUE_TREE_PER_BYTE + 2,
    fixed: DECODER_FIXED,
};

fuzz_target!(|data: &[u8]| {
    // the budget covers the decoding of what the peer sent; the round trip is ours
    let decoded = within(LIMIT, data.len(), || {
        let fobs = Fobs::parse(Bytes::copy_from_slice(data)).ok()?;
        assert_eq!(
            fobs.encoded_len(),
            data.len(),
            "every section accounted for"
        );
        fobs.to_value().ok()
    });
    let Some(v) = decoded else { return };
    let enc = msgpack::encode_value(v.clone());
    let wire = ferry_cellnet::fobs::concat(&Fobs::from_value(v).into_segments());
    let again = Fobs::parse(wire).expect("re-encoded FOBS parses");
    let v2 = again.to_value().expect("re-encoded FOBS decodes");
    assert_eq!(msgpack::encode_value(v2), enc, "FOBS round trip");
});
