//! Tickets in both forms: round trips, refusals, cut-short and hostile input.

use super::*;

pub(super) fn sample() -> Ticket {
    Ticket {
        tls: false,
        addr: "127.0.0.1:7001".into(),
        source: "ferry-sender".into(),
        ref_id: "R3c1e7f6a-1111-4222-8333-944455556666".into(),
        kind: Kind::File,
        name: "model weights (v2).bin".into(),
        size: 1 << 30,
        blake3: "ab".repeat(32),
    }
}

fn variants() -> Vec<Ticket> {
    vec![
        sample(),
        Ticket {
            tls: true,
            kind: Kind::Tensors,
            size: 0,
            blake3: "0f".repeat(32),
            name: "ckpt/shard 0.safetensors".into(),
            ..sample()
        },
        Ticket {
            kind: Kind::Set,
            addr: "[::1]:65535".into(),
            source: "server.job-7".into(),
            ref_id: "not_a-uuid_R1".into(),
            name: "ckpt".into(),
            size: u64::MAX,
            ..sample()
        },
        Ticket {
            addr: "gpu-node-17.example.org:1".into(),
            name: "é/ü/日本.bin".into(),
            size: 127,
            ..sample()
        },
        // an uppercase UUID is not canonical: kept as a string, so it prints back the same
        Ticket {
            ref_id: "R3C1E7F6A-1111-4222-8333-944455556666".into(),
            ..sample()
        },
    ]
}

#[test]
fn url_round_trip() {
    let t = sample();
    let s = t.to_url();
    assert!(
        s.starts_with("ferry+tcp://127.0.0.1:7001/ferry-sender/R3c1e"),
        "{s}"
    );
    assert!(!s.contains(' '));
    assert_eq!(s.parse::<Ticket>().unwrap(), t);
    let tls = &variants()[1];
    assert!(tls.to_url().contains("name=ckpt/shard%200.safetensors"));
    assert_eq!(tls.to_url().parse::<Ticket>().unwrap(), *tls);
    assert_eq!(tls.url(), "stcp://127.0.0.1:7001");
    for t in variants() {
        assert_eq!(t.to_url().parse::<Ticket>().unwrap(), t, "{}", t.to_url());
    }
}

#[test]
fn compact_round_trip_is_shell_safe() {
    for t in variants() {
        let s = t.to_string();
        assert_eq!(s, t.to_compact());
        assert!(s.starts_with("ferry1"), "{s}");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "only [a-z0-9]: {s}"
        );
        assert_eq!(s.parse::<Ticket>().unwrap(), t, "{s}");
        // whitespace around it (a pasted line) is fine
        assert_eq!(format!("  {s}\n").parse::<Ticket>().unwrap(), t);
    }
    // ferry's ref ids (R + UUID) take 16 bytes: the usual ticket stays short
    let len = sample().to_string().len();
    assert!(len < 180, "{len}: {}", sample());
    assert!(len < sample().to_url().len());
}

#[test]
fn cut_short_or_mistyped_compact_tickets_fail_their_checksum() {
    let whole = sample().to_string();
    for cut in 1..whole.len() - "ferry1".len() {
        let e = whole[..whole.len() - cut].parse::<Ticket>().unwrap_err();
        assert!(
            e.to_string().contains("cut short or mistyped") || e.to_string().contains("ends early"),
            "cut by {cut}: {e}"
        );
    }
    // every single-character change is caught
    let body_start = "ferry1".len();
    for i in body_start..whole.len() {
        let mut b = whole.clone().into_bytes();
        b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        let s = String::from_utf8(b).unwrap();
        let e = s.parse::<Ticket>().unwrap_err().to_string();
        assert!(e.contains("cut short or mistyped"), "change at {i}: {e}");
    }
    let e = format!("{whole}!")
        .parse::<Ticket>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("'!' cannot be in a compact ticket"), "{e}");
    let e = "ferry1".parse::<Ticket>().unwrap_err().to_string();
    assert!(e.contains("cut short"), "{e}");
}

/// A payload with a valid checksum but bad content (a forged or buggy ticket) is refused with
/// the reason, never a panic.
#[test]
fn forged_compact_payloads_are_refused() {
    fn forge(payload: &[u8]) -> String {
        let mut p = payload.to_vec();
        p.extend_from_slice(&compact_checksum(payload));
        format!(
            "ferry1{}",
            data_encoding::BASE32_NOPAD.encode(&p).to_ascii_lowercase()
        )
    }
    fn compact_checksum(p: &[u8]) -> [u8; 4] {
        let mut h = blake3::Hasher::new();
        h.update(b"ferry-ticket/1");
        h.update(p);
        h.finalize().as_bytes()[..4].try_into().unwrap()
    }
    let ok = {
        let mut p = vec![0u8, 5];
        p.extend_from_slice(&[7; 32]);
        p.extend_from_slice(&7001u16.to_be_bytes());
        for f in ["h", "s", "R1", "a.bin"] {
            p.push(f.len() as u8);
            p.extend_from_slice(f.as_bytes());
        }
        p
    };
    let t: Ticket = forge(&ok).parse().unwrap();
    assert_eq!(
        (t.addr.as_str(), t.ref_id.as_str(), t.size),
        ("h:7001", "R1", 5)
    );
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "ends early"),
        (vec![0x80], "unknown flags"),
        (vec![3 << 2], "unknown kind"),
        (vec![0, 0xff, 0xff], "ends early"),
        ([&[0u8][..], &[0xff; 10]].concat(), "overflows"),
        ([&ok[..], &[0][..]].concat(), "unexpected bytes"),
    ];
    // a name claiming more bytes than there are
    let mut long = ok[..ok.len() - 6].to_vec();
    long.extend_from_slice(&[0xff, 0xff, 0x03, b'a']);
    cases.push((long, "longer than the ticket"));
    // the fields are validated like the URL form's
    let mut escape = ok[..ok.len() - 6].to_vec();
    escape.extend_from_slice(b"\x05../ab");
    cases.push((escape, "not a plain relative path"));
    let mut bad_utf8 = ok[..ok.len() - 6].to_vec();
    bad_utf8.extend_from_slice(b"\x02\xff\xfe");
    cases.push((bad_utf8, "not UTF-8"));
    let mut port0 = ok.clone();
    port0[34..36].copy_from_slice(&[0, 0]);
    cases.push((port0, "not HOST:PORT"));
    for (payload, why) in cases {
        let e = forge(&payload).parse::<Ticket>().unwrap_err().to_string();
        assert!(e.contains(why), "{payload:?}: {e}");
        assert!(e.contains("malformed ticket"), "{e}");
    }
}

#[test]
fn overlong_input_is_refused_before_decoding() {
    let huge = format!("ferry1{}", "a".repeat(MAX_TICKET_LEN));
    let e = huge.parse::<Ticket>().unwrap_err().to_string();
    assert!(e.contains("more than"), "{e}");
    let huge = format!("ferry+tcp://h:1/s/R1?name={}", "a".repeat(MAX_TICKET_LEN));
    assert!(huge.parse::<Ticket>().is_err());
}

/// Deterministic garbage of every length in both forms: an error or a ticket, never a panic.
#[test]
fn garbage_never_panics() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    for len in 0..300 {
        let body: String = (0..len)
            .map(|_| alphabet[(next() % 32) as usize] as char)
            .collect();
        let _ = format!("ferry1{body}").parse::<Ticket>();
        let raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = format!("ferry+tcp://{}", String::from_utf8_lossy(&raw)).parse::<Ticket>();
    }
}

#[test]
fn malformed_url_tickets_are_refused() {
    let tail = format!("kind=file&name=x&size=1&b3={}", "ab".repeat(32));
    for bad in [
        "",
        "http://x:1/a/R1",
        "ferry+tcp://127.0.0.1/a/R1",
        "ferry+tcp://127.0.0.1:0/a/R1",
        "ferry+tcp://127.0.0.1:99999/a/R1",
        "ferry+tcp://127.0.0.1:7001/a..b/R1",
        "ferry+tcp://127.0.0.1:7001/a/R1/extra",
        "ferry+tcp://127.0.0.1:7001/a/",
        "ferry+tcp://127.0.0.1:7001/a/R1?kind=rocket",
        "ferry+tcp://127.0.0.1:7001/a/R1?name=..",
        "ferry+tcp://127.0.0.1:7001/a/R1?name=%2e%2e%2fetc",
        "ferry+tcp://127.0.0.1:7001/a/R1?name=%zz",
        "ferry+tcp://127.0.0.1:7001/a/R1?name=%+1",
        "ferry+tcp://127.0.0.1:7001/a/R1?size=big",
        "ferry+tcp://127.0.0.1:7001/a/R1?name=/etc/passwd",
        "ferry+tcp://127.0.0.1:7001/a/R1?name=a/../../b",
        "ferry+tcp://127.0.0.1:7001/a/R1?name=a//b",
        "ferry+tcp://127.0.0.1:7001/a/R1?name=a%5Cb",
        "ferry+tcp://127.0.0.1:7001/a/R1?b3=1234",
        "ferry+tcp://127.0.0.1:7001/a/R1?b3=",
        "not a ticket at all",
    ] {
        assert!(bad.parse::<Ticket>().is_err(), "{bad:?} parsed");
        // the same with every required key present (the bad value last, so it wins) is
        // still refused
        if let Some(query) = bad.strip_prefix("ferry+tcp://127.0.0.1:7001/a/R1?") {
            let full = format!("ferry+tcp://127.0.0.1:7001/a/R1?{tail}&{query}");
            assert!(full.parse::<Ticket>().is_err(), "{full:?} parsed");
        }
    }
    assert!(format!("ferry+tcp://127.0.0.1:7001/a/R1?{tail}")
        .parse::<Ticket>()
        .is_ok());
}

/// Found by the `ticket` fuzz target: a URL ticket with a 4,544-byte sender name parsed, but
/// its compact form (fields of at most 4,096 bytes) did not parse back. Sender names are now
/// bounded in both forms, and the longest accepted one survives both.
#[test]
fn a_sender_name_is_bounded_and_the_longest_survives_both_forms() {
    let tail = format!("kind=file&name=x&size=1&b3={}", "ab".repeat(32));
    let name_of = |len: usize| {
        // dotted like an FQCN, no segment repeated
        let mut n = String::new();
        let mut i = 0;
        while n.len() < len {
            if !n.is_empty() {
                n.push('.');
            }
            n.push_str(&format!("s{i}"));
            i += 1;
        }
        n.truncate(len);
        n.trim_end_matches('.').to_string()
    };
    let long = name_of(4544);
    let err = format!("ferry+tcp://127.0.0.1:7001/{long}/R1?{tail}")
        .parse::<Ticket>()
        .unwrap_err();
    assert!(err.to_string().contains("sender name is"), "{err}");
    let mut t = sample();
    t.source = long;
    assert!(t.to_compact().parse::<Ticket>().is_err());
    let longest = name_of(1024);
    assert!(longest.len() > 1000);
    let t = format!("ferry+tcp://127.0.0.1:7001/{longest}/R1?{tail}")
        .parse::<Ticket>()
        .unwrap();
    for written in [t.to_compact(), t.to_url()] {
        assert_eq!(written.parse::<Ticket>().unwrap(), t, "{written}");
    }
}

/// Found by the `ticket` fuzz target: `u16::from_str` takes `+911` and `0911`, and the ticket
/// kept the port as typed, so it printed differently from what was parsed.
#[test]
fn ports_are_digits_and_printed_as_parsed() {
    let tail = format!("s/R1?kind=file&name=x&size=1&b3={}", "ab".repeat(32));
    for bad in ["h:+911", "h:-1", "h: 911", "h:9_11"] {
        let t = format!("ferry+tcp://{bad}/{tail}");
        assert!(
            t.parse::<Ticket>()
                .unwrap_err()
                .to_string()
                .contains("is not HOST:PORT"),
            "{t}"
        );
    }
    let t: Ticket = format!("ferry+tcp://h:0911/{tail}").parse().unwrap();
    assert_eq!(t.addr, "h:911");
    for written in [t.to_string(), t.to_url()] {
        assert_eq!(written.parse::<Ticket>().unwrap(), t, "{written}");
    }
}

#[test]
fn relative_names() {
    assert!(check_relative_name("a.bin").is_ok());
    assert!(check_relative_name("dir/sub/a.bin").is_ok());
    for bad in ["", "/a", "a/", "..", "a/./b", "a/../b", "a\\b", "a\0b"] {
        assert!(check_relative_name(bad).is_err(), "{bad:?} accepted");
    }
    assert!(check_relative_name(&format!("{}b", "a/".repeat(100))).is_err());
}

#[test]
fn unknown_keys_are_ignored_and_digests_lowercased() {
    let t: Ticket = format!(
        "ferry+tcp://h:1/s/R1?kind=file&name=a&size=3&b3={}&future=1",
        "AB".repeat(32)
    )
    .parse()
    .unwrap();
    assert_eq!(t.blake3, "ab".repeat(32));
    assert_eq!(t.url(), "tcp://h:1");
    assert_eq!(t.pin().size, 3);
    assert_eq!(t.pin().hex(), "ab".repeat(32));
}

/// What a shell leaves of an unquoted URL ticket (cut at the first `&`), or a ticket missing
/// any pinned key, is refused with the hint to quote it.
#[test]
fn cut_short_url_tickets_are_refused_with_a_hint_to_quote() {
    let whole = sample().to_url();
    let cut = whole.split('&').next().unwrap();
    let e = cut.parse::<Ticket>().unwrap_err().to_string();
    assert!(
        e.contains("no name, size, b3") && e.contains("single quotes"),
        "{e}"
    );
    let bare = whole.split('?').next().unwrap();
    let e = bare.parse::<Ticket>().unwrap_err().to_string();
    assert!(e.contains("no name, kind, size, b3"), "{e}");
    for key in ["kind", "name", "size", "b3"] {
        let without: Vec<&str> = whole
            .split(['?', '&'])
            .skip(1)
            .filter(|kv| !kv.starts_with(&format!("{key}=")))
            .collect();
        let t = format!("{bare}?{}", without.join("&"));
        let e = t.parse::<Ticket>().unwrap_err().to_string();
        assert!(e.contains(&format!("no {key} ")), "{t}: {e}");
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::File), Just(Kind::Tensors), Just(Kind::Set)]
    }

    fn ref_id() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u128>().prop_map(|n| format!("R{}", uuid::Uuid::from_u128(n))),
            "[A-Za-z0-9_-]{1,40}",
        ]
    }

    proptest! {
        #[test]
        fn any_valid_ticket_round_trips_in_both_forms(
            tls in any::<bool>(),
            host in "[a-z0-9][a-z0-9.-]{0,30}",
            port in 1u16..,
            source in "[a-z][a-z0-9_-]{0,12}(\\.[a-z0-9_-]{1,8})?",
            ref_id in ref_id(),
            kind in kind(),
            name in "[^/\\\\\0]{1,12}(/[^/\\\\\0]{1,12}){0,3}",
            size in any::<u64>(),
            digest in any::<[u8; 32]>(),
        ) {
            prop_assume!(check_relative_name(&name).is_ok());
            prop_assume!(ferry_core::validate_fqcn(&source).is_ok());
            let t = Ticket {
                tls,
                addr: format!("{host}:{port}"),
                source,
                ref_id,
                kind,
                name,
                size,
                blake3: blake3::Hash::from_bytes(digest).to_hex().to_string(),
            };
            let compact = t.to_string();
            prop_assert!(compact.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
            prop_assert_eq!(compact.parse::<Ticket>().unwrap(), t.clone());
            prop_assert_eq!(t.to_url().parse::<Ticket>().unwrap(), t);
        }

        #[test]
        fn arbitrary_input_never_panics(s in any::<String>(), bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = s.parse::<Ticket>();
            let _ = format!("ferry1{s}").parse::<Ticket>();
            let _ = format!("ferry+tcp://{s}").parse::<Ticket>();
            let body = data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase();
            let _ = format!("ferry1{body}").parse::<Ticket>();
        }
    }
}

#[test]
fn the_sender_or_its_parent_serves_a_ticket() {
    let t = Ticket {
        source: "server.j1".into(),
        ..sample()
    };
    assert!(t.is_served_by("server.j1"));
    assert!(t.is_served_by("server"));
    assert!(!t.is_served_by("serv"));
    assert!(!t.is_served_by("server.j2"));
    assert!(!t.is_served_by("other"));
}
