//! Receivers that pull and never read cannot starve the others (issue 11 §3): a connection
//! holds at most a quarter of the sender's chunk budget whatever names it pulls as, and a
//! connection whose socket stops draining is closed after `Limits::send_timeout`, dropping
//! the chunks queued for it so their budget returns long before real receivers time out.
//!
//! The pullers are hand-made F3 clients on raw sockets: HELLO, then download requests, then
//! silence.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry::cellnet::fobs::{concat, Fobs};
use ferry::cellnet::frame::{FrameDecoder, FrameType, OutFrame, APP_ID_CELLNET};
use ferry::cellnet::headers::Headers;
use ferry::cellnet::{Limits, MsgpackWriter};
use ferry::core::message::{CHANNEL, TOPIC_DOWNLOAD};
use ferry::prelude::*;
use ferry_tests::e2e::{blake3_file, receiver, write_random_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: tests assert outcomes, never durations.
const LONG: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// A raw F3 client that pulls and never reads what comes back.
struct Puller {
    s: TcpStream,
    name: String,
    next_id: u64,
}

impl Puller {
    /// Connect to `url` and complete HELLO/READY as `name`.
    async fn connect(url: &str, name: &str) -> Puller {
        let mut s = TcpStream::connect(url.trim_start_matches("tcp://"))
            .await
            .unwrap();
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
        s.write_all(&hello.to_bytes(1, 1).unwrap()).await.unwrap();
        // read exactly the READY frame, nothing after it
        let mut buf = BytesMut::new();
        let d = FrameDecoder::new(1 << 20, 65535);
        let ready = loop {
            if let Some(f) = d.decode(&mut buf).unwrap() {
                break f;
            }
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed before READY");
            buf.extend_from_slice(&b);
        };
        assert_eq!(ready.frame_type(), Some(FrameType::Ready));
        Puller {
            s,
            name: name.to_string(),
            next_id: 0,
        }
    }

    /// Ask for the chunk at `offset` of `rid`, as `origin` (this connection's name or one
    /// below it).
    async fn pull(&mut self, origin: &str, rid: &RefId, offset: u64) {
        self.next_id += 1;
        let req_id = format!("{}-{}", self.name, self.next_id);
        let mut h: Headers = [
            ("cn__msg_type", "req"),
            ("cn__origin", origin),
            ("cn__destination", "server"),
            ("cn__channel", CHANNEL),
            ("cn__topic", TOPIC_DOWNLOAD),
            ("cn__req_id", req_id.as_str()),
            ("cn__payload_encoding", "fobs"),
        ]
        .into_iter()
        .collect();
        h.insert("cn__reply_expected", true);
        let mut w = MsgpackWriter::new();
        w.map_len(2)
            .str("ref_id")
            .str(rid.as_str())
            .str("state")
            .map_len(1)
            .str("received_bytes")
            .uint(offset);
        let payload = concat(&Fobs::from_msgpack(w.finish()).into_segments());
        let f = OutFrame {
            frame_type: FrameType::Data,
            app_id: APP_ID_CELLNET,
            headers: Bytes::from(h.encode()),
            payload: vec![payload.into()],
        };
        self.s.write_all(&f.to_bytes(17, 2).unwrap()).await.unwrap();
    }

    /// Read (and discard) until the sender closes the connection.
    async fn closed_by_sender(&mut self) -> bool {
        let mut b = vec![0u8; 1 << 20];
        loop {
            match tokio::time::timeout(LONG, self.s.read(&mut b)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// A sender with `budget` bytes of chunk budget and these cell limits, serving a random file
/// of `size` bytes (1 MiB chunks) to whoever pulls it.
async fn serve(
    dir: &std::path::Path,
    size: u64,
    budget: u64,
    limits: Limits,
) -> (
    Cell,
    DownloadService,
    String,
    ObjectDownloader,
    RefId,
    String,
) {
    let cell = Cell::builder("server").unwrap().limits(limits).build();
    let url = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    let service = DownloadService::new(
        &cell,
        ServiceOptions {
            byte_budget: budget,
            ..ServiceOptions::default()
        },
    );
    let src = dir.join("model.bin");
    let digest = write_random_file(&src, size, 11).unwrap();
    let tx = ObjectDownloader::new(
        &service,
        // anyone holding the ticket may pull: the pullers do too
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(1000),
    )
    .unwrap();
    let rid = tx.add_file(&src, MIB).unwrap();
    (cell, service, url, tx, rid, digest)
}

/// The real receiver downloads the whole file.
async fn real_download(url: &str, rid: &RefId, out: &std::path::Path, digest: &str) {
    let (rcell, rservice) = receiver("site-real", url).await;
    let path = tokio::time::timeout(
        LONG,
        download_file(
            &rservice,
            "server",
            rid,
            out,
            "model.bin",
            FileOptions::default(),
            DownloadOptions::default(),
        ),
    )
    .await
    .expect("the real receiver hung")
    .expect("the real receiver failed");
    assert_eq!(blake3_file(&path).unwrap(), digest);
    rservice.shutdown().await;
    rcell.shutdown().await;
}

/// Wait until `f` holds, failing after a generous bound.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One connection may act for every cell below its name (`evil` for `evil.a0`, `evil.a1`,
/// ...). Its pulls all draw on the same share of the budget: however many names it pulls
/// as, it holds a quarter of it, and a real receiver never waits for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_that_never_reads_holds_one_share_whatever_names_it_claims() {
    ferry_tests::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let budget = 8 * MIB;
    // a long send timeout: the stuck connection stays for the whole test
    let limits = Limits {
        send_timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    let (cell, service, url, tx, rid, digest) = serve(dir.path(), 48 * MIB, budget, limits).await;
    let mut evil = Puller::connect(&url, "evil").await;
    for i in 0..48u64 {
        evil.pull(&format!("evil.a{i}"), &rid, i * MIB).await;
    }
    // once its socket buffers are full, its share is held, and nothing more
    eventually("the non-reading connection holds exactly its share", || {
        service.budget_available() == budget - budget / 4
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    real_download(&url, &rid, out.path(), &digest).await;
    assert_eq!(service.budget_available(), budget - budget / 4);
    drop(evil);
    drop(tx);
    service.shutdown().await;
    cell.shutdown().await;
}

/// Six connections pull and never read: together they hold the whole budget, until their
/// writes have made no progress for `send_timeout` (10 s by default, far below a receiver's
/// 60 s request timeout). Then they are closed, the chunks queued for them dropped and the
/// budget returned, and a real receiver that started meanwhile finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_pullers_are_cut_off_and_a_real_receiver_finishes() {
    ferry_tests::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let budget = 8 * MIB;
    let (cell, service, url, tx, rid, digest) =
        serve(dir.path(), 32 * MIB, budget, Limits::default()).await;
    let mut pullers = Vec::new();
    for k in 0..6 {
        let name = format!("puller-{k}");
        let mut p = Puller::connect(&url, &name).await;
        for i in 0..32u64 {
            p.pull(&name, &rid, i * MIB).await;
        }
        pullers.push(p);
    }
    eventually("the pullers hold the whole budget", || {
        service.budget_available() == 0
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    real_download(&url, &rid, out.path(), &digest).await;
    // (watched from the sender's side: reading from a puller would make it a reader)
    eventually("every puller is cut off", || {
        pullers.iter().all(|p| !cell.is_connected(&p.name))
    })
    .await;
    eventually("the budget comes back", || {
        service.budget_available() == budget
    })
    .await;
    for p in &mut pullers {
        assert!(p.closed_by_sender().await, "{} was not cut off", p.name);
    }
    drop(tx);
    service.shutdown().await;
    cell.shutdown().await;
}
