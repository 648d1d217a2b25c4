//! The frame reader on real TCP sockets, where the socket's receive low-water mark defers the
//! reader's wakeups while a large frame's body arrives: nothing may wait for bytes that never
//! come, a slow peer is not mistaken for a stalled one, and an ending connection is seen at
//! once.

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;

use super::tests::{data_frame, limits, ping};
use super::*;
use crate::frame::FrameType;

/// Far beyond what any test here waits for: reaching it means the reader hung.
const HUNG: Duration = Duration::from_secs(120);

/// A reader on the accepting end of a loopback connection (the plain-TCP transport, as a
/// cell builds it) and the connecting end as a blocking socket for a writer thread.
async fn pair(stall: Duration) -> (FrameReader, std::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
    let client = client.unwrap().into_std().unwrap();
    client.set_nonblocking(false).unwrap();
    client.set_nodelay(true).unwrap();
    let t = crate::driver::tcp::transport(accepted.unwrap().0);
    let mut lim = limits(64 << 20);
    lim.stall_timeout = stall;
    let r = FrameReader::new(t.rd, lim, None, None, Arc::default());
    (r, client)
}

fn payload(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

async fn next_frame(r: &mut FrameReader) -> Result<Option<Frame>, CellnetError> {
    tokio::time::timeout(HUNG, r.next())
        .await
        .expect("the reader hung")
}

/// The last bytes of a large frame come one small piece at a time, each far below the
/// low-water mark and far apart, for longer than the stall timeout: the frame is delivered
/// (the reader checks for queued bytes before it declares a stall), and so is a small frame
/// after it.
#[tokio::test]
async fn a_large_frame_whose_body_trickles_in_is_delivered() {
    let stall = Duration::from_secs(1);
    let (mut r, mut tx) = pair(stall).await;
    let body = payload(1 << 20);
    let wire = data_frame(&body);
    let writer = std::thread::spawn(move || {
        let (head, tail) = wire.split_at(wire.len() - 24 * 1024);
        tx.write_all(head).unwrap();
        // 24 pieces 100 ms apart: 2.4 s in all, each gap a tenth of the stall timeout
        for piece in tail.chunks(1024) {
            std::thread::sleep(Duration::from_millis(100));
            tx.write_all(piece).unwrap();
        }
        tx.write_all(&ping()).unwrap();
        tx
    });
    let f = next_frame(&mut r).await.unwrap().unwrap();
    assert_eq!(f.payload, body);
    let p = next_frame(&mut r).await.unwrap().unwrap();
    assert_eq!(p.frame_type(), Some(FrameType::Ping));
    drop(writer.join().unwrap());
    assert!(next_frame(&mut r).await.unwrap().is_none());
}

/// A large frame whose last bytes arrive exactly, after a pause, and nothing after it for a
/// while: the frame is delivered, and a heartbeat-sized frame after it wakes the reader
/// (the mark went back to one byte between frames).
#[tokio::test]
async fn a_large_frame_that_ends_exactly_and_a_small_frame_after_it_are_delivered() {
    let (mut r, mut tx) = pair(Duration::from_secs(3600)).await;
    let body = payload(3 << 20);
    let wire = data_frame(&body);
    let (go, wait) = mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let (head, tail) = wire.split_at(wire.len() - 200 * 1024);
        tx.write_all(head).unwrap();
        // the reader now waits for the last 200 KiB, with the mark at (most of) them
        std::thread::sleep(Duration::from_millis(200));
        tx.write_all(tail).unwrap();
        wait.recv().unwrap();
        tx.write_all(&ping()).unwrap();
        wait.recv().unwrap();
    });
    let f = next_frame(&mut r).await.unwrap().unwrap();
    assert_eq!(f.payload, body);
    go.send(()).unwrap();
    let p = next_frame(&mut r).await.unwrap().unwrap();
    assert_eq!(p.frame_type(), Some(FrameType::Ping));
    go.send(()).unwrap();
    writer.join().unwrap();
    assert!(next_frame(&mut r).await.unwrap().is_none());
}

/// A peer that closes (FIN) or resets (RST) the connection inside a large frame's body is
/// reported at once, not after the stall timeout (an hour here); one that keeps the
/// connection open and sends nothing more is reported after the stall timeout.
#[tokio::test]
async fn a_connection_ending_inside_a_large_frame_is_reported_promptly() {
    let body = payload(2 << 20);
    let wire = data_frame(&body);
    let part = &wire[..300 * 1024];

    let (mut r, mut tx) = pair(Duration::from_secs(3600)).await;
    tx.write_all(part).unwrap();
    drop(tx);
    match next_frame(&mut r).await {
        Err(CellnetError::ConnectionClosed(why)) => {
            assert!(why.contains("inside a frame"), "{why}")
        }
        other => panic!("{other:?}"),
    }

    let (mut r, mut tx) = pair(Duration::from_secs(3600)).await;
    tx.write_all(part).unwrap();
    rustix::net::sockopt::set_socket_linger(&tx, Some(Duration::ZERO)).unwrap();
    drop(tx);
    match next_frame(&mut r).await {
        Err(CellnetError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}")
        }
        other => panic!("{other:?}"),
    }

    let (mut r, mut tx) = pair(Duration::from_secs(1)).await;
    tx.write_all(part).unwrap();
    match next_frame(&mut r).await {
        Err(CellnetError::Timeout(why)) => assert!(why.contains("frame_stall_timeout"), "{why}"),
        other => panic!("{other:?}"),
    }
    drop(tx);
}
