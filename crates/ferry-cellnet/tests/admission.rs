//! Connections a host may hold and what a peer's bad frames may cost in logs (issue 11):
//! hand-made F3 clients on raw sockets against a real listening cell, a real cell beside them
//! that must keep working. The memory bounds are in `bounded.rs`.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use ferry_cellnet::frame::FrameType;
use ferry_cellnet::headers::Headers;
use ferry_cellnet::{Cell, CellnetError, Limits, ReturnCode};

/// Issue 11 §3: more than `max_connections` held-open connections locked everyone out, and
/// the ones turned away heard nothing. Now one address gets at most
/// `max_connections_per_address`, the excess hears `busy: too many connections from your
/// address`, and another host still connects.
#[tokio::test]
async fn a_host_holding_many_connections_locks_out_nobody_else() {
    let limits = Limits {
        max_connections: 64,
        max_connections_per_address: 16,
        ..Limits::default()
    };
    let (server, url) = listening("server", limits).await;
    echo_bytes(&server);
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let mut p = RawPeer::connect_from(&url, "127.0.0.2").await;
        p.send(&frame(
            FrameType::Hello,
            0,
            vec![],
            hello_payload(&format!("site-{i}")).to_vec(),
        ))
        .await;
        let ready = p.next_frame().await.expect("READY");
        assert_eq!(ready.frame_type(), Some(FrameType::Ready));
        let v = rmpv::decode::read_value(&mut &ready.payload[..]).unwrap();
        match v["ferry_refused"].as_str() {
            None => held.push(p),
            Some(why) => {
                assert!(
                    why.starts_with("busy: too many connections from your address 127.0.0.2"),
                    "{why}"
                );
                assert_eq!(v["ferry_busy"].as_bool(), Some(true));
                assert!(p.closed_by_peer().await);
                refused += 1;
            }
        }
    }
    assert_eq!((held.len(), refused), (16, 24));
    // another host is not locked out
    real_exchange(&url, "site-real", 1024).await;
    server.shutdown().await;
}

/// A ferry cell turned away for load reports `CellnetError::Busy` with the listener's words.
#[tokio::test]
async fn a_refused_cell_hears_that_the_listener_is_busy() {
    let limits = Limits {
        max_connections_per_address: 2,
        ..Limits::default()
    };
    let (server, url) = listening("server", limits).await;
    let _a = raw(&url, "site-1").await;
    let _b = raw(&url, "site-2").await;
    let c = Cell::new("site-3").unwrap();
    match c.connect(&url).await {
        Err(CellnetError::Busy(why)) => {
            assert!(
                why.contains("too many connections from your address"),
                "{why}"
            );
            assert_eq!(
                CellnetError::Busy(why).return_code(),
                ReturnCode::ServiceUnavailable
            );
        }
        other => panic!("{other:?}"),
    }
    c.shutdown().await;
    server.shutdown().await;
}

/// Captures what the cell logs (at WARN and above) on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Issue 11 §6: each bad 19-byte frame wrote a 130-byte ERROR line. Now a peer's complaints
/// share one limiter: one line per period, with the count of the ones held back.
#[tokio::test]
async fn garbage_frames_cost_one_log_line_per_period() {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = Cell::new("server").unwrap();
    echo_bytes(&server);
    let url = server.listen("tcp://127.0.0.1:0").await.unwrap();
    let mut p = raw(&url, "site-1").await;
    let mut flood = Vec::new();
    for i in 0..1000 {
        let mut f = frame(FrameType::Data, 0, vec![], vec![1, 2]).to_vec();
        if i % 2 == 0 {
            f[6] = 9; // unknown frame type
        } else {
            f = frame(FrameType::Data, 1, vec![0xc1, 0xc1], vec![]).to_vec(); // bad headers
        }
        flood.extend_from_slice(&f);
    }
    p.send(&flood).await;
    // frames are handled in order: once this is answered, the flood has been read
    p.send(&frame(
        FrameType::Data,
        1,
        req("site-1", "server", "echo", "E1", "bytes").encode(),
        vec![1, 2, 3],
    ))
    .await;
    let f = p.next_data().await.unwrap();
    assert_eq!(
        Headers::decode(&f.headers).unwrap().get_str("cn__req_id"),
        Some("E1")
    );
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let lines = text.lines().count();
    assert!(
        lines <= 2,
        "1000 bad frames wrote {lines} log lines ({} bytes):\n{text}",
        text.len()
    );
    server.shutdown().await;
}
