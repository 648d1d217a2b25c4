//! A peer on a real TCP connection to a listening cell: HELLO, then DATA frames carrying
//! requests, `sm__*` stream chunks, ACKs and ERRORs (out of order, duplicated, oversized,
//! contradicting), PINGs and anything else, read and handled by ferry-cellnet's connection,
//! routing and stream reassembly. Completed requests and streams reach a handler that decodes
//! their payload. At the end a PING must be answered by a PONG (the cell neither died nor hung)
//! unless the cell closed the connection.
//!
//! Input: records (see `ferry_fuzz::records`), one frame each: the first byte is the frame type,
//! the next two the header length (big-endian), then the header map and the payload. The
//! harness writes the 16-byte prefix with the true lengths (`f3_frames` fuzzes prefixes).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_cellnet::frame::{FrameDecoder, FrameType, OutFrame};
use ferry_cellnet::{Cell, Limits, Message};
use ferry_fuzz::records::Records;
use ferry_fuzz::{within, Limit, VALUE_TREE_PER_BYTE};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// What one input may allocate.
fn limit() -> Limit {
    Limit {
        // a reassembled stream is one copy of its chunks; its payload becomes a value tree
        per_byte: VALUE_TREE_PER_BYTE + 4,
        // the cell, its listener, one connection (read buffer, writer queue), handler tasks
        fixed: 2 * 1024 * 1024,
    }
}

/// Streams in reassembly per peer (`Limits::max_streams_per_peer`; default 64): small, so that
/// the limit is reached and refused within a short input.
const STREAMS: usize = 2;

/// How long the cell may take to answer the final PING. A real hang trips libFuzzer's
/// `-timeout` first; this only turns a lost PONG into a clear panic.
const PONG_WAIT: Duration = Duration::from_secs(20);

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        ignore_sigpipe();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// libFuzzer's `main` is not Rust's: SIGPIPE is not ignored, and a write to a connection the
/// cell closed would kill the process instead of failing with EPIPE.
#[allow(unsafe_code)]
fn ignore_sigpipe() {
    // SAFETY: installs the predefined SIG_IGN disposition; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

fn frame(frame_type: u8, headers: &[u8], payload: &[u8]) -> Vec<u8> {
    let len = 16 + headers.len() + payload.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&(headers.len() as u16).to_be_bytes());
    out.push(frame_type);
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(
        &(if frame_type == FrameType::Data as u8 {
            1u16
        } else {
            0
        })
        .to_be_bytes(),
    );
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    out
}

/// The peer's bytes: one frame per record.
fn wire(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut rd = Records::new(data);
    while let Some(rec) = rd.next_record() {
        let (ty, rest) = rec.split_first().unwrap_or((&1, &[]));
        let (hl, rest) = match rest {
            [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) as usize, rest),
            _ => (0, rest),
        };
        let (h, p) = rest.split_at(hl.min(rest.len()));
        out.extend_from_slice(&frame(*ty, h, p));
    }
    let ping = OutFrame {
        frame_type: FrameType::Ping,
        app_id: 0,
        headers: Bytes::new(),
        payload: vec![Bytes::from_static(&[0xc0]).into()],
    };
    out.extend_from_slice(&ping.to_bytes(0, 0).expect("ping"));
    out
}

/// Read frames until a PONG (true) or the end of the connection (false).
async fn wait_pong(rd: &mut (impl AsyncRead + Unpin)) -> bool {
    let dec = FrameDecoder::new(1 << 30, 65_535);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Ok(Some(f)) = dec.decode(&mut buf) {
            if f.frame_type() == Some(FrameType::Pong) {
                return true;
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

async fn run(bytes: Vec<u8>) {
    let limits = Limits {
        max_streams_per_peer: STREAMS,
        ..Limits::default()
    };
    let cell = Cell::builder("server")
        .expect("cell")
        .limits(limits)
        .build();
    cell.register_request_handler("*", "*", |req: Message| async move {
        let v = req.value().unwrap_or(ferry_cellnet::rmpv::Value::Nil);
        Message::from_value(v)
    });
    let url = cell.listen("tcp://127.0.0.1:0").await.expect("listen");
    let mut sock = TcpStream::connect(url.trim_start_matches("tcp://"))
        .await
        .expect("connect");
    // reset instead of FIN on close: no TIME_WAIT left behind by millions of connections
    sock.set_zero_linger().expect("linger");
    let (mut rd, mut wr) = sock.split();
    let write = async {
        // the cell may close the connection on a fatal frame: the write then fails
        let _ = wr.write_all(&bytes).await;
    };
    let (_, answered) = tokio::join!(write, tokio::time::timeout(PONG_WAIT, wait_pong(&mut rd)));
    if answered.is_err() {
        panic!("the cell answered no PING within {PONG_WAIT:?} and kept the connection open");
    }
    drop(sock);
    cell.shutdown_with_grace(Duration::ZERO).await;
}

fuzz_target!(|data: &[u8]| {
    let rt = runtime();
    within(limit(), data.len(), || {
        let bytes = wire(data);
        rt.block_on(run(bytes));
    });
});
