//! What a peer can make a cell allocate, hold or log is bounded by what it sends, by the
//! limits, and by nothing it merely claims (issue 11). Hand-made F3 clients on raw sockets
//! play the attackers; a real cell plays the peer that must keep working.
//!
//! Memory is measured in-process with a counting global allocator (live heap bytes and their
//! peak), so the tests of this binary run one at a time ([`SERIAL`]).

// The counting allocator needs `unsafe impl GlobalAlloc`; see its SAFETY note.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferry_cellnet::fobs::{Datum, DatumKind, Fobs};
use ferry_cellnet::frame::FrameType;
use ferry_cellnet::headers::Headers;
use ferry_cellnet::{Limits, Message, RequestOptions, ReturnCode, MIB};

/// Live heap bytes, and their peak since the last [`Peak::start`].
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Heap bytes ever allocated: unlike the live count, it never falls (a finished test's
/// runtime may still be freeing on other threads while the next test measures).
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting.
struct Counting;

fn grew(n: usize) {
    ALLOCATED.fetch_add(n, Ordering::Relaxed);
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(n: usize) {
    LIVE.fetch_sub(n, Ordering::Relaxed);
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the only addition is arithmetic on two atomics, which neither
// allocates nor unwinds (counters are updated only for allocations that succeeded).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One test at a time: they measure the whole process's heap.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The peak of live heap bytes above what was live at [`Peak::start`].
struct Peak {
    base: usize,
}

impl Peak {
    fn start() -> Peak {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        Peak { base }
    }

    fn above_base(&self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.base)
    }
}

/// A prefix announcing a DATA frame of `len` bytes with no header map.
fn prefix(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[..4].copy_from_slice(&(len as u32).to_be_bytes());
    p[6] = FrameType::Data as u8;
    p[11] = 1;
    p
}

#[tokio::test]
async fn the_counting_allocator_counts() {
    let _serial = SERIAL.lock().await;
    // Only what cannot fall is checked: the previous test's runtime may still be freeing on
    // other threads, which lowers the live count (and a peak measured above it) meanwhile.
    let allocated = ALLOCATED.load(Ordering::Relaxed);
    let _peak = Peak::start();
    let v = vec![1u8; 10 * MIB];
    assert!(ALLOCATED.load(Ordering::Relaxed) - allocated >= 10 * MIB);
    assert!(
        LIVE.load(Ordering::Relaxed) >= 10 * MIB,
        "the vector is live"
    );
    assert!(PEAK.load(Ordering::Relaxed) >= 10 * MIB, "the peak saw it");
    drop(v);
}

/// Issue 11 §1: a 16-byte prefix announcing a 250 MiB frame reserved the whole frame, so a
/// handful of such connections killed the process. Now a frame's buffer grows as its bytes
/// arrive, and before HELLO nothing above 64 KiB is accepted at all.
#[tokio::test]
async fn prefixes_announcing_huge_frames_reserve_nothing() {
    let _serial = SERIAL.lock().await;
    let (server, url) = listening("server", Limits::default()).await;
    echo_bytes(&server);
    let mut body = prefix(250 * MIB);
    body.extend_from_slice(&[0u8; 1000]);
    let peak = Peak::start();
    let mut peers = Vec::new();
    for i in 0..8 {
        let mut p = raw(&url, &format!("site-{i}")).await;
        p.send(&body).await;
        peers.push(p);
    }
    // before HELLO: closed at once
    for _ in 0..4 {
        let mut p = RawPeer::connect(&url).await;
        p.send(&prefix(250 * MIB)).await;
        assert!(p.closed_by_peer().await, "a 250 MiB frame before HELLO");
    }
    // the eight frames in progress are being read (and charged as they grow)
    eventually(|| server.held_bytes() >= 8 * 1000).await;
    let used = peak.above_base();
    assert!(
        used < 16 * MIB,
        "{} MiB allocated for eight 250 MiB announcements",
        used / MIB
    );
    real_exchange(&url, "site-real", MIB).await;
    drop(peers);
    server.shutdown().await;
}

/// Issue 11 §1: a message whose FOBS body names one 10 MiB datum a hundred times made the
/// decoder copy the datum a hundred times (1 GiB from a 10 MiB message). The second reference
/// is refused: decoding costs a small multiple of what arrived.
#[tokio::test]
async fn a_datum_named_a_hundred_times_is_copied_at_most_once() {
    let _serial = SERIAL.lock().await;
    let (server, url) = listening("server", Limits::default()).await;
    server.register_request_handler("t", "decode", |m: Message| async move {
        m.value().map(|_| Message::from_value("decoded"))
    });
    let id = uuid_of(7);
    let mut w = ferry_cellnet::MsgpackWriter::new();
    w.array_len(100);
    for _ in 0..100 {
        datum_ref(&mut w, &id);
    }
    let fobs = Fobs {
        main: w.finish(),
        datums: vec![Datum {
            id,
            kind: DatumKind::Blob,
            dot: 0,
            data: Bytes::from(vec![3u8; 10 * MIB]),
        }],
    };
    let payload = ferry_cellnet::fobs::concat(&fobs.into_segments());
    let frame_bytes = frame(
        FrameType::Data,
        1,
        req("site-1", "server", "decode", "D1", "fobs").encode(),
        payload.to_vec(),
    );
    drop(payload);
    let mut p = raw(&url, "site-1").await;
    let peak = Peak::start();
    p.send(&frame_bytes).await;
    let f = p.next_data().await.unwrap();
    let h = Headers::decode(&f.headers).unwrap();
    assert_eq!(h.get_str("cn__req_id"), Some("D1"));
    assert_eq!(h.get_str("cn__return_code"), Some("process_exception"));
    assert!(
        h.get_str("cn__error")
            .is_some_and(|e| e.contains("referenced more than once")),
        "{h:?}"
    );
    let used = peak.above_base();
    assert!(
        used < 40 * MIB,
        "{} MiB allocated to decode a 10 MiB message",
        used / MIB
    );
    server.shutdown().await;
}

fn uuid_of(b: u8) -> uuid::Uuid {
    uuid::Uuid::from_bytes([b; 16])
}

/// NVFlare's DatumRef map naming `id`.
fn datum_ref(w: &mut ferry_cellnet::MsgpackWriter, id: &uuid::Uuid) {
    w.map_len(3)
        .str("__fobs_type__")
        .str("nvflare.fuel.utils.fobs.datum.DatumRef")
        .str("__fobs_data__")
        .map_len(1)
        .str("data")
        .map_len(2)
        .str("datum_id")
        .str(&id.to_string())
        .str("unwrap")
        .bool(true)
        .str("__fobs_dc__")
        .str("nvflare.fuel.utils.fobs.decomposer.DataClassDecomposer");
}

/// Issue 11 §2: ten connections that each send half of a large frame and stop held 1 GiB for
/// ever. Now what they hold is charged to one budget (64 MiB here): when it is full the
/// stalest holder is closed, a frame that gets no byte for `frame_stall_timeout` is dropped
/// with its connection, and a real peer's messages still go through.
#[tokio::test]
async fn stalled_half_frames_hold_at_most_the_budget() {
    let _serial = SERIAL.lock().await;
    let limits = Limits {
        max_frame_size: 32 * MIB,
        max_held_bytes: 64 * MIB,
        frame_stall_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let (server, url) = listening("server", limits).await;
    echo_bytes(&server);
    let half = vec![1u8; 16 * MIB];
    let mut peers = Vec::new();
    for i in 0..10 {
        peers.push(raw(&url, &format!("site-{i}")).await);
    }
    let peak = Peak::start();
    for p in &mut peers {
        // an evicted peer's socket may be closed under it: that is the point
        let _ = p.try_send(&prefix(32 * MIB)).await;
        let _ = p.try_send(&half).await;
    }
    // while the attack holds what it can, a real peer's 4 MiB request goes through
    real_exchange(&url, "site-real", 4 * MIB).await;
    assert!(server.held_bytes() <= 64 * MIB);
    // every stalled connection ends: evicted, or dropped after the stall timeout
    for p in &mut peers {
        assert!(p.closed_by_peer().await);
    }
    let used = peak.above_base();
    assert!(
        used <= 64 * MIB + 16 * MIB,
        "{} MiB allocated: more than the 64 MiB budget (plus the real exchange)",
        used / MIB
    );
    eventually(|| server.held_bytes() == 0).await;
    server.shutdown().await;
}

/// Issue 11 §2: frames before HELLO are limited to 64 KiB (`max_handshake_frame_size`);
/// a Python peer's HELLO (~100 bytes) is far below.
#[tokio::test]
async fn frames_before_hello_are_small_or_close_the_connection() {
    let _serial = SERIAL.lock().await;
    let (server, url) = listening("server", Limits::default()).await;
    echo_bytes(&server);
    let peak = Peak::start();
    let mut peers = Vec::new();
    for _ in 0..4 {
        let mut p = RawPeer::connect(&url).await;
        p.send(&prefix(200 * MIB)).await;
        p.send(&[0u8; 60_000]).await;
        peers.push(p);
    }
    for p in &mut peers {
        assert!(p.closed_by_peer().await);
    }
    assert!(peak.above_base() < 4 * MIB, "{}", peak.above_base());
    // a frame just under the limit is fine (dropped as DATA before HELLO), and HELLO works
    let mut p = RawPeer::connect(&url).await;
    p.send(&frame(FrameType::Data, 1, vec![0x80], vec![0u8; 60_000]))
        .await;
    p.handshake("site-1").await;
    real_exchange(&url, "site-2", 1024).await;
    server.shutdown().await;
}

/// One `sm__DATA` chunk from `origin` (stream `sid`, `seq`, of a `total`-byte stream).
fn stream_chunk(origin: &str, sid: u64, seq: u64, total: u64, payload: &[u8]) -> Bytes {
    let mut h: Headers = [
        ("cn__msg_type", "req"),
        ("cn__origin", origin),
        ("cn__destination", "server"),
        ("cn__channel", "sm__STREAM"),
        ("cn__topic", "sm__DATA"),
        ("cn__payload_encoding", "bytes"),
        ("sm__ch", "t"),
        ("sm__tp", "echo"),
        ("sm__pe", "bytes"),
    ]
    .into_iter()
    .collect();
    h.insert("cn__reply_expected", false);
    h.insert("sm__id", sid);
    h.insert("sm__sq", seq);
    h.insert("sm__dt", 1u64);
    h.insert("sm__os", seq * payload.len() as u64);
    h.insert("sm__sz", total);
    h.insert("sm__rs", false);
    frame(FrameType::Data, 1, h.encode(), payload.to_vec())
}

/// Issue 11 §2: 300 unfinished streams under 300 claimed names held 628 MB. A connection
/// may claim the names below its own (site-1 speaks for site-1.x), but its streams count
/// against it whatever they claim (`max_streams_per_peer`), and their bytes against the one
/// budget; a real peer's streamed request still completes.
#[tokio::test]
async fn unfinished_streams_under_many_names_hold_at_most_the_budget() {
    let _serial = SERIAL.lock().await;
    let limits = Limits {
        max_frame_size: 8 * MIB,
        max_held_bytes: 32 * MIB,
        stream_idle_timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    let (server, url) = listening("server", limits).await;
    echo_bytes(&server);
    let piece = vec![2u8; 512 * 1024];
    let mut peers = Vec::new();
    for k in 0..4 {
        peers.push(raw(&url, &format!("site-{k}")).await);
    }
    let peak = Peak::start();
    for (k, p) in peers.iter_mut().enumerate() {
        for i in 0..75u64 {
            let origin = format!("site-{k}.job{i}");
            let _ = p
                .try_send(&stream_chunk(&origin, 1000 + i, 0, 8 * MIB as u64, &piece))
                .await;
        }
    }
    // a real cell streams a 3 MiB request through the same server
    let c = connected("site-real", &url).await;
    let r = c
        .send_request_with(
            "t",
            "echo",
            "server",
            Message::from_bytes(vec![9u8; 3 * MIB]),
            RequestOptions::timeout(LONG).streamed(true),
        )
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error_text());
    assert_eq!(r.bytes().map(Bytes::len), Some(3 * MIB));
    assert!(server.held_bytes() <= 32 * MIB);
    let used = peak.above_base();
    assert!(
        used <= 32 * MIB + 16 * MIB,
        "{} MiB allocated: more than the 32 MiB budget (plus the real stream)",
        used / MIB
    );
    c.shutdown().await;
    drop(peers);
    eventually(|| server.held_bytes() == 0).await;
    server.shutdown().await;
}

/// What a stream's first chunk claims (`sm__sz`) reserves nothing: the cell used to reserve
/// `min(sm__sz, 8 MiB)` for a stream before its bytes arrived (a real NVFlare 10 MiB streamed
/// request does it; the fuzzing's `cell_stream` finding), so eight 1 KiB first chunks cost
/// 64 MiB. Now a stream in reassembly holds the chunks that came, and the cell's held bytes
/// count them.
#[tokio::test]
async fn a_streams_claimed_size_reserves_nothing() {
    let _serial = SERIAL.lock().await;
    let (server, url) = listening("server", Limits::default()).await;
    echo_bytes(&server);
    let mut p = raw(&url, "site-1").await;
    let piece = vec![3u8; 1024];
    let peak = Peak::start();
    for sid in 0..8u64 {
        p.send(&stream_chunk(
            "site-1",
            500 + sid,
            0,
            8 * MIB as u64,
            &piece,
        ))
        .await;
    }
    // The connection handles its frames in order: once the PING after the chunks is answered,
    // every chunk has been taken into its stream.
    p.send(&frame(FrameType::Ping, 0, vec![], vec![0xc0])).await;
    loop {
        let f = p
            .next_frame()
            .await
            .expect("the cell closed the connection");
        if f.frame_type() == Some(FrameType::Pong) {
            break;
        }
    }
    assert!(
        server.held_bytes() >= 8 * piece.len(),
        "the eight unfinished streams are held ({} bytes)",
        server.held_bytes()
    );
    let used = peak.above_base();
    assert!(
        used < 8 * MIB,
        "{} KiB allocated for eight 1 KiB chunks of streams claiming 8 MiB each",
        used / 1024
    );
    real_exchange(&url, "site-real", 1024).await;
    drop(p);
    eventually(|| server.held_bytes() == 0).await;
    server.shutdown().await;
}

/// A header block (at most 64 KiB) of containers nested past the depth limit, each claiming
/// more elements than the input holds (arrays of 4 Gi, maps of 57,054 entries: the `headers`
/// fuzz target's finding): decoding it is refused, and what the decoder allocated meanwhile
/// is small and fixed. Reserving what each level's remaining input could hold cost
/// 1,000 × the block × 32 bytes; reserving 16 elements per level, 1 KiB per 3 input bytes.
#[tokio::test]
async fn nested_claims_in_a_header_block_reserve_a_fixed_amount() {
    let _serial = SERIAL.lock().await;
    for level in [&[0xdd, 0xff, 0xff, 0xff, 0xff][..], &[0xde, 0xde][..]] {
        let mut block = vec![0x81, 0xa1, b'k'];
        while block.len() + level.len() <= 65_535 {
            block.extend_from_slice(level);
        }
        let peak = Peak::start();
        let e = Headers::decode(&block).unwrap_err();
        let used = peak.above_base();
        assert!(e.to_string().contains("nesting too deep"), "{e}");
        assert!(
            used <= 64 * 1024,
            "{} KiB allocated decoding a {} byte header block of {level:02x?}",
            used / 1024,
            block.len()
        );
    }
}
