//! Tests of the frame reader: growth as bytes arrive, the handshake limit, the stall
//! deadline, the held-memory account, recycling and cancel-safety.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::frame::{FrameType, OutFrame, APP_ID_CELLNET};
use crate::held::HeldBudget;

const LARGE_FRAME: usize = 1024 * 1024;
const STALL: Duration = Duration::from_secs(30);

pub(super) fn limits(max: usize) -> ReadLimits {
    ReadLimits {
        max_frame_size: max,
        max_header_size: 65535,
        stall_timeout: STALL,
    }
}

fn reader(rd: ReadHalf, max: usize) -> FrameReader {
    FrameReader::new(rd, limits(max), None, None, Arc::default())
}

pub(super) fn ping() -> Bytes {
    OutFrame {
        frame_type: FrameType::Ping,
        app_id: 0,
        headers: Bytes::new(),
        payload: vec![Bytes::from_static(&[0xc0]).into()],
    }
    .to_bytes(18, 3)
    .unwrap()
}

/// A prefix announcing a DATA frame of `len` bytes with a one-byte header map.
fn prefix(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[..4].copy_from_slice(&(len as u32).to_be_bytes());
    p[5] = 1;
    p[6] = 1;
    p[11] = 1;
    p
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Whatever arrives, the reader's buffers never grow beyond twice what arrived plus one
    /// read chunk, and it never panics.
    #[test]
    fn reader_buffer_stays_bounded(
        input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
        prefix_len in proptest::prelude::any::<u32>(),
    ) {
        let max = 1024usize;
        let mut bytes = prefix_len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 1, 0, 17, 0, 2]);
        bytes.extend_from_slice(&input);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let rd: ReadHalf = Box::new(std::io::Cursor::new(bytes));
            let mut r = reader(rd, max);
            loop {
                let res = r.next().await;
                assert!(r.buf.capacity() <= 2 * READ_CHUNK, "buffer grew to {}", r.buf.capacity());
                assert!(r.large.is_none());
                match res {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        });
    }
}

/// A DATA frame on the wire with an empty header map and this payload.
pub(super) fn data_frame(payload: &Bytes) -> Bytes {
    OutFrame {
        frame_type: FrameType::Data,
        app_id: APP_ID_CELLNET,
        headers: Bytes::from_static(&[0x80]),
        payload: vec![payload.clone().into()],
    }
    .to_bytes(17, 2)
    .unwrap()
}

#[tokio::test]
async fn large_frames_use_recycled_buffers() {
    let payload = Bytes::from((0..3 * LARGE_FRAME).map(|i| i as u8).collect::<Vec<u8>>());
    let f = data_frame(&payload);
    let mut wire = f.to_vec();
    wire.extend_from_slice(&f);
    wire.extend_from_slice(&ping());
    let rd: ReadHalf = Box::new(std::io::Cursor::new(wire));
    let mut r = reader(rd, 16 * LARGE_FRAME);
    let a = r.next().await.unwrap().unwrap();
    assert_eq!(a.payload, payload);
    assert_eq!(&a.headers[..], &[0x80]);
    let ptr = a.payload.as_ptr();
    drop(a);
    // the second frame lands in the buffer the first one gave back
    let b = r.next().await.unwrap().unwrap();
    assert_eq!(b.payload, payload);
    assert_eq!(b.payload.as_ptr(), ptr);
    let c = r.next().await.unwrap().unwrap();
    assert_eq!(c.frame_type(), Some(FrameType::Ping));
    assert!(r.next().await.unwrap().is_none());
}

/// The reader task drops `next()` whenever the heartbeat ticks; no byte may be lost.
#[tokio::test]
async fn next_is_cancel_safe() {
    let payload = Bytes::from(
        (0..2 * LARGE_FRAME + 5)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let big = data_frame(&payload);
    let small = ping();
    let mut wire = Vec::new();
    for _ in 0..2 {
        wire.extend_from_slice(&small);
        wire.extend_from_slice(&big);
    }
    let (mut tx, rx) = tokio::io::duplex(4096);
    let writer = tokio::spawn(async move {
        for piece in wire.chunks(3000) {
            tx.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let rd: ReadHalf = Box::new(rx);
    let mut r = reader(rd, 16 * LARGE_FRAME);
    let mut got = Vec::new();
    while got.len() < 4 {
        // cancel next() at every await point it reaches
        tokio::select! {
            biased;
            f = r.next() => got.push(f.unwrap().unwrap()),
            _ = tokio::task::yield_now() => {}
        }
    }
    writer.await.unwrap();
    for pair in got.chunks(2) {
        assert_eq!(pair[0].frame_type(), Some(FrameType::Ping));
        assert_eq!(pair[1].payload, payload);
    }
}

#[tokio::test]
async fn truncated_large_frame_is_an_error() {
    let mut wire = vec![0u8; 16];
    wire[..4].copy_from_slice(&(2 * LARGE_FRAME as u32).to_be_bytes());
    wire[6] = 1;
    wire.extend_from_slice(&[0u8; 1000]);
    let rd: ReadHalf = Box::new(std::io::Cursor::new(wire));
    let mut r = reader(rd, 16 * LARGE_FRAME);
    assert!(r.next().await.is_err());
}

/// A 16-byte prefix announcing 250 MiB reserves nothing near that: the frame's buffer grows
/// as bytes arrive, to at most twice what came plus one read chunk.
#[tokio::test(start_paused = true)]
async fn an_announced_length_reserves_nothing_until_bytes_arrive() {
    let (mut tx, rx) = tokio::io::duplex(1 << 16);
    let mut r = reader(Box::new(rx), 256 << 20);
    tx.write_all(&prefix(250 << 20)).await.unwrap();
    let mut sent = 0usize;
    for step in [0usize, 1000, 100_000, 3 << 20] {
        let body = vec![7u8; step];
        let w = async {
            tx.write_all(&body).await.unwrap();
        };
        // read until the writer is done and the reader waits for more
        tokio::select! {
            biased;
            r = r.next() => panic!("no frame can be complete: {r:?}"),
            _ = async { w.await; tokio::time::sleep(Duration::from_secs(1)).await } => {}
        }
        sent += step;
        let cap = r.large.as_ref().map_or(0, |l| l.buf.capacity());
        assert!(
            cap <= 2 * sent + 2 * READ_CHUNK,
            "{cap} bytes reserved after {sent} bytes of a 250 MiB frame"
        );
        assert!(r.buf.capacity() <= 2 * READ_CHUNK);
    }
}

/// Frames larger than the handshake limit are refused until the handshake is done.
#[tokio::test]
async fn the_handshake_limit_holds_until_the_handshake_is_done() {
    let mut big = prefix(100_000);
    big.resize(100_000, 0);
    let mut wire = big.clone();
    wire.extend_from_slice(&big);
    let mut r = FrameReader::new(
        Box::new(std::io::Cursor::new(wire.clone())),
        limits(1 << 20),
        Some(64 * 1024),
        None,
        Arc::default(),
    );
    match r.next().await {
        Err(CellnetError::Handshake(why)) => {
            assert!(why.contains("100000") && why.contains("65536"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let mut r = FrameReader::new(
        Box::new(std::io::Cursor::new(wire)),
        limits(1 << 20),
        Some(64 * 1024),
        None,
        Arc::default(),
    );
    r.handshake_done();
    assert_eq!(r.next().await.unwrap().unwrap().prefix.length, 100_000);
    assert_eq!(r.next().await.unwrap().unwrap().prefix.length, 100_000);
}

/// A frame that stops arriving half-way fails the read after the stall timeout, counted
/// from its last byte, even though `next()` is cancelled and restarted meanwhile; an idle
/// connection between frames never does.
#[tokio::test(start_paused = true)]
async fn a_frame_that_stops_arriving_times_out() {
    let (mut tx, rx) = tokio::io::duplex(1 << 16);
    let mut r = reader(Box::new(rx), 1 << 20);
    // idle between frames: no deadline
    tokio::select! {
        r = r.next() => panic!("{r:?}"),
        _ = tokio::time::sleep(10 * STALL) => {}
    }
    let t0 = tokio::time::Instant::now();
    tx.write_all(&prefix(200_000)).await.unwrap();
    tx.write_all(&[1u8; 5000]).await.unwrap();
    // the heartbeat tick cancels next() every 5 s
    let err = loop {
        tokio::select! {
            r = r.next() => break r.unwrap_err(),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    };
    assert!(matches!(err, CellnetError::Timeout(_)), "{err:?}");
    let waited = t0.elapsed();
    assert!(
        waited >= STALL && waited < STALL + Duration::from_secs(1),
        "{waited:?}"
    );
    // a small frame cut short stalls the same way
    let (mut tx, rx) = tokio::io::duplex(1 << 16);
    let mut r = reader(Box::new(rx), 1 << 20);
    tx.write_all(&ping()[..10]).await.unwrap();
    assert!(matches!(r.next().await, Err(CellnetError::Timeout(_))));
}

/// Growth is charged to the connection's account; a charge that cannot be met ends the
/// frame with an error (the connection closes), and everything charged comes back.
#[tokio::test(start_paused = true)]
async fn frame_buffers_are_charged_and_a_refused_charge_fails_the_read() {
    let budget = HeldBudget::new(1 << 20);
    let account = budget.register(1, CancellationToken::new(), "10.0.0.1:1");
    let (mut tx, rx) = tokio::io::duplex(1 << 16);
    let mut r = FrameReader::new(
        Box::new(rx),
        limits(16 << 20),
        None,
        Some(account.handle()),
        Arc::default(),
    );
    tx.write_all(&prefix(4 << 20)).await.unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..64 {
            if tx.write_all(&[3u8; 64 * 1024]).await.is_err() {
                break;
            }
        }
        tx
    });
    let err = r.next().await.unwrap_err();
    assert!(matches!(err, CellnetError::LimitReached(_)), "{err:?}");
    assert!(budget.used() <= 1 << 20);
    assert!(budget.used() > 0);
    drop(r);
    assert_eq!(budget.used(), 0);
    drop(writer);
}

/// A complete frame leaves the account; its buffer is charged again only while it waits in
/// the pool, and the pool gives everything back when the reader goes.
#[tokio::test]
async fn pooled_buffers_are_charged_while_idle() {
    let budget = HeldBudget::new(64 << 20);
    let account = budget.register(1, CancellationToken::new(), "10.0.0.1:1");
    let payload = Bytes::from(vec![9u8; 2 * LARGE_FRAME]);
    let f = data_frame(&payload);
    let mut wire = f.to_vec();
    wire.extend_from_slice(&f);
    let mut r = FrameReader::new(
        Box::new(std::io::Cursor::new(wire)),
        limits(16 << 20),
        None,
        Some(account.handle()),
        Arc::default(),
    );
    let a = r.next().await.unwrap().unwrap();
    assert_eq!(budget.used(), 0, "a complete frame is not unfinished data");
    drop(a);
    let idle = budget.used();
    assert!(
        idle >= 2 * LARGE_FRAME,
        "the idle buffer is charged: {idle}"
    );
    let b = r.next().await.unwrap().unwrap();
    assert_eq!(budget.used(), 0, "reused, and handed on");
    drop(b);
    assert_eq!(budget.used(), idle);
    drop(r);
    assert_eq!(budget.used(), 0);
}

#[test]
fn a_copied_frame_is_its_bytes_whatever_its_size_class() {
    for len in [
        0, 1, 255, 256, 257, 512, 513, 1024, 2048, 4095, 4096, 4097, 70_000,
    ] {
        let wire: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let frame = copy_frame(&wire);
        assert_eq!(&frame[..], &wire[..], "len {len}");
        // split as the decoder splits it: both halves still read the copy
        let mut rest = frame.clone();
        let head = rest.split_to(len / 3);
        assert_eq!((&head[..], &rest[..]), wire.split_at(len / 3), "len {len}");
        drop(frame);
        assert_eq!(&rest[..], &wire[len / 3..], "outlives the whole");
    }
}
