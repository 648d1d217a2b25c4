use super::*;
use proptest::prelude::*;

/// `a<len> <ascii>` as msgpack fixstr.
fn fixstr(s: &str) -> Vec<u8> {
    let mut v = vec![0xa0 | s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn concat(segments: &[Bytes]) -> Bytes {
    Bytes::from(
        segments
            .iter()
            .flat_map(|b| b.iter().copied())
            .collect::<Vec<u8>>(),
    )
}

#[test]
fn data_reply_is_nvflares_shape_with_64_bytes_around_the_chunk() {
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let body = ReplyBody::data(
        State::new().with("received_bytes", 1_048_576u64),
        ChunkData::Bytes(chunk),
    );
    let enc = body.encode().unwrap();
    // sz=1048650 in the capture = 10 (LOBS header) + 64 + 1 MiB.
    assert_eq!(enc.len(), 64 + (1 << 20));
    let mut head = vec![0x84];
    head.extend(fixstr("status"));
    head.extend(fixstr("ok"));
    head.extend(fixstr("state"));
    head.push(0x81);
    head.extend(fixstr("received_bytes"));
    head.extend([0xce, 0x00, 0x10, 0x00, 0x00]);
    head.extend(fixstr("data"));
    head.extend([0xc6, 0x00, 0x10, 0x00, 0x00]);
    assert_eq!(&enc[..head.len()], &head[..]);
    let mut tail = fixstr("cancel_capable");
    tail.push(0xc3);
    assert_eq!(&enc[enc.len() - tail.len()..], &tail[..]);
    assert_eq!(ReplyBody::decode(&Bytes::from(enc)).unwrap(), body);
}

#[test]
fn terminal_replies_match_nvflares_bytes() {
    let eof = ReplyBody::terminal(ReplyStatus::Eof).encode().unwrap();
    let mut want = vec![0x81];
    want.extend(fixstr("status"));
    want.extend(fixstr("eof"));
    assert_eq!(eof, want);
    let nonce = "69b6".repeat(8);
    let body = ReplyBody {
        confirm_expected: Some(true),
        confirm_nonce: Some(nonce.clone()),
        ..ReplyBody::terminal(ReplyStatus::Eof)
    };
    let mut want = vec![0x83];
    want.extend(fixstr("status"));
    want.extend(fixstr("eof"));
    want.extend(fixstr("confirm_expected"));
    want.push(0xc3);
    want.extend(fixstr("confirm_nonce"));
    want.extend([0xd9, 0x20]);
    want.extend_from_slice(nonce.as_bytes());
    assert_eq!(body.encode().unwrap(), want);
    let err = ReplyBody::terminal(ReplyStatus::Error).encode().unwrap();
    assert_eq!(&err[err.len() - 6..], &fixstr("error")[..]);
}

#[test]
fn chunks_are_neither_copied_on_encode_nor_on_decode() {
    for data in [
        ChunkData::Bytes(Bytes::from(vec![9u8; 70_000])),
        ChunkData::Items(vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from(vec![1u8; 300]),
        ]),
        ChunkData::Items(vec![]),
    ] {
        let body = ReplyBody::data(State::new().with("received_bytes", 70_000u64), data.clone());
        let segments = body.clone().into_segments().unwrap();
        let originals: Vec<&Bytes> = match &data {
            ChunkData::Bytes(b) => vec![b],
            ChunkData::Items(items) => items.iter().filter(|b| !b.is_empty()).collect(),
            ChunkData::ItemParts(_) | ChunkData::File(_) => unreachable!("not in this list"),
        };
        for b in originals {
            assert!(
                segments.iter().any(|s| s.as_ptr() == b.as_ptr()),
                "the chunk is its own segment"
            );
        }
        let flat = concat(&segments);
        assert_eq!(
            &flat[..],
            &body.encode().unwrap()[..],
            "segments join to encode()"
        );
        let back = ReplyBody::decode(&flat).unwrap();
        assert_eq!(back, body);
        if let Some(ChunkData::Bytes(b)) = &back.data {
            assert!(
                flat.as_ptr_range().contains(&b.as_ptr()),
                "sliced, not copied"
            );
        }
    }
}

#[test]
fn parted_items_go_out_uncopied_and_arrive_as_the_items_they_join_into() {
    let head = Bytes::from_static(b"header:");
    let data = Bytes::from(vec![3u8; 5000]);
    let parts = ChunkData::ItemParts(vec![
        vec![head.clone(), data.clone()],
        vec![Bytes::from_static(b"one")],
        vec![],
    ]);
    let body = ReplyBody::data(State::new().with("start", 0u64), parts.clone());
    let segments = body.clone().into_segments().unwrap();
    for b in [&head, &data] {
        assert!(
            segments.iter().any(|s| s.as_ptr() == b.as_ptr()),
            "each part is its own segment"
        );
    }
    let flat = concat(&segments);
    assert_eq!(
        &flat[..],
        &body.encode().unwrap()[..],
        "segments join to encode()"
    );
    let back = ReplyBody::decode(&flat).unwrap();
    let joined = ReplyBody::data(State::new().with("start", 0u64), parts.into_joined());
    assert_eq!(back, joined, "on the wire the same as the joined items");
}

#[test]
fn chunks_are_msgpack_bin_never_integer_lists() {
    let body = |data| ReplyBody {
        data: Some(data),
        ..ReplyBody::terminal(ReplyStatus::Ok)
    };
    let mut head = vec![0x82];
    head.extend(fixstr("status"));
    head.extend(fixstr("ok"));
    head.extend(fixstr("data"));
    let enc = body(ChunkData::Bytes(Bytes::from_static(b"xy")))
        .encode()
        .unwrap();
    assert_eq!(enc, [&head[..], &[0xc4, 0x02, b'x', b'y']].concat());
    let items = ChunkData::Items(vec![Bytes::from_static(b"a"), Bytes::from_static(b"")]);
    let enc = body(items.clone()).encode().unwrap();
    assert_eq!(
        enc,
        [&head[..], &[0x92, 0xc4, 0x01, b'a', 0xc4, 0x00]].concat()
    );
    assert_eq!(
        ReplyBody::decode(&Bytes::from(enc)).unwrap().data,
        Some(items)
    );
}

#[test]
fn keys_decode_in_any_order_and_unknown_keys_are_skipped() {
    // {cancel_capable: true, extra: [1], data: "xy", status: "ok"} (another sender's order)
    let mut m = vec![0x84];
    m.extend(fixstr("cancel_capable"));
    m.push(0xc3);
    m.extend(fixstr("extra"));
    m.extend([0x91, 0x01]);
    m.extend(fixstr("data"));
    m.extend([0xc4, 0x02, b'x', b'y']);
    m.extend(fixstr("status"));
    m.extend(fixstr("ok"));
    let body = ReplyBody::decode(&Bytes::from(m)).unwrap();
    assert_eq!(body.status, ReplyStatus::Ok);
    assert_eq!(body.cancel_capable, Some(true));
    assert_eq!(body.data, Some(ChunkData::Bytes(Bytes::from_static(b"xy"))));
}

#[test]
fn hostile_reply_bodies_are_refused_with_what_is_wrong() {
    let data = |rest: &[u8]| {
        let mut v = vec![0x81];
        v.extend(fixstr("data"));
        v.extend_from_slice(rest);
        v
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x92, 0x01, 0x02], "not a map"),
        (vec![], "not a map"),
        (data(&[0xc4, 0x09, 1]), "truncated"),
        (
            data(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            "longer than the message",
        ),
        (data(&[0x92, 0x01, 0x02]), "must be bytes"),
        (data(&[0xa1, b'x']), "bytes or a list of bytes"),
        (vec![0x80], "without status"),
        (
            [&[0x81][..], &fixstr("status"), &fixstr("bad")].concat(),
            "unknown status",
        ),
        (
            [&[0x81][..], &fixstr("status"), &[0x05][..]].concat(),
            "\"status\"",
        ),
        (vec![0x81, 0xa9, b'x'], "truncated"),
        (vec![0x81, 0xa1, 0xff, 0xc0], "not UTF-8"),
        (
            [
                &[0x82][..],
                &fixstr("status"),
                &fixstr("ok"),
                &fixstr("state"),
                &[0x05][..],
            ]
            .concat(),
            "\"state\"",
        ),
    ];
    for (bad, want) in cases {
        let err = ReplyBody::decode(&Bytes::from(bad.clone())).unwrap_err();
        assert!(err.to_string().contains(want), "{bad:02x?}: {err}");
    }
}

#[test]
fn status_strings_round_trip() {
    for s in [ReplyStatus::Ok, ReplyStatus::Eof, ReplyStatus::Error] {
        assert_eq!(ReplyStatus::parse(s.as_str()), Some(s));
    }
    assert_eq!(ReplyStatus::parse("OK"), None);
}

fn any_body() -> impl Strategy<Value = ReplyBody> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from);
    let data = prop_oneof![
        Just(None),
        bytes().prop_map(|b| Some(ChunkData::Bytes(b))),
        proptest::collection::vec(bytes(), 0..5).prop_map(|v| Some(ChunkData::Items(v))),
    ];
    let plan =
        proptest::option::of(
            (1u64..1 << 40, 1u64..1 << 26).prop_map(|(total, chunk)| WirePlan {
                layout: "bytes".into(),
                total: Some(total),
                chunk: Some(chunk),
                count: None,
                per_chunk: None,
                total_bytes: Some(total),
                blake3: Some("ab".repeat(32)),
            }),
        );
    (
        prop_oneof![
            Just(ReplyStatus::Ok),
            Just(ReplyStatus::Eof),
            Just(ReplyStatus::Error)
        ],
        proptest::option::of(any::<u64>()),
        data,
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of("[0-9a-f]{0,40}"),
        plan,
    )
        .prop_map(
            |(status, offset, data, cancel, confirm, nonce, plan)| ReplyBody {
                status,
                state: offset.map(|o| State::new().with("received_bytes", o)),
                data,
                cancel_capable: cancel,
                confirm_expected: confirm,
                confirm_nonce: nonce,
                ferry_plan: plan,
            },
        )
}

proptest! {
    #[test]
    fn every_body_round_trips(body in any_body()) {
        let flat = concat(&body.clone().into_segments().unwrap());
        prop_assert_eq!(ReplyBody::decode(&flat).unwrap(), body);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = ReplyBody::decode(&Bytes::from(bytes));
    }
}

/// A file (`len` bytes of a pattern) and the same bytes in memory.
fn file_with(len: usize) -> (tempfile::NamedTempFile, Bytes) {
    use std::io::Write;
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&data).unwrap();
    f.flush().unwrap();
    (f, Bytes::from(data))
}

/// A file chunk is on the wire exactly the `bin` its bytes would be (NVFlare receivers see no
/// difference), and stays a region of its file among the parts.
#[test]
fn a_file_chunk_encodes_as_its_bytes_and_stays_a_file_part() {
    let (file, data) = file_with(100_000);
    let f = std::sync::Arc::new(std::fs::File::open(file.path()).unwrap());
    let state = State::new().with("received_bytes", 1000u64);
    let chunk = FileChunk::new(f, 1000, 70_000);
    let body = ReplyBody::data(state.clone(), ChunkData::File(chunk.clone()));
    let same = ReplyBody::data(state, ChunkData::Bytes(data.slice(1000..71_000)));
    assert_eq!(body.encode().unwrap(), same.encode().unwrap());
    let parts = body.clone().into_parts();
    assert!(
        parts.contains(&BodyPart::File(chunk)),
        "the chunk is not read"
    );
    let flat = concat(&body.into_segments().unwrap());
    assert_eq!(
        ReplyBody::decode(&flat).unwrap().data,
        Some(ChunkData::Bytes(data.slice(1000..71_000)))
    );
}

/// A file that no longer holds the chunk cannot be encoded: an error, never other bytes.
#[test]
fn a_file_chunk_past_the_end_of_its_file_is_an_error() {
    let (file, _) = file_with(10_000);
    let f = std::sync::Arc::new(std::fs::File::open(file.path()).unwrap());
    let body = ReplyBody::data(
        State::new(),
        ChunkData::File(FileChunk::new(f, 5_000, 8_000)),
    );
    let e = body.encode().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
}
