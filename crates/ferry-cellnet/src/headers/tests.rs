//! Tests of the header map and its codec.

use super::known_keys::same_bytes;
use super::*;
use crate::testutil::hex;

/// Build msgpack bytes from a list of (hex | "str") tokens.
fn mp(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        if let Some(s) = p.strip_prefix('"') {
            out.extend_from_slice(s.trim_end_matches('"').as_bytes());
        } else {
            out.extend(hex(p));
        }
    }
    out
}

/// The exact header map of the §7 REQ capture (322 bytes).
pub(super) fn req_capture() -> Vec<u8> {
    mp(&[
        "de 00 10 a8",
        "\"x-my-hdr\"",
        "07 a9",
        "\"cn__topic\"",
        "a4",
        "\"echo\"",
        "ab",
        "\"cn__channel\"",
        "a4",
        "\"task\"",
        "af",
        "\"cn__destination\"",
        "a6",
        "\"server\"",
        "aa",
        "\"cn__req_id\"",
        "d9 24",
        "\"84fd2bd2-078f-465f-8e46-01d8ef3fc412\"",
        "b2",
        "\"cn__reply_expected\"",
        "c3 aa",
        "\"cn__secure\"",
        "c2 ac",
        "\"cn__optional\"",
        "c2 a8",
        "\"cn__from\"",
        "a6",
        "\"site-1\"",
        "a6",
        "\"cn__to\"",
        "a6",
        "\"server\"",
        "aa",
        "\"cn__origin\"",
        "a6",
        "\"site-1\"",
        "ac",
        "\"cn__msg_type\"",
        "a3",
        "\"req\"",
        "a9",
        "\"cn__route\"",
        "91 92 a6",
        "\"site-1\"",
        "cb 41 da c2 86 77 f5 67 83",
        "b4",
        "\"cn__payload_encoding\"",
        "a4",
        "\"fobs\"",
        "af",
        "\"cn__payload_len\"",
        "1a ad",
        "\"cn__send_time\"",
        "cb 41 da c2 86 77 f5 d8 ce",
    ])
}

#[test]
fn req_capture_round_trips_byte_exact() {
    let bytes = req_capture();
    assert_eq!(bytes.len(), 322);
    let h = Headers::decode(&bytes).unwrap();
    assert_eq!(h.len(), 16);
    assert_eq!(h.get_str(keys::MSG_TYPE), Some("req"));
    assert_eq!(h.get_str(keys::ORIGIN), Some("site-1"));
    assert_eq!(h.get_str(keys::DESTINATION), Some("server"));
    assert_eq!(h.get_bool(keys::REPLY_EXPECTED), Some(true));
    assert_eq!(h.get_u64(keys::PAYLOAD_LEN), Some(26));
    assert_eq!(h.get_u64("x-my-hdr"), Some(7));
    assert!(matches!(h.get(keys::SEND_TIME), Some(Value::F64(_))));
    let route = h.get(keys::ROUTE).unwrap().as_array().unwrap();
    assert_eq!(route[0].as_array().unwrap()[0].as_str(), Some("site-1"));
    // unknown keys, order and exact types survive a round trip
    assert_eq!(h.encode(), bytes);
}

#[test]
fn stream_ack_capture_prefix() {
    // §7: de 00 12 a6 "sm__id" cf 00 06 61 4a e2 78 a0 cf a6 "sm__dt" 03 a6 "sm__os" 4a a6 "sm__sq" 00
    let mut h = Headers::new();
    h.insert(stream_keys::ID, 0x0006_614a_e278_a0cf_u64);
    h.insert(stream_keys::DATA_TYPE, 3);
    h.insert(stream_keys::OFFSET, 0x4a);
    h.insert(stream_keys::SEQ, 0);
    let enc = h.encode();
    let want = mp(&[
        "84 a6",
        "\"sm__id\"",
        "cf 00 06 61 4a e2 78 a0 cf a6",
        "\"sm__dt\"",
        "03 a6",
        "\"sm__os\"",
        "4a a6",
        "\"sm__sq\"",
        "00",
    ]);
    assert_eq!(enc, want);
}

#[test]
fn rejects_what_python_rejects() {
    assert!(Headers::decode(&[0x01]).is_err()); // not a map
    assert!(Headers::decode(&[0x81, 0x01, 0x02]).is_err()); // int key
    assert!(Headers::decode(&[0x81, 0xa1, b'k', 0xa1, 0xff]).is_err()); // bad utf-8
    assert!(Headers::decode(&[0x82, 0xa1, b'k', 0x01]).is_err()); // truncated
    assert!(Headers::decode(&[0x80, 0x00]).is_err()); // trailing bytes
    assert!(Headers::decode(&[]).unwrap().is_empty());
}

#[test]
fn insert_replaces_in_place() {
    let mut h: Headers = [("a", 1), ("b", 2)].into_iter().collect();
    h.insert("a", 3);
    assert_eq!(h.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(h.get_u64("a"), Some(3));
    assert_eq!(h.remove("a"), Some(Value::from(3)));
    assert!(!h.contains("a"));
}

#[test]
fn known_keys_are_borrowed_unknown_keys_kept_exactly() {
    let mut h = Headers::new();
    h.insert(keys::TOPIC, "t");
    let nested = Value::Map(vec![(
        "a".into(),
        Value::Array(vec![Value::from(-3), "x".into(), Value::F32(1.5)]),
    )]);
    h.insert("cn__not_yet_known", nested.clone());
    h.insert("x-app", Value::Binary(vec![1, 2]));
    h.insert(stream_keys::ID, u64::MAX);
    let bytes = h.encode();
    let back = Headers::decode(&bytes).unwrap();
    assert_eq!(back, h);
    assert_eq!(back.encode(), bytes);
    assert_eq!(back.get("cn__not_yet_known"), Some(&nested));
    let borrowed: Vec<bool> = back
        .entries
        .iter()
        .map(|(k, _)| matches!(k, Cow::Borrowed(_)))
        .collect();
    assert_eq!(borrowed, [true, false, false, true]);
}

#[test]
fn decode_errors_say_what_is_wrong() {
    let err = |b: &[u8]| Headers::decode(b).unwrap_err().to_string();
    assert!(err(&[0x91, 0x01]).contains("not a map"));
    assert!(err(&[0x81, 0xc4, 0x01, b'k', 0x01]).contains("key is not a str"));
    assert!(err(&[0x81, 0xa1, 0xff, 0x01]).contains("key is not UTF-8"));
    assert!(
        err(&[0x81, 0xa1, b'k', 0x91, 0xa1, 0xff]).contains("\"k\" holds a str that is not UTF-8")
    );
    assert!(err(&[0x80, 0xc0]).contains("trailing"));
}

#[test]
fn a_huge_claimed_map_is_refused_before_anything_is_reserved() {
    // map32 claiming 4 Gi entries, one present: refused by the scan, nothing sized by the claim
    let e = Headers::decode(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'k', 0x01]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    let e = Headers::decode(&[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, b'k']).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

/// A header block with values in longer forms than rmpv writes (a str8 for a 3-byte str, a
/// uint16 for 5, a bin8, a float32), an array and a nested map.
fn received_block() -> Vec<u8> {
    let mut b = vec![0x87];
    b.extend_from_slice(&[0xab]);
    b.extend_from_slice(b"cn__channel");
    b.extend_from_slice(&[0xd9, 0x03, b'a', b'b', b'c']);
    b.extend_from_slice(&[0xaf]);
    b.extend_from_slice(b"cn__payload_len");
    b.extend_from_slice(&[0xcd, 0x00, 0x05]);
    b.extend_from_slice(&[0xb2]);
    b.extend_from_slice(b"cn__reply_expected");
    b.push(0xc3);
    b.extend_from_slice(&[0xa9]);
    b.extend_from_slice(b"cn__route");
    b.extend_from_slice(&[0x92, 0x92, 0xa1, b's', 0xca, 0x3f, 0xc0, 0, 0, 0xc0]);
    b.extend_from_slice(&[0xa5]);
    b.extend_from_slice(b"x-bin");
    b.extend_from_slice(&[0xc4, 0x02, 1, 2]);
    b.extend_from_slice(&[0xa5]);
    b.extend_from_slice(b"x-map");
    b.extend_from_slice(&[0x81, 0xa1, b'k', 0xff]);
    b.extend_from_slice(&[0xa5]);
    b.extend_from_slice(b"x-neg");
    b.extend_from_slice(&[0xd0, 0x80]);
    b
}

/// Which entries have been made into `rmpv` values.
fn made(h: &Headers) -> Vec<&str> {
    h.entries
        .iter()
        .filter(|(_, e)| e.value.get().is_some())
        .map(|(k, _)| k.as_ref())
        .collect()
}

#[test]
fn received_values_are_read_where_they_lie_and_written_back_byte_for_byte() {
    let block = received_block();
    let h = Headers::decode(&block).unwrap();
    assert_eq!(h.get_str(keys::CHANNEL), Some("abc"));
    assert_eq!(h.get_u64(keys::PAYLOAD_LEN), Some(5));
    assert_eq!(h.get_bool(keys::REPLY_EXPECTED), Some(true));
    assert_eq!(h.array_len(keys::ROUTE), Some(2));
    assert_eq!(h.get_u64("x-neg"), None);
    assert_eq!(h.get_str("x-bin"), None);
    assert_eq!(h.get_bool("x-bin"), None);
    assert_eq!(h.array_len("x-map"), None);
    assert!(h.contains("x-map"));
    assert!(made(&h).is_empty(), "{:?}", made(&h));
    // the exact forms travel on, as received
    assert_eq!(h.encode(), block);
    // a value asked for is made (once), and equals what rmpv reads
    let whole = rmpv::decode::read_value(&mut &block[..]).unwrap();
    let Value::Map(pairs) = whole else {
        panic!("not a map")
    };
    for (k, v) in &pairs {
        assert_eq!(h.get(k.as_str().unwrap()), Some(v), "{k}");
    }
    assert_eq!(made(&h).len(), pairs.len());
    assert_eq!(h.encode(), block, "made values change nothing");
}

#[test]
fn changing_a_received_map_changes_only_what_is_changed() {
    let block = received_block();
    let mut h = Headers::decode(&block).unwrap();
    h.insert(keys::CHANNEL, "d");
    assert_eq!(h.get_str(keys::CHANNEL), Some("d"));
    assert_eq!(h.remove("x-neg"), Some(Value::from(-128)));
    assert_eq!(h.remove(keys::PAYLOAD_LEN), Some(Value::from(5u64)));
    h.retain(|k, _| k != "x-bin");
    let back = Headers::decode(&h.encode()).unwrap();
    let keys_back: Vec<&str> = back.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys_back,
        [keys::CHANNEL, keys::REPLY_EXPECTED, keys::ROUTE, "x-map"]
    );
    assert_eq!(back, h);
    assert_eq!(back.get_str(keys::CHANNEL), Some("d"));
    // the untouched route keeps its float32
    let route = back.get(keys::ROUTE).unwrap().as_array().unwrap();
    assert_eq!(route[0].as_array().unwrap()[1], Value::F32(1.5));
}

#[test]
fn decode_bytes_keeps_the_block_without_copying() {
    let block = Bytes::from(received_block());
    let h = Headers::decode_bytes(block.clone()).unwrap();
    assert_eq!(h.block.as_ptr(), block.as_ptr());
    assert_eq!(h, Headers::decode(&block).unwrap());
    // a bad block is refused by both, whatever they would keep
    let mut bad = received_block();
    let at = bad.len() - 2; // x-neg's int8 marker
    bad[at] = 0xc1;
    assert!(Headers::decode_bytes(Bytes::from(bad.clone())).is_err());
    assert!(Headers::decode(&bad).is_err());
}

/// What a slot reads, and what a walk by its key reads: the same, always.
fn slots_agree(h: &Headers) {
    for s in Slot::ALL {
        assert_eq!(h.str_at(s), h.get_str(s.key()), "{s:?}");
        assert_eq!(h.str_bytes_at(s), h.str_at(s).map(str::as_bytes), "{s:?}");
        assert_eq!(h.bool_at(s), h.get_bool(s.key()), "{s:?}");
        assert_eq!(h.get_at(s), h.get(s.key()), "{s:?}");
        assert_eq!(h.array_len_at(s), h.array_len(s.key()), "{s:?}");
    }
}

#[test]
fn the_slot_keys_come_first_in_the_known_keys() {
    for (i, s) in Slot::ALL.into_iter().enumerate() {
        assert_eq!(s as usize, i);
        assert_eq!(KNOWN_KEYS[i], s.key());
    }
    let mut all = KNOWN_KEYS.to_vec();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), KNOWN_KEYS.len(), "a known key listed twice");
}

#[test]
fn slots_read_what_a_walk_reads() {
    let h = Headers::decode(&req_capture()).unwrap();
    slots_agree(&h);
    assert_eq!(h.str_at(Slot::Topic), Some("echo"));
    assert_eq!(h.str_at(Slot::MsgType), Some("req"));
    assert_eq!(h.bool_at(Slot::ReplyExpected), Some(true));
    assert_eq!(h.str_at(Slot::ReturnCode), None);
    // a value of another type than asked for: none, as a walk says
    assert_eq!(h.bool_at(Slot::Topic), None);
    assert_eq!(h.str_at(Slot::ReplyExpected), None);
}

#[test]
fn a_key_sent_twice_is_read_at_its_first_entry_as_a_walk_reads_it() {
    // {"cn__origin": "a", "cn__origin": "b", "cn__topic": 1}
    let h = Headers::decode(&mp(&[
        "83 aa",
        "\"cn__origin\"",
        "a1",
        "\"a\"",
        "aa",
        "\"cn__origin\"",
        "a1",
        "\"b\"",
        "a9",
        "\"cn__topic\"",
        "01",
    ]))
    .unwrap();
    slots_agree(&h);
    assert_eq!(h.str_at(Slot::Origin), Some("a"));
    assert_eq!(h.str_at(Slot::Topic), None);
    assert_eq!(h.get_at(Slot::Topic), Some(&Value::from(1)));
}

#[test]
fn slots_past_the_noted_entries_are_found_by_a_walk() {
    // 300 entries, the slot keys only after the first 255
    let mut b = vec![0xde];
    b.extend_from_slice(&302u16.to_be_bytes());
    for i in 0..300 {
        let k = format!("k{i}");
        b.push(0xa0 | k.len() as u8);
        b.extend_from_slice(k.as_bytes());
        b.push(0xc0);
    }
    for (k, v) in [("cn__origin", "late"), ("cn__channel", "ch")] {
        b.push(0xa0 | k.len() as u8);
        b.extend_from_slice(k.as_bytes());
        b.push(0xa0 | v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    let mut h = Headers::decode(&b).unwrap();
    slots_agree(&h);
    assert_eq!(h.str_at(Slot::Origin), Some("late"));
    assert_eq!(h.str_at(Slot::Channel), Some("ch"));
    // fewer entries again: the slots are noted anew
    h.retain(|k, _| k.starts_with("cn__") || k == "k0");
    slots_agree(&h);
    assert_eq!(h.str_at(Slot::Origin), Some("late"));
    assert_eq!(h.len(), 3);
}

#[test]
fn malformed_blocks_are_errors_and_leave_no_slots_behind() {
    let o = "\"cn__origin\"";
    for bad in [
        mp(&["81 aa", o]),                      // value missing
        mp(&["82 aa", o, "a1", "\"a\""]),       // entry missing
        mp(&["81 aa", o, "a5", "\"ab\""]),      // str past the end
        mp(&["81 aa", o, "a2 ff fe"]),          // not UTF-8
        mp(&["81 aa", o, "c1"]),                // reserved marker
        mp(&["81 01 a1", "\"a\""]),             // key not a str
        mp(&["81 aa", o, "a1", "\"a\"", "00"]), // trailing byte
    ] {
        assert!(Headers::decode(&bad).is_err(), "{bad:02x?}");
    }
    slots_agree(&Headers::new());
    assert_eq!(Headers::new().str_at(Slot::Origin), None);
    assert_eq!(Headers::decode(&[]).unwrap().str_at(Slot::Origin), None);
}

#[test]
fn changes_keep_the_slots_in_step() {
    let mut h = Headers::decode(&req_capture()).unwrap();
    h.insert(keys::ORIGIN, "someone-else");
    h.insert(keys::RETURN_CODE, "ok");
    slots_agree(&h);
    assert_eq!(h.str_at(Slot::Origin), Some("someone-else"));
    assert_eq!(h.str_at(Slot::ReturnCode), Some("ok"));
    // removing an entry moves those after it
    h.remove("x-my-hdr");
    h.remove(keys::TOPIC);
    slots_agree(&h);
    assert_eq!(h.str_at(Slot::Topic), None);
    assert_eq!(h.str_at(Slot::Channel), Some("task"));
    h.retain(|k, _| k != keys::CHANNEL);
    slots_agree(&h);
    // a map built here
    let mut b: Headers = [(keys::ERROR, "e"), ("x", "y"), (keys::MSG_TYPE, "reply")]
        .into_iter()
        .collect();
    slots_agree(&b);
    assert_eq!(b.str_at(Slot::Error), Some("e"));
    assert_eq!(b.str_at(Slot::MsgType), Some("reply"));
    b.extend_from(&h);
    slots_agree(&b);
    assert_eq!(b.clone().str_at(Slot::Origin), Some("someone-else"));
}

#[test]
fn every_known_key_is_found_and_no_near_miss_is() {
    for (i, k) in KNOWN_KEYS.iter().enumerate() {
        assert_eq!(known(k.as_bytes()), Some((i, *k)));
        let b = k.as_bytes();
        // one byte changed anywhere, one byte more or less: not a known key
        for at in 0..b.len() {
            let mut m = b.to_vec();
            m[at] ^= 0x20;
            assert_eq!(known(&m), None, "{m:?}");
        }
        assert_eq!(known(&b[..b.len() - 1]), None);
        assert_eq!(known(&[b, b"x"].concat()), None);
    }
    for k in [&b""[..], b"a", b"ab", b"cn__", b"sm__zz", b"\xff\xfe"] {
        assert_eq!(known(k), None, "{k:?}");
    }
}

#[test]
fn word_comparison_is_byte_comparison() {
    let base: Vec<u8> = (0u8..40).collect();
    for n in 0..40 {
        let a = &base[..n];
        assert!(same_bytes(a, a));
        for at in 0..n {
            let mut b = a.to_vec();
            b[at] = b[at].wrapping_add(1);
            assert!(!same_bytes(a, &b), "{n} bytes, differing at {at}");
        }
        assert!(!same_bytes(a, &base[..n + 1]));
    }
}
