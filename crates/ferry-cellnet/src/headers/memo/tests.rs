//! The memo gives exactly what a full scan gives, and is used only when it may be.

use proptest::prelude::*;
use rmpv::Value;

use super::super::tests::req_capture;
use super::*;
use crate::headers::keys;

/// What a decode gave, everything compared: each key, where its value lies, the slots and
/// the block; or the error's text.
type Shape = Result<(Vec<(String, (u32, u32))>, Slots, Vec<u8>), String>;

fn shape(r: &Result<Headers, CellnetError>) -> Shape {
    match r {
        Ok(h) => Ok((
            h.entries
                .iter()
                .map(|(k, e)| (k.to_string(), e.raw))
                .collect(),
            h.slots,
            h.block.to_vec(),
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Decode `b` with the memo and without; they must agree. Returns whether the memo was used.
fn decode_both(memo: &mut DecodeMemo, b: &[u8]) -> bool {
    let (with, used) = memo.decode_noting_use(Bytes::copy_from_slice(b));
    let without = Headers::decode_bytes(Bytes::copy_from_slice(b));
    assert_eq!(shape(&with), shape(&without), "block {b:02x?}");
    if let Ok(h) = &with {
        // a str read where it lies, without a `&str` made: the bytes `str_at` reads
        for s in crate::headers::Slot::ALL {
            assert_eq!(h.str_bytes_at(s), h.str_at(s).map(str::as_bytes), "{s:?}");
        }
    }
    used
}

/// A reply block as this crate writes one, with an unknown (owned) key and nested values.
fn reply_block() -> Vec<u8> {
    let route = Value::Array(vec![
        Value::Array(vec!["server".into(), Value::F64(1.75e9)]),
        Value::Array(vec!["site-1".into(), Value::F64(1.75e9 + 0.5)]),
    ]);
    let h: Headers = [
        (keys::MSG_TYPE, Value::from("reply")),
        (keys::ORIGIN, "server".into()),
        (keys::DESTINATION, "site-1".into()),
        (keys::REQ_ID, "84fd2bd2-078f-465f-8e46-01d8ef3fc412".into()),
        (keys::RETURN_CODE, "ok".into()),
        (
            "x-app",
            Value::Map(vec![("n".into(), Value::Binary(vec![1, 2, 3]))]),
        ),
        (keys::ROUTE, route),
        (keys::PAYLOAD_LEN, Value::from(70_000)),
        (keys::SEND_TIME, Value::F64(1.75e9 + 0.25)),
    ]
    .into_iter()
    .collect();
    h.encode()
}

fn samples() -> [Vec<u8>; 2] {
    [req_capture(), reply_block()]
}

/// Where the values of a good block lie.
fn value_ranges(b: &[u8]) -> Vec<(usize, usize)> {
    let h = Headers::decode(b).unwrap();
    h.entries
        .iter()
        .map(|(_, e)| (e.raw.0 as usize, e.raw.1 as usize))
        .collect()
}

/// The range of `key`'s value in a good block.
fn range_of(b: &[u8], key: &str) -> std::ops::Range<usize> {
    let h = Headers::decode(b).unwrap();
    let (_, e) = h.entries.iter().find(|(k, _)| k == key).unwrap();
    e.raw.0 as usize..e.raw.1 as usize
}

#[test]
fn a_block_differing_in_values_is_checked_only_there() {
    for b in samples() {
        let mut memo = DecodeMemo::default();
        assert!(!decode_both(&mut memo, &b), "nothing to reuse yet");
        assert!(decode_both(&mut memo, &b), "the same block again");
        // a new request id and send time, as the next request has
        let mut next = b.clone();
        let id = range_of(&b, keys::REQ_ID);
        next[id.end - 1] = b'9';
        next[id.start + 2] = b'a';
        let t = range_of(&b, keys::SEND_TIME);
        next[t.end - 2] ^= 0x5a;
        assert!(decode_both(&mut memo, &next));
        // the memo now holds `next`: the first block differs from it in the same values
        assert!(decode_both(&mut memo, &b));
        assert!(decode_both(&mut memo, &next));
    }
}

#[test]
fn a_value_of_another_type_and_the_same_length_is_reused() {
    let b = req_capture();
    let mut memo = DecodeMemo::default();
    decode_both(&mut memo, &b);
    let mut next = b.clone();
    // cn__send_time: a float64 becomes an int64 (9 bytes each)
    next[range_of(&b, keys::SEND_TIME).start] = 0xd3;
    // cn__reply_expected: true becomes nil; x-my-hdr (an owned key): 7 becomes -1
    next[range_of(&b, keys::REPLY_EXPECTED).start] = 0xc0;
    next[range_of(&b, "x-my-hdr").start] = 0xff;
    assert!(decode_both(&mut memo, &next));
    let h = memo.decode(Bytes::from(next)).unwrap();
    assert_eq!(h.get(keys::REPLY_EXPECTED), Some(&Value::Nil));
    assert_eq!(h.get("x-my-hdr"), Some(&Value::from(-1)));
    assert!(h.get_u64(keys::SEND_TIME).is_some());
}

#[test]
fn the_memo_is_not_used_where_the_bytes_do_not_prove_it() {
    let b = req_capture();
    let fresh = || {
        let mut memo = DecodeMemo::default();
        decode_both(&mut memo, &b);
        memo
    };
    let id = range_of(&b, keys::REQ_ID);
    let origin = range_of(&b, keys::ORIGIN);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut with = |why, f: &dyn Fn(&mut Vec<u8>)| {
        let mut x = b.clone();
        f(&mut x);
        cases.push((why, x));
    };
    with("one byte longer", &|x| x.push(0xc0));
    with("one byte shorter", &|x| {
        x.pop();
    });
    with("entry count", &|x| x[2] = 0x0f);
    with("map header", &|x| x[0] = 0xdf);
    with("a known key's byte", &|x| x[id.start - 1] = b'X');
    with("an unknown key's byte", &|x| x[4] = b'X');
    with("a key's length", &|x| x[3] = 0xa7);
    with("a str that is not UTF-8", &|x| x[id.start + 5] = 0xff);
    with("a str that ends early", &|x| x[origin.start] = 0xa5);
    with("a str that runs on", &|x| x[origin.start] = 0xa7);
    with("a value that would end early", &|x| x[id.start] = 0xc0);
    with("a reserved marker", &|x| x[origin.start] = 0xc1);
    with("an array that claims more", &|x| {
        x[range_of(&b, keys::ROUTE).start] = 0x92;
    });
    for (why, x) in cases {
        let mut memo = fresh();
        assert!(!decode_both(&mut memo, &x), "{why}: memo used");
        // whatever that block did to the memo, it still gives what a scan gives
        decode_both(&mut memo, &b);
        assert!(decode_both(&mut memo, &b), "{why}: memo lost");
    }
}

#[test]
fn a_bad_block_leaves_a_good_memo() {
    let b = req_capture();
    let mut memo = DecodeMemo::default();
    decode_both(&mut memo, &b);
    // the request id changes (checked, copied in), then the origin fails: a scan's error
    let mut bad = b.clone();
    let id = range_of(&b, keys::REQ_ID);
    bad[id.end - 1] = b'7';
    let origin = range_of(&b, keys::ORIGIN);
    bad[origin.start + 1] = 0xfe;
    assert!(!decode_both(&mut memo, &bad));
    assert!(memo.decode(Bytes::from(bad.clone())).is_err());
    // the memo holds a good block (with the new id) and what scanning it gives
    assert!(decode_both(&mut memo, &b));
    bad[origin.start + 1] = b's';
    assert!(decode_both(&mut memo, &bad));
}

#[test]
fn large_blocks_and_empty_ones_are_not_kept() {
    let mut memo = DecodeMemo::default();
    assert!(!decode_both(&mut memo, &[]));
    assert!(!decode_both(&mut memo, &[]));
    let big: Headers = [("k", "x".repeat(MAX_MEMO_BLOCK))].into_iter().collect();
    let big = big.encode();
    assert!(!decode_both(&mut memo, &big));
    assert!(!decode_both(&mut memo, &big));
    assert!(memo.kept.iter().all(|k| k.block.is_empty()));
    let many: Headers = (0..=MAX_MEMO_ENTRIES)
        .map(|i| (format!("k{i}"), i))
        .collect();
    let many = many.encode();
    assert!(many.len() <= MAX_MEMO_BLOCK);
    assert!(!decode_both(&mut memo, &many));
    assert!(!decode_both(&mut memo, &many));
    // a block within both bounds is kept
    let fits: Headers = (0..MAX_MEMO_ENTRIES)
        .map(|i| (format!("k{i}"), i))
        .collect();
    let fits = fits.encode();
    assert!(!decode_both(&mut memo, &fits));
    assert!(decode_both(&mut memo, &fits));
}

#[test]
fn two_kinds_of_block_are_kept_side_by_side_and_a_third_replaces_the_older() {
    let [req, reply] = samples();
    assert_ne!(req.len(), reply.len());
    let mut memo = DecodeMemo::default();
    assert!(!decode_both(&mut memo, &req));
    assert!(!decode_both(&mut memo, &reply));
    for _ in 0..3 {
        assert!(decode_both(&mut memo, &req));
        assert!(decode_both(&mut memo, &reply));
    }
    // a third length replaces the one used longer ago (the request's), not the reply's
    let third: Headers = [("k", 1)].into_iter().collect();
    let third = third.encode();
    assert!(!decode_both(&mut memo, &third));
    assert!(decode_both(&mut memo, &reply));
    assert!(decode_both(&mut memo, &third));
    assert!(!decode_both(&mut memo, &req));
}

/// A change to a header block.
#[derive(Clone, Debug)]
enum Change {
    /// Byte `.1` of value `.0` (modulo their counts) becomes `.2`.
    InValue(usize, usize, u8),
    /// Byte `.1` after the first of value `.0` becomes the letter `.2` (modulo 26): a new
    /// request id, time, ... (or, in a container, a broken one).
    Content(usize, usize, u8),
    /// Value `.0` becomes one of another kind `.1` and the same length (if there is one).
    Retype(usize, u8),
    /// Any byte becomes `.1`.
    Set(usize, u8),
    /// Bit `.1` of any byte flips.
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
    /// Start again from sample `.0`.
    Sample(usize),
}

/// A value of `n` bytes of a kind chosen by `kind`, `None` if that kind has none that long.
fn value_of_len(kind: u8, n: usize) -> Option<Vec<u8>> {
    let body = |head: &[u8], fill: u8| -> Option<Vec<u8>> {
        let rest = n.checked_sub(head.len())?;
        Some([head, &vec![fill; rest][..]].concat())
    };
    let m = n.checked_sub(1)?;
    match kind % 9 {
        0 if m <= 31 => body(&[0xa0 | m as u8], b'x'),
        1 if (1..=256).contains(&m) => body(&[0xd9, (m - 1) as u8], b'y'),
        2 if (1..=256).contains(&m) => body(&[0xc4, (m - 1) as u8], 0xff),
        3 if m <= 15 => body(&[0x90 | m as u8], 0xc0),
        4 if (1..=31).contains(&m) => body(&[0xa0 | m as u8, 0xff], b'z'),
        5 if m == 8 => body(&[0xd3], 0x80),
        6 if m % 2 == 0 && m / 2 <= 15 => body(&[0x80 | (m / 2) as u8], 0x01),
        // a one-byte value with the rest of its old place left over
        k => body(
            &[[0x00, 0xc0, 0xc2, 0xc3, 0xe0, 0xc1, 0xa0, 0x90, 0x80][usize::from(k)]],
            0,
        ),
    }
}

fn apply(b: &mut Vec<u8>, c: &Change) {
    let ranges = Headers::decode(b).ok().map(|_| value_ranges(b));
    let at = |i: usize, len: usize| i % len.max(1);
    match (c, ranges.filter(|r| !r.is_empty())) {
        (Change::InValue(v, i, x), Some(r)) => {
            let (a, e) = r[v % r.len()];
            b[a + i % (e - a)] = *x;
        }
        (Change::Content(v, i, x), Some(r)) => {
            let (a, e) = r[v % r.len()];
            if e - a > 1 {
                b[a + 1 + i % (e - a - 1)] = b'a' + x % 26;
            }
        }
        (Change::Retype(v, kind), Some(r)) => {
            let (a, e) = r[v % r.len()];
            if let Some(new) = value_of_len(*kind, e - a) {
                b[a..e].copy_from_slice(&new);
            }
        }
        (
            Change::InValue(i, _, x)
            | Change::Content(i, _, x)
            | Change::Retype(i, x)
            | Change::Set(i, x),
            _,
        ) => {
            if !b.is_empty() {
                let i = at(*i, b.len());
                b[i] = *x;
            }
        }
        (Change::Flip(i, bit), _) => {
            if !b.is_empty() {
                let i = at(*i, b.len());
                b[i] ^= 1 << (bit % 8);
            }
        }
        (Change::Truncate(n), _) => b.truncate(at(*n, b.len() + 1)),
        (Change::Insert(i, x), _) => b.insert(at(*i, b.len() + 1), *x),
        (Change::Remove(i), _) => {
            if !b.is_empty() {
                b.remove(at(*i, b.len()));
            }
        }
        (Change::Sample(i), _) => *b = samples()[i % 2].clone(),
    }
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        6 => (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(v, i, x)| Change::InValue(v, i, x)),
        6 => (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(v, i, x)| Change::Content(v, i, x)),
        4 => (any::<usize>(), any::<u8>()).prop_map(|(v, k)| Change::Retype(v, k)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Change::Set(i, x)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Change::Flip(i, x)),
        1 => any::<usize>().prop_map(Change::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Change::Insert(i, x)),
        1 => any::<usize>().prop_map(Change::Remove),
        1 => any::<usize>().prop_map(Change::Sample),
    ]
}

proptest! {
    /// Random sequences of changed blocks through one memo: each decodes exactly as a full
    /// scan decodes it (Ok with the same entries and slots, or the same error).
    #[test]
    fn decoding_with_the_memo_is_decoding_without_it(
        first in 0usize..2,
        changes in proptest::collection::vec(change(), 1..16),
    ) {
        let mut memo = DecodeMemo::default();
        let mut b = samples()[first].clone();
        decode_both(&mut memo, &b);
        for c in &changes {
            apply(&mut b, c);
            decode_both(&mut memo, &b);
        }
    }

    #[test]
    fn first_diff_finds_the_first_differing_byte(
        a in proptest::collection::vec(any::<u8>(), 0..200),
        flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
        from in 0usize..210,
    ) {
        let mut b = a.clone();
        for (i, x) in flips {
            if !b.is_empty() {
                let i = i % b.len();
                b[i] ^= x;
            }
        }
        let naive = a
            .get(from..)
            .and_then(|t| t.iter().zip(&b[from..]).position(|(x, y)| x != y))
            .map(|i| from + i);
        prop_assert_eq!(first_diff(&a, &b, from), naive);
    }
}

#[test]
fn most_random_value_changes_use_the_memo() {
    // the proptest above would prove little if it never took the memo's path
    let mut memo = DecodeMemo::default();
    let mut b = req_capture();
    decode_both(&mut memo, &b);
    let mut used = 0;
    for i in 0..200usize {
        apply(&mut b, &Change::Content(i * 7, i * 13, i as u8));
        used += usize::from(decode_both(&mut memo, &b));
        if Headers::decode(&b).is_err() {
            apply(&mut b, &Change::Sample(0));
        }
    }
    assert!(used > 100, "memo used {used} times of 200");
}
