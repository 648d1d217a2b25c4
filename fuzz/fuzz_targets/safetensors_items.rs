//! safetensors from a peer: the one-tensor item blobs of a tensor-dict download, checked and
//! assembled by `TensorDictConsumer` (names, dtypes, shapes, offsets, aliases), and a whole
//! safetensors buffer parsed by `TensorDict::from_safetensors` (what must re-serialize and parse
//! to the same dict).
//!
//! Input: a selector byte; mode 0 parses the rest as one safetensors buffer, other modes read
//! it as records (see `ferry_fuzz::records`), one item blob each.
#![no_main]

use bytes::Bytes;
use ferry_fuzz::records::Records;
use ferry_fuzz::{items, within, Limit, DECODER_FIXED};
use ferry_objects::{TensorDict, TensorDictConsumer};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // safetensors' JSON header as serde values (a few dozen bytes per input byte), the item
    // copies and the assembled dict
    per_byte: 64,
    fixed: DECODER_FIXED,
};

fuzz_target!(|data: &[u8]| {
    within(LIMIT, data.len(), || {
        let mut rd = Records::new(data);
        let sel = rd.byte();
        if sel & 0x80 == 0 {
            let rest = &data[1.min(data.len())..];
            if let Ok(dict) = TensorDict::from_safetensors(Bytes::copy_from_slice(rest)) {
                let again = dict.to_safetensors().expect("a parsed dict serializes");
                let back = TensorDict::from_safetensors(Bytes::from(again)).expect("re-parses");
                assert!(back == dict, "safetensors round trip");
            }
        } else {
            let mut c = TensorDictConsumer::new();
            items::feed(&mut c, sel, &mut rd);
            if let Some(dict) = c.take() {
                assert!(dict.len() <= data.len());
            }
        }
    })
});
