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

use std::time::Duration;

use ferry_cellnet::rmpv::Value;
use ferry_cellnet::{Cell, Message, RequestOptions, ReturnCode, TlsConfig};
use ferry_tests::names::{
    ECHO_HEADER, ECHO_TOPIC, NOTIFY_TOPIC, PLAIN_CHANNEL, REPLY_HEADER, REQUEST_HEADER,
    STREAM_CHANNEL,
};
use ferry_tests::{args, init_tracing, pattern_bytes, sha256_hex, CellCert, PyPeer, TestPki};
use tokio::sync::mpsc;

/// Per-request bound; generous because NVFlare runs on a loaded 2-core CI box.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Overall deadline handed to every Python peer.
const PEER_TIMEOUT: &str = "150";
/// Above FOBS's 10 MiB datum threshold: such a value travels as a datum section.
const DATUM_SIZE: usize = 10 * 1024 * 1024 + 4321;

/// What a Ferry-side handler saw.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    channel: String,
    origin: String,
    req_header: Option<String>,
    payload: Value,
}

/// The same handlers as the Python peers (`ferry_peer.register_echo_handlers`): `echo` on
/// both channels replies with the request map plus `_echo_*` markers and headers
/// `x-ferry-reply` / `x-ferry-echo`; `notify` replies nothing. Everything seen is reported.
fn register_echo(cell: &Cell) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let me = cell.fqcn().as_str().to_string();
    for channel in [PLAIN_CHANNEL, STREAM_CHANNEL] {
        for topic in [ECHO_TOPIC, NOTIFY_TOPIC] {
            let tx = tx.clone();
            let me = me.clone();
            cell.register_request_handler(channel, topic, move |req: Message| {
                let seen = Seen {
                    topic: req.topic().unwrap_or_default().to_string(),
                    channel: req.channel().unwrap_or_default().to_string(),
                    origin: req.origin().unwrap_or_default().to_string(),
                    req_header: req.headers.get_str(REQUEST_HEADER).map(str::to_string),
                    payload: req.value().unwrap_or(Value::Nil),
                };
                let reply = (seen.topic == ECHO_TOPIC).then(|| echo_reply(&me, &seen));
                let _ = tx.send(seen);
                async move { reply }
            });
        }
    }
    rx
}

fn echo_reply(me: &str, seen: &Seen) -> Message {
    let mut entries = match &seen.payload {
        Value::Map(m) => m.clone(),
        other => vec![(Value::from("echo"), other.clone())],
    };
    for (k, v) in [
        ("_echo_by", me),
        ("_echo_origin", seen.origin.as_str()),
        ("_echo_channel", seen.channel.as_str()),
        ("_echo_topic", seen.topic.as_str()),
    ] {
        entries.push((Value::from(k), Value::from(v)));
    }
    let mut reply = Message::from_value(Value::Map(entries))
        .with_return_code(ReturnCode::Ok)
        .with_header(REPLY_HEADER, me);
    if let Some(h) = &seen.req_header {
        reply = reply.with_header(ECHO_HEADER, h.as_str());
    }
    reply
}

/// A request payload like the Python peers send: a map with text, ints and `bin` values.
fn request_body(kind: &str, seq: u8, big: Option<usize>) -> Value {
    let mut m = vec![
        (Value::from("seq"), Value::from(seq)),
        (Value::from("kind"), Value::from(kind)),
        (
            Value::from("text"),
            Value::from(format!("ferry {kind} request")),
        ),
        (
            Value::from("nums"),
            Value::Array(vec![1.into(), 2.into(), 3.into()]),
        ),
        (Value::from("small"), Value::Binary(pattern_bytes(64, seq))),
    ];
    if let Some(n) = big {
        m.push((Value::from("big"), Value::Binary(pattern_bytes(n, seq))));
    }
    Value::Map(m)
}

/// Assert that a Python echo reply carries what Ferry sent, and who answered.
fn assert_python_echo(reply: &Message, sent: &Value, by: &str, origin: &str, channel: &str) {
    assert_eq!(
        reply.return_code(),
        ReturnCode::Ok,
        "reply {:?} / {:?}",
        reply.headers,
        reply.error_text()
    );
    assert_eq!(reply.headers.get_str(REPLY_HEADER), Some(by));
    let body = reply.value().expect("FOBS reply decodes");
    assert_eq!(body["_echo_by"].as_str(), Some(by));
    assert_eq!(body["_echo_origin"].as_str(), Some(origin));
    assert_eq!(body["_echo_channel"].as_str(), Some(channel));
    for key in ["seq", "kind", "text", "nums", "small", "big"] {
        assert_eq!(body[key], sent[key], "field {key} round-trips unchanged");
    }
}

/// Assert a Python `reply` RESULT (a Python cell's request answered by a Ferry cell).
fn assert_ferry_echo_result(r: &serde_json::Value, by: &str, origin: &str) {
    assert_eq!(r["rc"], "ok", "{r}");
    assert_eq!(r["headers"][REPLY_HEADER], by, "{r}");
    let kind = r["kind"].as_str().unwrap();
    let seq = r["seq"].as_u64().unwrap();
    assert_eq!(r["headers"][ECHO_HEADER], format!("{kind}-{seq}"), "{r}");
    let p = &r["payload"];
    assert_eq!(p["_echo_by"], by, "{r}");
    assert_eq!(p["_echo_origin"], origin, "{r}");
    assert_eq!(p["_echo_channel"], r["channel"], "{r}");
    // every field the Python cell sent comes back identical (bytes by length and digest)
    for (k, v) in r["sent"].as_object().unwrap() {
        assert_eq!(&p[k], v, "field {k} of {r}");
    }
    let small = sha256_hex(&pattern_bytes(64, seq as u8)).unwrap();
    assert_eq!(p["small"]["sha256"], small.as_str());
}

fn ferry_tls(pki: &TestPki, cert: &CellCert) -> TlsConfig {
    TlsConfig::from_pem(
        pki.ca_pem().as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    )
    .expect("TLS config from generated PEM")
}

/// Connect `cell` to the NVFlare cell at `url`; returns the peer's FQCN.
///
/// NVFlare's passive side sends READY *before* it registers the connecting endpoint and handles
/// frames in a thread pool, so a request sent right after READY could be dropped.
/// `Cell::connect` guards against that itself (it probes an NVFlare peer until it answers);
/// `first_request_right_after_connect_is_answered` pins that behaviour down.
async fn connect_settled(cell: &Cell, url: &str) -> String {
    cell.connect(url)
        .await
        .expect("HELLO/READY with NVFlare")
        .as_str()
        .to_string()
}

fn bin_sha(v: &Value) -> String {
    sha256_hex(v.as_slice().expect("a bin value")).unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Ferry cell -> Python server cell
// ---------------------------------------------------------------------------------------

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
