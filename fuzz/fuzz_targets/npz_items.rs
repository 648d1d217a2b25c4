//! NumPy from a peer: the one-array `.npz` item blobs of an array-dict download (zip entries
//! with `.npy` headers), checked and assembled by `NpzDictConsumer`, and a whole `.npz` or `.npy`
//! buffer parsed by `decode_npz` / `NdArray::from_npy` (what must re-encode and parse to the same
//! arrays).
//!
//! Input: a selector byte; mode 0 parses the rest as one `.npz`, mode 1 as one `.npy`, other
//! modes read it as records (see `ferry_fuzz::records`), one item blob each.
#![no_main]

use bytes::Bytes;
use ferry_fuzz::records::Records;
use ferry_fuzz::{items, within, Limit, DECODER_FIXED};
use ferry_objects::numpy::{decode_npz, encode_npz};
use ferry_objects::{NdArray, NpzDictConsumer};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    per_byte: 32,
    fixed: DECODER_FIXED,
};

fuzz_target!(|data: &[u8]| {
    within(LIMIT, data.len(), || {
        let mut rd = Records::new(data);
        let sel = rd.byte();
        let rest = Bytes::copy_from_slice(&data[1.min(data.len())..]);
        match sel >> 6 {
            0 => {
                if let Ok(arrays) = decode_npz(&rest) {
                    let named: Vec<(&str, &NdArray)> =
                        arrays.iter().map(|(n, a)| (n.as_str(), a)).collect();
                    let again = encode_npz(named.iter().copied()).expect("parsed arrays encode");
                    let back = decode_npz(&Bytes::from(again)).expect("re-encoded npz parses");
                    assert_eq!(back, arrays, "npz round trip");
                }
            }
            1 => {
                if let Ok(a) = NdArray::from_npy(rest) {
                    let back = NdArray::from_npy(Bytes::from(a.to_npy())).expect("re-parses");
                    assert_eq!(back, a, "npy round trip");
                }
            }
            _ => {
                let mut c = NpzDictConsumer::new();
                items::feed(&mut c, sel, &mut rd);
                if let Some(dict) = c.take() {
                    assert!(dict.len() <= data.len());
                }
            }
        }
    })
});
