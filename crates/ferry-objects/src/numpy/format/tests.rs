//! Tests of the NumPy item format: what NumPy writes is read, what is written is what NumPy
//! writes, and bad input is refused with a clear error, never a panic.

use super::npy::*;
use super::zip::*;
use crate::testutil::pattern;
use bytes::Bytes;

/// `np.savez(s, allow_pickle=False, **{"a.b": np.arange(6, dtype="<f4").reshape(2, 3)})`,
/// written by NumPy 2.4.
const NUMPY_F4: &str = "504b03042d0000000000000021004fe9002affffffffffffffff07001400612e622e6e70790100100098000000000000009800000000000000934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028322c2033292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000000000000803f0000004000004040000080400000a040504b01022d032d0000000000000021004fe9002a9800000098000000070000000000000000000000800100000000612e622e6e7079504b0506000000000100010035000000d10000000000";
/// `np.savez(s, f=np.asfortranarray(np.arange(6, dtype="<i2").reshape(2, 3)))`.
const NUMPY_FORTRAN: &str = "504b03042d00000000000000210068c6180fffffffffffffffff05001400662e6e7079010010008c000000000000008c00000000000000934e554d5059010076007b276465736372273a20273c6932272c2027666f727472616e5f6f72646572273a20547275652c20277368617065273a2028322c2033292c207d20202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000003000100040002000500504b01022d032d00000000000000210068c6180f8c0000008c000000050000000000000000000000800100000000662e6e7079504b0506000000000100010033000000c30000000000";

fn hex(s: &str) -> Bytes {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

fn arr(dtype: &str, shape: &[u64], seed: u64) -> NdArray {
    let n = byte_len(dtype, shape).unwrap() as usize;
    NdArray::new(dtype, shape.to_vec(), pattern(n, seed).into()).unwrap()
}

/// The sample arrays, named, in order (the format's view of a dict).
struct Samples(Vec<(String, NdArray)>);

impl Samples {
    fn iter(&self) -> impl Iterator<Item = (&str, &NdArray)> {
        self.0.iter().map(|(n, a)| (n.as_str(), a))
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

fn sample_dict() -> Samples {
    Samples(
        [
            ("layer0.weight", arr("<f4", &[64, 32], 1)),
            ("layer1.bias", arr("<f8", &[17], 2)),
            ("layer2.index", arr("<i4", &[3, 5, 7], 3)),
            ("mask", arr("|u1", &[1000], 4)),
            ("flag", arr("|b1", &[3], 5)),
            ("scalar", arr("<f8", &[], 6)),
            ("empty", arr("<f2", &[0, 4], 7)),
            ("big_endian", arr(">i8", &[2, 2], 8)),
            ("ünïcode", arr("<U3", &[2], 9)),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect(),
    )
}

#[test]
fn reads_what_numpy_writes() {
    let got = decode_npz(&hex(NUMPY_F4)).unwrap();
    assert_eq!(got.len(), 1);
    let (name, a) = &got[0];
    assert_eq!(name, "a.b");
    assert_eq!(a.dtype(), "<f4");
    assert_eq!(a.shape(), &[2, 3]);
    let want: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    assert_eq!(&a.data()[..], &want[..]);
}

#[test]
fn writes_what_numpy_writes_up_to_header_padding() {
    let a = NdArray::new(
        "<f4",
        vec![2, 3],
        (0..6)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect::<Vec<u8>>()
            .into(),
    )
    .unwrap();
    let ours = encode_npz([("a.b", &a)]).unwrap();
    let numpy = hex(NUMPY_F4);
    // Same local header layout (ZIP64 form, stored, 1980 timestamp, same name)...
    assert_eq!(&ours[..14], &numpy[..14]);
    assert_eq!(&ours[26..30], &numpy[26..30]);
    // ... and the same array.
    assert_eq!(decode_npz(&Bytes::from(ours)).unwrap()[0].1, a);
}

#[test]
fn npy_header_is_aligned_v1() {
    for shape in [vec![], vec![7], vec![2, 3], vec![1; 20]] {
        let h = npy_header("<f4", &shape);
        assert_eq!(&h[..6], NPY_MAGIC);
        assert_eq!(h[6], 1);
        assert_eq!(h.len() % NPY_ALIGN, 0, "{shape:?}");
        assert_eq!(*h.last().unwrap(), b'\n');
        let (end, d, s) = npy_header_parse("x", &h).unwrap();
        assert_eq!((end, d.as_str(), s), (h.len(), "<f4", shape));
    }
}

#[test]
fn npy_round_trip() {
    for (_, a) in sample_dict().iter() {
        assert_eq!(&NdArray::from_npy(a.to_npy().into()).unwrap(), a);
    }
}

#[test]
fn npz_round_trip_one_and_many_entries() {
    let d = sample_dict();
    for (name, a) in d.iter() {
        let blob = Bytes::from(encode_npz([(name, a)]).unwrap());
        let got = decode_npz(&blob).unwrap();
        assert_eq!(got, vec![(name.to_string(), a.clone())]);
    }
    let blob = Bytes::from(encode_npz(d.iter()).unwrap());
    let got = decode_npz(&blob).unwrap();
    assert_eq!(got.len(), d.len());
    for ((n1, a1), (n2, a2)) in got.iter().zip(d.iter()) {
        assert_eq!((n1.as_str(), a1), (n2, a2));
    }
}

#[test]
fn appending_into_a_used_buffer_writes_the_same_archive() {
    let d = sample_dict();
    let whole = encode_npz(d.iter()).unwrap();
    // A recycled buffer: cleared, or still holding bytes before the archive.
    for prefix in [&b""[..], b"earlier bytes"] {
        let mut buf = Vec::with_capacity(8);
        buf.extend_from_slice(prefix);
        encode_npz_into(d.iter(), &mut buf).unwrap();
        assert_eq!(&buf[prefix.len()..], &whole[..], "prefix {prefix:?}");
    }
}

#[test]
fn reads_entries_with_a_data_descriptor() {
    // A streaming zip writer: sizes 0 in the local header, flag bit 3, descriptor after.
    let a = arr("<i2", &[5], 3);
    let npy = a.to_npy();
    let crc = crc32fast::hash(&npy);
    let mut b = Vec::new();
    put32(&mut b, LOCAL_SIG);
    put16(&mut b, 20);
    put16(&mut b, FLAG_DESCRIPTOR);
    put16(&mut b, 0);
    put16(&mut b, 0);
    put16(&mut b, DOS_DATE);
    put32(&mut b, 0);
    put32(&mut b, 0);
    put32(&mut b, 0);
    put16(&mut b, 5);
    put16(&mut b, 0);
    b.extend_from_slice(b"x.npy");
    b.extend_from_slice(&npy);
    put32(&mut b, DESCRIPTOR_SIG);
    put32(&mut b, crc);
    put32(&mut b, npy.len() as u32);
    put32(&mut b, npy.len() as u32);
    put32(&mut b, EOCD_SIG);
    b.extend_from_slice(&[0; 18]);
    let got = decode_npz(&Bytes::from(b)).unwrap();
    assert_eq!(got, vec![("x".to_string(), a)]);
}

#[test]
fn end_record_points_at_the_central_directory() {
    // Below 4 GiB the end record is the plain one and points at the central directory.
    let a = arr("<f4", &[4], 1);
    let blob = encode_npz([("w", &a)]).unwrap();
    let eocd = &blob[blob.len() - 22..];
    assert_eq!(&eocd[..4], &EOCD_SIG.to_le_bytes());
    let cd_off = u32::from_le_bytes(eocd[16..20].try_into().unwrap()) as usize;
    assert_eq!(&blob[cd_off..cd_off + 4], &CENTRAL_SIG.to_le_bytes());
}

#[test]
fn every_truncation_is_a_clear_error() {
    let blob = Bytes::from(encode_npz([("w", &arr("<f4", &[8], 1))]).unwrap());
    // Up to the end of the entry's data every prefix is incomplete.
    let data_end = 30 + 5 + 20 + npy_header("<f4", &[8]).len() + 32;
    for n in 0..data_end {
        let err = decode_npz(&blob.slice(..n)).unwrap_err().to_string();
        assert!(
            err.contains("truncated") || err.contains("wrong magic"),
            "prefix {n}: {err}"
        );
    }
    // Only the central directory missing: every entry was read and checked.
    assert_eq!(decode_npz(&blob.slice(..data_end)).unwrap().len(), 1);
}

#[test]
fn wrong_magic_is_refused() {
    let err = decode_npz(&Bytes::from_static(b"\x93NUMPY\x01\x00")).unwrap_err();
    assert!(err.to_string().contains("wrong magic"), "{err}");
    let err = NdArray::from_npy(Bytes::from_static(b"PK\x03\x04 not npy")).unwrap_err();
    assert!(err.to_string().contains("wrong magic"), "{err}");
    // A zip whose entry is not an .npy file inside.
    let mut b = encode_npz([("w", &arr("<f4", &[8], 1))]).unwrap();
    b[55] = b'X';
    let crc_fixed = {
        let data = &b[55..55 + npy_header("<f4", &[8]).len() + 32];
        crc32fast::hash(data)
    };
    b[14..18].copy_from_slice(&crc_fixed.to_le_bytes());
    let err = decode_npz(&Bytes::from(b)).unwrap_err();
    assert!(err.to_string().contains("wrong magic"), "{err}");
}

#[test]
fn fortran_order_is_refused() {
    let err = decode_npz(&hex(NUMPY_FORTRAN)).unwrap_err().to_string();
    assert!(err.contains("Fortran"), "{err}");
    assert!(err.contains("\"f\""), "names the array: {err}");
}

#[test]
fn crc_mismatch_is_refused() {
    let mut b = encode_npz([("w", &arr("<f4", &[8], 1))]).unwrap();
    let last_data = 30 + 5 + 20 + npy_header("<f4", &[8]).len() + 31;
    b[last_data] ^= 0xff;
    let err = decode_npz(&Bytes::from(b)).unwrap_err().to_string();
    assert!(err.contains("CRC-32 mismatch"), "{err}");
}

#[test]
fn unsupported_headers_and_entries_are_refused() {
    let npy = |dict: &str| {
        let mut v = NPY_MAGIC.to_vec();
        v.extend_from_slice(&[1, 0]);
        v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        v.extend_from_slice(dict.as_bytes());
        Bytes::from(v)
    };
    let cases = [
        (
            "{'descr': '|O', 'fortran_order': False, 'shape': (0,), }",
            "pickle",
        ),
        (
            "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (0,), }",
            "structured",
        ),
        ("{'descr': '<f4', 'fortran_order': False, }", "no 'shape'"),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
            "unexpected key",
        ),
        (
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }",
            "True or False",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
            "bad dimension",
        ),
        (
            "{'descr': '<q9', 'fortran_order': False, 'shape': (2,), }",
            "not a supported",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
            "overflows",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            "needs 8 data bytes",
        ),
    ];
    for (dict, want) in cases {
        let err = NdArray::from_npy(npy(dict)).unwrap_err().to_string();
        assert!(err.contains(want), "{dict}: {err}");
    }
    // A compressed entry.
    let mut b = encode_npz([("w", &arr("<f4", &[8], 1))]).unwrap();
    b[8] = 8;
    let err = decode_npz(&Bytes::from(b)).unwrap_err().to_string();
    assert!(err.contains("savez_compressed"), "{err}");
}

proptest::proptest! {
    /// Arbitrary corruption of a valid blob (bytes flipped, truncated, extended) gives a
    /// result or an error, never a panic; whatever parses has consistent arrays.
    #[test]
    fn corrupted_blobs_never_panic(
        flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..6),
        cut in 0usize..400,
        tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
    ) {
        let a = arr("<i4", &[3, 5], 1);
        let b = arr("|u1", &[7], 2);
        let mut blob = encode_npz([("a", &a), ("b", &b)]).unwrap();
        for (at, x) in flips {
            let n = blob.len();
            blob[at % n] ^= x;
        }
        blob.truncate(blob.len().min(cut.max(1) * 2));
        blob.extend_from_slice(&tail);
        if let Ok(arrays) = decode_npz(&Bytes::from(blob)) {
            for (_, x) in arrays {
                let want = byte_len(x.dtype(), x.shape()).unwrap();
                proptest::prop_assert_eq!(want, x.data().len() as u64);
            }
        }
    }
}
