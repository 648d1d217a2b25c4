//! Bad input (f3-wire.md §1.5, §2.3), vanished peers, and graceful shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferry_cellnet::frame::FrameType;
use ferry_cellnet::headers::Headers;
use ferry_cellnet::{Cell, Limits, Message, ReturnCode};
use tokio::net::TcpListener;

fn echo(cell: &Cell) {
    cell.register_request_handler("t", "echo", |m: Message| async move {
        Message::from_value(m.value().unwrap())
    });
}

/// Headers of a minimal REQ (f3-wire.md §2.2) from `origin` to `dest`.
fn req_headers(origin: &str, dest: &str, req_id: &str) -> Vec<u8> {
    let h: Headers = [
        ("cn__msg_type", "req"),
        ("cn__origin", origin),
        ("cn__destination", dest),
        ("cn__channel", "t"),
        ("cn__topic", "echo"),
        ("cn__req_id", req_id),
        ("cn__payload_encoding", "none"),
    ]
    .into_iter()
    .collect();
    let mut h = h;
    h.insert("cn__reply_expected", true);
    h.encode()
}

#[tokio::test]
async fn raw_peer_gets_a_reply_and_answers_pings() {
    let (server, url) = listening("server", Limits::default()).await;
    echo(&server);
    let mut p = RawPeer::connect(&url).await;
    p.handshake("site-1").await;
    p.send(&frame(FrameType::Ping, 0, vec![], vec![0xc0])).await;
    let f = p.next_frame().await.unwrap();
    assert_eq!(f.frame_type(), Some(FrameType::Pong));
    assert_eq!(&f.payload[..], &[0xc0]);
    p.send(&frame(
        FrameType::Data,
        1,
        req_headers("site-1", "server", "R1"),
        vec![],
    ))
    .await;
    let f = p.next_data().await.unwrap();
    let h = Headers::decode(&f.headers).unwrap();
    assert_eq!(h.get_str("cn__msg_type"), Some("reply"));
    assert_eq!(h.get_str("cn__req_id"), Some("R1"));
    assert_eq!(h.get_str("cn__return_code"), Some("ok"));
    assert_eq!(h.get_str("cn__to"), Some("site-1"));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_frames_are_dropped_and_the_connection_kept() {
    let (server, url) = listening("server", Limits::default()).await;
    echo(&server);
    let mut p = RawPeer::connect(&url).await;
    // DATA before HELLO: dropped, connection kept, a later HELLO works
    p.send(&frame(
        FrameType::Data,
        1,
        req_headers("site-1", "server", "R0"),
        vec![],
    ))
    .await;
    p.handshake("site-1").await;
    // unknown frame type 9
    let mut unknown = frame(FrameType::Data, 0, vec![], vec![1, 2, 3]).to_vec();
    unknown[6] = 9;
    p.send(&unknown).await;
    // undecodable headers
    p.send(&frame(FrameType::Data, 1, vec![0xc1, 0xc1], vec![]))
        .await;
    // headers that are not a map / keys that are not str
    p.send(&frame(FrameType::Data, 1, vec![0x81, 0x01, 0x02], vec![]))
        .await;
    // header_len larger than the frame
    let mut overrun = frame(FrameType::Data, 1, vec![0x80], vec![]).to_vec();
    overrun[5] = 50;
    p.send(&overrun).await;
    // missing cn__msg_type
    p.send(&frame(FrameType::Data, 1, vec![0x80], vec![])).await;
    // a reply nobody waits for
    let h: Headers = [
        ("cn__msg_type", "reply"),
        ("cn__origin", "site-1"),
        ("cn__destination", "server"),
        ("cn__req_id", "nobody-waits"),
    ]
    .into_iter()
    .collect();
    p.send(&frame(FrameType::Data, 1, h.encode(), vec![])).await;
    // a FOBS payload that is garbage: invalid_request
    let mut bad = Headers::decode(&req_headers("site-1", "server", "R2")).unwrap();
    bad.insert("cn__payload_encoding", "fobs");
    p.send(&frame(
        FrameType::Data,
        1,
        bad.encode(),
        vec![0x64, 0, 0xff],
    ))
    .await;
    let f = p.next_data().await.unwrap();
    let h = Headers::decode(&f.headers).unwrap();
    assert_eq!(h.get_str("cn__req_id"), Some("R2"));
    assert_eq!(h.get_str("cn__return_code"), Some("invalid_request"));
    // after all that the connection still serves a request
    p.send(&frame(
        FrameType::Data,
        1,
        req_headers("site-1", "server", "R3"),
        vec![],
    ))
    .await;
    let f = p.next_data().await.unwrap();
    let h = Headers::decode(&f.headers).unwrap();
    assert_eq!(h.get_str("cn__req_id"), Some("R3"));
    assert_eq!(h.get_str("cn__return_code"), Some("ok"));
    server.shutdown().await;
}

#[tokio::test]
async fn short_frame_closes_the_connection() {
    let (server, url) = listening("server", Limits::default()).await;
    let mut p = RawPeer::connect(&url).await;
    p.handshake("site-1").await;
    p.send(&[0, 0, 0, 15, 0, 0, 1, 0, 0, 0, 0, 1, 0, 17, 0, 2])
        .await;
    assert!(p.closed_by_peer().await);
    eventually(|| !server.is_connected("site-1")).await;
    server.shutdown().await;
}

#[tokio::test]
async fn oversize_frame_closes_the_connection_before_reading_it() {
    let limits = Limits {
        max_frame_size: 1 << 20,
        ..Limits::default()
    };
    let (server, url) = listening("server", limits).await;
    let mut p = RawPeer::connect(&url).await;
    p.handshake("site-1").await;
    // announce 2 GiB - 2 MiB (legal for NVFlare, over our 1 MiB limit), send only the prefix
    let len: u32 = 2_145_386_496;
    let mut prefix = vec![0u8; 16];
    prefix[..4].copy_from_slice(&len.to_be_bytes());
    prefix[6] = 1;
    prefix[11] = 1;
    p.send(&prefix).await;
    assert!(p.closed_by_peer().await);
    // a ferry cell is not affected
    echo(&server);
    let c = connected("site-2", &url).await;
    let r = c
        .send_request("t", "echo", "server", Message::from_value(1), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok);
    c.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn hello_with_invalid_fqcn_gets_ready_then_close() {
    let (server, url) = listening("server", Limits::default()).await;
    for bad in ["a..b", "x y", "dup.dup", ""] {
        let mut p = RawPeer::connect(&url).await;
        p.handshake(bad).await; // READY is sent first, as NVFlare does
        assert!(p.closed_by_peer().await, "{bad:?}");
    }
    assert!(server.connected_peers().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn hello_with_own_name_is_not_registered() {
    let (server, url) = listening("server", Limits::default()).await;
    let mut p = RawPeer::connect(&url).await;
    p.handshake("server").await;
    // kept open and answering PINGs, but never routed to
    p.send(&frame(FrameType::Ping, 0, vec![], vec![0xc0])).await;
    assert_eq!(
        p.next_frame().await.unwrap().frame_type(),
        Some(FrameType::Pong)
    );
    assert!(server.connected_peers().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn peer_killed_mid_request_yields_an_error_not_a_hang() {
    init_tracing();
    // a peer that completes the handshake, reads the request and dies
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let killer = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut p = RawPeer::from_stream(s);
        let hello = p.next_frame().await.unwrap();
        assert_eq!(hello.frame_type(), Some(FrameType::Hello));
        p.send(&frame(
            FrameType::Ready,
            0,
            vec![],
            hello_payload_sync("server").to_vec(),
        ))
        .await;
        let req = p.next_data().await.unwrap();
        drop(req);
        drop(p);
    });
    let c = connected("site-1", &url).await;
    let r = c
        .send_request("t", "echo", "server", Message::from_value(1), LONG)
        .await;
    assert!(
        matches!(r.return_code(), ReturnCode::CommError | ReturnCode::Timeout),
        "{:?}",
        r.return_code()
    );
    killer.await.unwrap();
    // and afterwards the target is unreachable, immediately
    eventually(|| !c.is_connected("server")).await;
    let r = c
        .send_request("t", "echo", "server", Message::from_value(1), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::TargetUnreachable);
    c.shutdown().await;
}

#[tokio::test]
async fn too_many_connections_are_closed() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let (server, url) = listening("server", limits).await;
    let mut first = RawPeer::connect(&url).await;
    first.handshake("site-1").await;
    let mut second = RawPeer::connect(&url).await;
    assert!(second.closed_by_peer().await);
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_answers_in_flight_requests() {
    let (server, url) = listening("server", Limits::default()).await;
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let s2 = started.clone();
    server.register_request_handler("t", "slow", move |_m: Message| {
        let s2 = s2.clone();
        async move {
            s2.notify_one();
            tokio::time::sleep(Duration::from_millis(200)).await;
            Message::from_value("finished")
        }
    });
    let client = connected("site-1", &url).await;
    let c2 = client.clone();
    let pending = tokio::spawn(async move {
        c2.send_request("t", "slow", "server", Message::new(), LONG)
            .await
    });
    started.notified().await;
    server.shutdown().await;
    // the in-flight request was answered before the connection closed
    let r = pending.await.unwrap();
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error_text());
    assert_eq!(r.value().unwrap().as_str(), Some("finished"));
    eventually(|| !client.is_connected("server")).await;
    // a shut-down cell refuses new work
    assert!(server.listen("tcp://127.0.0.1:0").await.is_err());
    client.shutdown().await;
}

#[tokio::test]
async fn shutdown_fails_waiting_requests_and_abandons_stuck_handlers() {
    let (server, url) = listening("server", Limits::default()).await;
    let entered = std::sync::Arc::new(tokio::sync::Notify::new());
    let e2 = entered.clone();
    server.register_request_handler("t", "stuck", move |_m: Message| {
        let e2 = e2.clone();
        async move {
            e2.notify_one();
            std::future::pending::<Message>().await
        }
    });
    let client = connected("site-1", &url).await;
    let c2 = client.clone();
    let pending = tokio::spawn(async move {
        c2.send_request("t", "stuck", "server", Message::new(), LONG)
            .await
    });
    entered.notified().await;
    // the server gives up on its stuck handler and fails the request
    server.shutdown_with_grace(Duration::from_millis(50)).await;
    let r = pending.await.unwrap();
    assert_eq!(r.return_code(), ReturnCode::CommError);
    client.shutdown().await;
}

#[tokio::test]
async fn idle_connection_gets_a_ping() {
    let limits = Limits {
        heartbeat_interval: Duration::from_millis(100),
        ..Limits::default()
    };
    let (server, url) = listening("server", limits).await;
    let mut p = RawPeer::connect(&url).await;
    p.handshake("site-1").await;
    // say nothing: the server pings the idle connection
    let f = p.next_frame().await.unwrap();
    assert_eq!(f.frame_type(), Some(FrameType::Ping));
    assert_eq!(f.prefix.app_id, 0);
    assert_eq!(&f.payload[..], &[0xc0]);
    p.send(&frame(FrameType::Pong, 0, vec![], vec![0xc0])).await;
    assert!(server.is_connected("site-1"));
    server.shutdown().await;
}

#[tokio::test]
async fn encrypted_payloads_are_refused_clearly() {
    let (server, url) = listening("server", Limits::default()).await;
    echo(&server);
    let mut p = RawPeer::connect(&url).await;
    p.handshake("site-1").await;
    let mut h = Headers::decode(&req_headers("site-1", "server", "E1")).unwrap();
    h.insert("cn__secure", true);
    h.insert("cn__encrypted", true);
    p.send(&frame(FrameType::Data, 1, h.encode(), vec![1; 600]))
        .await;
    let f = p.next_data().await.unwrap();
    let h = Headers::decode(&f.headers).unwrap();
    assert_eq!(h.get_str("cn__req_id"), Some("E1"));
    assert_eq!(h.get_str("cn__return_code"), Some("invalid_request"));
    server.shutdown().await;
}

/// A raw peer streams a request in chunks out of order, with a duplicate, and after the
/// stream completed resends a chunk (as a reliable sender does): one reply, re-ACKed duplicate.
#[tokio::test]
async fn raw_stream_out_of_order_duplicates_and_late_retry() {
    let (server, url) = listening("server", Limits::default()).await;
    server.register_request_handler("ch", "tp", |m: Message| async move {
        Message::from_bytes(m.bytes().cloned().unwrap_or_default())
    });
    let mut p = RawPeer::connect(&url).await;
    p.handshake("site-1").await;
    let blob: Vec<u8> = (0..30u8).collect();
    let chunk = |seq: u64| -> Bytes {
        let mut h: Headers = [
            ("cn__msg_type", "req"),
            ("cn__origin", "site-1"),
            ("cn__destination", "server"),
            ("cn__channel", "sm__STREAM"),
            ("cn__topic", "sm__DATA"),
            ("cn__payload_encoding", "bytes"),
            ("sm__ch", "ch"),
            ("sm__tp", "tp"),
            ("sm__pe", "bytes"),
            ("sm__ri", "RI-1"),
        ]
        .into_iter()
        .collect();
        h.insert("cn__reply_expected", false);
        h.insert("sm__id", 77u64);
        h.insert("sm__sq", seq);
        h.insert("sm__dt", if seq == 2 { 2u64 } else { 1u64 });
        h.insert("sm__os", seq * 10);
        h.insert("sm__sz", 30u64);
        h.insert("sm__rs", true);
        let s = (seq * 10) as usize;
        frame(FrameType::Data, 1, h.encode(), blob[s..s + 10].to_vec())
    };
    for seq in [2u64, 0, 0, 1] {
        p.send(&chunk(seq)).await;
    }
    // ACK(s) then the streamed reply on return_only with our sm__ri
    let mut reply = Vec::new();
    let mut acks = 0;
    loop {
        let f = p.next_data().await.unwrap();
        let h = Headers::decode(&f.headers).unwrap();
        match h.get_str("cn__topic") {
            Some("sm__ACK") => {
                assert_eq!(h.get_u64("sm__dt"), Some(3));
                acks += 1;
            }
            Some("sm__DATA") => {
                assert_eq!(h.get_str("sm__ch"), Some("return_only"));
                assert_eq!(h.get_str("sm__tp"), Some("ch:tp"));
                assert_eq!(h.get_str("sm__ri"), Some("RI-1"));
                assert_eq!(h.get_str("cn__return_code"), Some("ok"));
                reply.extend_from_slice(&f.payload);
                if h.get_u64("sm__dt") == Some(2) {
                    break;
                }
            }
            other => panic!("unexpected topic {other:?}"),
        }
    }
    assert!(acks >= 1);
    assert_eq!(reply, blob);
    // a late retry of chunk 1 is re-acknowledged, not treated as a new stream
    p.send(&chunk(1)).await;
    let f = p.next_data().await.unwrap();
    let h = Headers::decode(&f.headers).unwrap();
    assert_eq!(h.get_str("cn__topic"), Some("sm__ACK"));
    assert_eq!(h.get_u64("sm__os"), Some(30));
    assert_eq!(h.get_u64("sm__sq"), Some(2));
    server.shutdown().await;
}

#[tokio::test]
async fn persistent_connection_comes_back_after_the_parent_restarts() {
    let (server, url) = listening("server", Limits::default()).await;
    let client = Cell::new("site-1").unwrap();
    assert_eq!(
        client.connect_persistent(&url).await.unwrap().as_str(),
        "server"
    );
    assert_eq!(client.parent().unwrap().as_str(), "server");
    server.shutdown().await;
    eventually(|| !client.is_connected("server")).await;
    // a new server on the same address
    let server2 = Cell::new("server").unwrap();
    echo(&server2);
    assert_eq!(server2.listen(&url).await.unwrap(), url);
    eventually(|| client.is_connected("server")).await;
    let r = client
        .send_request("t", "echo", "server", Message::from_value(5), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok);
    client.shutdown().await;
    server2.shutdown().await;
}

/// NVFlare sends READY before registering the new peer and handles frames on a thread pool,
/// so DATA right behind READY may be dropped. A listener that does not announce `ferry_sync`
/// is probed: `connect` returns only once a probe was answered.
#[tokio::test]
async fn connect_waits_until_a_python_like_peer_has_registered_us() {
    init_tracing();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let peer = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut p = RawPeer::from_stream(s);
        assert_eq!(
            p.next_frame().await.unwrap().frame_type(),
            Some(FrameType::Hello)
        );
        // plain NVFlare READY (no ferry_sync)
        p.send(&frame(
            FrameType::Ready,
            0,
            vec![],
            hello_payload("server").to_vec(),
        ))
        .await;
        // "not registered yet": drop the first DATA frame, answer everything after it
        let first = p.next_data().await.unwrap();
        let h = Headers::decode(&first.headers).unwrap();
        assert_eq!(h.get_str("cn__channel"), Some("cellnet.channel"));
        assert_eq!(h.get_bool("cn__optional"), Some(true));
        let mut answered = Vec::new();
        while let Some(f) = p.next_data().await {
            let h = Headers::decode(&f.headers).unwrap();
            let topic = h.get_str("cn__topic").unwrap_or_default().to_string();
            let reply: Headers = [
                ("cn__msg_type", "reply"),
                ("cn__origin", "server"),
                ("cn__destination", "site-1"),
                ("cn__req_id", h.get_str("cn__req_id").unwrap()),
                (
                    "cn__return_code",
                    if topic == "ferry_probe" {
                        "process_exception"
                    } else {
                        "ok"
                    },
                ),
            ]
            .into_iter()
            .collect();
            p.send(&frame(FrameType::Data, 1, reply.encode(), vec![]))
                .await;
            answered.push(topic.clone());
            if topic == "echo" {
                break;
            }
        }
        answered
    });
    let c = connected("site-1", &url).await;
    // the first request after connect is answered
    let r = c
        .send_request("t", "echo", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok);
    let answered = peer.await.unwrap();
    assert_eq!(answered, ["ferry_probe", "echo"]);
    c.shutdown().await;
}
