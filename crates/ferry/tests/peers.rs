//! Peer-assisted mode over real loopback TCP: a sender with a peer coordinator and receivers
//! that serve what they have; a peer that dies mid-transfer and one that lies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry::core::peers::message::{encode_request, JoinRequest, CHANNEL, TOPIC_JOIN};
use ferry::core::peers::PeerOffer;
use ferry::fetch::FetchOptions;
use ferry::objects::FileObject;
use ferry::peers::{fetch_with_peers, PeerCoordinator, SchedulerConfig, ShareOptions};
use ferry::prelude::*;
use ferry::ticket::{Kind, Ticket};

/// Bound on anything that should take seconds; only guards against hangs.
const BOUND: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("hung")
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 20) as u8)
        })
        .collect()
}

struct Origin {
    url: String,
    sender: DownloadService,
    tx: ObjectDownloader,
    coordinator: PeerCoordinator,
    ticket: Ticket,
    _dir: tempfile::TempDir,
}

/// A sender serving `data` as a file to `receivers`, with peer scheduling.
async fn origin(data: &[u8], receivers: usize) -> Origin {
    origin_with(data, receivers, SchedulerConfig::default()).await
}

/// [`origin`] with a scheduler configuration.
async fn origin_with(data: &[u8], receivers: usize, cfg: SchedulerConfig) -> Origin {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bin");
    std::fs::write(&path, data).unwrap();
    let cell = Cell::new("server").unwrap();
    let url = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    let sender = DownloadService::new(&cell, ServiceOptions::default());
    let coordinator = PeerCoordinator::new(&cell, cfg);
    let tx = ObjectDownloader::new(
        &sender,
        TxConfig::new(Duration::from_secs(120)).with_num_receivers(receivers),
    )
    .unwrap();
    let rid = tx.add_file(&path, 256 * 1024).unwrap();
    assert!(coordinator.schedule(&rid));
    let ticket = Ticket {
        tls: false,
        addr: url.trim_start_matches("tcp://").to_string(),
        source: "server".into(),
        ref_id: rid.as_str().to_string(),
        kind: Kind::File,
        name: "model.bin".into(),
        size: data.len() as u64,
        blake3: blake3::hash(data).to_hex().to_string(),
    };
    Origin {
        url,
        sender,
        tx,
        coordinator,
        ticket,
        _dir: dir,
    }
}

/// A receiver cell connected to the sender and listening for peers.
async fn receiver(name: &str, o: &Origin) -> (DownloadService, String) {
    let cell = Cell::new(name).unwrap();
    let listen = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    cell.connect(&o.url).await.unwrap();
    (
        DownloadService::new(&cell, ServiceOptions::default()),
        listen,
    )
}

fn share(url: &str) -> ShareOptions {
    ShareOptions {
        offer_url: Some(url.to_string()),
        report_interval: Duration::from_millis(200),
        ..ShareOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_pull_from_each_other_and_the_sender_counts_every_one() {
    let data = pattern(6 * MIB + 123, 1);
    let o = origin(&data, 3).await;
    let out = tempfile::tempdir().unwrap();
    // site-1 first: it pulls from the sender and keeps serving
    let (s1, u1) = receiver("site-1", &o).await;
    let d1 = out.path().join("1");
    let (got1, rep1, seed1) = within(fetch_with_peers(
        &s1,
        &o.ticket,
        &d1,
        FetchOptions::default(),
        DownloadOptions::default(),
        share(&u1),
    ))
    .await
    .unwrap();
    assert_eq!(
        rep1.sources,
        vec![None],
        "the first receiver pulls from the sender"
    );
    assert_eq!(std::fs::read(&got1.path).unwrap(), data);
    let stop = CancellationToken::new();
    let stop1 = stop.clone();
    let seeding = tokio::spawn(async move { seed1.serve_until_released(&stop1).await });
    // then two more at once: the sender's one slot is taken, so they pull from peers
    let mut jobs = Vec::new();
    for i in [2, 3] {
        let (s, u) = receiver(&format!("site-{i}"), &o).await;
        let t = o.ticket.clone();
        let d = out.path().join(i.to_string());
        jobs.push(tokio::spawn(async move {
            let r = fetch_with_peers(
                &s,
                &t,
                &d,
                FetchOptions::default(),
                DownloadOptions::default(),
                share(&u),
            )
            .await;
            let r = r.map(|(f, rep, seed)| (f, rep, seed.bytes_served()));
            (r, s)
        }));
    }
    let mut served = 0;
    for j in jobs {
        let (r, _s) = within(j).await.unwrap();
        let (got, rep, _) = r.expect("peer download");
        assert_eq!(
            std::fs::read(&got.path).unwrap(),
            data,
            "verified and whole"
        );
        assert!(rep.scheduled);
        assert!(
            rep.sources.iter().all(Option::is_some),
            "only peers served it: {rep:?}"
        );
        served += 1;
    }
    assert_eq!(served, 2);
    // the sender's transaction completes: every receiver confirmed, peers' ones included
    let outcome = within(o.tx.waiter().wait()).await.expect("recorded");
    assert!(outcome.completed(), "{outcome:?}");
    stop.cancel();
    let bytes_served = within(seeding).await.unwrap();
    assert!(
        bytes_served >= data.len() as u64,
        "site-1 served {bytes_served}"
    );
    let stats = o
        .coordinator
        .stats(&RefId::new(o.ticket.ref_id.clone()))
        .unwrap();
    assert_eq!(stats.receivers, 3);
    o.coordinator.shutdown().await;
    o.sender.shutdown().await;
}

/// A source that serves the real file for `n` chunks, then tells the test to kill it and
/// never answers again.
struct DiesAfter {
    inner: FileObject,
    left: AtomicUsize,
    died: Arc<tokio::sync::Notify>,
}

impl Downloadable for DiesAfter {
    fn produce(&self, state: Option<&State>, who: &str) -> Result<Produced, ProduceError> {
        if self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_err()
        {
            self.died.notify_one();
            std::thread::sleep(Duration::from_secs(1));
            return Err(ProduceError("dead".into()));
        }
        self.inner.produce(state, who)
    }
    fn plan(&self) -> Option<ferry::core::TransferPlan> {
        self.inner.plan()
    }
}

/// A fake peer: joins the schedule with an offer and serves `obj` under the ticket's ref.
async fn fake_peer(name: &str, o: &Origin, obj: Arc<dyn Downloadable>) -> (Cell, DownloadService) {
    let cell = Cell::new(name).unwrap();
    let listen = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    cell.connect(&o.url).await.unwrap();
    let svc = DownloadService::new(&cell, ServiceOptions::default());
    let tx = ObjectDownloader::new(&svc, TxConfig::new(Duration::MAX)).unwrap();
    tx.add_object_with_id(obj, RefId::new(o.ticket.ref_id.clone()))
        .unwrap();
    std::mem::forget(tx);
    let join = JoinRequest {
        ref_id: o.ticket.ref_id.clone(),
        position: 0,
        offer: Some(PeerOffer {
            fqcn: name.into(),
            url: listen,
        }),
    };
    let reply = cell
        .send_request(
            CHANNEL,
            TOPIC_JOIN,
            "server",
            Message::from_msgpack(ferry::cellnet::MsgpackBody::from_bytes(Bytes::from(
                encode_request(&join),
            ))),
            BOUND,
        )
        .await;
    assert!(
        reply.return_code().is_ok(),
        "{:?} {:?}",
        reply.return_code(),
        reply.error_text()
    );
    (cell, svc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_dies_mid_transfer_leaves_the_receiver_verified_from_another_source() {
    let data = pattern(8 * MIB + 5, 2);
    let o = origin(&data, 1).await;
    let src = o._dir.path().join("model.bin");
    let died = Arc::new(tokio::sync::Notify::new());
    let dying = DiesAfter {
        inner: FileObject::builder(&src)
            .chunk_size(256 * 1024)
            .digest(true)
            .open()
            .unwrap(),
        left: AtomicUsize::new(6),
        died: Arc::clone(&died),
    };
    // the fake peer joins first and takes the sender's one slot
    let (peer_cell, peer_svc) = fake_peer("peer-dying", &o, Arc::new(dying)).await;
    let killer = tokio::spawn(async move {
        died.notified().await;
        peer_svc.shutdown().await;
        peer_cell.shutdown().await;
    });
    let (s, u) = receiver("site-1", &o).await;
    let out = tempfile::tempdir().unwrap();
    let (got, rep, _seed) = within(fetch_with_peers(
        &s,
        &o.ticket,
        out.path(),
        FetchOptions::default(),
        DownloadOptions {
            window: 2,
            ..DownloadOptions::default()
        },
        share(&u),
    ))
    .await
    .expect("completes from another source");
    within(killer).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(
        rep.sources.first(),
        Some(&Some("peer-dying".to_string())),
        "{rep:?}"
    );
    assert_eq!(
        rep.sources.last(),
        Some(&None),
        "the rest came from the sender: {rep:?}"
    );
    assert!(rep.lying_sources.is_empty());
    let outcome = within(o.tx.waiter().wait()).await.expect("recorded");
    assert!(outcome.completed(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_peer_cannot_corrupt_the_file_and_is_banned() {
    let data = pattern(3 * MIB + 7, 3);
    let o = origin(&data, 1).await;
    let mut bad = data.clone();
    bad[MIB + 5] ^= 0xff;
    let dir = tempfile::tempdir().unwrap();
    let bad_path = dir.path().join("bad.bin");
    std::fs::write(&bad_path, &bad).unwrap();
    let liar = FileObject::builder(&bad_path).digest(true).open().unwrap();
    let (_liar_cell, _liar_svc) = fake_peer("peer-liar", &o, Arc::new(liar)).await;
    let (s, u) = receiver("site-1", &o).await;
    let out = tempfile::tempdir().unwrap();
    let (got, rep, _seed) = within(fetch_with_peers(
        &s,
        &o.ticket,
        out.path(),
        FetchOptions::default(),
        DownloadOptions::default(),
        share(&u),
    ))
    .await
    .expect("completes from the sender");
    assert_eq!(
        std::fs::read(&got.path).unwrap(),
        data,
        "the pinned content, not the lie"
    );
    assert_eq!(rep.lying_sources, vec!["peer-liar".to_string()], "{rep:?}");
    assert_eq!(rep.sources.last(), Some(&None), "{rep:?}");
    let stats = o
        .coordinator
        .stats(&RefId::new(o.ticket.ref_id.clone()))
        .unwrap();
    assert_eq!(stats.banned, 1);
    // a newcomer is never sent to the liar
    let (s2, u2) = receiver("site-2", &o).await;
    let out2 = tempfile::tempdir().unwrap();
    let (_, rep2, _) = within(fetch_with_peers(
        &s2,
        &o.ticket,
        out2.path(),
        FetchOptions::default(),
        DownloadOptions::default(),
        share(&u2),
    ))
    .await
    .unwrap();
    assert!(
        !rep2.sources.contains(&Some("peer-liar".to_string())),
        "{rep2:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_without_peer_scheduling_is_simply_pulled_from() {
    let data = pattern(MIB + 1, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bin");
    std::fs::write(&path, &data).unwrap();
    let cell = Cell::new("server").unwrap();
    let url = cell.listen("tcp://127.0.0.1:0").await.unwrap();
    let sender = DownloadService::new(&cell, ServiceOptions::default());
    let tx = ObjectDownloader::new(
        &sender,
        TxConfig::new(Duration::from_secs(60)).with_num_receivers(1),
    )
    .unwrap();
    let rid = tx.add_file(&path, 256 * 1024).unwrap();
    let ticket = Ticket {
        tls: false,
        addr: url.trim_start_matches("tcp://").to_string(),
        source: "server".into(),
        ref_id: rid.as_str().to_string(),
        kind: Kind::File,
        name: "model.bin".into(),
        size: data.len() as u64,
        blake3: blake3::hash(&data).to_hex().to_string(),
    };
    let r = Cell::new("site-1").unwrap();
    let u = r.listen("tcp://127.0.0.1:0").await.unwrap();
    r.connect(&url).await.unwrap();
    let svc = DownloadService::new(&r, ServiceOptions::default());
    let out = tempfile::tempdir().unwrap();
    let (got, rep, _) = within(fetch_with_peers(
        &svc,
        &ticket,
        out.path(),
        FetchOptions::default(),
        DownloadOptions::default(),
        share(&u),
    ))
    .await
    .unwrap();
    assert!(!rep.scheduled);
    assert_eq!(rep.sources, vec![None]);
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert!(within(tx.waiter().wait()).await.unwrap().completed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_address_answered_by_another_cell_is_not_trusted() {
    let data = pattern(MIB + 9, 5);
    let o = origin(&data, 1).await;
    // "peer-x" joins, but the address it offers is answered by another cell
    let impostor = Cell::new("impostor").unwrap();
    let impostor_url = impostor.listen("tcp://127.0.0.1:0").await.unwrap();
    let cell = Cell::new("peer-x").unwrap();
    cell.connect(&o.url).await.unwrap();
    let join = JoinRequest {
        ref_id: o.ticket.ref_id.clone(),
        position: 0,
        offer: Some(PeerOffer {
            fqcn: "peer-x".into(),
            url: impostor_url,
        }),
    };
    let reply = cell
        .send_request(
            CHANNEL,
            TOPIC_JOIN,
            "server",
            Message::from_msgpack(ferry::cellnet::MsgpackBody::from_bytes(Bytes::from(
                encode_request(&join),
            ))),
            BOUND,
        )
        .await;
    assert!(reply.return_code().is_ok());
    let (s, u) = receiver("site-1", &o).await;
    let out = tempfile::tempdir().unwrap();
    let (got, rep, _) = within(fetch_with_peers(
        &s,
        &o.ticket,
        out.path(),
        FetchOptions::default(),
        DownloadOptions::default(),
        share(&u),
    ))
    .await
    .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(
        rep.sources,
        vec![Some("peer-x".to_string()), None],
        "sent to peer-x, refused the impostor, pulled from the sender"
    );
    assert!(rep.lying_sources.is_empty(), "{rep:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_the_sender_does_not_share_is_pulled_from_the_sender() {
    let data = pattern(MIB + 3, 6);
    let mut o = origin(&data, 1).await;
    // the coordinator runs, but this ref was never scheduled
    o.ticket.ref_id =
        o.tx.add_bytes(Bytes::from(data.clone()))
            .unwrap()
            .as_str()
            .to_string();
    let (s, u) = receiver("site-1", &o).await;
    let out = tempfile::tempdir().unwrap();
    let (got, rep, seed) = within(fetch_with_peers(
        &s,
        &o.ticket,
        out.path(),
        FetchOptions::default(),
        DownloadOptions::default(),
        share(&u),
    ))
    .await
    .unwrap();
    assert!(!rep.scheduled, "{rep:?}");
    assert_eq!(rep.sources, vec![None]);
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    // an unscheduled receiver does not linger
    let served = within(seed.serve_until_released(&CancellationToken::new())).await;
    assert_eq!(served, 0);
}

/// A source that serves the real file for `n` chunks, then hangs (its connection stays up)
/// until the test lets it go.
struct HangsAfter {
    inner: FileObject,
    left: AtomicUsize,
    hung: Arc<std::sync::atomic::AtomicBool>,
}

impl Downloadable for HangsAfter {
    fn produce(&self, state: Option<&State>, who: &str) -> Result<Produced, ProduceError> {
        if self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_err()
        {
            while self.hung.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Err(ProduceError("let go".into()));
        }
        self.inner.produce(state, who)
    }
    fn plan(&self) -> Option<ferry::core::TransferPlan> {
        self.inner.plan()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_hangs_is_found_silent_by_the_sender_and_its_receiver_moves_on() {
    let data = pattern(8 * MIB + 11, 7);
    let cfg = SchedulerConfig {
        stall_timeout: Duration::from_secs(1),
        silence_timeout: Duration::from_secs(2),
        ..SchedulerConfig::default()
    };
    let o = origin_with(&data, 1, cfg).await;
    let src = o._dir.path().join("model.bin");
    let hung = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hanging = HangsAfter {
        inner: FileObject::builder(&src)
            .chunk_size(256 * 1024)
            .digest(true)
            .open()
            .unwrap(),
        left: AtomicUsize::new(4),
        hung: Arc::clone(&hung),
    };
    // it joins (taking the sender's one slot), serves a little, then neither serves nor reports
    let (_peer_cell, _peer_svc) = fake_peer("peer-hung", &o, Arc::new(hanging)).await;
    let (s, u) = receiver("site-1", &o).await;
    let out = tempfile::tempdir().unwrap();
    let r = within(fetch_with_peers(
        &s,
        &o.ticket,
        out.path(),
        FetchOptions::default(),
        DownloadOptions::default(),
        share(&u),
    ))
    .await;
    hung.store(false, Ordering::Release);
    let (got, rep, _seed) = r.expect("completes from the sender");
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(
        rep.sources,
        vec![Some("peer-hung".to_string()), None],
        "moved by the sender, not failed by a timeout: {rep:?}"
    );
    assert!(within(o.tx.waiter().wait()).await.unwrap().completed());
}
