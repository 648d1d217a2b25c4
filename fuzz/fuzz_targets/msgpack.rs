//! msgpack values: ferry-cellnet's bounded scanner and `decode_value` (what every FOBS main
//! body and header map goes through), and the zero-copy writer on what was decoded.
#![no_main]

use ferry_cellnet::msgpack::{self, MAX_VALUE_NODES};
use ferry_fuzz::{within, Limit, DECODER_FIXED, VALUE_TREE_PER_BYTE};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    per_byte: VALUE_TREE_PER_BYTE,
    fixed: DECODER_FIXED,
};

fuzz_target!(|data: &[u8]| {
    // the budget covers the decoding of what the peer sent; the round trip is ours
    let (scanned, decoded) = within(LIMIT, data.len(), || {
        (
            msgpack::scan(data, MAX_VALUE_NODES),
            msgpack::decode_value(data, MAX_VALUE_NODES),
        )
    });
    {
        match (&scanned, &decoded) {
            (Ok((used, nodes)), Ok(_)) => {
                assert_eq!(*used, data.len());
                assert!(*nodes >= 1 && *nodes <= data.len());
            }
            (Err(_), Ok(_)) => panic!("decode_value accepted what scan refused"),
            _ => {}
        }
        if let Ok(v) = decoded {
            let enc = msgpack::encode_value(v);
            let again =
                msgpack::decode_value(&enc, MAX_VALUE_NODES).expect("re-encoded value decodes");
            assert_eq!(msgpack::encode_value(again), enc, "msgpack round trip");
        }
    }
});
