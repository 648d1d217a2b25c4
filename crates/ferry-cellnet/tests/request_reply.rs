//! Ferry-to-ferry request/reply over real TCP on 127.0.0.1 (OS-assigned ports).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferry_cellnet::rmpv::Value;
use ferry_cellnet::{Cell, Limits, Message, MsgpackWriter, RequestOptions, ReturnCode, ANY};

fn echo(cell: &Cell, channel: &str, topic: &str) {
    cell.register_request_handler(channel, topic, |req: Message| async move {
        let v = req.value().unwrap();
        let mut reply = Message::from_value(v);
        if let Some(h) = req.headers.get("x-req") {
            reply = reply.with_header("x-echo", h.clone());
        }
        reply.with_header("x-origin", req.origin().unwrap_or_default())
    });
}

#[tokio::test]
async fn request_reply_with_headers_and_binary() {
    let (server, url) = listening("server", Limits::default()).await;
    echo(&server, "task", "echo");
    let client = connected("site-1", &url).await;
    assert!(client.is_connected("server"));
    eventually(|| server.is_connected("site-1")).await;

    let v = Value::Map(vec![
        ("k".into(), "v".into()),
        ("b".into(), Value::Binary(vec![1, 2, 3])),
        ("l".into(), Value::Array(vec![1.into(), 2.into()])),
    ]);
    let reply = client
        .send_request(
            "task",
            "echo",
            "server",
            Message::from_value(v.clone()).with_header("x-req", 7),
            LONG,
        )
        .await;
    assert_eq!(
        reply.return_code(),
        ReturnCode::Ok,
        "{:?}",
        reply.error_text()
    );
    assert_eq!(reply.value().unwrap(), v);
    assert_eq!(reply.headers.get_u64("x-echo"), Some(7));
    assert_eq!(reply.headers.get_str("x-origin"), Some("site-1"));
    assert_eq!(reply.origin(), Some("server"));
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn server_can_request_the_client_too() {
    let (server, url) = listening("server", Limits::default()).await;
    let client = connected("site-1", &url).await;
    echo(&client, "task", "echo");
    eventually(|| server.is_connected("site-1")).await;
    let reply = server
        .send_request("task", "echo", "site-1", Message::from_value(42), LONG)
        .await;
    assert_eq!(reply.return_code(), ReturnCode::Ok);
    assert_eq!(reply.value().unwrap(), Value::from(42));
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn raw_msgpack_fast_path_round_trip() {
    let (server, url) = listening("server", Limits::default()).await;
    // Reply with a pre-encoded body whose 2 MiB bin is never copied on the way out.
    server.register_request_handler("dl", "get", |_req: Message| async move {
        let chunk = Bytes::from(vec![9u8; 2 << 20]);
        let mut w = MsgpackWriter::new();
        w.map_len(2).str("status").str("ok").str("data").bin(chunk);
        Message::from_msgpack(w.finish())
    });
    let client = connected("site-1", &url).await;
    let reply = client
        .send_request("dl", "get", "server", Message::new(), LONG)
        .await;
    assert_eq!(reply.return_code(), ReturnCode::Ok);
    // fast path on the receiving side: slice the bin out of the received body, zero-copy
    let body = reply.msgpack_body().unwrap();
    let v = ferry_cellnet::rmpv::decode::read_value_ref(&mut &body[..]).unwrap();
    let ferry_cellnet::rmpv::ValueRef::Map(map) = v else {
        panic!("not a map");
    };
    let data = &map
        .iter()
        .find(|(k, _)| matches!(k, ferry_cellnet::rmpv::ValueRef::String(s) if s.as_str() == Some("data")))
        .unwrap()
        .1;
    let ferry_cellnet::rmpv::ValueRef::Binary(bin) = *data else {
        panic!("data is not bin");
    };
    let data = body.slice_ref(bin);
    assert_eq!(data.len(), 2 << 20);
    assert!(data.iter().all(|&b| b == 9));
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn fire_and_forget_is_delivered() {
    let (server, url) = listening("server", Limits::default()).await;
    let got = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    server.register_request_handler("events", "note", move |m: Message| {
        let g = g.clone();
        async move {
            g.lock().await.push(m.value().unwrap());
            // a reply to a fire-and-forget message is never sent
            Message::from_value("ignored")
        }
    });
    let client = connected("site-1", &url).await;
    for i in 0..5 {
        client
            .fire_and_forget("events", "note", "server", Message::from_value(i))
            .await
            .unwrap();
    }
    let g = got.clone();
    eventually(move || g.try_lock().map(|v| v.len() == 5).unwrap_or(false)).await;
    let mut v: Vec<i64> = got
        .lock()
        .await
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    v.sort();
    assert_eq!(v, [0, 1, 2, 3, 4]);
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn broadcast_to_many_targets() {
    let (server, url) = listening("server", Limits::default()).await;
    let mut sites = Vec::new();
    for i in 1..=3 {
        let name = format!("site-{i}");
        let c = connected(&name, &url).await;
        let n = name.clone();
        c.register_request_handler("task", "who", move |_m: Message| {
            let n = n.clone();
            async move { Message::from_value(n) }
        });
        sites.push(c);
    }
    for i in 1..=3 {
        let n = format!("site-{i}");
        eventually(|| server.is_connected(&n)).await;
    }
    let replies = server
        .broadcast_request(
            "task",
            "who",
            &["site-1", "site-2", "site-3", "site-404"],
            Message::new(),
            LONG,
        )
        .await;
    assert_eq!(replies.len(), 4);
    for i in 1..=3 {
        let n = format!("site-{i}");
        let r = &replies[&n];
        assert_eq!(r.return_code(), ReturnCode::Ok);
        assert_eq!(r.value().unwrap().as_str(), Some(n.as_str()));
    }
    assert_eq!(
        replies["site-404"].return_code(),
        ReturnCode::TargetUnreachable
    );
    for s in sites {
        s.shutdown().await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn handler_lookup_order_exact_then_topic_star_then_star_star() {
    let (server, url) = listening("server", Limits::default()).await;
    server.register_request_handler("ch", "exact", |_m: Message| async {
        Message::from_value("exact")
    });
    server.register_request_handler("ch", ANY, |_m: Message| async {
        Message::from_value("ch/*")
    });
    server.register_request_handler(ANY, ANY, |_m: Message| async { Message::from_value("*/*") });
    let client = connected("site-1", &url).await;
    for (ch, tp, want) in [
        ("ch", "exact", "exact"),
        ("ch", "other", "ch/*"),
        ("other", "exact", "*/*"),
    ] {
        let r = client
            .send_request(ch, tp, "server", Message::new(), LONG)
            .await;
        assert_eq!(r.value().unwrap().as_str(), Some(want), "{ch}/{tp}");
    }
    server.unregister_request_handler(ANY, ANY);
    let r = client
        .send_request("other", "x", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::ProcessException);
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn no_handler_is_process_exception_no_callback() {
    let (server, url) = listening("server", Limits::default()).await;
    let client = connected("site-1", &url).await;
    let r = client
        .send_request("nobody", "home", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::ProcessException);
    assert_eq!(r.error_text(), Some("no callback"));
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn handler_errors_and_panics_become_process_exception() {
    let (server, url) = listening("server", Limits::default()).await;
    server.register_request_handler("t", "err", |_m: Message| async {
        Err::<Message, _>("broken producer")
    });
    server.register_request_handler("t", "panic", |_m: Message| async {
        if true {
            panic!("handler bug");
        }
        Message::new()
    });
    let client = connected("site-1", &url).await;
    let r = client
        .send_request("t", "err", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::ProcessException);
    assert_eq!(r.error_text(), Some("broken producer"));
    let r = client
        .send_request("t", "panic", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::ProcessException);
    // the cell still serves afterwards
    let r = client
        .send_request("t", "err", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::ProcessException);
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn timeout_when_the_peer_never_answers() {
    let (server, url) = listening("server", Limits::default()).await;
    // None = no reply, like a Python callback returning None
    server.register_request_handler("t", "silent", |_m: Message| async { None::<Message> });
    let client = connected("site-1", &url).await;
    let r = client
        .send_request(
            "t",
            "silent",
            "server",
            Message::new(),
            Duration::from_millis(300),
        )
        .await;
    assert_eq!(r.return_code(), ReturnCode::Timeout);
    client.shutdown().await;
    server.shutdown().await;
}

/// A timeout long enough to be left to the cell's sweeper (no timer per request) ends the
/// wait all the same.
#[tokio::test]
async fn a_long_timeout_ends_the_wait_too() {
    let (server, url) = listening("server", Limits::default()).await;
    server.register_request_handler("t", "silent", |_m: Message| async { None::<Message> });
    let client = connected("site-1", &url).await;
    let r = client
        .send_request(
            "t",
            "silent",
            "server",
            Message::new(),
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(r.return_code(), ReturnCode::Timeout);
    assert_eq!(r.error_text(), Some("no reply from server in 2s"));
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_target_and_unreachable() {
    let (server, url) = listening("server", Limits::default()).await;
    let client = connected("site-1", &url).await;
    let r = client
        .send_request("t", "t", "bad..name", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::InvalidTarget);
    let lonely = Cell::new("lonely").unwrap();
    let r = lonely
        .send_request("t", "t", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::TargetUnreachable);
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn message_too_big_is_refused_before_sending() {
    let limits = Limits {
        max_message_size: 1024,
        ..Limits::default()
    };
    let (server, url) = listening("server", Limits::default()).await;
    echo(&server, "t", "t");
    let client = Cell::builder("site-1").unwrap().limits(limits).build();
    client.connect(&url).await.unwrap();
    let r = client
        .send_request(
            "t",
            "t",
            "server",
            Message::from_bytes(vec![0u8; 4096]),
            LONG,
        )
        .await;
    assert_eq!(r.return_code(), ReturnCode::MsgTooBig);
    let r = client
        .send_request("t", "t", "server", Message::from_value(1), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok);
    client.shutdown().await;
    server.shutdown().await;
}

/// A peer's requests beyond its in-flight places are refused, whether their handler would
/// wait or answer at once (a handler's first step runs on the connection's reader, but it
/// still takes a place, and gives it back).
#[tokio::test]
async fn too_many_in_flight_requests_get_service_unavailable() {
    let limits = Limits {
        max_in_flight_per_peer: 1,
        ..Limits::default()
    };
    let (server, url) = listening("server", limits).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(AtomicUsize::new(0));
    let (g, e) = (gate.clone(), entered.clone());
    server.register_request_handler("t", "slow", move |_m: Message| {
        let (g, e) = (g.clone(), e.clone());
        async move {
            e.fetch_add(1, Ordering::SeqCst);
            g.notified().await;
            Message::from_value("done")
        }
    });
    server.register_request_handler("t", "quick", |_m: Message| async {
        Message::from_value("quick")
    });
    let client = connected("site-1", &url).await;
    let c1 = client.clone();
    let first = tokio::spawn(async move {
        c1.send_request("t", "slow", "server", Message::new(), LONG)
            .await
    });
    let e = entered.clone();
    eventually(move || e.load(Ordering::SeqCst) == 1).await;
    for topic in ["slow", "quick"] {
        let refused = client
            .send_request("t", topic, "server", Message::new(), LONG)
            .await;
        assert_eq!(
            refused.return_code(),
            ReturnCode::ServiceUnavailable,
            "{topic}"
        );
    }
    gate.notify_one();
    let first = first.await.unwrap();
    assert_eq!(first.return_code(), ReturnCode::Ok);
    // the places come back, from handlers that answered at once too
    for _ in 0..3 {
        let r = client
            .send_request("t", "quick", "server", Message::new(), LONG)
            .await;
        assert_eq!(r.value().unwrap().as_str(), Some("quick"));
    }
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn request_to_self_runs_locally() {
    let c = Cell::new("solo").unwrap();
    echo(&c, "t", "t");
    let r = c
        .send_request("t", "t", "solo", Message::from_value("me"), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok);
    assert_eq!(r.value().unwrap().as_str(), Some("me"));
    c.shutdown().await;
}

#[tokio::test]
async fn inproc_driver_request_reply() {
    init_tracing();
    let server = Cell::new("server").unwrap();
    echo(&server, "t", "t");
    let url = server.listen("inproc://rr-test").await.unwrap();
    let client = connected("site-1", &url).await;
    let r = client
        .send_request(
            "t",
            "t",
            "server",
            Message::from_value("pipe"),
            RequestOptions::timeout(LONG).timeout,
        )
        .await;
    assert_eq!(r.value().unwrap().as_str(), Some("pipe"));
    client.shutdown().await;
    server.shutdown().await;
}

/// `Cell::peer_events` reports a peer's connection and its end, each time: a peer that comes
/// back is `Connected` again.
#[tokio::test]
async fn peer_events_report_connections_that_come_and_go() {
    use ferry_cellnet::PeerEvent;
    let (server, url) = listening("server", Limits::default()).await;
    let mut events = server.peer_events();
    for round in 0..2 {
        let client = connected("site-1", &url).await;
        let ev = tokio::time::timeout(LONG, events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev, PeerEvent::Connected("site-1".into()), "round {round}");
        client.shutdown().await;
        let ev = tokio::time::timeout(LONG, events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ev,
            PeerEvent::Disconnected("site-1".into()),
            "round {round}"
        );
        eventually(|| !server.is_connected("site-1")).await;
    }
    assert!(events.try_recv().is_err(), "nothing else");
    server.shutdown().await;
}

/// A handler that waits goes on on a task of its own: the connection serves the next
/// requests meanwhile (here the one that lets it finish), and the handler still knows its
/// connection after it waited.
#[tokio::test]
async fn a_handler_that_waits_goes_on_while_the_connection_serves_others() {
    let (server, url) = listening("server", Limits::default()).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    server.register_request_handler("t", "wait", move |_m: Message| {
        let g = g.clone();
        async move {
            g.notified().await;
            let peer = ferry_cellnet::ConnectionInfo::current().map(|c| c.peer);
            Message::from_value(peer.unwrap_or_default())
        }
    });
    let g = gate.clone();
    server.register_request_handler("t", "open", move |_m: Message| {
        let g = g.clone();
        async move {
            g.notify_one();
            Message::from_value("opened")
        }
    });
    let client = connected("site-1", &url).await;
    let c1 = client.clone();
    let waiting = tokio::spawn(async move {
        c1.send_request("t", "wait", "server", Message::new(), LONG)
            .await
    });
    let r = client
        .send_request("t", "open", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.value().unwrap().as_str(), Some("opened"));
    let r = waiting.await.unwrap();
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error_text());
    assert_eq!(r.value().unwrap().as_str(), Some("site-1"));
    client.shutdown().await;
    server.shutdown().await;
}

/// A handler that panics before it even returns its future (in the closure itself) is
/// answered with `process_exception` too, and the connection goes on.
#[tokio::test]
async fn a_handler_that_panics_before_its_future_becomes_process_exception() {
    let (server, url) = listening("server", Limits::default()).await;
    server.register_request_handler("t", "boom", |m: Message| {
        if m.headers.get("x-boom").is_some() {
            panic!("closure bug");
        }
        async { Message::from_value("fine") }
    });
    let client = connected("site-1", &url).await;
    let boom = Message::new().with_header("x-boom", true);
    let r = client.send_request("t", "boom", "server", boom, LONG).await;
    assert_eq!(r.return_code(), ReturnCode::ProcessException);
    assert!(
        r.error_text().is_some_and(|t| t.contains("closure bug")),
        "{:?}",
        r.error_text()
    );
    let r = client
        .send_request("t", "boom", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.value().unwrap().as_str(), Some("fine"));
    client.shutdown().await;
    server.shutdown().await;
}
