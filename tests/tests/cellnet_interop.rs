//! Ferry cells (`ferry-cellnet`) against real NVFlare 2.9 cells (`tests/py/*.py`).
//!
//! 1. a Ferry cell connects to a Python server cell and makes requests (plain, streamed, large,
//!    fire-and-forget); the Python server also makes requests to the Ferry cell;
//! 2. a Python client cell connects to a Ferry listener and sends plain and streamed requests;
//!    Ferry replies (streamed to streamed requests) and requests back;
//! 3. forwarding: Ferry → Python `server` → Python child `server.j1`, and the reverse
//!    (Python child → Python server → Ferry);
//! 4. the same over mutual TLS with certificates generated in the test, plus the identity
//!    rules (FQCN root = certificate CN, certificates from another CA refused).
//!
//! Needs the interop interpreter (`cargo xtask interop-setup`, or `FERRY_INTEROP_PYTHON`);
//! without it every test here fails with that instruction.

mod common;

use common::echo::{
    assert_ferry_echo_result, assert_python_echo, bin_sha, connect_settled, register_echo,
    request_body, DATUM_SIZE, PEER_TIMEOUT, REQUEST_TIMEOUT,
};
use ferry_cellnet::rmpv::Value;
use ferry_cellnet::{Cell, Message, RequestOptions, ReturnCode};
use ferry_tests::names::{
    ECHO_HEADER, ECHO_TOPIC, NOTIFY_TOPIC, PLAIN_CHANNEL, REQUEST_HEADER, STREAM_CHANNEL,
};
use ferry_tests::{args, init_tracing, pattern_bytes, PyPeer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_cell_requests_a_python_server() {
    init_tracing();
    let mut server = PyPeer::spawn_async("nv_server_cell.py", ["--timeout", PEER_TIMEOUT]).await;
    let url = server.ready_str("url").to_string();

    let site = Cell::new("site-1").unwrap();
    let peer = connect_settled(&site, &url).await;
    assert_eq!(peer, "server");

    // plain CoreCell request on `task`
    let sent = request_body("plain", 0, None);
    let req = Message::from_value(sent.clone()).with_header(REQUEST_HEADER, "plain-0");
    let reply = site
        .send_request(PLAIN_CHANNEL, ECHO_TOPIC, "server", req, REQUEST_TIMEOUT)
        .await;
    assert_python_echo(&reply, &sent, "server", "site-1", PLAIN_CHANNEL);
    assert_eq!(reply.headers.get_str(ECHO_HEADER), Some("plain-0"));
    let seen = server.wait_event_async("echo").await;
    assert_eq!(seen["origin"], "site-1");
    assert_eq!(seen["channel"], PLAIN_CHANNEL);
    assert_eq!(seen["headers"][REQUEST_HEADER], "plain-0");
    assert_eq!(seen["payload"]["text"], "ferry plain request");

    // streamed request (sm__*) on a stream channel; NVFlare streams the reply on return_only
    let sent = request_body("stream", 1, None);
    let req = Message::from_value(sent.clone()).with_header(REQUEST_HEADER, "stream-1");
    let reply = site
        .send_request_with(
            STREAM_CHANNEL,
            ECHO_TOPIC,
            "server",
            req,
            RequestOptions::timeout(REQUEST_TIMEOUT).streamed(true),
        )
        .await;
    assert_python_echo(&reply, &sent, "server", "site-1", STREAM_CHANNEL);
    assert_eq!(reply.headers.get_str(ECHO_HEADER), Some("stream-1"));

    // a plain request on a stream channel: a Python Cell answers it with a plain reply
    let sent = request_body("plain-on-stream", 2, None);
    let reply = site
        .send_request(
            STREAM_CHANNEL,
            ECHO_TOPIC,
            "server",
            Message::from_value(sent.clone()),
            REQUEST_TIMEOUT,
        )
        .await;
    assert_python_echo(&reply, &sent, "server", "site-1", STREAM_CHANNEL);

    // > 10 MiB values travel as FOBS datums, both ways, on both paths
    for streamed in [false, true] {
        let sent = request_body("datum", 3, Some(DATUM_SIZE));
        let reply = site
            .send_request_with(
                STREAM_CHANNEL,
                ECHO_TOPIC,
                "server",
                Message::from_value(sent.clone()),
                RequestOptions::timeout(REQUEST_TIMEOUT).streamed(streamed),
            )
            .await;
        assert_python_echo(&reply, &sent, "server", "site-1", STREAM_CHANNEL);
        let seen = server
            .wait_result_async(|v| v["event"] == "echo" && v["payload"]["kind"] == "datum")
            .await;
        assert_eq!(seen["payload"]["big"]["bytes_len"], DATUM_SIZE);
        assert_eq!(
            seen["payload"]["big"]["sha256"],
            bin_sha(&sent["big"]).as_str()
        );
    }

    // fire-and-forget, plain and streamed: the Python handler runs, nothing comes back
    for (i, streamed) in [false, true].into_iter().enumerate() {
        let tag = format!("notify-{i}");
        site.fire_and_forget_with(
            STREAM_CHANNEL,
            NOTIFY_TOPIC,
            "server",
            Message::from_value(request_body("notify", i as u8, None))
                .with_header(REQUEST_HEADER, tag.as_str()),
            RequestOptions::timeout(REQUEST_TIMEOUT).streamed(streamed),
        )
        .await
        .expect("fire and forget");
        let seen = server
            .wait_result_async(|v| v["event"] == "notify" && v["headers"][REQUEST_HEADER] == tag)
            .await;
        assert_eq!(seen["origin"], "site-1");
    }

    // no handler on (task, nope): NVFlare answers process_exception "no callback"
    let reply = site
        .send_request(
            PLAIN_CHANNEL,
            "nope",
            "server",
            Message::new(),
            REQUEST_TIMEOUT,
        )
        .await;
    assert_eq!(reply.return_code(), ReturnCode::ProcessException);

    site.shutdown().await;
}

/// The first request after `Cell::connect` returns must be answered. NVFlare 2.9's listener
/// sends READY before registering the new endpoint and processes frames on a thread pool, so
/// a DATA frame that follows READY at once could be handled before the registration and be
/// dropped (`'NoneType' object has no attribute 'endpoint'` in the peer log). `Cell::connect`
/// therefore probes an NVFlare peer until it answers; several fresh connections check it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_right_after_connect_is_answered() {
    init_tracing();
    let server = PyPeer::spawn_async("nv_server_cell.py", ["--timeout", PEER_TIMEOUT]).await;
    let url = server.ready_str("url").to_string();
    let mut failures = Vec::new();
    for i in 0..5 {
        let name = format!("site-{}", 10 + i);
        let site = Cell::new(&name).unwrap();
        site.connect(&url).await.expect("handshake");
        let reply = site
            .send_request(
                PLAIN_CHANNEL,
                ECHO_TOPIC,
                "server",
                Message::from_value(request_body("first", i, None)),
                REQUEST_TIMEOUT,
            )
            .await;
        if !reply.return_code().is_ok() {
            failures.push(format!("{name}: {:?}", reply.headers));
        }
        site.shutdown().await;
    }
    assert!(
        failures.is_empty(),
        "first requests after connect that NVFlare dropped: {failures:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_server_requests_a_ferry_cell() {
    init_tracing();
    let mut server = PyPeer::spawn_async(
        "nv_server_cell.py",
        [
            "--timeout",
            PEER_TIMEOUT,
            "--request-to",
            "site-1",
            "--kinds",
            "plain,stream,notify",
            "--request-count",
            "2",
        ],
    )
    .await;
    let url = server.ready_str("url").to_string();

    let site = Cell::new("site-1").unwrap();
    let mut seen = register_echo(&site);
    site.connect(&url).await.expect("connect");

    for seq in 0..2u64 {
        for kind in ["plain", "stream"] {
            let r = server
                .wait_result_async(|v| {
                    v["event"] == "reply" && v["kind"] == kind && v["seq"] == seq
                })
                .await;
            assert_ferry_echo_result(&r, "site-1", "server");
        }
    }
    let done = server.wait_event_async("requests_done").await;
    assert_eq!(done["all_ok"], true, "{done}");

    // what the Ferry handlers saw: 2 x (plain, stream, notify) from `server`
    let mut got = Vec::new();
    while got.len() < 6 {
        let s = tokio::time::timeout(REQUEST_TIMEOUT, seen.recv())
            .await
            .expect("all requests reach the Ferry handlers")
            .unwrap();
        got.push(s);
    }
    for s in &got {
        assert_eq!(s.origin, "server");
        assert_eq!(
            s.payload["small"],
            Value::Binary(pattern_bytes(64, s.payload["seq"].as_u64().unwrap() as u8))
        );
    }
    let by = |ch: &str, tp: &str| {
        got.iter()
            .filter(|s| s.channel == ch && s.topic == tp)
            .count()
    };
    assert_eq!(by(PLAIN_CHANNEL, ECHO_TOPIC), 2);
    assert_eq!(by(STREAM_CHANNEL, ECHO_TOPIC), 2);
    assert_eq!(by(STREAM_CHANNEL, NOTIFY_TOPIC), 2);

    site.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 2. Python client cell -> Ferry listener
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_streams_requests_to_a_ferry_listener() {
    init_tracing();
    let server = Cell::new("server").unwrap();
    let mut seen = register_echo(&server);
    let url = server.listen("tcp://127.0.0.1:0").await.unwrap();

    let mut client = PyPeer::spawn_async(
        "nv_client_cell.py",
        args(&[
            &"--url",
            &url,
            &"--kinds",
            &"plain,stream,notify",
            &"--big-bytes",
            &DATUM_SIZE.to_string(),
            &"--stay",
            &"--timeout",
            &PEER_TIMEOUT,
        ]),
    )
    .await;
    assert_eq!(client.ready()["peer"], "server");

    for kind in ["plain", "stream"] {
        let r = client
            .wait_result_async(|v| v["event"] == "reply" && v["kind"] == kind)
            .await;
        assert_ferry_echo_result(&r, "server", "site-1");
        assert_eq!(r["payload"]["big"]["bytes_len"], DATUM_SIZE, "{r}");
    }
    let done = client.wait_event_async("requests_done").await;
    assert_eq!(done["all_ok"], true, "{done}");

    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            tokio::time::timeout(REQUEST_TIMEOUT, seen.recv())
                .await
                .expect("every Python request reaches Ferry")
                .unwrap(),
        );
    }
    for s in &got {
        assert_eq!(s.origin, "site-1");
        assert_eq!(
            s.payload["big"],
            Value::Binary(pattern_bytes(DATUM_SIZE, 0))
        );
    }
    assert!(got
        .iter()
        .any(|s| s.channel == STREAM_CHANNEL && s.topic == NOTIFY_TOPIC));

    // and the Ferry listener requests back: plain and streamed, to the connected client
    for (kind, streamed, channel) in [
        ("plain", false, PLAIN_CHANNEL),
        ("stream", true, STREAM_CHANNEL),
    ] {
        let sent = request_body(kind, 5, None);
        let reply = server
            .send_request_with(
                channel,
                ECHO_TOPIC,
                "site-1",
                Message::from_value(sent.clone()),
                RequestOptions::timeout(REQUEST_TIMEOUT).streamed(streamed),
            )
            .await;
        assert_python_echo(&reply, &sent, "site-1", "server", channel);
    }

    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 3. Forwarding through the Python server
// ---------------------------------------------------------------------------------------
