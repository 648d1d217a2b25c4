//! A FOBS payload: the section container (`Fobs::parse`), its main msgpack body and datum
//! sections put back where their `DatumRef`s point (`Fobs::to_value`). What decodes must
//! re-encode and decode to the same value.
#![no_main]

use bytes::Bytes;
use ferry_cellnet::{msgpack, Fobs};
use ferry_fuzz::{within, Limit, DECODER_FIXED, VALUE_TREE_PER_BYTE};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // the value tree (datums resolved once each), its re-encoding and second decoding
    per_byte: 2 * VALUE_TREE_PER_BYTE + 4,
    fixed: DECODER_FIXED,
};

fuzz_target!(|data: &[u8]| {
    within(LIMIT, data.len(), || {
        let Ok(fobs) = Fobs::parse(Bytes::copy_from_slice(data)) else {
            return;
        };
        assert_eq!(
            fobs.encoded_len(),
            data.len(),
            "every section accounted for"
        );
        let Ok(v) = fobs.to_value() else { return };
        let enc = msgpack::encode_value(v.clone());
        let wire = ferry_cellnet::fobs::concat(&Fobs::from_value(v).into_segments());
        let again = Fobs::parse(wire).expect("re-encoded FOBS parses");
        let v2 = again.to_value().expect("re-encoded FOBS decodes");
        assert_eq!(msgpack::encode_value(v2), enc, "FOBS round trip");
    })
});
