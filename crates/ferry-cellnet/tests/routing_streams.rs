//! Forwarding through a parent, RETURN on no path, and the sm__ byte-stream protocol.

mod common;

use std::sync::Arc;

use common::*;
use ferry_cellnet::rmpv::Value;
use ferry_cellnet::{Cell, Limits, Message, RequestOptions, ReturnCode, MIB};

fn who_am_i(cell: &Cell) {
    let me = cell.fqcn().to_string();
    cell.register_request_handler("task", "who", move |req: Message| {
        let me = me.clone();
        async move {
            let route_len = req
                .headers
                .get("cn__route")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0);
            Message::from_value(me)
                .with_header("x-route-len", route_len as u64)
                .with_header(
                    "x-from",
                    req.headers.get_str("cn__from").unwrap_or_default(),
                )
        }
    });
}

#[tokio::test]
async fn child_to_child_through_the_server() {
    let (server, url) = listening("server", Limits::default()).await;
    let a = connected("site-1", &url).await;
    let b = connected("site-2", &url).await;
    who_am_i(&b);
    eventually(|| server.is_connected("site-1") && server.is_connected("site-2")).await;
    let r = a
        .send_request("task", "who", "site-2", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error_text());
    assert_eq!(r.value().unwrap().as_str(), Some("site-2"));
    // the request went site-1 -> server -> site-2: two route entries, previous hop = server
    assert_eq!(r.headers.get_u64("x-route-len"), Some(2));
    assert_eq!(r.headers.get_str("x-from"), Some("server"));
    // and the reply came back through the server, still from site-2
    assert_eq!(r.origin(), Some("site-2"));
    assert_eq!(r.headers.get_str("cn__from"), Some("server"));
    a.shutdown().await;
    b.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn job_cell_behind_its_parent() {
    // site-1.job7 connects to site-1, which connects to server; server asks the job cell.
    let (server, url) = listening("server", Limits::default()).await;
    let site = Cell::new("site-1").unwrap();
    let site_url = site.listen("tcp://127.0.0.1:0").await.unwrap();
    site.connect(&url).await.unwrap();
    let job = connected("site-1.job7", &site_url).await;
    who_am_i(&job);
    eventually(|| server.is_connected("site-1") && site.is_connected("site-1.job7")).await;
    let r = server
        .send_request("task", "who", "site-1.job7", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error_text());
    assert_eq!(r.value().unwrap().as_str(), Some("site-1.job7"));
    // and the job cell reaches the server through its parent
    who_am_i(&server);
    let r = job
        .send_request("task", "who", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.value().unwrap().as_str(), Some("server"));
    job.shutdown().await;
    site.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn return_comm_error_when_no_path() {
    let (server, url) = listening("server", Limits::default()).await;
    let a = connected("site-1", &url).await;
    let r = a
        .send_request("task", "who", "site-9", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::CommError);
    assert_eq!(r.error_text(), Some("cannot forward"));
    assert_eq!(r.headers.get_str("cn__msg_type"), Some("return"));
    let original = r.headers.get("cn__original_headers").unwrap();
    assert_eq!(original["cn__destination"].as_str(), Some("site-9"));
    a.shutdown().await;
    server.shutdown().await;
}

async fn streamed_echo(limits_server: Limits, size: usize) -> Message {
    let (server, url) = listening("server", limits_server).await;
    server.register_request_handler("download_service__", "*", |req: Message| async move {
        let v = req.value().unwrap();
        let n = v["data"].as_slice().map(<[u8]>::len).unwrap_or(0);
        Message::from_value(Value::Map(vec![
            ("status".into(), "ok".into()),
            ("n".into(), (n as u64).into()),
            ("data".into(), v["data"].clone()),
        ]))
        .with_header("x-streamed-origin", req.origin().unwrap_or_default())
        .with_header("x-app", req.headers.get_str("x-app").unwrap_or_default())
    });
    let client = Cell::builder("site-1")
        .unwrap()
        .limits(Limits {
            stream_chunk_size: 64 * 1024,
            stream_window: 256 * 1024,
            stream_ack_interval: 128 * 1024,
            ..Limits::default()
        })
        .build();
    client.connect(&url).await.unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let req = Message::from_value(Value::Map(vec![
        ("ref_id".into(), "R1".into()),
        ("data".into(), Value::Binary(data.clone())),
    ]))
    .with_header("x-app", "hdr");
    let r = client
        .send_request_with(
            "download_service__",
            "download_service__download",
            "server",
            req,
            RequestOptions::timeout(LONG).streamed(true),
        )
        .await;
    let v = r.value().unwrap();
    if r.return_code().is_ok() {
        assert_eq!(v["data"].as_slice().unwrap(), &data[..]);
        assert_eq!(v["n"].as_u64(), Some(size as u64));
    }
    client.shutdown().await;
    server.shutdown().await;
    r
}

#[tokio::test]
async fn streamed_request_gets_streamed_reply() {
    // 1 MiB in 64 KiB chunks with a 256 KiB window: many chunks, ACK-driven flow control;
    // the server replies with 1 MiB chunks (its default).
    let r = streamed_echo(
        Limits {
            stream_chunk_size: 100_000,
            ..Limits::default()
        },
        MIB + 123,
    )
    .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error_text());
    assert_eq!(r.headers.get_str("x-streamed-origin"), Some("site-1"));
    assert_eq!(r.headers.get_str("x-app"), Some("hdr"));
    // the reply came as a stream: it carries the stream request id
    assert!(r.headers.get_str("sm__ri").is_some());
    assert_eq!(r.channel(), Some("return_only"));
}

#[tokio::test]
async fn tiny_streamed_request() {
    let r = streamed_echo(Limits::default(), 0).await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error_text());
}

#[tokio::test]
async fn stream_over_the_limit_is_refused_with_comm_error() {
    let r = streamed_echo(
        Limits {
            max_stream_bytes: 100_000,
            ..Limits::default()
        },
        300_000,
    )
    .await;
    assert_eq!(r.return_code(), ReturnCode::CommError);
    assert!(r.error_text().unwrap_or_default().contains("limit"));
}

#[tokio::test]
async fn streamed_request_without_handler_is_no_callback() {
    let (server, url) = listening("server", Limits::default()).await;
    let client = connected("site-1", &url).await;
    let r = client
        .send_request_with(
            "nothing",
            "here",
            "server",
            Message::from_value(1),
            RequestOptions::timeout(LONG).streamed(true),
        )
        .await;
    assert_eq!(r.return_code(), ReturnCode::ProcessException);
    assert_eq!(r.error_text(), Some("no callback"));
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn streamed_fire_and_forget_and_forwarded_stream() {
    let (server, url) = listening("server", Limits::default()).await;
    let a = connected("site-1", &url).await;
    let b = connected("site-2", &url).await;
    let got = Arc::new(tokio::sync::Mutex::new(None));
    let g = got.clone();
    b.register_request_handler("bulk", "put", move |m: Message| {
        let g = g.clone();
        async move {
            *g.lock().await = Some(m);
            None::<Message>
        }
    });
    eventually(|| server.is_connected("site-2")).await;
    let payload = vec![5u8; 3 * MIB + 17];
    a.fire_and_forget_with(
        "bulk",
        "put",
        "site-2",
        Message::from_bytes(payload.clone()),
        RequestOptions::timeout(LONG).streamed(true),
    )
    .await
    .unwrap();
    let g = got.clone();
    eventually(move || g.try_lock().map(|m| m.is_some()).unwrap_or(false)).await;
    let m = got.lock().await.take().unwrap();
    assert_eq!(m.origin(), Some("site-1"));
    assert_eq!(m.bytes().unwrap().len(), payload.len());
    // a streamed request through the server works as well
    who_am_i(&b);
    let r = a
        .send_request_with(
            "task",
            "who",
            "site-2",
            Message::new(),
            RequestOptions::timeout(LONG).streamed(true),
        )
        .await;
    assert_eq!(r.value().unwrap().as_str(), Some("site-2"));
    a.shutdown().await;
    b.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn streamed_reply_over_the_limit_is_msg_too_big() {
    let (server, url) = listening(
        "server",
        Limits {
            max_stream_bytes: 1000,
            ..Limits::default()
        },
    )
    .await;
    server.register_request_handler("s", "big", |_m: Message| async {
        Message::from_bytes(vec![0u8; 5000])
    });
    let client = connected("site-1", &url).await;
    let r = client
        .send_request_with(
            "s",
            "big",
            "server",
            Message::new(),
            RequestOptions::timeout(LONG).streamed(true),
        )
        .await;
    assert_eq!(r.return_code(), ReturnCode::MsgTooBig);
    client.shutdown().await;
    server.shutdown().await;
}
