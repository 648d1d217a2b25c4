use super::stream::{data_type, Blob, ChunkHead, ChunkOut, StreamMsg};
use super::*;
use crate::headers::stream_keys as sk;
use crate::testutil::hex;

fn me(s: &str) -> Fqcn {
    Fqcn::new(s).unwrap()
}

fn key_order(h: &Headers) -> Vec<&str> {
    h.iter().map(|(k, _)| k).collect()
}

/// The header map of the §7 REQ capture (site-1 → server, task/echo).
fn req_capture() -> Headers {
    let mut b = hex("de 00 10 a8");
    let s = |b: &mut Vec<u8>, t: &str| b.extend_from_slice(t.as_bytes());
    s(&mut b, "x-my-hdr");
    b.extend(hex("07 a9"));
    s(&mut b, "cn__topic");
    b.push(0xa4);
    s(&mut b, "echo");
    b.push(0xab);
    s(&mut b, "cn__channel");
    b.push(0xa4);
    s(&mut b, "task");
    b.push(0xaf);
    s(&mut b, "cn__destination");
    b.push(0xa6);
    s(&mut b, "server");
    b.push(0xaa);
    s(&mut b, "cn__req_id");
    b.extend(hex("d9 24"));
    s(&mut b, "84fd2bd2-078f-465f-8e46-01d8ef3fc412");
    b.push(0xb2);
    s(&mut b, "cn__reply_expected");
    b.extend(hex("c3 aa"));
    s(&mut b, "cn__secure");
    b.extend(hex("c2 ac"));
    s(&mut b, "cn__optional");
    b.extend(hex("c2 a8"));
    s(&mut b, "cn__from");
    b.push(0xa6);
    s(&mut b, "site-1");
    b.push(0xa6);
    s(&mut b, "cn__to");
    b.push(0xa6);
    s(&mut b, "server");
    b.push(0xaa);
    s(&mut b, "cn__origin");
    b.push(0xa6);
    s(&mut b, "site-1");
    b.push(0xac);
    s(&mut b, "cn__msg_type");
    b.push(0xa3);
    s(&mut b, "req");
    b.push(0xa9);
    s(&mut b, "cn__route");
    b.extend(hex("91 92 a6"));
    s(&mut b, "site-1");
    b.extend(hex("cb 41 da c2 86 77 f5 67 83 b4"));
    s(&mut b, "cn__payload_encoding");
    b.push(0xa4);
    s(&mut b, "fobs");
    b.push(0xaf);
    s(&mut b, "cn__payload_len");
    b.extend(hex("1a ad"));
    s(&mut b, "cn__send_time");
    b.extend(hex("cb 41 da c2 86 77 f5 d8 ce"));
    assert_eq!(b.len(), 322);
    Headers::decode(&b).unwrap()
}

#[test]
fn a_request_is_stamped_like_nvflares_capture() {
    let capture = req_capture();
    let at = capture.get(keys::SEND_TIME).unwrap().as_f64().unwrap();
    let site = me("site-1");
    let stamp = Stamp { me: &site, at };
    let app: Headers = [("x-my-hdr", 7)].into_iter().collect();
    let to = Address {
        destination: "server",
        channel: "task",
        topic: "echo",
    };
    let body = Body {
        encoding: encoding::FOBS,
        len: 26,
    };
    let h = stamp.request(
        app,
        to,
        Some("84fd2bd2-078f-465f-8e46-01d8ef3fc412"),
        false,
        body,
    );
    let frame = seal(h, "server", vec![], 65_535).unwrap();
    // the capture's route entry was stamped a moment before its send time; ours share one
    let mut want = capture;
    want.insert(
        keys::ROUTE,
        Value::Array(vec![Value::Array(vec!["site-1".into(), Value::F64(at)])]),
    );
    assert_eq!(&frame.headers[..], &want.encode()[..]);
}

#[test]
fn a_reply_has_nvflares_key_order_and_defaults_to_ok() {
    let server = me("server");
    let stamp = Stamp {
        me: &server,
        at: 1.0,
    };
    let app: Headers = [("x-reply-hdr", "hi")].into_iter().collect();
    let to = Address {
        destination: "site-1",
        channel: "task",
        topic: "echo",
    };
    let body = Body {
        encoding: encoding::FOBS,
        len: 39,
    };
    let h = stamp.reply(app, to, "R1", body).into_headers();
    assert_eq!(
        key_order(&h),
        [
            "x-reply-hdr",
            "cn__secure",
            "cn__optional",
            "cn__return_code",
            "cn__channel",
            "cn__topic",
            "cn__from",
            "cn__to",
            "cn__origin",
            "cn__destination",
            "cn__req_id",
            "cn__msg_type",
            "cn__route",
            "cn__payload_encoding",
            "cn__payload_len",
            "cn__send_time",
        ]
    );
    assert_eq!(h.get_str(keys::RETURN_CODE), Some("ok"));
    // a handler's return code is kept
    let err = Message::error(ReturnCode::Timeout, "late").headers;
    let h = stamp.reply(err, to, "R1", Body::NONE).into_headers();
    assert_eq!(h.get_str(keys::RETURN_CODE), Some("timeout"));
    assert_eq!(h.get_str(keys::ERROR), Some("late"));
}

use crate::message::Message;

/// The envelope of a message with these headers as it is received (decoded from its block,
/// its strs read where they lie), checked to read as the same map built here reads.
fn received(pairs: &[(&str, Value)]) -> Envelope {
    let h: Headers = pairs.iter().cloned().collect();
    let got = Envelope::parse(Headers::decode(&h.encode()).unwrap()).unwrap();
    let built = Envelope::parse(h).unwrap();
    assert_eq!(got.msg_type, built.msg_type);
    assert_eq!(got.names, built.names);
    assert_eq!(got.reply_ids(), built.reply_ids());
    assert_eq!(got.payload_encoding(), built.payload_encoding());
    assert_eq!(
        got.payload_encoding(),
        got.headers.get_str(keys::PAYLOAD_ENCODING)
    );
    for ch in ["", "ch", sk::STREAM_CHANNEL] {
        assert_eq!(got.channel_is(ch), built.channel_is(ch), "{ch:?}");
        assert_eq!(got.channel_is(ch), got.channel() == ch, "{ch:?}");
    }
    got
}

#[test]
fn the_channel_is_compared_as_its_text() {
    let e = |ch: Value| {
        received(&[
            ("cn__msg_type", "req".into()),
            ("cn__origin", "a".into()),
            ("cn__destination", "b".into()),
            ("cn__channel", ch),
        ])
    };
    assert!(e(sk::STREAM_CHANNEL.into()).channel_is(sk::STREAM_CHANNEL));
    assert!(!e("sm__STREAMx".into()).channel_is(sk::STREAM_CHANNEL));
    // not a str: no channel, as `channel()` says
    assert!(e(Value::Binary(b"ch".to_vec())).channel_is(""));
    assert!(!e(Value::Binary(b"ch".to_vec())).channel_is("ch"));
    assert!(e("é".into()).channel_is("é"));
}

#[test]
fn the_payload_encoding_reads_as_its_text() {
    for enc in [
        Value::from("fobs"),
        "bytes".into(),
        "none".into(),
        "fobs2".into(),
        "".into(),
        "fōbs".into(),
        Value::Nil,
        Value::Binary(b"fobs".to_vec()),
    ] {
        let e = received(&[
            ("cn__msg_type", "req".into()),
            ("cn__origin", "a".into()),
            ("cn__destination", "b".into()),
            ("cn__payload_encoding", enc.clone()),
        ]);
        assert_eq!(e.payload_encoding(), enc.as_str(), "{enc:?}");
    }
}

#[test]
fn the_message_type_is_matched_on_its_bytes() {
    let e = |t: Value| {
        let h: Headers = [
            ("cn__msg_type", t),
            ("cn__origin", "a".into()),
            ("cn__destination", "b".into()),
        ]
        .into_iter()
        .collect();
        Envelope::parse(Headers::decode(&h.encode()).unwrap()).map(|e| e.msg_type)
    };
    assert_eq!(e("req".into()), Ok(MsgType::Req));
    assert_eq!(e("reply".into()), Ok(MsgType::Reply));
    assert_eq!(e("return".into()), Ok(MsgType::Return));
    assert_eq!(e("réq".into()), Ok(MsgType::Other("réq".into())));
    assert_eq!(e("REQ".into()), Ok(MsgType::Other("REQ".into())));
    assert_eq!(e("".into()), Ok(MsgType::Other(String::new())));
    assert!(e(Value::Binary(b"req".to_vec())).is_err(), "not a str");
}

#[test]
fn parse_needs_type_origin_and_destination() {
    let h: Headers = [("cn__msg_type", "req"), ("cn__origin", "a")]
        .into_iter()
        .collect();
    assert!(Envelope::parse(h).is_err());
    let e = received(&[
        ("cn__msg_type", "gossip".into()),
        ("cn__origin", "a".into()),
        ("cn__destination", "b".into()),
    ]);
    assert_eq!((e.origin(), e.destination()), ("a", "b"));
    assert_eq!(e.msg_type, MsgType::Other("gossip".into()));
    assert_eq!(e.msg_type.as_str(), "gossip");
    assert_eq!((e.channel(), e.topic(), e.hops()), ("", "", 0));
    assert!(!e.reply_expected() && !e.encrypted());
}

#[test]
fn origin_and_destination_share_one_string_and_come_back_apart() {
    for (o, d) in [
        ("site-1", "server"),
        ("", "b"),
        ("a", ""),
        ("sïte.é", "sérver.x"),
    ] {
        let e = received(&[
            ("cn__msg_type", "req".into()),
            ("cn__origin", o.into()),
            ("cn__destination", d.into()),
        ]);
        assert_eq!((e.origin(), e.destination()), (o, d));
        assert_eq!(e.names, Names::new(o, d));
    }
}

#[test]
fn a_reply_answers_one_id_or_a_list() {
    let base = |id: Value| {
        received(&[
            ("cn__msg_type", "return".into()),
            ("cn__origin", "a".into()),
            ("cn__destination", "b".into()),
            ("cn__req_id", id),
        ])
    };
    let (r1, r2) = (RequestId::new(), RequestId::new());
    assert_eq!(base(r1.to_text().into()).reply_ids().as_slice(), [Ok(r1)]);
    let list = Value::Array(vec![r1.to_text().into(), 7.into(), r2.to_text().into()]);
    assert_eq!(base(list).reply_ids().as_slice(), [Ok(r1), Ok(r2)]);
    assert!(base(Value::Nil).reply_ids().is_empty());
    assert!(
        !base(r1.to_text().into()).reply_ids().spilled(),
        "one id: kept inline"
    );
    // an id this cell did not make answers nothing here, and is kept for the log
    let upper = r1.to_text().to_uppercase();
    assert_eq!(
        base(upper.as_str().into()).reply_ids().as_slice(),
        [Err(upper)]
    );
    assert_eq!(
        base("R1".into()).reply_ids().as_slice(),
        [Err("R1".to_string())]
    );
}

#[test]
fn only_requests_that_wait_are_bounced() {
    let server = me("server");
    let stamp = Stamp {
        me: &server,
        at: 2.0,
    };
    let why = Refusal {
        code: ReturnCode::CommError,
        error: "cannot forward",
        reason: "cant_forward",
    };
    let mut req = received(&[
        ("cn__msg_type", "req".into()),
        ("cn__origin", "site-1".into()),
        ("cn__destination", "site-9".into()),
        ("cn__channel", "c".into()),
        ("cn__topic", "t".into()),
        ("cn__req_id", "R1".into()),
        ("cn__reply_expected", true.into()),
    ]);
    let h = stamp
        .bounce(&req, "site-1", why.clone())
        .unwrap()
        .into_headers();
    assert_eq!(h.get_str(keys::MSG_TYPE), Some("return"));
    assert_eq!(h.get_str(keys::DESTINATION), Some("site-1"));
    assert_eq!(h.get_str(keys::RETURN_CODE), Some("comm_error"));
    assert_eq!(h.get_str(keys::RETURN_REASON), Some("cant_forward"));
    assert_eq!(h.get(keys::REQ_ID), Some(&Value::Array(vec!["R1".into()])));
    assert_eq!(h.get(keys::ORIGINAL_HEADERS), Some(&req.headers.to_value()));
    req.headers.insert(keys::REPLY_EXPECTED, false);
    assert!(stamp.bounce(&req, "site-1", why.clone()).is_none());
    let reply = received(&[
        ("cn__msg_type", "reply".into()),
        ("cn__origin", "site-1".into()),
        ("cn__destination", "site-9".into()),
        ("cn__reply_expected", true.into()),
    ]);
    assert!(stamp.bounce(&reply, "site-1", why).is_none());
}

#[test]
fn forwarding_appends_to_the_route_and_seal_names_the_next_hop() {
    let site = me("site-1");
    let relay = me("server");
    let to = Address {
        destination: "site-2",
        channel: "c",
        topic: "t",
    };
    let h = Stamp { me: &site, at: 1.0 }.request(Headers::new(), to, None, false, Body::NONE);
    let mut e = Envelope::parse(h.into_headers()).unwrap();
    Stamp {
        me: &relay,
        at: 2.0,
    }
    .forward(&mut e.headers);
    assert_eq!(e.headers.get_str(keys::FROM), Some("server"));
    assert_eq!(e.headers.get_str(keys::ORIGIN), Some("site-1"));
    let e = Envelope::parse(e.headers).unwrap();
    assert_eq!(e.hops(), 2);
    let order_before = key_order(&e.headers).join(",");
    let f = seal(e.headers.into(), "site-2", vec![], 65_535).unwrap();
    let sealed = Headers::decode(&f.headers).unwrap();
    assert_eq!(sealed.get_str(keys::TO), Some("site-2"));
    assert_eq!(key_order(&sealed).join(","), order_before);
    assert_eq!(f.app_id, APP_ID_CELLNET);
}

#[test]
fn seal_refuses_headers_over_the_limit() {
    let mut h = Headers::new();
    h.insert("big", "x".repeat(100));
    let e = seal(h.into(), "peer", vec![], 64).unwrap_err();
    assert!(matches!(e, CellnetError::Headers(_)), "{e}");
}

#[test]
fn stream_messages_parse_by_topic_and_data_type() {
    let h = |pairs: &[(&str, Value)]| -> Headers { pairs.iter().cloned().collect() };
    let chunk = h(&[
        (sk::ID, 9.into()),
        (sk::SEQ, 3.into()),
        (sk::DATA_TYPE, data_type::FINAL.into()),
        (sk::SIZE, 40.into()),
        (sk::WINDOW, 16.into()),
    ]);
    assert_eq!(
        StreamMsg::parse(sk::TOPIC_DATA, &chunk),
        Ok(StreamMsg::Chunk(ChunkHead {
            sid: 9,
            seq: 3,
            last: true,
            size: 40,
            window: Some(16),
        }))
    );
    let abort = h(&[(sk::ID, 9.into()), (sk::DATA_TYPE, data_type::ERROR.into())]);
    assert_eq!(
        StreamMsg::parse(sk::TOPIC_DATA, &abort),
        Ok(StreamMsg::SenderAbort {
            sid: 9,
            why: "aborted by sender".into()
        })
    );
    assert!(matches!(
        StreamMsg::parse(sk::TOPIC_ERROR, &abort),
        Ok(StreamMsg::ReceiverAbort {
            sid: 9,
            ri: None,
            ..
        })
    ));
    assert!(matches!(
        StreamMsg::parse(sk::TOPIC_ACK, &abort),
        Ok(StreamMsg::ReceiverAbort { sid: 9, .. })
    ));
    let ack = h(&[(sk::ID, 9.into()), (sk::OFFSET, 30.into())]);
    assert_eq!(
        StreamMsg::parse(sk::TOPIC_ACK, &ack),
        Ok(StreamMsg::Ack { sid: 9, offset: 30 })
    );
    assert_eq!(
        StreamMsg::parse(sk::TOPIC_ERROR, &ack),
        Ok(StreamMsg::Stray { sid: 9 })
    );
    assert!(StreamMsg::parse("sm__RESUME", &ack).is_err());
    assert!(StreamMsg::parse(sk::TOPIC_ACK, &Headers::new()).is_err());
}

#[test]
fn stream_messages_round_trip_through_the_stamp() {
    let site = me("site-1");
    let stamp = Stamp { me: &site, at: 1.0 };
    let blob: Headers = [("x-app", "v")].into_iter().collect();
    let c = ChunkOut {
        sid: 5,
        seq: 0,
        last: false,
        offset: 0,
        total: 10,
        encoding: encoding::FOBS,
        channel: "ch",
        topic: "tp",
        ri: Some("RI"),
        first: Some((4, 8)),
        len: 4,
    };
    let h = stamp.stream_chunk(&blob, "server", &c);
    let e = Envelope::parse(h).unwrap();
    assert_eq!(
        (e.channel(), e.topic()),
        (sk::STREAM_CHANNEL, sk::TOPIC_DATA)
    );
    assert!(!e.reply_expected());
    assert_eq!(
        StreamMsg::parse(e.topic(), &e.headers),
        Ok(StreamMsg::Chunk(ChunkHead {
            sid: 5,
            seq: 0,
            last: false,
            size: 10,
            window: Some(8)
        }))
    );
    // what the handler of the reassembled blob sees
    let b = Blob::from_chunk_headers(e.headers.clone(), "site-1");
    assert_eq!((b.channel.as_str(), b.topic.as_str()), ("ch", "tp"));
    assert_eq!(b.ri.as_deref(), Some("RI"));
    assert_eq!(b.encoding.as_deref(), Some("fobs"));
    assert!(!b.is_reply());
    assert_eq!(b.headers.get_str("x-app"), Some("v"));
    assert_eq!(b.headers.get_str(keys::CHANNEL), Some("ch"));
    assert_eq!(b.headers.get_str(keys::ORIGIN), Some("site-1"));
    assert_eq!(b.headers.get_str(keys::PAYLOAD_ENCODING), Some("fobs"));
    assert!(b
        .headers
        .iter()
        .all(|(k, _)| !k.starts_with("sm__") || k == sk::REQ_ID));
    for k in [keys::MSG_TYPE, keys::TO, keys::FROM, keys::REQ_ID] {
        assert!(!b.headers.contains(k), "{k}");
    }

    let ack = stamp.stream_ack("server", 5, 10, 2);
    assert_eq!(
        &key_order(&ack)[..4],
        [sk::ID, sk::DATA_TYPE, sk::OFFSET, sk::SEQ]
    );
    assert_eq!(
        StreamMsg::parse(sk::TOPIC_ACK, &ack),
        Ok(StreamMsg::Ack { sid: 5, offset: 10 })
    );
    let [on_error, on_ack] = stamp.stream_errors("server", 5, "too big", &e.headers);
    for (h, topic) in [(on_error, sk::TOPIC_ERROR), (on_ack, sk::TOPIC_ACK)] {
        assert_eq!(h.get_str(keys::TOPIC), Some(topic));
        assert_eq!(
            StreamMsg::parse(topic, &h),
            Ok(StreamMsg::ReceiverAbort {
                sid: 5,
                why: "too big".into(),
                ri: Some("RI".into())
            })
        );
    }
}
