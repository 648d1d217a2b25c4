//! Helpers shared by the integration tests: cells on OS-assigned loopback ports and a raw
//! socket peer that speaks frames by hand (for bad-input tests).
#![allow(dead_code)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_cellnet::frame::{Frame, FrameDecoder, FrameType, OutFrame};
use ferry_cellnet::headers::Headers;
use ferry_cellnet::{Cell, Limits, Message, MsgpackWriter, ReturnCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: tests assert outcomes, never durations.
pub const LONG: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A cell named `name` listening on 127.0.0.1:0; returns it and its URL.
pub async fn listening(name: &str, limits: Limits) -> (Cell, String) {
    init_tracing();
    let c = Cell::builder(name).unwrap().limits(limits).build();
    let url = c.listen("tcp://127.0.0.1:0").await.unwrap();
    (c, url)
}

/// A cell named `name` connected to `url`.
pub async fn connected(name: &str, url: &str) -> Cell {
    let c = Cell::new(name).unwrap();
    c.connect(url).await.unwrap();
    c
}

/// Wait until `f` holds (polling), failing after a generous bound.
pub async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

pub fn hello_payload(name: &str) -> Bytes {
    let mut w = MsgpackWriter::new();
    w.map_len(2)
        .str("endpoint_name")
        .str(name)
        .str("timestamp")
        .f64(1.0);
    w.finish().to_contiguous()
}

/// A HELLO/READY payload that announces ferry's `ferry_sync` (DATA may follow at once).
pub fn hello_payload_sync(name: &str) -> Bytes {
    let mut w = MsgpackWriter::new();
    w.map_len(3)
        .str("endpoint_name")
        .str(name)
        .str("timestamp")
        .f64(1.0)
        .str("ferry_sync")
        .bool(true);
    w.finish().to_contiguous()
}

/// A frame as bytes.
pub fn frame(t: FrameType, app_id: u16, headers: Vec<u8>, payload: Vec<u8>) -> Bytes {
    OutFrame {
        frame_type: t,
        app_id,
        headers: Bytes::from(headers),
        payload: vec![Bytes::from(payload).into()],
    }
    .to_bytes(17, 1)
    .unwrap()
}

/// A hand-driven peer on a raw socket.
pub struct RawPeer {
    pub s: TcpStream,
    buf: BytesMut,
}

impl RawPeer {
    pub fn from_stream(s: TcpStream) -> RawPeer {
        RawPeer {
            s,
            buf: BytesMut::new(),
        }
    }

    pub async fn connect(url: &str) -> RawPeer {
        let addr = url.trim_start_matches("tcp://");
        let s = TcpStream::connect(addr).await.unwrap();
        RawPeer {
            s,
            buf: BytesMut::new(),
        }
    }

    /// Connect from the local address `local` (e.g. 127.0.0.2: another host as far as the
    /// listener can tell).
    pub async fn connect_from(url: &str, local: &str) -> RawPeer {
        let addr: std::net::SocketAddr = url.trim_start_matches("tcp://").parse().unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
        RawPeer::from_stream(sock.connect(addr).await.unwrap())
    }

    pub async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// Send, reporting failure (the other side may have closed the connection).
    pub async fn try_send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b).await
    }

    /// HELLO as `name`, expect READY.
    pub async fn handshake(&mut self, name: &str) {
        self.send(&frame(
            FrameType::Hello,
            0,
            vec![],
            hello_payload(name).to_vec(),
        ))
        .await;
        let f = self.next_frame().await.expect("READY");
        assert_eq!(f.frame_type(), Some(FrameType::Ready));
    }

    /// Next frame, or None if the peer closed the connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        let d = FrameDecoder::new(1 << 30, 65535);
        loop {
            if let Some(f) = d.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let n = tokio::time::timeout(LONG, self.s.read_buf(&mut self.buf))
                .await
                .expect("peer silent")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Next frame that is not a PING/PONG.
    pub async fn next_data(&mut self) -> Option<Frame> {
        loop {
            let f = self.next_frame().await?;
            if f.frame_type() == Some(FrameType::Data) {
                return Some(f);
            }
        }
    }

    /// True if the other side closes the connection (reads until EOF or error).
    pub async fn closed_by_peer(&mut self) -> bool {
        let mut b = [0u8; 4096];
        loop {
            match tokio::time::timeout(LONG, self.s.read(&mut b)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }
}

/// Headers of a REQ from `origin` to `dest` on (t, topic).
pub fn req(origin: &str, dest: &str, topic: &str, req_id: &str, encoding: &str) -> Headers {
    let mut h: Headers = [
        ("cn__msg_type", "req"),
        ("cn__origin", origin),
        ("cn__destination", dest),
        ("cn__channel", "t"),
        ("cn__topic", topic),
        ("cn__req_id", req_id),
        ("cn__payload_encoding", encoding),
    ]
    .into_iter()
    .collect();
    h.insert("cn__reply_expected", true);
    h
}

/// A raw peer from 127.0.0.1 that completed HELLO as `name`.
pub async fn raw(url: &str, name: &str) -> RawPeer {
    let mut p = RawPeer::connect(url).await;
    p.handshake(name).await;
    p
}

/// A real cell asks `server` to echo `n` bytes and gets them back.
pub async fn real_exchange(url: &str, name: &str, n: usize) {
    let c = connected(name, url).await;
    let r = c
        .send_request(
            "t",
            "echo",
            "server",
            Message::from_bytes(vec![5u8; n]),
            LONG,
        )
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error_text());
    assert_eq!(r.bytes().map(Bytes::len), Some(n));
    c.shutdown().await;
}

pub fn echo_bytes(cell: &Cell) {
    cell.register_request_handler("t", "echo", |m: Message| async move {
        Message::from_bytes(m.bytes().cloned().unwrap_or_default())
    });
}
