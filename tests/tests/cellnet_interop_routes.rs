//! Ferry cells against real NVFlare 2.9 cells, part two (`cellnet_interop.rs` has the direct
//! requests both ways): forwarding through Python server cells in both directions, and the
//! same over mutual TLS with certificates generated in the test.
//!
//! Needs the interop interpreter (`cargo xtask interop-setup`, or `FERRY_INTEROP_PYTHON`);
//! without it every test here fails with that instruction.

mod common;

use std::time::Duration;

use common::echo::{
    assert_ferry_echo_result, assert_python_echo, connect_settled, ferry_tls, register_echo,
    request_body, PEER_TIMEOUT, REQUEST_TIMEOUT,
};
use ferry_cellnet::{Cell, Message, RequestOptions};
use ferry_tests::names::{ECHO_TOPIC, PLAIN_CHANNEL, REQUEST_HEADER, STREAM_CHANNEL};
use ferry_tests::{args, init_tracing, PyPeer, TestPki};

/// Ferry `site-1` reaches `server.j1` through `server`, and `server.j1` reaches `site-1`.
async fn forwarding_both_ways(site: Cell, server: &mut PyPeer) {
    let mut seen = register_echo(&site);
    let url = server.ready_str("url").to_string();
    assert_eq!(server.ready()["child"]["fqcn"], "server.j1");
    connect_settled(&site, &url).await;

    for (kind, streamed, channel) in [
        ("plain", false, PLAIN_CHANNEL),
        ("stream", true, STREAM_CHANNEL),
    ] {
        let sent = request_body(kind, 7, None);
        let reply = site
            .send_request_with(
                channel,
                ECHO_TOPIC,
                "server.j1",
                Message::from_value(sent.clone()).with_header(REQUEST_HEADER, kind),
                RequestOptions::timeout(REQUEST_TIMEOUT).streamed(streamed),
            )
            .await;
        assert_python_echo(&reply, &sent, "server.j1", "site-1", channel);
        let r = server
            .wait_result_async(|v| {
                v["event"] == "echo"
                    && v["cell"] == "server.j1"
                    && v["headers"][REQUEST_HEADER] == kind
            })
            .await;
        assert_eq!(r["origin"], "site-1");
    }

    // an unknown cell below the server: NVFlare cannot forward and says so
    let reply = site
        .send_request(
            PLAIN_CHANNEL,
            ECHO_TOPIC,
            "server.nobody",
            Message::new(),
            REQUEST_TIMEOUT,
        )
        .await;
    assert!(!reply.return_code().is_ok(), "{:?}", reply.headers);

    // reverse: the child's requests (plain and streamed) routed server.j1 -> server -> site-1
    for kind in ["plain", "stream"] {
        let r = server
            .wait_result_async(|v| {
                v["event"] == "reply" && v["cell"] == "server.j1" && v["kind"] == kind
            })
            .await;
        assert_ferry_echo_result(&r, "site-1", "server.j1");
    }
    let done = server
        .wait_cell_event_async("server.j1", "requests_done")
        .await;
    assert_eq!(done["all_ok"], true, "{done}");
    let mut origins = Vec::new();
    while origins.len() < 2 {
        let s = tokio::time::timeout(REQUEST_TIMEOUT, seen.recv())
            .await
            .expect("the child's requests reach Ferry")
            .unwrap();
        origins.push((s.origin, s.channel));
    }
    origins.sort();
    let expected: Vec<(String, String)> = [STREAM_CHANNEL, PLAIN_CHANNEL]
        .iter()
        .map(|ch| ("server.j1".to_string(), ch.to_string()))
        .collect();
    assert_eq!(origins, expected);
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_through_a_python_server_both_ways() {
    init_tracing();
    let mut server = PyPeer::spawn_async(
        "nv_server_cell.py",
        [
            "--timeout",
            PEER_TIMEOUT,
            "--child",
            "--child-request-to",
            "site-1",
        ],
    )
    .await;
    forwarding_both_ways(Cell::new("site-1").unwrap(), &mut server).await;
}

// ---------------------------------------------------------------------------------------
// 4. Mutual TLS with certificates generated here
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_ferry_to_python_server_with_forwarding() {
    init_tracing();
    let pki = TestPki::new().unwrap();
    let server_cert = pki.issue("server").unwrap();
    let site_cert = pki.issue("site-1").unwrap();

    let mut a = args(&[
        &"--timeout",
        &PEER_TIMEOUT,
        &"--child",
        &"--child-request-to",
        &"site-1",
    ]);
    a.extend(pki.py_tls_args(&server_cert));
    let mut server = PyPeer::spawn_async("nv_server_cell.py", a).await;
    assert!(server.ready_str("url").starts_with("stcp://"));

    let site = Cell::builder("site-1")
        .unwrap()
        .tls(ferry_tls(&pki, &site_cert))
        .build();
    forwarding_both_ways(site, &mut server).await;

    // the same certificate cannot claim another FQCN root: NVFlare drops the connection
    let impostor = Cell::builder("site-9")
        .unwrap()
        .tls(ferry_tls(&pki, &site_cert))
        .build();
    let url = server.ready_str("url").to_string();
    if impostor.connect(&url).await.is_ok() {
        let reply = impostor
            .send_request(
                PLAIN_CHANNEL,
                ECHO_TOPIC,
                "server",
                Message::new(),
                Duration::from_secs(10),
            )
            .await;
        assert!(!reply.return_code().is_ok(), "{:?}", reply.headers);
    }
    impostor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_python_client_to_ferry_listener() {
    init_tracing();
    let pki = TestPki::new().unwrap();
    let server_cert = pki.issue("server").unwrap();
    let site_cert = pki.issue("site-1").unwrap();

    let server = Cell::builder("server")
        .unwrap()
        .tls(ferry_tls(&pki, &server_cert))
        .build();
    let mut seen = register_echo(&server);
    let url = server.listen("stcp://127.0.0.1:0").await.unwrap();
    assert!(url.starts_with("stcp://"));

    let mut a = args(&[&"--url", &url, &"--stay", &"--timeout", &PEER_TIMEOUT]);
    a.extend(pki.py_tls_args(&site_cert));
    let mut client = PyPeer::spawn_async("nv_client_cell.py", a).await;
    assert_eq!(client.ready()["tls"], true);
    for kind in ["plain", "stream"] {
        let r = client
            .wait_result_async(|v| v["event"] == "reply" && v["kind"] == kind)
            .await;
        assert_ferry_echo_result(&r, "server", "site-1");
    }
    for _ in 0..2 {
        let s = tokio::time::timeout(REQUEST_TIMEOUT, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.origin, "site-1");
    }
    let sent = request_body("stream", 9, None);
    let reply = server
        .send_request_with(
            STREAM_CHANNEL,
            ECHO_TOPIC,
            "site-1",
            Message::from_value(sent.clone()),
            RequestOptions::timeout(REQUEST_TIMEOUT).streamed(true),
        )
        .await;
    assert_python_echo(&reply, &sent, "site-1", "server", STREAM_CHANNEL);

    // a client whose certificate comes from another CA never gets a working connection
    let other = TestPki::new().unwrap();
    let stranger_cert = other.issue("site-2").unwrap();
    let mut a = args(&[
        &"--url",
        &url,
        &"--fqcn",
        &"site-2",
        &"--connect-timeout",
        &"10",
        &"--timeout",
        &"60",
    ]);
    // trust the Ferry server's CA (so only the client side is wrong), present the stranger's cert
    a.extend(args(&[
        &"--tls-ca",
        &pki.ca_path(),
        &"--tls-cert",
        &stranger_cert.cert_path,
        &"--tls-key",
        &stranger_cert.key_path,
    ]));
    let stranger = PyPeer::try_spawn_async("nv_client_cell.py", a).await;
    assert!(stranger.is_err(), "a foreign-CA client got READY");
    assert!(!server.is_connected("site-2"));

    server.shutdown().await;
}
