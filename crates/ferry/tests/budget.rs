//! The sender's byte budget counts every chunk at its real size, before it is produced, and a
//! download request too large to be one is refused before it is decoded (issue 11 §1, §4).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry::cellnet::fobs::{Datum, DatumKind, Fobs};
use ferry::cellnet::{Message, MsgpackWriter, Payload};
use ferry::core::message::{CHANNEL, TOPIC_DOWNLOAD};
use ferry::core::{PlanLayout, TransferPlan};
use ferry::prelude::*;

/// Generous bound for anything that should take a second; only guards against hangs.
const BOUND: Duration = Duration::from_secs(120);

/// Chunk bytes produced and not yet dropped (i.e. not yet written to a socket), and their
/// peak.
#[derive(Default)]
struct Live {
    now: AtomicU64,
    peak: AtomicU64,
}

/// A chunk buffer that counts itself live until dropped.
struct Counted {
    data: Bytes,
    live: Arc<Live>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live
            .now
            .fetch_sub(self.data.len() as u64, Ordering::SeqCst);
    }
}

/// `total` bytes in chunks of `chunk`, with a byte plan (as a file has), each chunk counted.
struct Counting {
    data: Bytes,
    chunk: u64,
    live: Arc<Live>,
}

impl Downloadable for Counting {
    fn produce(&self, state: Option<&State>, _requester: &str) -> Result<Produced, ProduceError> {
        let at = state
            .and_then(|s| s.get_u64("received_bytes").ok().flatten())
            .unwrap_or(0);
        let total = self.data.len() as u64;
        if at >= total {
            return Ok(Produced::Eof);
        }
        let end = (at + self.chunk).min(total);
        let data = self.data.slice(at as usize..end as usize);
        let n = self.live.now.fetch_add(data.len() as u64, Ordering::SeqCst) + data.len() as u64;
        self.live.peak.fetch_max(n, Ordering::SeqCst);
        Ok(Produced::Data {
            data: ChunkData::Bytes(Bytes::from_owner(Counted {
                data,
                live: Arc::clone(&self.live),
            })),
            state: State::new().with("received_bytes", end),
        })
    }

    fn plan(&self) -> Option<TransferPlan> {
        Some(TransferPlan {
            layout: PlanLayout::Bytes {
                total: self.data.len() as u64,
                chunk: self.chunk,
            },
            total_bytes: Some(self.data.len() as u64),
            blake3: None,
        })
    }
}

/// Four receivers pull `total` bytes in chunks of `chunk` from a sender with a budget of
/// `budget`; returns the peak of chunk bytes alive on the sender at once.
async fn peak_live(total: usize, chunk: u64, budget: u64) -> u64 {
    let server = Cell::new("server").unwrap();
    let url = server.listen("tcp://127.0.0.1:0").await.unwrap();
    let sender = DownloadService::new(
        &server,
        ServiceOptions {
            byte_budget: budget,
            ..ServiceOptions::default()
        },
    );
    let live = Arc::new(Live::default());
    let data: Bytes = (0..total)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let tx = ObjectDownloader::new(
        &sender,
        TxConfig::new(Duration::from_secs(60)).with_num_receivers(4),
    )
    .unwrap();
    let rid = tx
        .add_object(Arc::new(Counting {
            data: data.clone(),
            chunk,
            live: Arc::clone(&live),
        }))
        .unwrap();
    let mut joins = Vec::new();
    let mut cells = Vec::new();
    for i in 0..4 {
        let c = Cell::new(&format!("site-{i}")).unwrap();
        c.connect(&url).await.unwrap();
        let r = DownloadService::new(&c, ServiceOptions::default());
        cells.push((c, r.clone()));
        let rid = rid.clone();
        joins.push(tokio::spawn(async move {
            download_bytes(&r, "server", &rid, DownloadOptions::default()).await
        }));
    }
    for j in joins {
        let got = tokio::time::timeout(BOUND, j)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, data);
    }
    tokio::time::timeout(BOUND, tx.waiter().wait())
        .await
        .unwrap()
        .expect("outcome");
    assert_eq!(sender.budget_available(), budget, "budget returned");
    for (c, r) in cells {
        r.shutdown().await;
        c.shutdown().await;
    }
    sender.shutdown().await;
    server.shutdown().await;
    live.peak.load(Ordering::SeqCst)
}

/// Issue 11 §4: the budget assumed 1 MiB chunks, so with bigger ones many chunks were
/// produced under small permits and waited, produced, for the rest (1.88 GiB of sender RSS
/// with 64 MiB chunks and a 16 MiB budget). Chunks are now paid for at their real size before
/// they are produced: the chunks alive at once never exceed the budget...
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_alive_at_once_never_exceed_the_budget() {
    let peak = peak_live(24 << 20, 4 << 20, 8 << 20).await;
    assert!(peak > 0);
    assert!(
        peak <= 8 << 20,
        "{} MiB of 4 MiB chunks alive at once under an 8 MiB budget",
        peak >> 20
    );
}

/// ... and a chunk larger than the whole budget takes all of it and is the only one alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_larger_than_the_budget_travels_alone() {
    let peak = peak_live(48 << 20, 16 << 20, 4 << 20).await;
    assert_eq!(
        peak,
        16 << 20,
        "one 16 MiB chunk at a time under a 4 MiB budget"
    );
}

/// A download request is a small map (at most 64 KiB): a larger one is refused before its
/// payload is decoded. Here the main body is not even msgpack and a datum section follows;
/// decoding it first (folding the datum back in) would fail differently, after copying.
#[tokio::test]
async fn an_oversized_request_is_refused_before_it_is_decoded() {
    let server = Cell::new("server").unwrap();
    let sender = DownloadService::new(&server, ServiceOptions::default());
    let mut w = MsgpackWriter::new();
    w.raw(Bytes::from(vec![0xc1u8; 70_000]));
    let fobs = Fobs {
        main: w.finish(),
        datums: vec![Datum {
            id: Default::default(),
            kind: DatumKind::Blob,
            dot: 0,
            data: Bytes::from(vec![1u8; 11 << 20]),
        }],
    };
    let mut msg = Message {
        headers: Default::default(),
        payload: Payload::Fobs(fobs),
    };
    msg.headers.insert("cn__origin", "site-1");
    msg.headers.insert("cn__channel", CHANNEL);
    msg.headers.insert("cn__topic", TOPIC_DOWNLOAD);
    let reply = sender.handle_download(msg).await.expect("a reply");
    assert_eq!(reply.return_code(), WireReturnCode::InvalidRequest);
    let text = reply.error_text().unwrap_or_default();
    assert!(
        text.contains("exceeds the limit of 65536 bytes") && text.contains("without decoding"),
        "{text}"
    );
    sender.shutdown().await;
    server.shutdown().await;
}
