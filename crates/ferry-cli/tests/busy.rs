//! A sender whose connections from this address are used up says so (issue 11 §3): `ferry
//! get` reports "sender busy" with the sender's reason, not a TLS hint on a plain-TCP
//! ticket, and works again once the hogs are gone.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use common::*;
use ferry::cellnet::frame::{FrameDecoder, FrameType, OutFrame};
use ferry::cellnet::MsgpackWriter;
use ferry::ticket::Ticket;

/// A raw connection that completed HELLO/READY as `name` and then holds the connection.
fn hog(addr: &str, name: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut w = MsgpackWriter::new();
    w.map_len(2)
        .str("endpoint_name")
        .str(name)
        .str("timestamp")
        .f64(1.0);
    let hello = OutFrame {
        frame_type: FrameType::Hello,
        app_id: 0,
        headers: Bytes::new(),
        payload: vec![w.finish().to_contiguous().into()],
    };
    s.write_all(&hello.to_bytes(1, 1).unwrap()).unwrap();
    let d = FrameDecoder::new(1 << 20, 65535);
    let mut buf = BytesMut::new();
    let ready = loop {
        if let Some(f) = d.decode(&mut buf).unwrap() {
            break f;
        }
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed before READY");
        buf.extend_from_slice(&b);
    };
    assert_eq!(ready.frame_type(), Some(FrameType::Ready));
    s
}

#[test]
fn get_from_a_sender_out_of_connections_for_this_address_says_sender_busy() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("weights.bin");
    let data = random_file(&src, 300_000, 9);
    let (mut server, ticket) = serve(&[path_str(&src)]);
    let t: Ticket = ticket.parse().unwrap();
    assert!(!t.tls, "a plain-TCP sender: {t:?}");
    let addr = t.addr;
    // the default limit is 256 connections per address
    let hogs: Vec<TcpStream> = (0..256).map(|i| hog(&addr, &format!("hog-{i}"))).collect();
    let out = d.path().join("out");
    let refused = ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).to_string();
    assert!(
        stderr.contains("sender busy")
            && stderr.contains("too many connections from your address 127.0.0.1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("TLS"),
        "a TLS hint on a plain-TCP ticket: {stderr}"
    );
    drop(hogs);
    // once the hogs are gone, the same get works
    let mut ok = None;
    for _ in 0..50 {
        let a = ferry()
            .args(["get", &ticket, "-o", path_str(&out)])
            .assert();
        if a.get_output().status.success() {
            ok = Some(a);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ok.is_some(), "get never succeeded after the hogs left");
    assert_eq!(std::fs::read(out.join("weights.bin")).unwrap(), data);
    assert!(server.wait().success(), "{}", server.stderr_text());
}
